"""The core's `Chat` port on Slack's Web API: a Slack error is logged with its code, not raised."""

from __future__ import annotations

import logging
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
)

from bot.channels.slack.render import to_payload
from bot.core.messages import Address, Message, Posted
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


class SlackChat:
    """Posts, updates and links messages through one WebClient."""

    def __init__(self, client: WebClient) -> None:
        self.client = client

    def post(self, address: Address, message: Message) -> Posted | None:
        payload = to_payload(message)
        if address.thread_ts:
            payload["thread_ts"] = address.thread_ts
        if address.only_for:
            data = call(
                self.client,
                "chat.postEphemeral",
                channel=address.channel,
                user=address.only_for,
                **payload,
            )
            return Posted(address.channel, str(data.get("message_ts", ""))) if data else None
        data = call(self.client, "chat.postMessage", channel=address.channel, **payload)
        return (
            Posted(str(data.get("channel", address.channel)), str(data.get("ts", "")))
            if data
            else None
        )

    def update(self, posted: Posted, message: Message) -> None:
        call(
            self.client, "chat.update", channel=posted.channel, ts=posted.ts, **to_payload(message)
        )

    def permalink(self, channel: str, ts: str) -> str | None:
        try:
            response = self.client.chat_getPermalink(channel=channel, message_ts=ts)
        except (SlackApiError, SlackClientError, OSError) as exc:
            log.warning("slack chat.getPermalink failed: %s", slack_error_code(exc))
            return None
        link = response.get("permalink")
        return str(link) if link else None
