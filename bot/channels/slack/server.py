"""HTTP mode: Slack requests at POST /slack/events, GET /healthz and GET /metrics, on waitress."""

from __future__ import annotations

import binascii
import io
import json
import logging
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt import App, BoltRequest
from slack_bolt.adapter.wsgi import SlackRequestHandler
from slack_bolt.adapter.wsgi.http_request import WsgiHttpRequest
from slack_sdk.signature import SignatureVerifier
from waitress.server import create_server

from bot.channels.slack.clicks import ACKS_FIRST

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
# A click's whole payload and the one action of it to handle.
ActionHandler = Callable[[dict[str, Any], dict[str, Any]], None]


def form_field(body: str, name: str) -> str:
    """The value of `name` in an x-www-form-urlencoded body ("" when absent), as `parse_qs`
    gives it. Percent-decoding a click's payload (~7 KB of JSON, its message's blocks
    included) with `urllib.parse` loops in Python per escape: the biggest part of a click's
    ack. '%XX' is quoted-printable's '=XX' (a raw '=' cannot occur in a form value), so
    binascii decodes it in C (a raw '=', which a form value should not hold, or anything
    else unusual goes to `parse_qs`)."""
    prefix = name + "="
    values = [part[len(prefix) :] for part in body.split("&") if part.startswith(prefix)]
    if len(values) != 1 or "=" in values[0]:
        return (parse_qs(body).get(name) or [""])[0]
    try:
        quoted = values[0].replace("+", " ").replace("%", "=").encode("ascii")
        return binascii.a2b_qp(quoted).decode("utf-8")
    except (UnicodeError, binascii.Error):
        return (parse_qs(body).get(name) or [""])[0]


class EarlyAcks:
    """Slack requests whose answer is always an empty 200, acked before any work on them.

    Slack wants each request acked within 3 s and retries an event it got no quick 200 for.
    Bolt acks an event only after its middleware ran in the request's thread (here: the
    event ledger's claim, a database write) and a click only once its listener, queued behind
    the other listeners, called ack(). In a burst those waits add up: 200 DMs in a second acked
    at p99 ~0.2 s, 1,000 survey clicks at ~1–2 s (benchmarks/dm_burst.py, survey_clicks.py).

    Taken here, once the signature is checked (as Bolt checks it: the body's HMAC under the
    signing secret, and a timestamp within 5 minutes): an Events API delivery, handed whole to
    Bolt on a small pool of threads (its middleware claims the event id in the ledger and the
    listener answers, as before: a retry of a handled event is still dropped there); and a
    click whose every action has a registered handler (`action()`), called in the request's
    thread, in arrival order (the handler only queues the work). Everything else (slash
    commands, modals, clicks answered in the ack) goes through Bolt as before."""

    def __init__(self, signing_secret: str, *, workers: int = 4) -> None:
        self.verifier = SignatureVerifier(signing_secret)
        self._actions: list[tuple[str, ActionHandler]] = []
        self._events = ThreadPoolExecutor(workers, thread_name_prefix="slack-events")

    def action(self, prefix: str, handler: ActionHandler) -> None:
        """Clicks on actions whose action_id starts with `prefix` are acked at once and
        passed to `handler(payload, action)`; it must only queue the work (it runs before
        the ack) and it is all that handles them."""
        self._actions.append((prefix, handler))

    def take(self, app: App, body: str, headers: dict[str, Any], query: str = "") -> bool:
        """True when the request was taken: answer it 200 with an empty body."""
        timestamp = str(headers.get("x-slack-request-timestamp") or "")
        signature = str(headers.get("x-slack-signature") or "")
        if not (timestamp and signature):
            return False
        if not self.verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
            return False  # Bolt answers it (401)
        content_type = str(headers.get("content-type") or "")
        if content_type.startswith("application/json"):
            if '"event_callback"' not in body:
                return False
            try:
                envelope = json.loads(body)
            except ValueError:
                return False
            if not isinstance(envelope, dict) or envelope.get("type") != "event_callback":
                return False
            self._events.submit(self._dispatch, app, body, query, headers)
            return True
        if not self._actions or "payload=" not in body:
            return False
        return self._click(body)

    def _click(self, body: str) -> bool:
        try:
            payload = json.loads(form_field(body, "payload"))
        except ValueError:
            return False
        if not isinstance(payload, dict) or payload.get("type") != "block_actions":
            return False
        actions = payload.get("actions")
        if not isinstance(actions, list) or not actions:
            return False
        handlers = []
        for action in actions:
            action_id = str(action.get("action_id", "")) if isinstance(action, dict) else ""
            handler = next((h for p, h in self._actions if action_id.startswith(p)), None)
            if handler is None:
                return False  # one Bolt listener should see the whole click
            handlers.append((handler, action))
        for handler, action in handlers:
            try:
                handler(payload, action)
            except Exception:  # acked all the same, as Bolt's listener acks before working
                log.exception("handling a %s click failed", action.get("action_id"))
        return True

    @staticmethod
    def _dispatch(app: App, body: str, query: str, headers: dict[str, Any]) -> None:
        try:
            app.dispatch(BoltRequest(body=body, query=query, headers=headers))
        except Exception:  # the pool would drop it silently
            log.exception("handling a Slack event failed")

    def close(self) -> None:
        self._events.shutdown(wait=False, cancel_futures=False)


