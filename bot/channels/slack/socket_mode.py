"""Socket Mode for the running bot, on `websocket-client`, without the reconnect stall.

Slack sends `{"type": "disconnect", "reason": "refresh_requested"}` routinely and keeps the old
connection open about 10 s more. slack_sdk's built-in client holds its read lock in a 3 s
`recv()` before it lets go of the old socket, so the first envelope on the new one is acked
after ~3 s (Slack's deadline); Bolt's `websocket_client` handler closes the old socket before
the new one is open, so an envelope in flight loses its ack, and it opens two connections per
refresh. Here every connection has its own reader thread: on a disconnect the new connection is
opened while the old one is still read, envelopes are acked on the connection they came on,
and the old one is closed when Slack closes it (or `retire_after` seconds later).

`check_bot_token` and the app-token check turn Slack's refusals into `SlackTokenError`, whose
message names the setting and what to do; `mobilize run` prints it and exits.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import websocket
from slack_bolt import App, BoltRequest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

log = logging.getLogger(__name__)

# Slack's answers that mean "this token will not do" (as opposed to "try again").
TOKEN_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "not_allowed_token_type",
        "missing_scope",
        "no_permission",
        "team_access_not_granted",
    }
)
_WHAT_TO_DO = {
    "SLACK_BOT_TOKEN": "copy the Bot User OAuth Token (xoxb-…) from your Slack app's "
    "'OAuth & Permissions' page into SLACK_BOT_TOKEN (reinstall the app if it was revoked)",
    "SLACK_APP_TOKEN": "generate an app-level token with the connections:write scope under "
    "your Slack app's 'Basic Information' → 'App-Level Tokens' and put it (xapp-…) in "
    "SLACK_APP_TOKEN, or run with --http",
}
_SPECIFIC = {
    ("SLACK_APP_TOKEN", "not_allowed_token_type"): "it must be an app-level token (xapp-…), not "
    "a bot or user token",
    ("SLACK_APP_TOKEN", "missing_scope"): "the app-level token needs the connections:write scope",
    ("SLACK_BOT_TOKEN", "not_allowed_token_type"): "it must be the bot token (xoxb-…)",
}


class SlackStartError(Exception):
    """Slack will not let the bot run as configured; the message says what to do."""


class SlackTokenError(SlackStartError):
    """Slack refused a token; the message names the setting."""

    def __init__(self, setting: str, error: str) -> None:
        self.setting = setting
        self.error = error
        specific = _SPECIFIC.get((setting, error))
        why = f"{specific}; " if specific else ""
        super().__init__(
            f"{setting} was refused by Slack ({error}): {why}{_WHAT_TO_DO.get(setting, '')}"
        )


def _error_code(exc: SlackApiError) -> str:
    response = exc.response
    if response is None:
        return "unknown_error"
    if response.status_code == 429:
        return "ratelimited"
    return str(response.get("error") or f"http_{response.status_code}")


def check_bot_token(client: WebClient) -> dict[str, Any]:
    """`auth.test` with the bot token: Slack's answer, or SlackTokenError naming SLACK_BOT_TOKEN
    (SlackStartError when Slack cannot be reached)."""
    try:
        return dict(client.auth_test().data)  # type: ignore[arg-type]
    except SlackApiError as exc:
        code = _error_code(exc)
        if code in TOKEN_ERRORS:
            raise SlackTokenError("SLACK_BOT_TOKEN", code) from None
        raise SlackStartError(f"Slack's auth.test failed ({code}); try again later") from None
    except (SlackClientError, OSError) as exc:
        raise SlackStartError(
            f"could not reach Slack's Web API at {client.base_url} ({exc}); "
            "check the network and SLACK_API_URL"
        ) from None


@dataclass(eq=False)
class _Link:
    """One WebSocket connection and its reader."""

    id: int
    ws: websocket.WebSocket
    hello: threading.Event = field(default_factory=threading.Event)
    closed: threading.Event = field(default_factory=threading.Event)
    retire_at: float | None = None  # when to close it if Slack has not
    told_to_go: bool = False  # Slack sent a disconnect on it
    thread: threading.Thread | None = None


class SocketMode:
    """A Bolt app served over Socket Mode.

    ``connect()`` opens the first connection (raising SlackTokenError for a refused app token),
    ``serve_forever()`` blocks until ``close()`` (or raises SlackStartError when Slack refuses
    the token later, e.g. it was revoked), ``close()`` ends every connection and thread.
    """

    def __init__(
        self,
        app: App,
        *,
        app_token: str,
        client: WebClient | None = None,
        workers: int = 16,
        ping_interval: float = 10.0,
        connect_timeout: float = 10.0,
        retire_after: float = 10.0,
        max_backoff: float = 30.0,
    ) -> None:
        self.app = app
        self.app_token = app_token
        self.client = client or app.client
        self.ping_interval = ping_interval
        self.connect_timeout = connect_timeout
        self.retire_after = retire_after
        self.max_backoff = max_backoff
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="socket-mode")
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._current: _Link | None = None
        self._replacing = False
        self._stopped = threading.Event()
        self._fatal: SlackStartError | None = None

    # ------------------------------------------------------------------ public

    @property
    def connected(self) -> bool:
        current = self._current
        return current is not None and current.hello.is_set() and not current.closed.is_set()

    def connect(self) -> None:
        """Open the first connection; SlackTokenError when Slack refuses SLACK_APP_TOKEN."""
        link = self._open()
        with self._lock:
            self._current = link

    def serve_forever(self) -> None:
        """Block until ``close()``; raise SlackStartError when Slack stops accepting the app."""
        if self._current is None:
            self.connect()
        while not self._stopped.wait(0.5):
            pass
        if self._fatal is not None:
            raise self._fatal

    def close(self) -> None:
        """Close every connection and stop every thread this started."""
        self._stopped.set()
        with self._lock:
            links = list(self._links)
        for link in links:
            self._close_link(link)
        for link in links:
            if link.thread is not None and link.thread is not threading.current_thread():
                link.thread.join(timeout=3)
        self._pool.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ connections

    def _issue_url(self) -> str:
        try:
            response = self.client.apps_connections_open(app_token=self.app_token)
        except SlackApiError as exc:
            code = _error_code(exc)
            if code in TOKEN_ERRORS:
                raise SlackTokenError("SLACK_APP_TOKEN", code) from None
            raise ConnectionError(f"apps.connections.open failed: {code}") from None
        return str(response["url"])

    def _open(self) -> _Link:
        """A new connection that has said hello, read by a thread of its own."""
        url = self._issue_url()
        ws = websocket.WebSocket(enable_multithread=True)
        try:
            ws.connect(url, timeout=self.connect_timeout)
        except (websocket.WebSocketException, OSError) as exc:
            raise ConnectionError(f"could not open the Socket Mode connection: {exc}") from exc
        link = _Link(id=next(self._ids), ws=ws)
        link.thread = threading.Thread(
            target=self._read, args=(link,), name=f"socket-mode-read-{link.id}", daemon=True
        )
        with self._lock:
            self._links.append(link)
        link.thread.start()
        if not link.hello.wait(self.connect_timeout) or link.closed.is_set():
            self._close_link(link)
            raise ConnectionError("Slack closed the Socket Mode connection before saying hello")
        log.info("Socket Mode connection %d is open", link.id)
        return link

    def _replace(self, old: _Link | None) -> None:
        """Open a new connection, then retire ``old`` (still read until then). One at a time:
        a disconnect or close that comes while a replacement is opening is seen by it."""
        with self._lock:
            if (
                self._replacing
                or self._stopped.is_set()
                or (old is not None and old is not self._current)
            ):
                return
            self._replacing = True
        done = False
        try:
            delay = 0.0
            while not done and not self._stopped.wait(delay):
                try:
                    link = self._open()
                except SlackTokenError as exc:
                    log.error("%s", exc)
                    self._fatal = exc
                    self._stopped.set()
                    return
                except (ConnectionError, SlackClientError, OSError) as exc:
                    delay = min(self.max_backoff, max(1.0, delay * 2))
                    log.warning("Socket Mode reconnect failed (%s); retrying in %.0f s", exc, delay)
                    continue
                if old is not None and not old.closed.is_set():
                    old.retire_at = time.monotonic() + self.retire_after
                with self._lock:
                    self._current = link
                    # Told to go, or gone, while it opened: nobody else will replace it.
                    done = not (link.told_to_go or link.closed.is_set())
                    if done:
                        self._replacing = False
                old, delay = link, 0.0
        finally:
            if not done:
                with self._lock:
                    self._replacing = False

    def _close_link(self, link: _Link) -> None:
        if link.closed.is_set():
            return
        try:
            link.ws.send_close()
        except (websocket.WebSocketException, OSError):
            link.ws.shutdown()
            link.closed.set()

    def _read(self, link: _Link) -> None:
        """Read one connection until it closes: hello, disconnect, envelopes (acked in the pool)."""
        ws = link.ws
        ws.settimeout(1.0)
        last_frame = last_ping = time.monotonic()
        try:
            while True:
                now = time.monotonic()
                if self._stopped.is_set() and now - last_frame > 2.0:
                    break  # our close frame got no answer
                if link.retire_at is not None and now >= link.retire_at:
                    link.retire_at = None
                    self._close_link(link)
                if now - last_frame > 2 * self.ping_interval + 1:
                    log.warning("Socket Mode connection %d went quiet; replacing it", link.id)
                    break
                if now - last_ping >= self.ping_interval:
                    last_ping = now
                    ws.ping()
                try:
                    opcode, data = ws.recv_data_frame(control_frame=True)
                except websocket.WebSocketTimeoutException:
                    continue
                last_frame = time.monotonic()
                if opcode == websocket.ABNF.OPCODE_CLOSE:
                    break
                if opcode == websocket.ABNF.OPCODE_TEXT:
                    payload = data.data if isinstance(data, websocket.ABNF) else data
                    self._on_message(link, payload)
        except (websocket.WebSocketException, OSError) as exc:
            if not self._stopped.is_set():
                log.info("Socket Mode connection %d ended: %s", link.id, exc)
        finally:
            ws.shutdown()
            link.closed.set()
            with self._lock:
                self._links.remove(link)
                current = link is self._current
            if current and not self._stopped.is_set():
                threading.Thread(
                    target=self._replace, args=(link,), name="socket-mode-reconnect", daemon=True
                ).start()

    def _on_message(self, link: _Link, raw: bytes | str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            log.warning("Socket Mode: not JSON: %.200r", raw)
            return
        if not isinstance(message, dict):
            return
        kind = message.get("type")
        if message.get("envelope_id"):
            self._pool.submit(self._dispatch, link, message)
        elif kind == "hello":
            link.hello.set()
        elif kind == "disconnect":
            reason = str(message.get("reason") or "")
            with self._lock:  # _replace reads it under the lock
                link.told_to_go = True
            if reason == "link_disabled":
                self._fatal = SlackStartError(
                    "Slack disabled Socket Mode for this app (link_disabled): turn on "
                    "'Socket Mode' in the app's settings, or unset SLACK_APP_TOKEN and run --http"
                )
                self._stopped.set()
                return
            log.info("Slack asked for a new Socket Mode connection (%s)", reason)
            threading.Thread(
                target=self._replace, args=(link,), name="socket-mode-reconnect", daemon=True
            ).start()

    def _dispatch(self, link: _Link, message: dict[str, Any]) -> None:
        envelope_id = str(message["envelope_id"])
        headers: dict[str, str | Sequence[str]] = {}
        if message.get("retry_attempt"):
            headers["x-slack-retry-num"] = str(message["retry_attempt"])
            headers["x-slack-retry-reason"] = str(message.get("retry_reason") or "")
        try:
            response = self.app.dispatch(
                BoltRequest(mode="socket_mode", body=message.get("payload") or {}, headers=headers)
            )
        except Exception:  # a listener bug must not leave Slack waiting for an ack
            log.exception("Socket Mode envelope %s failed", envelope_id)
            return
        if response.status >= 500:
            log.warning(
                "Socket Mode envelope %s not acked (status %s)", envelope_id, response.status
            )
            return
        ack: dict[str, Any] = {"envelope_id": envelope_id}
        if response.status == 200 and response.body:
            content_type = (response.headers.get("content-type") or [""])[0]
            if content_type.startswith("application/json"):
                ack["payload"] = json.loads(response.body)
            else:
                ack["payload"] = {"text": response.body}
        self._send(link, json.dumps(ack))

    def _send(self, link: _Link, text: str) -> None:
        """Send on ``link``; if it has closed meanwhile, on the current connection."""
        for target in (link, self._current):
            if target is None or target.closed.is_set():
                continue
            try:
                target.ws.send(text)
                return
            except (websocket.WebSocketException, OSError):
                continue
        log.warning("Socket Mode: no open connection to send an ack on")
