"""The outbox's Slack side: post with the delivery id in message metadata, edit, delete, and
search a conversation for a delivery id after a crash. 429s are returned, not slept on, so
the outbox can pause every worker at once."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any
from urllib.error import URLError

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.channels.slack.chat import retry_after, slack_error_code
from bot.channels.slack.render import to_payload
from bot.core.messages import Message
from bot.core.outbox import GONE, IN_DOUBT, NOT_FOUND, SendResult
from bot.metrics import SLACK_ERRORS

log = logging.getLogger(__name__)
EVENT_TYPE = "mobilize_delivery"

# Slack errors that no retry can fix: the row ends as failed with that code.
PERMANENT_ERRORS = frozenset(
    {
        "user_not_found",
        "users_not_found",
        "account_inactive",
        "user_disabled",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "channel_is_archived",
        "cannot_dm_bot",
        "messages_tab_disabled",
        "restricted_action",
        "invalid_blocks",
        "invalid_metadata_format",
        "msg_too_long",
        "no_text",
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "missing_scope",
        "message_not_found",
        "cant_update_message",
        "cant_delete_message",
        "edit_window_closed",
    }
)
assert GONE in PERMANENT_ERRORS  # Slack's "message_not_found" is the outbox's GONE


def outbox_client(*, token: str, base_url: str) -> WebClient:
    """A WebClient that does not retry: the outbox handles 429s and errors itself. A retried
    post could land twice (after a dropped answer) or after the row's lease ran out; without
    retries a post takes at most one 15 s timeout (bot.core.outbox.POST_BOUND)."""
    return WebClient(token=token, base_url=base_url, timeout=15, retry_handlers=[])


class SlackSender:
    """Implements bot.core.outbox.Sender on the Slack Web API."""

    def __init__(self, client: WebClient) -> None:
        self.client = client

    def _call(self, method: str, **kwargs: Any) -> tuple[dict[str, Any] | None, SendResult | None]:
        try:
            # Write methods take JSON bodies; read methods want form parameters.
            if method.startswith("chat."):
                response = self.client.api_call(method, json=kwargs)
            else:
                response = self.client.api_call(method, params=kwargs)
            return dict(response.data) if isinstance(response.data, dict) else {}, None
        except SlackApiError as exc:
            code = slack_error_code(exc)
            SLACK_ERRORS.labels(method=method, error=code).inc()
            log.warning("slack %s failed: %s", method, code)
            return None, SendResult(
                ok=False,
                error=code,
                retry_after=retry_after(exc),
                permanent=code in PERMANENT_ERRORS,
            )
        except (SlackClientError, OSError) as exc:
            # urllib raises URLError when connecting or sending failed: Slack never had the
            # request. Other errors (a timeout, a dropped connection) come while waiting for
            # the answer, perhaps after Slack acted on the request.
            code = "connection_error"
            if isinstance(exc, OSError) and not isinstance(exc, URLError):
                code = IN_DOUBT
            SLACK_ERRORS.labels(method=method, error=code).inc()
            log.warning("slack %s failed: %s (%s)", method, code, type(exc).__name__)
            return None, SendResult(ok=False, error=code)

    def post(self, *, recipient: str, message: Message, delivery_id: int) -> SendResult:
        payload = to_payload(message)
        payload["metadata"] = {
            "event_type": EVENT_TYPE,
            "event_payload": {"delivery_id": delivery_id},
        }
        data, error = self._call("chat.postMessage", channel=recipient, **payload)
        if error:
            return error
        assert data is not None
        return SendResult(
            ok=True, channel=str(data.get("channel", recipient)), ts=str(data.get("ts", ""))
        )

    def update(self, *, channel: str, ts: str, message: Message) -> SendResult:
        _data, error = self._call("chat.update", channel=channel, ts=ts, **to_payload(message))
        return error or SendResult(ok=True, channel=channel, ts=ts)

    def delete(self, *, channel: str, ts: str) -> SendResult:
        _data, error = self._call("chat.delete", channel=channel, ts=ts)
        return error or SendResult(ok=True, channel=channel, ts=ts)

    def find(
        self, *, recipient: str, channel: str, delivery_id: int, since: datetime
    ) -> SendResult:
        """Search the conversation for the delivery id. Its calls (conversations.open and
        conversations.history, Tier 3) are charged by the outbox to a budget of their own, and
        a 429 here comes back as `retry_after`, which pauses that budget only, not the sends."""
        if not channel:
            if recipient[:1] in {"U", "W"}:
                data, error = self._call("conversations.open", users=recipient)
                if error:
                    return error
                assert data is not None
                channel = str((data.get("channel") or {}).get("id", ""))
            else:
                channel = recipient
        cursor = ""
        for _page in range(20):  # bounded: the message was posted after `since`
            params: dict[str, Any] = {
                "channel": channel,
                "oldest": f"{since.timestamp():.6f}",
                "include_all_metadata": True,
                "limit": 200,
            }
            if cursor:
                params["cursor"] = cursor
            data, error = self._call("conversations.history", **params)
            if error:
                return error
            assert data is not None
            for message in data.get("messages") or []:
                metadata = message.get("metadata") or {}
                payload = metadata.get("event_payload") or {}
                if metadata.get("event_type") == EVENT_TYPE and str(
                    payload.get("delivery_id")
                ) == str(delivery_id):
                    return SendResult(ok=True, channel=channel, ts=str(message.get("ts", "")))
            cursor = str((data.get("response_metadata") or {}).get("next_cursor") or "")
            if not cursor:
                break
        return SendResult(ok=False, channel=channel, error=NOT_FOUND)