class WebApp:
    """A WSGI app: Bolt for Slack's requests, plus health and metrics for operators."""

    def __init__(
        self,
        app: App | None,
        *,
        ready: Callable[[], bool],
        teams: WsgiApp | None = None,
        console: WsgiApp | None = None,
        early: EarlyAcks | None = None,
    ) -> None:
        self.app = app
        self.slack = SlackRequestHandler(app) if app is not None else None  # None: no Slack
        self.early = early if app is not None else None  # requests acked before Bolt sees them
        self.ready = ready
        self.teams = teams  # Teams activities at POST /api/messages (bot.channels.teams.app)
        self.console = console  # the comms lead's console under /console (bot.console)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if self.console is not None and (path == "/console" or path.startswith("/console/")):
            return self.console(environ, start_response)
        if path == "/api/messages" and method == "POST" and self.teams is not None:
            return self.teams(environ, start_response)
        if path == "/slack/events" and method == "POST" and self.slack is not None:
            with ACKS_FIRST.request():
                if self.early is not None and self._acked_early(environ, start_response):
                    return [b""]
                return self.slack(environ, start_response)
        if path == "/healthz" and method == "GET":
            ok = self.ready()
            start_response(
                "200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")]
            )
            return [b"ok\n" if ok else b"starting\n"]
        if path == "/metrics" and method == "GET":
            start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
            return [generate_latest()]
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]

    def _acked_early(self, environ: dict[str, Any], start_response: StartResponse) -> bool:
        """Whether `early` took the request (then it is answered 200 here); else the body is
        put back for Bolt to read."""
        assert self.early is not None and self.app is not None
        request = WsgiHttpRequest(environ)
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return False
        stream = environ.get("wsgi.input")
        raw: bytes = stream.read(length) if stream is not None and length > 0 else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        try:
            body = raw.decode("utf-8")
        except UnicodeDecodeError:
            return False  # Bolt answers it
        if not self.early.take(self.app, body, request.get_headers(), request.query_string):
            return False
        start_response("200 OK", [("Content-Type", "text/plain;charset=utf-8")])
        return True


class HttpServer:
    """The web app on a port (0 picks a free one); `start()` runs it in a thread.

    `threads`: waitress's request threads. Each holds its request until Bolt's listener pool
    (bot.channels.slack.app.LISTENER_THREADS) has acked it, polling every 10 ms, so the acks
    of a burst go at most `threads` at a time. Measured with benchmarks/survey_clicks.py
    (1,000 clicks in 1 s, 2 cores): 4 threads ack at p99 ~4 s, 8 at ~1.8 s, 12–16 no better
    (they only take the GIL from each other). Listeners waiting on Slack hold listener
    threads, not these."""

    def __init__(
        self, web: WebApp, *, host: str = "0.0.0.0", port: int = 3000, threads: int = 8
    ) -> None:
        self.server = create_server(web, host=host, port=port, threads=threads, ident="mobilize")
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.server.effective_port)  # type: ignore[union-attr]

    def serve_forever(self) -> None:
        self.server.run()

    def start(self) -> None:
        self._thread = threading.Thread(target=self.server.run, name="http", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.server.close()
