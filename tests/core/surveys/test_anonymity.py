"""The anonymity promise, checked in the database itself: after an anonymous run, nothing in any
table ties an answer to the person who gave it."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Date, DateTime, Engine, Interval, Time, inspect, text
from sqlmodel import Session, select

from bot.core.surveys import privacy
from bot.store.models import Delivery, SurveyInvitation, SurveyResponse, SurveyRun
from tests.auxil.surveys import PULSE, SECRET, Bot, FakeDirectory, make_bot, person, write

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # outside the example rollout's survey plan
RESPONDENT = "U1SECRET"
OTHERS = ["U2HIDDEN", "U3PRIVATE", "U4QUIET", "U5SHY", "U6NOBODY", "U7ANON", "U8MASKED"]
COMMENT = "The training videos are far too long."
LEDGER = {
    ("survey_invitation", "user_id"),
    ("delivery", "recipient"),
    ("delivery", "channel"),
}


@pytest.fixture
def bot(db: Engine, content_dir: Path) -> Bot:
    write(content_dir, "messages/surveys/pulse.yaml", PULSE)
    directory = FakeDirectory(
        [person(RESPONDENT, name="Robin Quill"), *(person(user) for user in OTHERS)],
        channels={
            "C0COVENTRY": [RESPONDENT, *OTHERS[:3]],
            "C0DUBLIN": OTHERS[3:],
        },
    )
    return make_bot(db, content_dir, directory, start=START, admins=frozenset({"U0ADMIN"}))


def start(bot: Bot) -> int:
    run_id = bot.runner.start_adhoc(survey_id="pulse", audience=["everyone"], by="U0OWNER")
    bot.at(START)
    return run_id


def run_key(bot: Bot, run_id: int) -> str:
    with Session(bot.db) as session:
        run = session.get(SurveyRun, run_id)
    assert run is not None
    return run.key


def answer(bot: Bot, run_id: int, user: str, question: str, value: Any) -> None:
    bot.runner.desk.answer(run_id=run_id, user_id=user, question_id=question, value=value)


def key_of(db: Engine, run_id: int, user: str, secret: bytes = SECRET) -> str:
    """A respondent key as the bot computes it while the run is open."""
    with Session(db) as session:
        run = session.get(SurveyRun, run_id)
    assert run is not None and run.key_salt is not None
    return privacy.respondent_key(privacy.run_key(secret, run_id, run.key_salt), user)


def every_value(db: Engine) -> list[tuple[str, str, str]]:
    """(table, column, value as text) for every column of every row of every table."""
    found = []
    with db.connect() as connection:
        for table in inspect(db).get_table_names():
            result = connection.execute(text(f'SELECT * FROM "{table}"'))
            columns = list(result.keys())
            for row in result:
                for column, value in zip(columns, row, strict=True):
                    if value is not None:
                        shown = value.hex() if isinstance(value, bytes) else str(value)
                        found.append((table, column, shown))
    return found


def where(db: Engine, needle: str) -> set[tuple[str, str]]:
    """Every (table, column) holding `needle` anywhere in a value."""
    return {(table, column) for table, column, value in every_value(db) if needle in value}


def test_after_an_anonymous_run_no_table_ties_an_answer_to_its_author(bot: Bot) -> None:
    run_id = start(bot)
    invitation = bot.deliveries(f"survey:{run_key(bot, run_id)}")[RESPONDENT]
    dm_channel, invitation_ts = invitation.channel, invitation.ts
    assert (dm_channel, invitation.state) == ("DU1SECRET", "sent") and invitation_ts

    key = key_of(bot.db, run_id, RESPONDENT)
    answer(bot, run_id, RESPONDENT, "ready", "2")
    answer(bot, run_id, RESPONDENT, "ready", "4")  # changed
    answer(bot, run_id, RESPONDENT, "recommend", "3")
    answer(bot, run_id, RESPONDENT, "helped", ["Guides", "Champions"])
    answer(bot, run_id, RESPONDENT, "helped", ["Champions"])  # changed
    answer(bot, run_id, RESPONDENT, "comment", COMMENT)
    for n, user in enumerate(OTHERS[:4]):
        answer(bot, run_id, user, "ready", str(n % 5 + 1))
        answer(bot, run_id, user, "training", "E-learning")
    answer(bot, run_id, OTHERS[0], "ready", "5")  # changed
    bot.at(START + timedelta(days=2))  # reminders to the three who did not answer
    # Nobody answered every required question (training, or recommend and helped, are
    # missing): everyone is reminded.
    assert len(bot.sender.posts) == 8 + 8
    bot.at(START + timedelta(days=5))  # closed; the owner gets the results
    assert [address.channel for address, _ in bot.chat.posts] == ["U0OWNER"]

    # The ledger knows who was asked and where; the answers know none of it.
    assert where(bot.db, RESPONDENT) == LEDGER
    assert where(bot.db, dm_channel) == {("delivery", "channel")}
    assert where(bot.db, invitation_ts) == {("delivery", "ts")}
    assert where(bot.db, COMMENT) == {("survey_response", "answers")}
    assert where(bot.db, "Robin") == {("delivery", "name"), ("delivery", "first_name")}
    assert where(bot.db, key) == set()
    assert where(bot.db, SECRET.decode()) == set()

    with Session(bot.db) as session:
        rows = session.exec(select(SurveyResponse)).all()
    assert len(rows) == 5
    mine = next(row for row in rows if COMMENT in row.answers)
    assert json.loads(mine.answers) == {
        "ready": 4,
        "recommend": 3,
        "helped": ["Champions"],
        "comment": COMMENT,
    }
    assert all(row.respondent_key is None and row.user_id is None for row in rows)


def test_no_response_column_can_be_joined_to_the_ledger(bot: Bot) -> None:
    run_id = start(bot)
    for n, user in enumerate([RESPONDENT, *OTHERS[:4]]):
        answer(bot, run_id, user, "ready", str(n % 5 + 1))
    bot.at(START + timedelta(days=5))

    schema = inspect(bot.db)
    columns = {column["name"]: column["type"] for column in schema.get_columns("survey_response")}
    assert set(columns) == {"id", "run_id", "respondent_key", "user_id", "segments", "answers"}
    assert not [
        name
        for name, kind in columns.items()
        if isinstance(kind, DateTime | Date | Time | Interval)
    ]  # no time: when someone answered cannot be matched to reminders or Slack activity
    assert [fk["referred_table"] for fk in schema.get_foreign_keys("survey_response")] == [
        "survey_run"
    ]
    for table in schema.get_table_names():  # and nothing points at a response
        assert all(
            fk["referred_table"] != "survey_response" for fk in schema.get_foreign_keys(table)
        )

    values = every_value(bot.db)
    responses = [(column, value) for table, column, value in values if table == "survey_response"]
    ledger = {
        value
        for table, column, value in values
        if table in {"survey_invitation", "delivery", "announcement_send", "survey_pause"}
    }
    ids = [value for column, value in responses if column == "id"]
    assert len(ids) == len(set(ids)) == 5
    assert all(re.fullmatch(r"[0-9a-f]{32}", value) for value in ids)  # random, not a sequence
    shared = {
        (column, value)
        for column, value in responses
        if column not in {"run_id", "segments"} and value in ledger
    }
    assert shared == set()
    # A response's segments are those of a group at least min_group strong, never one person's.
    with Session(bot.db) as session:
        invitations = [json.loads(r.segments) for r in session.exec(select(SurveyInvitation))]
        run = session.get(SurveyRun, run_id)
    assert run is not None
    segments = [value for column, value in responses if column == "segments"]
    for segs in map(json.loads, segments):
        for name, label in segs.items():
            holders = sum(1 for s in invitations if s.get(name) == label)
            assert holders >= run.min_group


def test_the_key_cannot_be_recomputed_without_the_secret(bot: Bot) -> None:
    run_id = start(bot)
    for user in [RESPONDENT, *OTHERS]:
        answer(bot, run_id, user, "ready", "3")
    with Session(bot.db) as session:
        keys = {row.respondent_key for row in session.exec(select(SurveyResponse))}

    # While the run is open the key is an HMAC under the run key, derived from the secret
    # (not in the database) and the run's salt…
    assert key_of(bot.db, run_id, RESPONDENT) in keys
    # …so guessing without the secret (another, none, a plain hash of run and user) finds
    # nobody.
    people = [RESPONDENT, *OTHERS]
    for guess in (b"x", b"secret", b"mobilize", SECRET + b"x"):
        assert not keys & {key_of(bot.db, run_id, user, guess) for user in people}
    assert not keys & {hashlib.sha256(f"{run_id}:{user}".encode()).hexdigest() for user in people}

    bot.at(START + timedelta(days=5))
    with Session(bot.db) as session:
        assert {row.respondent_key for row in session.exec(select(SurveyResponse))} == {None}


def test_the_anonymity_of_a_run_is_frozen_when_it_starts(bot: Bot, content_dir: Path) -> None:
    run_id = start(bot)
    answer(bot, run_id, RESPONDENT, "ready", "2")

    # The survey file is changed to `named` while the run is open.
    write(
        content_dir,
        "messages/surveys/pulse.yaml",
        PULSE.replace("anonymity: anonymous", "anonymity: named"),
    )
    assert bot.runner.load() == []
    assert bot.runner.surveys["pulse"].anonymity == "named"

    answer(bot, run_id, RESPONDENT, "ready", "5")
    answer(bot, run_id, OTHERS[0], "ready", "1")
    invitation = bot.runner.desk.answer(
        run_id=run_id, user_id=OTHERS[1], question_id="ready", value="3"
    )
    assert "🔒 *Anonymous.*" in invitation.context[0]
    with Session(bot.db) as session:
        rows = session.exec(select(SurveyResponse)).all()
        run = session.get(SurveyRun, run_id)
    assert run is not None and run.anonymity == "anonymous"
    assert len(rows) == 3 and all(row.user_id is None for row in rows)

    bot.at(START + timedelta(days=5))
    assert where(bot.db, RESPONDENT) == LEDGER
    with Session(bot.db) as session:
        assert {row.respondent_key for row in session.exec(select(SurveyResponse))} == {None}

    # The next run is named, and says so.
    bot.clock.at = START + timedelta(days=14)
    named = bot.runner.start_adhoc(survey_id="pulse", audience=["everyone"], by="U0OWNER")
    bot.at(bot.clock.at)
    named_invitation = bot.runner.desk.answer(
        run_id=named, user_id=RESPONDENT, question_id="ready", value="4"
    )
    assert "👤 *Not anonymous.*" in named_invitation.context[0]
    with Session(bot.db) as session:
        stored = session.exec(select(SurveyResponse).where(SurveyResponse.run_id == named)).one()
        invited = session.exec(select(Delivery).where(Delivery.recipient == RESPONDENT)).all()
    assert stored.user_id == RESPONDENT
    # Two invitations, and the first run's two reminders: one answer is not the survey.
    assert len(invited) == 4
