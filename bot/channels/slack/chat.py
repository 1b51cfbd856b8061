"""The core's `Chat` port on Slack's Web API: a Slack error is logged with its code, not raised."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

from bot.channels.slack.render import to_payload
from bot.core.messages import Address, Image, Message, Posted
from bot.core.outbox import Budget, Limits
from bot.metrics import SLACK_ERRORS

log = logging.getLogger(__name__)


def make_client(*, token: str, base_url: str, max_retries: int = 3) -> WebClient:
    """A WebClient that retries connection errors and 429s (honouring Retry-After), boundedly."""
    return WebClient(
        token=token,
        base_url=base_url,
        timeout=10,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=max_retries),
            RateLimitErrorRetryHandler(max_retry_count=max_retries),
        ],
    )


def slack_error_code(exc: Exception) -> str:
    """Slack's own error code (`channel_not_found`, `ratelimited`…) or the exception's name."""
    if isinstance(exc, SlackApiError):
        error = exc.response.get("error") if exc.response is not None else None
        if exc.response is not None and exc.response.status_code == 429:
            return "ratelimited"
        return str(error or f"http_{exc.response.status_code}")
    return type(exc).__name__


# Slack takes JSON bodies only for write methods; read methods ignore them and want form
# arguments (users.*, conversations.members/history/info, usergroups.users.list, …).
_JSON_METHODS = ("chat.", "views.")


def call(client: WebClient, method: str, **kwargs: Any) -> dict[str, Any] | None:
    """Call a Web API method; on failure log `method: code` and return None. Write methods
    (`chat.*`, `views.*`) send a JSON body; every other method sends form arguments."""
    try:
        if method.startswith(_JSON_METHODS):
            response = client.api_call(method, json=kwargs)
        else:
            response = client.api_call(method, data=kwargs)
        return dict(response.data) if isinstance(response.data, dict) else {}
    except (SlackApiError, SlackClientError, OSError) as exc:
        code = slack_error_code(exc)
        SLACK_ERRORS.labels(method=method, error=code).inc()
        log.error("slack %s failed: %s", method, code)
        return None


# Which bucket of the shared budget (bot.core.outbox.Budget) each interactive write takes
# from, and which one its 429 pauses: the outbox's own buckets, so interactive posts and
# announcements together stay under Slack's limits.
POSTS, EDITS = "posts", "edits"
BUCKETS = {
    "chat.postMessage": POSTS,
    "chat.postEphemeral": POSTS,
    "chat.update": EDITS,
    "chat.delete": EDITS,
}
# An interactive post waits at most this long for the budget (a 429's pause) before it goes.
INTERACTIVE_MAX_WAIT = 30.0
# How far an interactive edit may take the edit bucket below zero (Slack's Tier 3 allows short
# bursts); posts may borrow a whole burst of the post bucket.
EDIT_DEBT = 3.0


def retry_after(exc: SlackApiError) -> float | None:
    """A 429's Retry-After in seconds (1 when the header is missing); None for other errors."""
    if exc.response is None or exc.response.status_code != 429:
        return None
    headers = exc.response.headers or {}
    header = headers.get("Retry-After") or headers.get("retry-after")
    if isinstance(header, list):
        header = header[0] if header else None
    try:
        return max(0.0, float(header)) if header is not None else 1.0
    except ValueError:
        return 1.0


