"""A loopback Socket Mode endpoint for ``FakeSlack``: ``apps.connections.open`` and the WebSocket
it hands out, behaving as Slack's does.

    with FakeSlack() as fake, SocketModeSlack(fake) as sm:
        ...  # start the bot with SLACK_APP_TOKEN=APP_TOKEN, SLACK_API_URL=fake.url
        sm.wait_connected()
        envelope = sm.send_event({...})
        ack = sm.wait_ack(envelope)          # ack.latency: seconds from send to ack

What Slack does and this does too:

- ``apps.connections.open`` takes the app-level token (scope ``connections:write``; FakeSlack
  answers ``invalid_auth`` / ``not_allowed_token_type`` for a wrong one) and returns
  ``wss://…/link/?ticket=…`` (here ``ws://127.0.0.1:PORT/link/?ticket=…``). A ticket opens one
  connection; a second handshake with it is refused (HTTP 401).
- On connect it sends ``{"type": "hello", "num_connections": N, …}``. At most
  ``MAX_CONNECTIONS`` (10) are open at once; one more gets
  ``{"type": "disconnect", "reason": "too_many_websockets"}`` and is closed.
- Envelopes (``events_api``, ``slash_commands``, ``interactive``) carry a fresh ``envelope_id``,
  ``accepts_response_payload``, ``retry_attempt`` and ``retry_reason``; the payloads have the
  shapes the HTTP tests post (``tests/slack/signing.py``). They go to the newest connection
  that has not been told to disconnect (waiting for one if there is none).
- The app acks with ``{"envelope_id": …, "payload": …}``; every ack is recorded with the time
  between the envelope's send and the ack's arrival.
- An ``events_api`` envelope not acked within ``retry_seconds`` is sent again, with a new
  envelope_id, the same payload (same ``event_id``), ``retry_attempt`` + 1 and
  ``retry_reason: "timeout"``, up to ``MAX_RETRIES`` times. ``retry()`` does it on demand.
- ``refresh()`` sends ``{"type": "disconnect", "reason": "refresh_requested"}`` and closes that
  socket ``linger`` seconds later (Slack keeps it open about 10 s).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from http import HTTPStatus
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, parse_qsl, urlsplit

from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.sync.server import Server, ServerConnection, serve

from tests.slack.fake_slack import ApiError, FakeSlack
from tests.slack.signing import command_body, event_body

__all__ = ["MAX_CONNECTIONS", "MAX_RETRIES", "Ack", "Connection", "Envelope", "SocketModeSlack"]

MAX_CONNECTIONS = 10  # per app, at once
MAX_RETRIES = 3  # an unacked event is re-sent up to 3 times
RETRY_SECONDS = 3.0  # ... each after Slack's 3 s ack deadline
LINGER_SECONDS = 10.0  # a refreshed connection stays open this long after the disconnect
SEND_WAIT_SECONDS = 5.0  # how long an envelope waits for a connection to be sent on
APP_ID = "A1"  # FakeSlack's app


@dataclass(frozen=True)
class Ack:
    """An acknowledgement: ``latency`` is seconds between the envelope's send and this ack."""

    envelope_id: str
    payload: dict[str, Any] | None
    latency: float
    connection: int  # the id of the connection the ack came on
    at: float  # time.monotonic() on arrival


@dataclass
class Envelope:
    """An envelope as sent; ``ack`` is set when the app acknowledges it."""

    envelope_id: str
    type: str
    payload: dict[str, Any]
    accepts_response_payload: bool
    retry_attempt: int = 0
    retry_reason: str = ""
    connection: int = 0  # the id of the connection it was sent on
    sent_at: float = 0.0
    ack: Ack | None = None
    retried: bool = False  # a later attempt was sent for it

    def message(self) -> dict[str, Any]:
        return {
            "envelope_id": self.envelope_id,
            "payload": self.payload,
            "type": self.type,
            "accepts_response_payload": self.accepts_response_payload,
            "retry_attempt": self.retry_attempt,
            "retry_reason": self.retry_reason,
        }


