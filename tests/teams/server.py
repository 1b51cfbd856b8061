"""The loopback HTTP plumbing shared by the Teams doubles: a threaded server on 127.0.0.1 (free
port), every request recorded as a ``Call``, ``wait_for`` / ``calls_to``, and failures a test
can queue by operation name (``fail``, ``rate_limit``, ``drop``)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tests.auxil.served import QuietHandler, Served

JSON_CONTENT_TYPE = "application/json; charset=utf-8"


@dataclass(frozen=True)
class Call:
    """One request a double received.

    ``operation`` names what was asked (``"SendToConversation"``, ``"Token"``, ``"ListUsers"``…;
    ``"Unknown"`` for a path the double does not serve). ``path`` is without the query string;
    ``query`` its decoded parameters (last value wins); ``body`` the decoded JSON or form body
    (``None`` when empty or undecodable; ``raw`` has the bytes). ``headers`` have lower-cased
    names. ``params`` are the values taken from the path (``conversation_id``, ``activity_id``,
    ``user_id``…). ``status`` / ``response`` are what the double answered (``status`` 0 when it
    dropped the connection). ``at`` is ``time.monotonic()`` on arrival.
    """

    operation: str
    method: str
    path: str
    query: dict[str, str]
    body: Any
    headers: dict[str, str]
    params: dict[str, str]
    at: float
    status: int
    response: Any
    raw: bytes = b""

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    raw: bytes
    body: Any
    headers: dict[str, str]
    at: float


@dataclass
class Answer:
    """What a double answers: status, JSON body (None: empty), extra headers. ``drop``: close the
    connection without answering (after doing the work)."""

    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False
    content_type: str = JSON_CONTENT_TYPE


@dataclass
class _Fault:
    status: int
    body: Any
    headers: dict[str, str]
    apply: bool  # do the work first, then answer the fault (an in-doubt outcome)
    drop: bool


class ApiFailure(Exception):
    """Raised inside a handler: answer ``status`` with ``body``."""

    def __init__(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {body}")
        self.status = status
        self.body = body
        self.headers = headers or {}


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True

    def __init__(self, double: LoopbackServer) -> None:
        self.double = double
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(QuietHandler):
    server: _HTTPServer

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        raw = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        answer = self.server.double._serve(method, self.path, raw, headers)
        if answer.drop:
            self.close_connection = True
            return
        payload = b"" if answer.body is None else json.dumps(answer.body).encode("utf-8")
        self.send_response(answer.status)
        if answer.body is not None:
            self.send_header("Content-Type", answer.content_type)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in answer.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)


class LoopbackServer(Served):
    """Base of the doubles: lifecycle, recording and queued failures. Subclasses implement
    ``_route(request) -> (operation, params, handler)`` where ``handler(request, params)``
    returns an ``Answer`` or raises ``ApiFailure``."""

    name = "loopback"

    def __init__(self, *, lock: threading.Condition | None = None) -> None:
        self._cond = lock or threading.Condition(threading.RLock())
        self.calls: list[Call] = []
        self._faults: dict[str, deque[_Fault]] = {}

    def _make_server(self) -> _HTTPServer:
        return _HTTPServer(self)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    # ------------------------------------------------------------------ inspection

    def calls_to(self, operation: str) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if c.operation == operation]

    def wait_for(
        self,
        operation: str,
        *,
        count: int = 1,
        timeout: float = 5.0,
        where: Callable[[Call], bool] | None = None,
    ) -> list[Call]:
        """Block until at least ``count`` calls to ``operation`` (matching ``where``) arrived;
        return every matching call so far. AssertionError listing the calls seen otherwise."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    c
                    for c in self.calls
                    if c.operation == operation and (where is None or where(c))
                ]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(self._describe(operation, count, timeout, found, where))
                self._cond.wait(remaining)

    def _describe(
        self,
        operation: str,
        count: int,
        timeout: float,
        found: list[Call],
        where: Callable[[Call], bool] | None,
    ) -> str:
        lines = [
            f"expected {count} call(s) to {operation!r}{' matching `where`' if where else ''}, "
            f"got {len(found)} within {timeout}s; {len(self.calls)} call(s) seen:"
        ]
        shown = self.calls[-50:]
        if len(self.calls) > len(shown):
            lines.append(f"  ... {len(self.calls) - len(shown)} earlier call(s) omitted")
        for call in shown:
            text = json.dumps(call.body, default=str, sort_keys=True)
            if len(text) > 200:
                text = text[:197] + "..."
            lines.append(f"  {call.operation} {call.method} {call.path} [{call.status}] {text}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ queued failures

    def fail(
        self,
        operation: str,
        status: int,
        body: Any = None,
        *,
        times: int = 1,
        retry_after: int | None = None,
        apply: bool = False,
    ) -> None:
        """The next ``times`` calls to ``operation`` answer ``status`` with ``body`` (a default
        error body when None) and a ``Retry-After`` header when given. With ``apply`` the double
        does the work first (the message *is* posted), then answers the failure."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        with self._cond:
            queue = self._faults.setdefault(operation, deque())
            fault = _Fault(status, body, headers, apply, False)
            queue.extend(fault for _ in range(times))

    def rate_limit(self, operation: str, *, retry_after: int | None = 1, times: int = 1) -> None:
        """The next ``times`` calls to ``operation`` answer 429 (with ``Retry-After`` unless
        ``retry_after`` is None)."""
        self.fail(operation, 429, None, times=times, retry_after=retry_after)

    def drop(self, operation: str, *, times: int = 1, apply: bool = True) -> None:
        """The next ``times`` calls to ``operation`` are carried out (unless ``apply`` is False)
        and then the connection is closed without an answer: "accepted, then the connection
        dropped"."""
        with self._cond:
            queue = self._faults.setdefault(operation, deque())
            queue.extend(_Fault(0, None, {}, apply, True) for _ in range(times))

    def _default_error(self, status: int) -> Any:
        return {"error": {"code": str(status), "message": "injected failure"}}

    # ------------------------------------------------------------------ dispatch

    def _route(
        self, request: Request
    ) -> tuple[str, dict[str, str], Callable[[Request, dict[str, str]], Answer]]:
        raise NotImplementedError

    def _serve(self, method: str, raw_path: str, raw: bytes, headers: dict[str, str]) -> Answer:
        at = time.monotonic()
        parts = urlsplit(raw_path)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        body = _decode(raw, headers.get("content-type", ""))
        request = Request(method, parts.path, query, raw, body, headers, at)
        with self._cond:
            operation, params, handler = self._route(request)
            fault = None
            queue = self._faults.get(operation)
            if queue:
                fault = queue.popleft()
            if fault is not None and not fault.apply:
                answer = self._fault_answer(fault)
            else:
                try:
                    answer = handler(request, params)
                except ApiFailure as failure:
                    answer = Answer(failure.status, failure.body, failure.headers)
                if fault is not None and answer.status < 300:
                    answer = self._fault_answer(fault)
            self.calls.append(
                Call(
                    operation=operation,
                    method=method,
                    path=parts.path,
                    query=query,
                    body=body,
                    headers=headers,
                    params=params,
                    at=at,
                    status=0 if answer.drop else answer.status,
                    response=None if answer.drop else _copy(answer.body),
                    raw=raw,
                )
            )
            self._cond.notify_all()
        return answer

    def _fault_answer(self, fault: _Fault) -> Answer:
        if fault.drop:
            return Answer(0, drop=True)
        body = fault.body if fault.body is not None else self._default_error(fault.status)
        return Answer(fault.status, body, dict(fault.headers))


class SlidingWindows:
    """Counts of operations in sliding windows, per key: ``take`` returns None when every
    window has room (and counts the operation), else the seconds until one has."""

    def __init__(self, windows: tuple[tuple[float, int], ...]) -> None:
        self.windows = windows
        self._log: dict[str, deque[float]] = {}

    def take(self, key: str, now: float) -> float | None:
        log = self._log.setdefault(key, deque())
        longest = max(seconds for seconds, _ in self.windows)
        while log and log[0] <= now - longest:
            log.popleft()
        waits = []
        for seconds, limit in self.windows:
            inside = [t for t in log if t > now - seconds] if seconds < longest else list(log)
            if len(inside) >= limit:
                waits.append(inside[len(inside) - limit] + seconds - now)
        if waits:
            return max(waits)
        log.append(now)
        return None

    def clear(self) -> None:
        self._log.clear()


def retry_after(wait: float) -> str:
    """A Retry-After value in whole seconds (at least 1)."""
    return str(max(1, math.ceil(wait)))


def _decode(raw: bytes, content_type: str) -> Any:
    if not raw:
        return None
    media = content_type.split(";")[0].strip().lower()
    text = raw.decode("utf-8", "replace")
    if media == "application/x-www-form-urlencoded":
        return dict(parse_qsl(text, keep_blank_values=True))
    try:
        return json.loads(text)
    except ValueError:
        return None


def _copy(body: Any) -> Any:
    return None if body is None else json.loads(json.dumps(body))