class SlackChat:
    """Posts, updates and links messages through one WebClient.

    With a budget (`charge_to()`), every post and edit takes a token from the outbox's shared
    rate budget (kept in the database, shared by every process) and a 429 pauses that bucket
    for everyone, announcements included. An interactive answer does not queue behind the
    outbox: it may borrow from the burst (the outbox repays), and waits only for a pause."""

    def __init__(
        self,
        client: WebClient,
        *,
        budget: Budget | None = None,
        limits: Limits | None = None,
        max_retries: int = 3,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self.budget: Budget | None = None
        self.limits = Limits()
        self.max_retries = max_retries
        self.sleep = sleep
        self._paced: WebClient | None = None
        if budget is not None:
            self.charge_to(budget, limits or Limits())

    def charge_to(self, budget: Budget, limits: Limits) -> None:
        """Take posts and edits from `budget` (the outbox's) at `limits` (the outbox's too: the
        bucket's refill is computed with its rate)."""
        self.budget, self.limits = budget, limits
        for handler in self.client.retry_handlers:
            if isinstance(handler, RateLimitErrorRetryHandler):
                self.max_retries = handler.max_retry_count  # MOBILIZE_SLACK_MAX_RETRIES
        # The same client without its 429 retries: a 429 must reach the shared pause at once,
        # not be slept on in this thread while the outbox keeps posting.
        self._paced = WebClient(
            token=self.client.token,
            base_url=self.client.base_url,
            timeout=self.client.timeout,
            retry_handlers=[
                handler
                for handler in self.client.retry_handlers
                if not isinstance(handler, RateLimitErrorRetryHandler)
            ],
        )

    def _write(self, method: str, **kwargs: Any) -> dict[str, Any] | None:
        """A chat.* write charged to its bucket; on a 429, pause the bucket, wait, try again."""
        if self.budget is None or self._paced is None:
            return call(self.client, method, **kwargs)
        bucket = BUCKETS[method]
        for _attempt in range(self.max_retries + 1):
            self._wait_for(bucket)
            try:
                response = self._paced.api_call(method, json=kwargs)
                return dict(response.data) if isinstance(response.data, dict) else {}
            except SlackApiError as exc:
                seconds = retry_after(exc)
                code = slack_error_code(exc)
                SLACK_ERRORS.labels(method=method, error=code).inc()
                if seconds is None:
                    log.error("slack %s failed: %s", method, code)
                    return None
                self.budget.pause(bucket, seconds)
                log.warning("slack %s: 429, %s paused for %.0f s", method, bucket, seconds)
            except (SlackClientError, OSError) as exc:
                code = slack_error_code(exc)
                SLACK_ERRORS.labels(method=method, error=code).inc()
                log.error("slack %s failed: %s", method, code)
                return None
        log.error("slack %s failed: ratelimited", method)
        return None

    def _wait_for(self, bucket: str) -> None:
        """Borrow a token; wait only while the bucket is paused (or deep in debt), and at most
        INTERACTIVE_MAX_WAIT."""
        assert self.budget is not None
        if bucket == POSTS:
            rate, burst, debt = self.limits.posts_per_second, self.limits.burst, None
        else:
            rate, burst, debt = self.limits.edits_per_second, 1.0, EDIT_DEBT
        waited = 0.0
        while True:
            wait = self.budget.borrow(bucket, rate=rate, burst=burst, debt=debt)
            if wait <= 0 or waited >= INTERACTIVE_MAX_WAIT:
                return
            step = min(wait, INTERACTIVE_MAX_WAIT - waited)
            self.sleep(step)
            waited += step

    def post(self, address: Address, message: Message) -> Posted | None:
        payload = to_payload(message)
        if address.thread_ts:
            payload["thread_ts"] = address.thread_ts
        if address.only_for:
            data = self._write(
                "chat.postEphemeral",
                channel=address.channel,
                user=address.only_for,
                **payload,
            )
            return Posted(address.channel, str(data.get("message_ts", ""))) if data else None
        data = self._write("chat.postMessage", channel=address.channel, **payload)
        if not data:
            return None
        posted = Posted(str(data.get("channel", address.channel)), str(data.get("ts", "")))
        for image in message.images:  # into the same conversation (a DM's D… id), after it
            self.share_image(posted.channel, image, thread_ts=address.thread_ts)
        return posted

    def share_image(self, channel: str, image: Image, *, thread_ts: str | None = None) -> bool:
        """Upload a PNG into a conversation (files.getUploadURLExternal, the upload, then
        files.completeUploadExternal; `files:write`). A failure is logged and counted with
        Slack's code; the message it goes with has already been posted."""
        method = "files.completeUploadExternal"
        try:
            self.client.files_upload_v2(
                channel=channel,
                file=image.png,
                filename=image.name,
                title=image.name,
                alt_txt=image.alt[:1000],
                thread_ts=thread_ts,
            )
            return True
        except SlackApiError as exc:
            code = slack_error_code(exc)
            method = str(getattr(exc.response, "api_url", "") or method).rsplit("/", 1)[-1]
        except (SlackClientError, OSError) as exc:
            code = slack_error_code(exc)
        SLACK_ERRORS.labels(method=method, error=code).inc()
        log.error("slack %s failed: %s (an image for %s was not shared)", method, code, channel)
        return False

    def update(self, posted: Posted, message: Message) -> None:
        self._write("chat.update", channel=posted.channel, ts=posted.ts, **to_payload(message))

    def permalink(self, channel: str, ts: str) -> str | None:
        try:
            response = self.client.chat_getPermalink(channel=channel, message_ts=ts)
        except (SlackApiError, SlackClientError, OSError) as exc:
            log.warning("slack chat.getPermalink failed: %s", slack_error_code(exc))
            return None
        link = response.get("permalink")
        return str(link) if link else None