@dataclass
class Connection:
    """One WebSocket the app opened. Times are ``time.monotonic()``."""

    id: int
    ticket: str
    opened_at: float
    ws: ServerConnection = field(repr=False)
    hello_at: float | None = None
    disconnect_sent_at: float | None = None  # told to go (refresh_requested / too_many_...)
    disconnect_reason: str = ""
    close_at: float | None = None  # when the server will close it
    closed_at: float | None = None
    closed_by: str = ""  # "app" or "slack"
    received: list[dict[str, Any]] = field(default_factory=list)  # every message the app sent
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def open(self) -> bool:
        return self.closed_at is None

    @property
    def live(self) -> bool:
        """Open, greeted and not told to disconnect: envelopes go here."""
        return self.open and self.hello_at is not None and self.disconnect_sent_at is None


class SocketModeSlack:
    """Socket Mode for a ``FakeSlack``: registers ``apps.connections.open`` on it and serves the
    WebSocket on 127.0.0.1 (a free port) in threads of its own until ``stop()``."""

    def __init__(
        self,
        fake: FakeSlack,
        *,
        max_connections: int = MAX_CONNECTIONS,
        linger: float = LINGER_SECONDS,
        retry_seconds: float | None = RETRY_SECONDS,
        max_retries: int = MAX_RETRIES,
    ) -> None:
        self.fake = fake
        self.max_connections = max_connections
        self.linger = linger
        self.retry_seconds = retry_seconds
        self.max_retries = max_retries
        self.connections: list[Connection] = []
        self.envelopes: list[Envelope] = []
        self.acks: list[Ack] = []
        self.unknown_acks: list[dict[str, Any]] = []  # acks naming no envelope sent
        self.refused_tickets: list[str] = []
        self._tickets: dict[str, bool] = {}  # ticket -> used
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._server: Server | None = None
        self._serve_thread: threading.Thread | None = None
        self._clock: threading.Thread | None = None
        self._stopping = threading.Event()
        fake.add_method(
            "apps.connections.open", self._connections_open, scope="connections:write", token="app"
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._check_ticket,
            compression=None,
            ping_interval=None,  # the app pings; Slack answers
            close_timeout=1,
        )
        self._serve_thread = threading.Thread(
            target=self._server.serve_forever, name="fake-socket-mode", daemon=True
        )
        self._serve_thread.start()
        self._clock = threading.Thread(
            target=self._tick, name="fake-socket-mode-clock", daemon=True
        )
        self._clock.start()

    def stop(self) -> None:
        """Close every connection (code 1001), stop the server and its threads."""
        self._stopping.set()
        with self._cond:
            self._cond.notify_all()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
        for thread in (self._serve_thread, self._clock):
            if thread is not None:
                thread.join(timeout=5)
        self._serve_thread = self._clock = None

    def __enter__(self) -> SocketModeSlack:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("SocketModeSlack is not started")
        return int(self._server.socket.getsockname()[1])

    # ------------------------------------------------------------------ Slack's side

    def _connections_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if self._server is None:
            raise ApiError("internal_error")
        ticket = secrets.token_hex(16)
        with self._cond:
            self._tickets[ticket] = False
        return {"url": f"ws://127.0.0.1:{self.port}/link/?ticket={ticket}&app_id={APP_ID}"}

    def _check_ticket(self, ws: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        ticket = (parse_qs(parts.query).get("ticket") or [""])[0]
        with self._cond:
            if parts.path.rstrip("/") != "/link" or self._tickets.get(ticket, True):
                self.refused_tickets.append(ticket)
                return ws.respond(HTTPStatus.UNAUTHORIZED, "invalid ticket\n")
            self._tickets[ticket] = True
        return None

    def _handle(self, ws: ServerConnection) -> None:
        ticket = (
            parse_qs(urlsplit(ws.request.path if ws.request else "").query).get("ticket") or [""]
        )[0]
        conn = Connection(id=next(self._ids), ticket=ticket, opened_at=time.monotonic(), ws=ws)
        with self._cond:
            self.connections.append(conn)
            live = sum(1 for c in self.connections if c.open and c.disconnect_sent_at is None)
        try:
            if live > self.max_connections:
                self._disconnect(conn, "too_many_websockets")
                ws.close()
            else:
                self._send(
                    conn,
                    {
                        "type": "hello",
                        "num_connections": live,
                        "debug_info": {
                            "host": f"applink-fake-{conn.id}",
                            "build_number": 1,
                            "approximate_connection_time": int(self.linger * 1000) + 18000,
                        },
                        "connection_info": {"app_id": APP_ID},
                    },
                )
                with self._cond:
                    conn.hello_at = time.monotonic()
                    self._cond.notify_all()
            for raw in ws:
                self._received(conn, raw)
        except ConnectionClosed:
            pass
        finally:
            with self._cond:
                if conn.closed_at is None:
                    conn.closed_at = time.monotonic()
                    conn.closed_by = conn.closed_by or "app"
                self._cond.notify_all()

    def _received(self, conn: Connection, raw: str | bytes) -> None:
        at = time.monotonic()
        try:
            message = json.loads(raw)
        except ValueError:
            message = {"_raw": raw if isinstance(raw, str) else raw.decode("utf-8", "replace")}
        if not isinstance(message, dict):
            message = {"_raw": message}
        with self._cond:
            conn.received.append(message)
            envelope_id = message.get("envelope_id")
            envelope = next((e for e in self.envelopes if e.envelope_id == envelope_id), None)
            if envelope is None or envelope.ack is not None:
                self.unknown_acks.append(message)
            else:
                payload = message.get("payload")
                envelope.ack = Ack(
                    envelope_id=str(envelope_id),
                    payload=payload if isinstance(payload, dict) else None,
                    latency=at - envelope.sent_at,
                    connection=conn.id,
                    at=at,
                )
                self.acks.append(envelope.ack)
            self._cond.notify_all()

    def _send(self, conn: Connection, message: dict[str, Any]) -> None:
        with conn.lock:
            conn.ws.send(json.dumps(message))

    def _disconnect(self, conn: Connection, reason: str) -> None:
        with self._cond:
            conn.disconnect_sent_at = time.monotonic()
            conn.disconnect_reason = reason
            conn.close_at = conn.disconnect_sent_at + self.linger
            self._cond.notify_all()
        with contextlib.suppress(ConnectionClosed):
            self._send(
                conn,
                {
                    "type": "disconnect",
                    "reason": reason,
                    "debug_info": {"host": f"applink-fake-{conn.id}"},
                },
            )

    def _tick(self) -> None:
        """Close lingering connections on time; re-send unacked events."""
        while not self._stopping.is_set():
            now = time.monotonic()
            to_close: list[Connection] = []
            to_retry: list[Envelope] = []
            with self._cond:
                for conn in self.connections:
                    if conn.open and conn.close_at is not None and conn.close_at <= now:
                        conn.close_at = None
                        conn.closed_by = "slack"
                        to_close.append(conn)
                if self.retry_seconds is not None:
                    for envelope in self.envelopes:
                        if (
                            envelope.type == "events_api"
                            and envelope.ack is None
                            and not envelope.retried
                            and envelope.retry_attempt < self.max_retries
                            and now - envelope.sent_at >= self.retry_seconds
                        ):
                            envelope.retried = True
                            to_retry.append(envelope)
            for conn in to_close:
                conn.ws.close()
            for envelope in to_retry:
                with contextlib.suppress(AssertionError):  # no connection to send it on
                    self._retry(envelope, "timeout")
            with self._cond:
                self._cond.wait(0.05)

    # ------------------------------------------------------------------ test API

    def wait_connected(self, *, newer_than: int = 0, timeout: float = 10.0) -> Connection:
        """The newest live connection whose id is above ``newer_than``, waiting for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                live = [c for c in self.connections if c.live and c.id > newer_than]
                if live:
                    return live[-1]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"no Socket Mode connection newer than #{newer_than} within {timeout}s; "
                        f"connections: {self.describe()}"
                    )
                self._cond.wait(remaining)

    def wait_closed(self, conn: Connection, *, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while conn.open:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"connection #{conn.id} still open after {timeout}s")
                self._cond.wait(remaining)

    def describe(self) -> str:
        return (
            "; ".join(
                f"#{c.id} {'open' if c.open else 'closed by ' + c.closed_by}"
                f"{' told ' + c.disconnect_reason if c.disconnect_reason else ''}"
                for c in self.connections
            )
            or "none"
        )

    def send(
        self,
        type: str,
        payload: dict[str, Any],
        *,
        accepts_response_payload: bool = False,
        retry_attempt: int = 0,
        retry_reason: str = "",
        wait: float = SEND_WAIT_SECONDS,
    ) -> Envelope:
        """Send an envelope on the newest live connection (waiting up to ``wait`` s for one)."""
        conn = self.wait_connected(timeout=wait)
        envelope = Envelope(
            envelope_id=str(uuid.uuid4()),
            type=type,
            payload=payload,
            accepts_response_payload=accepts_response_payload,
            retry_attempt=retry_attempt,
            retry_reason=retry_reason,
            connection=conn.id,
        )
        with self._cond:
            envelope.sent_at = time.monotonic()
            self.envelopes.append(envelope)
        self._send(conn, envelope.message())
        return envelope

    def send_event(
        self,
        event: dict[str, Any],
        *,
        event_id: str | None = None,
        retry_attempt: int = 0,
        retry_reason: str = "",
    ) -> Envelope:
        """An ``events_api`` envelope around ``event`` (the ``event_callback`` of HTTP mode).
        Text in ``event`` is sent as given: encode it with ``tests.slack.rules.encode_text``."""
        payload = json.loads(
            event_body(
                event,
                event_id=event_id,
                team_id=self.fake.team_id,
                bot_user_id=self.fake.bot_user_id,
            )
        )
        return self.send(
            "events_api", payload, retry_attempt=retry_attempt, retry_reason=retry_reason
        )

    def send_command(
        self,
        text: str,
        *,
        command: str = "/ask",
        user: str = "U1",
        channel: str = "C1",
        response_url: str | None = None,
        trigger_id: str | None = None,
    ) -> Envelope:
        """A ``slash_commands`` envelope; by default with a fresh trigger_id and an ephemeral
        response_url from the FakeSlack. ``text`` is sent as given (encode it)."""
        body = command_body(
            command,
            text,
            user_id=user,
            channel_id=channel,
            team_id=self.fake.team_id,
            trigger_id=trigger_id or self.fake.new_trigger_id(),
            response_url=response_url
            or self.fake.new_response_url(channel=channel, user=user, ephemeral=True),
        )
        return self.send("slash_commands", dict(parse_qsl(body)), accepts_response_payload=True)

    def send_interactive(self, payload: dict[str, Any]) -> Envelope:
        """An ``interactive`` envelope (e.g. ``signing.block_action(...)``). Slack accepts a
        response payload for view submissions and option requests, not for block actions."""
        accepts = payload.get("type") in ("view_submission", "block_suggestion")
        return self.send("interactive", payload, accepts_response_payload=accepts)

    def retry(self, envelope: Envelope, reason: str = "timeout") -> Envelope:
        """Send ``envelope``'s payload again, as Slack's retry of an unacked envelope."""
        with self._cond:
            envelope.retried = True
        return self._retry(envelope, reason)

    def _retry(self, envelope: Envelope, reason: str) -> Envelope:
        return self.send(
            envelope.type,
            envelope.payload,
            accepts_response_payload=envelope.accepts_response_payload,
            retry_attempt=envelope.retry_attempt + 1,
            retry_reason=reason,
        )

    def wait_ack(self, envelope: Envelope, *, timeout: float = 5.0) -> Ack:
        """The ack of ``envelope``, waiting up to ``timeout`` s for it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while envelope.ack is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        f"{envelope.type} envelope {envelope.envelope_id} on connection "
                        f"#{envelope.connection} not acked within {timeout}s; "
                        f"connections: {self.describe()}"
                    )
                self._cond.wait(remaining)
            return envelope.ack

    def refresh(self, reason: str = "refresh_requested", *, linger: float | None = None) -> int:
        """Tell every live connection to go (``{"type": "disconnect", "reason": …}``) and close
        each ``linger`` s later (default: the endpoint's, 10 s as Slack). Returns the highest
        connection id told, for ``wait_connected(newer_than=…)``."""
        with self._cond:
            told = [c for c in self.connections if c.live]
        if not told:
            raise AssertionError(f"no live connection to refresh; connections: {self.describe()}")
        for conn in told:
            self._disconnect(conn, reason)
            if linger is not None:
                with self._cond:
                    conn.close_at = time.monotonic() + linger
        return max(c.id for c in told)

    def drop(self, conn: Connection) -> None:
        """Close ``conn`` without a disconnect message, as a network failure or a Slack
        restart does."""
        with self._cond:
            conn.closed_by = "slack"
            conn.close_at = None
        conn.ws.close()

    def attempts(self, event_id: str) -> list[Envelope]:
        """Every envelope sent for the event ``event_id`` (the first and its retries)."""
        with self._cond:
            return [e for e in self.envelopes if e.payload.get("event_id") == event_id]
