"""The survey scheduler on a fixed clock with the example rollout's readiness pulse: a run starts
on its Tuesday at 10:00 on each person's clock, reminders go only to those who have not
answered, the run closes after five days and the results go to the owner or the admins."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.core.outbox import SkipDelivery
from bot.store.models import SurveyInvitation, SurveyRun, as_utc
from tests.auxil.surveys import Bot, FakeDirectory, make_bot, person

LONDON = ["U0LON1", "U0LON2", "U0LON3", "U0LON4"]
NEW_YORK, TOKYO, NO_ZONE = "U0NEWYORK", "U0TOKYO", "U0NOZONE"
EVERYONE = [*LONDON, NEW_YORK, TOKYO, NO_ZONE]
ADMINS = frozenset({"U0ADMIN1", "U0ADMIN2"})
KEY = "readiness@2027-02-16T10:00"


def utc(day: int, hour: int, month: int = 2) -> datetime:
    return datetime(2027, month, day, hour, 0, tzinfo=UTC)


@pytest.fixture
def bot(db: Engine, content_dir: Path) -> Bot:
    directory = FakeDirectory(
        [
            *(person(user) for user in LONDON),
            person(NEW_YORK, "America/New_York"),
            person(TOKYO, "Asia/Tokyo"),
            person(NO_ZONE, None),
        ],
        channels={"C0COVENTRY": [*LONDON, NO_ZONE], "C0DUBLIN": [NEW_YORK, TOKYO]},
    )
    return make_bot(db, content_dir, directory, start=utc(10, 12), admins=ADMINS)


def answer(bot: Bot, user: str, value: str = "4", *, only: str | None = None) -> None:
    """`user` answers every required question (Likert `value`, eNPS 9), or only `only`."""
    run_id = bot.run(KEY).id
    assert run_id is not None
    survey = bot.runner.surveys["readiness"]
    for question in survey.questions:
        if question.optional or only not in (None, question.id):
            continue
        given = value if question.kind == "likert" else "9"
        bot.runner.desk.answer(run_id=run_id, user_id=user, question_id=question.id, value=given)


def test_the_fortnightly_run_starts_at_ten_on_everyones_clock(bot: Bot) -> None:
    bot.at(utc(10, 12))
    bot.at(utc(15, 19))  # 10:00 on Tuesday has not come anywhere yet (UTC+14: 09:00)
    assert bot.sends() == []

    bot.at(utc(15, 20))  # 10:00 Tuesday in Kiribati: the run opens, invitations wait
    run = bot.run(KEY)
    assert (run.state, run.anonymity, run.min_group, run.population) == (
        "open",
        "anonymous",
        5,
        7,
    )
    assert as_utc(run.starts_at) == utc(15, 20)
    assert as_utc(run.closes_at) == utc(21, 22)  # Sunday 10:00 at UTC−12
    invitations = bot.deliveries(f"survey:{KEY}")
    assert {user: as_utc(row.not_before) for user, row in invitations.items()} == {
        **{user: utc(16, 10) for user in LONDON},
        NO_ZONE: utc(16, 10),  # no Slack time zone: the rollout's (Europe/London)
        NEW_YORK: utc(16, 15),
        TOKYO: utc(16, 1),
    }
    assert bot.sender.posts == []

    bot.at(utc(16, 1))
    assert [user for user, _, _ in bot.posted()] == [TOKYO]
    bot.at(utc(16, 15))
    assert sorted(user for user, _, _ in bot.posted()) == sorted(EVERYONE)
    assert {line for _, line, _ in bot.posted()} == {"*How ready do you feel for Compass?*"}


def test_segments_are_stored_only_for_big_enough_groups(bot: Bot) -> None:
    bot.at(utc(10, 12))
    bot.at(utc(15, 20))
    with Session(bot.db) as session:
        stored = {
            row.user_id: json.loads(row.segments) for row in session.exec(select(SurveyInvitation))
        }
    # Coventry has 5 invitees (min_group 5), Dublin 2: Dublin is not written down at all, and
    # neither is Coventry, or the two left without a site would be a group of two that the
    # ledger names.
    assert stored == {user: {} for user in EVERYONE}


def test_reminders_go_only_to_those_who_have_not_answered(bot: Bot) -> None:
    bot.at(utc(10, 12))
    bot.at(utc(15, 20))
    bot.at(utc(16, 15))
    bot.clock.at = utc(16, 11)
    for user in LONDON:
        answer(bot, user)
    answer(bot, NO_ZONE, only="awareness")  # one answer is not the survey: still reminded
    bot.sender.posts.clear()

    bot.at(utc(17, 20))  # two days after the start: the first reminder is queued
    first = bot.deliveries(f"survey:{KEY}:reminder:1")
    assert set(first) == {NEW_YORK, TOKYO, NO_ZONE}
    assert {user: as_utc(row.not_before) for user, row in first.items()} == {
        TOKYO: utc(18, 1),  # Thursday 10:00 on each one's own clock
        NO_ZONE: utc(18, 10),
        NEW_YORK: utc(18, 15),
    }

    bot.clock.at = utc(18, 12)
    answer(bot, NEW_YORK)  # after the reminder was queued, before it is due
    bot.at(utc(18, 15))
    assert [(user, line) for user, line, _ in bot.posted()] == [
        (TOKYO, "*A gentle reminder:* this survey is still open and takes a minute."),
        (NO_ZONE, "*A gentle reminder:* this survey is still open and takes a minute."),
    ]
    skipped = bot.deliveries(f"survey:{KEY}:reminder:1")[NEW_YORK]
    assert (skipped.state, skipped.error) == ("skipped", "not needed")

    bot.sender.posts.clear()
    bot.at(utc(19, 20))  # the second reminder
    assert set(bot.deliveries(f"survey:{KEY}:reminder:2")) == {TOKYO, NO_ZONE}
    bot.at(utc(20, 15))
    assert sorted(user for user, _, _ in bot.posted()) == [NO_ZONE, TOKYO]

    for day, hour in ((20, 20), (21, 12), (21, 21)):  # no third reminder, however often we tick
        bot.at(utc(day, hour))
    assert [send.key for send in bot.sends()] == [
        f"survey:{KEY}",
        f"survey:{KEY}:reminder:1",
        f"survey:{KEY}:reminder:2",
    ]
    with Session(bot.db) as session:
        reminded = {row.user_id: row.reminders for row in session.exec(select(SurveyInvitation))}
    assert reminded == {**dict.fromkeys(LONDON, 0), NEW_YORK: 1, TOKYO: 2, NO_ZONE: 2}


def test_the_run_closes_after_five_days_and_the_admins_get_the_results(bot: Bot) -> None:
    bot.at(utc(10, 12))
    bot.at(utc(15, 20))
    bot.at(utc(16, 15))
    for user, value in zip([*LONDON, NEW_YORK], "45332", strict=True):
        answer(bot, user, value)

    bot.at(utc(21, 21))
    assert bot.run(KEY).state == "open" and bot.chat.posts == []
    bot.at(utc(21, 22))  # Sunday 10:00 at UTC−12: the last place on Earth gets there

    run = bot.run(KEY)
    assert run.state == "closed" and run.results_sent_at is not None
    assert sorted(address.channel for address, _ in bot.chat.posts) == sorted(ADMINS)
    lines = bot.chat.to("U0ADMIN1")[0].plain.splitlines()
    assert lines[:3] == [
        "*How ready do you feel for Compass?: results of run 1*",
        "5 of 7 answered (71%)",
        "• I understand why Fernhill is moving from PeopleDesk to Compass. — mean *3.40* / 5",
    ]
    bot.at(utc(22, 12))  # later ticks send nothing more
    assert len(bot.chat.posts) == 2
    # A sent invitation is edited to a neutral text (no answers); one still waiting when the
    # run closed (claimed by a worker: "sending") is not sent.
    delivery = bot.deliveries(f"survey:{KEY}")[TOKYO]
    assert "has closed" in bot.runner.render(delivery).plain
    delivery.state = "sending"
    with pytest.raises(SkipDelivery, match="run closed"):
        bot.runner.render(delivery)


def test_an_ad_hoc_run_reports_to_the_person_who_started_it(bot: Bot) -> None:
    bot.clock.at = utc(3, 9, month=3)
    run_id = bot.runner.start_adhoc(survey_id="readiness", audience=["everyone"], by="U0LON1")
    bot.at(utc(3, 9, month=3))
    with Session(bot.db) as session:
        run = session.get(SurveyRun, run_id)
    assert run is not None and run.state == "open"
    assert json.loads(run.reminder_days) == [2, 4]
    assert sorted(user for user, _, _ in bot.posted()) == sorted(EVERYONE)  # all at once
    for user in EVERYONE[:5]:
        bot.runner.desk.answer(run_id=run_id, user_id=user, question_id="recommend", value="9")

    bot.at(utc(8, 9, month=3))
    assert [address.channel for address, _ in bot.chat.posts] == ["U0LON1"]
    assert "eNPS *+100*" in bot.chat.posts[0][1].plain


def test_a_run_missed_while_the_bot_was_down_is_not_started(bot: Bot) -> None:
    bot.at(utc(10, 12))
    bot.at(utc(22, 0))  # down from 10 to 22 February: the run of the 16th came and went
    with Session(bot.db) as session:
        assert session.exec(select(SurveyRun)).all() == []
    assert bot.sends() == []

    bot.at(utc(1, 20, month=3))  # the next one starts as planned
    assert bot.run("readiness@2027-03-02T10:00").state == "open"


def test_a_run_still_open_when_the_bot_comes_back_starts_late(bot: Bot) -> None:
    bot.at(utc(10, 12))
    bot.at(utc(17, 12))  # down over the start, back while the run is open
    assert bot.run(KEY).state == "open"
    assert sorted(user for user, _, _ in bot.posted()) == sorted(EVERYONE)  # invited at once
    assert as_utc(bot.run(KEY).closes_at) == utc(21, 22)  # the close does not move
