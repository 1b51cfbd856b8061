"""A running bot for end-to-end tests: the real Service over HTTP, Slack faked on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.config import Settings, load_settings
from bot.service import Service
from tests.slack.fake_slack import FakeSlack
from tests.slack.rules import encode_text
from tests.slack.signing import (
    FORM_CONTENT_TYPE,
    SIGNING_SECRET,
    action_body,
    block_action,
    command_body,
    event_body,
    post,
    signed_headers,
)

SUPPORT = "CSUPPORT"
ADMIN = "U3"


@dataclass
class RunningBot:
    """The bot's HTTP endpoint and the fake Slack it talks to."""

    service: Service
    slack: FakeSlack
    base: str

    @property
    def events_url(self) -> str:
        return f"{self.base}/slack/events"

    def send_event(
        self, event: dict[str, Any], *, event_id: str | None = None, retry_num: int | None = None
    ) -> tuple[int, str]:
        body = event_body(event, event_id=event_id)
        return post(self.events_url, body, signed_headers(body), retry_num=retry_num)

    def dm(self, text: str, *, user: str = "U1", event_id: str | None = None) -> tuple[int, str]:
        """A DM from ``user``; ``text`` is entity-encoded as Slack sends it."""
        event = {
            "type": "message",
            "channel": f"D{user}",
            "channel_type": "im",
            "user": user,
            "text": encode_text(text),
            "ts": "1700000100.000100",
        }
        return self.send_event(event, event_id=event_id)

    def command(self, text: str, *, user: str = "U1", channel: str = "C1") -> dict[str, Any]:
        body = command_body(
            "/ask",
            encode_text(text),
            user_id=user,
            channel_id=channel,
            trigger_id=self.slack.new_trigger_id(),
            response_url=self.slack.new_response_url(channel=channel, user=user, ephemeral=True),
        )
        status, answer = post(
            self.events_url, body, signed_headers(body, content_type=FORM_CONTENT_TYPE)
        )
        assert status == 200, answer
        return dict(json.loads(answer)) if answer else {}

    def click(
        self,
        button: dict[str, Any],
        *,
        user: str = "U1",
        channel: str = "DU1",
        message_ts: str = "1700000000.000100",
        thread_ts: str | None = None,
        ephemeral: bool = False,
    ) -> tuple[int, str]:
        payload = block_action(
            action_id=button["action_id"],
            value=button.get("value", ""),
            user_id=user,
            channel_id=channel,
            message_ts=message_ts,
            thread_ts=thread_ts,
            trigger_id=self.slack.new_trigger_id(),
            response_url=self.slack.new_response_url(
                channel=channel, user=user, message_ts=message_ts, ephemeral=ephemeral
            ),
        )
        if ephemeral:
            payload["container"]["is_ephemeral"] = True
        body = action_body(payload)
        return post(self.events_url, body, signed_headers(body, content_type=FORM_CONTENT_TYPE))


def buttons(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every button element in a list of blocks."""
    return [
        element
        for block in blocks
        if block.get("type") == "actions"
        for element in block["elements"]
    ]


def button(blocks: list[dict[str, Any]], label: str) -> dict[str, Any]:
    for element in buttons(blocks):
        if element["text"]["text"] == label:
            return element
    raise AssertionError(f"no button {label!r} in {[b['text']['text'] for b in buttons(blocks)]}")


def block_text(blocks: list[dict[str, Any]]) -> str:
    """All text in blocks (sections and context), joined by newlines."""
    parts: list[str] = []
    for block in blocks:
        if block.get("type") == "section":
            parts.append(block["text"]["text"])
        elif block.get("type") == "context":
            parts.extend(element.get("text", "") for element in block["elements"])
    return "\n".join(parts)


def bot_settings(
    *, database_url: str, content_dir: Path, slack: FakeSlack, **extra: Any
) -> Settings:
    values: dict[str, Any] = {
        "SLACK_BOT_TOKEN": "xoxb-test-token",
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_API_URL": slack.url,
        "DATABASE_URL": database_url,
        "MOBILIZE_CONTENT_DIR": str(content_dir),
        "MOBILIZE_SUPPORT_CHANNEL": SUPPORT,
        "MOBILIZE_ADMINS": ADMIN,
        "MOBILIZE_EMBEDDING_MODEL": "none",
        "MOBILIZE_SLACK_MAX_RETRIES": 2,
        "MOBILIZE_SURVEY_SECRET": "test-survey-secret",
    }
    values.update(extra)
    return load_settings(**values)


@contextmanager
def running_bot(settings: Settings, slack: FakeSlack) -> Iterator[RunningBot]:
    """Start the service's HTTP server on a free loopback port; stop it afterwards."""
    service = Service(settings)
    server = service.http_server(port=0, host="127.0.0.1")
    server.start()
    service.ready.set()
    try:
        yield RunningBot(service=service, slack=slack, base=f"http://127.0.0.1:{server.port}")
    finally:
        server.stop()
        service.stop()
