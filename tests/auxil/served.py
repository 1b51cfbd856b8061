"""The lifecycle every loopback test double shares: a threaded HTTP server on 127.0.0.1 (a
free port), started and stopped in a thread, usable as a context manager."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer
from types import TracebackType
from typing import Self


class Served:
    """Subclasses build their server in `_make_server()` and name it in `name`."""

    name = "loopback"
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def _make_server(self) -> ThreadingHTTPServer:
        raise NotImplementedError

    def start(self) -> None:
        if self._server is not None:
            return
        self._server = self._make_server()
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-{self.name}",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5)

    def __enter__(self) -> Self:
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
            raise RuntimeError(f"fake {self.name} is not started")
        return int(self._server.server_address[1])
