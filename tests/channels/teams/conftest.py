"""A running Mobilize (the real Service over HTTP, Teams only) against the loopback Bot
Connector, identity and Graph of tests/teams."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from bot.channels.slack.server import HttpServer, WebApp
from bot.channels.teams.app import TeamsEndpoint, build_endpoint
from bot.config import Settings, load_settings
from bot.core.faq.engine import FaqEngine
from bot.store.db import make_engine, upgrade
from tests.teams.fake_connector import BotResponse, FakeTeams, StoredActivity

ANSWERABLE = "How do I reset my Compass password?"
UNKNOWN = "zebra quantum marmalade?"


@dataclass
class TeamsBot:
    """The bot's messaging endpoint and the fake Teams around it."""

    endpoint: TeamsEndpoint
    db: Engine
    teams: FakeTeams
    base: str

    @property
    def url(self) -> str:
        return f"{self.base}/api/messages"

    @property
    def support_channel(self) -> str:
        team = self.teams.directory.team("fernhill")
        return self.teams.directory.channel(team, "rollout-support").id

    def send(self, activity: dict[str, Any], **kwargs: Any) -> BotResponse:
        return self.teams.send_activity(self.url, activity, **kwargs)

    def ask(self, user: str, text: str) -> StoredActivity:
        """A 1:1 message; the bot's next card in that chat."""
        return self.ask_with(self.teams.message_activity(user, text))

    def ask_with(self, activity: dict[str, Any]) -> StoredActivity:
        """Send a message activity; the bot's next card."""
        before = len(self.teams.sent)
        assert self.send(activity).status == 200
        return self.next_card(before)

    def next_card(
        self, before: int, where: Callable[[StoredActivity], bool] | None = None
    ) -> StoredActivity:
        """The first card the bot sent after `before` cards (matching `where`)."""

        def found() -> StoredActivity | None:
            for stored in self.teams.sent[before:]:
                if stored.cards and (where is None or where(stored)):
                    return stored
            return None

        self.teams.wait_for(
            "SendToConversation", count=1, where=lambda call: found() is not None, timeout=10
        )
        result = found()
        assert result is not None
        return result

    def click(self, user: str, card: StoredActivity, title: str) -> BotResponse:
        """Click the Action.Execute button `title` on a card (an adaptiveCard/action invoke)."""
        action = button(card, title)
        invoke = self.teams.card_action_activity(
            user, action["verb"], action.get("data"), reply_to=card.id
        )
        return self.send(invoke)


def actions(card: StoredActivity | dict[str, Any]) -> list[dict[str, Any]]:
    """Every action of a card (or of one of its containers), in order."""
    content = card.cards[0] if isinstance(card, StoredActivity) else card
    found: list[dict[str, Any]] = []

    def walk(elements: list[dict[str, Any]]) -> None:
        for element in elements:
            if element.get("type") == "ActionSet":
                found.extend(element["actions"])
            walk(element.get("items") or [])

    walk(content.get("body") or content.get("items") or [])
    return found + list(content.get("actions") or [])


def titles(card: StoredActivity | dict[str, Any]) -> list[str]:
    return [action["title"] for action in actions(card)]


def button(card: StoredActivity | dict[str, Any], title: str) -> dict[str, Any]:
    for action in actions(card):
        if action["title"] == title:
            return action
    raise AssertionError(f"no button {title!r} in {titles(card)}")


def card_text(card: StoredActivity | dict[str, Any]) -> str:
    """Every TextBlock's text, joined by newlines."""
    content = card.cards[0] if isinstance(card, StoredActivity) else card
    texts: list[str] = []

    def walk(elements: list[dict[str, Any]]) -> None:
        for element in elements:
            if element.get("type") == "TextBlock":
                texts.append(element["text"])
            walk(element.get("items") or [])

    walk(content.get("body") or [])
    return "\n".join(texts)


def entities(card: StoredActivity | dict[str, Any]) -> list[dict[str, Any]]:
    content = card.cards[0] if isinstance(card, StoredActivity) else card
    return list((content.get("msteams") or {}).get("entities") or [])


@pytest.fixture
def teams() -> Iterator[FakeTeams]:
    with FakeTeams() as fake:
        yield fake


def teams_settings(
    teams: FakeTeams, *, database_url: str, content_dir: Path, **extra: Any
) -> Settings:
    team = teams.directory.team("fernhill")
    values: dict[str, Any] = {
        **teams.settings(),
        "MOBILIZE_TEAMS_SUPPORT_CHANNEL": teams.directory.channel(team, "rollout-support").id,
        "DATABASE_URL": database_url,
        "MOBILIZE_CONTENT_DIR": str(content_dir),
        "MOBILIZE_EMBEDDING_MODEL": "none",
        "MOBILIZE_SURVEY_SECRET": "test-survey-secret",
        "SLACK_BOT_TOKEN": "",
        "SLACK_SIGNING_SECRET": "",
        "SLACK_APP_TOKEN": "",
    }
    values.update(extra)
    return load_settings(**values)


@pytest.fixture
def bot(teams: FakeTeams, database_url: str, content_dir: Path) -> Iterator[TeamsBot]:
    """The Teams endpoint as `mobilize run` builds it, served by the same web app and HTTP
    server, without the Slack and outbox parts (tests/channels/teams/test_service.py runs the
    whole Service)."""
    settings = teams_settings(teams, database_url=database_url, content_dir=content_dir)
    db = make_engine(database_url)
    upgrade(db)
    engine = FaqEngine(content_dir=content_dir, embedder=None, db=db)
    engine.load()
    endpoint = build_endpoint(settings=settings, db=db, engine=engine)
    server = HttpServer(WebApp(None, ready=lambda: True, teams=endpoint), host="127.0.0.1", port=0)
    server.start()
    try:
        yield TeamsBot(endpoint, db, teams, f"http://127.0.0.1:{server.port}")
    finally:
        server.stop()
        endpoint.close()
        endpoint.chat.close()
        db.dispose()


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False)
