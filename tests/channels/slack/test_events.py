"""Retried Slack events: answered at least once and at most once, also across a crash."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.store.events import EventLedger
from bot.store.models import SlackEvent, utcnow
from tests.auxil.running import RunningBot, bot_settings, running_bot
from tests.slack.fake_slack import FakeSlack

QUESTION = "How do I reset my Compass password?"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def bot(database_url: str, content_dir: Path, slack: FakeSlack) -> Iterator[RunningBot]:
    settings = bot_settings(database_url=database_url, content_dir=content_dir, slack=slack)
    with running_bot(settings, slack) as running:
        yield running


def handled_at(db: Engine, event_id: str, timeout: float = 5.0) -> object:
    """When the event was marked handled (just after its answer went out), waiting for it."""
    deadline = time.monotonic() + timeout
    while True:
        with Session(db) as session:
            row = session.get(SlackEvent, event_id)
        if row is not None and row.handled_at is not None:
            return row.handled_at
        if time.monotonic() > deadline:
            raise AssertionError(f"{event_id} never marked handled: {row}")
        time.sleep(0.02)


def answers(slack: FakeSlack) -> list[object]:
    return [c for c in slack.calls_to("chat.postMessage") if c.params.get("channel") == "DU1"]


def test_a_retry_of_an_answered_event_is_dropped(bot: RunningBot, slack: FakeSlack) -> None:
    bot.dm(QUESTION, event_id="EvANSWERED")
    slack.wait_for("chat.postMessage")
    handled_at(bot.service.db, "EvANSWERED")
    status, _ = bot.dm(QUESTION, event_id="EvANSWERED")
    assert status == 200
    with pytest.raises(AssertionError):
        slack.wait_for("chat.postMessage", count=2, timeout=1.0)
    assert len(answers(slack)) == 1


def test_a_retry_after_a_crash_between_claim_and_answer_is_answered(
    bot: RunningBot, slack: FakeSlack
) -> None:
    # What a process that died after claiming the event, before answering, leaves behind.
    with Session(bot.service.db) as session:
        session.add(SlackEvent(event_id="EvCRASHED", received_at=utcnow() - timedelta(minutes=1)))
        session.commit()
    status, _ = bot.send_event(
        {
            "type": "message",
            "channel": "DU1",
            "channel_type": "im",
            "user": "U1",
            "text": QUESTION,
            "ts": "1700000100.000100",
        },
        event_id="EvCRASHED",
        retry_num=1,
    )
    assert status == 200
    slack.wait_for("chat.postMessage", where=lambda c: c.params.get("channel") == "DU1")
    handled_at(bot.service.db, "EvCRASHED")


def test_a_retry_while_the_first_delivery_is_still_being_handled_is_dropped(db: Engine) -> None:
    ledger = EventLedger(db, stale=timedelta(seconds=30))
    assert ledger.claim("EvBUSY")
    assert not ledger.claim("EvBUSY")  # claimed a moment ago: someone is answering it
    ledger.done("EvBUSY")
    assert not ledger.claim("EvBUSY")


def test_only_one_of_two_retries_takes_over_a_stale_claim(db: Engine) -> None:
    ledger = EventLedger(db, stale=timedelta(seconds=30))
    with Session(db) as session:
        session.add(SlackEvent(event_id="EvSTALE", received_at=utcnow() - timedelta(minutes=2)))
        session.commit()
    assert [ledger.claim("EvSTALE"), ledger.claim("EvSTALE")] == [True, False]


def test_old_event_ids_are_pruned(db: Engine) -> None:
    ledger = EventLedger(db, keep=timedelta(days=2))
    with Session(db) as session:
        session.add(SlackEvent(event_id="EvOLD", received_at=utcnow() - timedelta(days=3)))
        session.add(SlackEvent(event_id="EvNEW", received_at=utcnow() - timedelta(hours=1)))
        session.commit()
    assert ledger.prune() == 1
    with Session(db) as session:
        assert [e.event_id for e in session.exec(select(SlackEvent))] == ["EvNEW"]
