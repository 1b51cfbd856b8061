"""HTTP mode: Slack requests at POST /slack/events, GET /healthz and GET /metrics, on waitress."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from slack_bolt import App
from slack_bolt.adapter.wsgi import SlackRequestHandler
from waitress.server import create_server

from bot.channels.slack.clicks import ACKS_FIRST

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class WebApp:
    """A WSGI app: Bolt for Slack's requests, plus health and metrics for operators."""

    def __init__(
        self,
        app: App | None,
        *,
        ready: Callable[[], bool],
        teams: WsgiApp | None = None,
        console: WsgiApp | None = None,
    ) -> None:
        self.slack = SlackRequestHandler(app) if app is not None else None  # None: no Slack
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
