"""A loopback Slack for crash tests and benchmarks: message timestamps on the wall clock, and
a hook that runs once a post is stored, before its answer goes back (where a kill hurts most)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tests.slack.fake_slack import FakeSlack


class LoopbackSlack(FakeSlack):
    """FakeSlack whose message timestamps follow the wall clock, as Slack's do.

    FakeSlack numbers messages from 2023-11-14 on; the outbox's crash reconcile searches a
    conversation from (claim time - 5 minutes), so with those timestamps it never finds a
    message and would resend it."""

    _last_us = 0
    # Called once, by the next chat.postMessage, after the message is stored and before the
    # answer goes back (delivery_crash.py kills the sender there).
    on_post: Callable[[], None] | None = None

    def _next_ts(self) -> str:
        self._ts_counter += 1
        self._last_us = max(int(time.time() * 1_000_000), self._last_us + 1)
        return f"{self._last_us // 1_000_000}.{self._last_us % 1_000_000:06d}"

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        answer = super()._chat_post_message(params)
        hook, self.on_post = self.on_post, None
        if hook is not None:
            hook()
        return answer

    def start(self) -> None:
        super().start()
        # A sender killed mid-request leaves the answer nowhere to go: not an error here.
        if self._server is not None:
            self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]
