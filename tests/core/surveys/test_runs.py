"""Survey runs on fixed clocks: every kind of answer, changing and double answers, late answers,
who is invited, and what closing a run erases."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.core.messages import Button, Checkboxes, Message, Select
from bot.core.surveys.definitions import Survey
from bot.core.surveys.runs import (
    SURVEY_ANSWER,
    SURVEY_COMMENT,
    SurveyClosed,
    SurveyDesk,
    close_run,
    invitation_message,
    invite,
    start_run,
)
from bot.store.models import SurveyInvitation, SurveyResponse, SurveyRun
from tests.auxil.db import committed
from tests.auxil.surveys import PULSE, SECRET, T0, Clock, load_survey, open_run, plain

USERS = ["U01", "U02", "U03", "U04", "U05"]


@pytest.fixture
def survey(tmp_path: Path) -> Survey:
    return load_survey(tmp_path)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def desk(db: Engine, survey: Survey, clock: Clock) -> SurveyDesk:
    return SurveyDesk(db=db, secret=SECRET, surveys=lambda: {survey.id: survey}, clock=clock)


@pytest.fixture
def run_id(db: Engine, survey: Survey) -> int:
    return open_run(db, survey, USERS)


def responses(db: Engine, run_id: int) -> list[SurveyResponse]:
    with Session(db) as session:
        return list(session.exec(select(SurveyResponse).where(SurveyResponse.run_id == run_id)))


def invitation(db: Engine, run_id: int, user: str) -> SurveyInvitation:
    with Session(db) as session:
        found = session.exec(
            select(SurveyInvitation).where(
                SurveyInvitation.run_id == run_id, SurveyInvitation.user_id == user
            )
        ).one()
    return found


def get_run(db: Engine, run_id: int) -> SurveyRun:
    with Session(db) as session:
        run = session.get(SurveyRun, run_id)
    assert run is not None
    return run


def row_texts(message: Message) -> list[str]:
    return [row.text for row in message.rows]


# --- every kind of question ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("question", "value", "stored", "shown"),
    [
        ("ready", "1", 1, "✓ _1 – Strongly disagree_"),
        ("ready", "5", 5, "✓ _5 – Strongly agree_"),
        ("recommend", "0", 0, "✓ _0_"),
        ("recommend", "10", 10, "✓ _10_"),
        ("training", "Live session", "Live session", "✓ _Live session_"),
        ("helped", ["My manager", "Guides"], ["Guides", "My manager"], "✓ _Guides, My manager_"),
        ("comment", "More drop-ins, please.", "More drop-ins, please.", "✓ _More drop-ins"),
    ],
)
def test_every_kind_of_answer_is_stored_and_shown(
    db: Engine,
    desk: SurveyDesk,
    run_id: int,
    question: str,
    value: Any,
    stored: Any,
    shown: str,
) -> None:
    message = desk.answer(run_id=run_id, user_id="U01", question_id=question, value=value)

    assert desk.answers(run_id, "U01") == {question: stored}
    number = ["ready", "recommend", "training", "helped", "comment"].index(question)
    assert shown in row_texts(message)[number]
    # Nothing in the ledger records who answered (or when): only the keys know.
    assert not invitation(db, run_id, "U01").answered
    assert len(responses(db, run_id)) == 1


def test_the_invitation_has_a_control_for_every_kind(
    db: Engine, desk: SurveyDesk, run_id: int, survey: Survey
) -> None:
    desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="4")
    desk.answer(run_id=run_id, user_id="U01", question_id="recommend", value="9")
    desk.answer(run_id=run_id, user_id="U01", question_id="helped", value=["Champions"])
    message = invitation_message(survey, get_run(db, run_id), desk.answers(run_id, "U01"))
    likert, enps, choice, multi, text = (row.controls for row in message.rows)

    scale = [c for c in likert if isinstance(c, Button)]
    assert [c.value for c in scale] == [f"{run_id}|ready|{n}" for n in range(1, 6)]
    assert [c.style for c in scale] == [None, None, None, "primary", None]
    assert [c.label for c in scale] == ["1 Strongly disagree", "2", "3", "4", "5 Strongly agree"]
    (select_,) = enps
    assert isinstance(select_, Select) and select_.action_id == SURVEY_ANSWER
    assert [o.label for o in select_.options] == [str(n) for n in range(11)]
    assert select_.selected == f"{run_id}|recommend|9"
    assert [c.label for c in choice if isinstance(c, Button)] == [
        "E-learning",
        "Live session",
        "None yet",
    ]
    (boxes,) = multi
    assert isinstance(boxes, Checkboxes)
    assert boxes.selected == (f"{run_id}|helped|Champions",)
    (comment,) = text
    assert isinstance(comment, Button) and comment.action_id == SURVEY_COMMENT
    assert (comment.label, comment.value) == ("Write a comment", f"{run_id}|comment")
    assert "🔒 *Anonymous.*" in message.context[0]
    assert "groups of 3 or more" in message.context[0]
    assert (
        message.context[1]
        == "Open until Sunday 21 February. You can change your answers until then."
    )


def test_a_choice_of_more_than_five_options_is_a_select(db: Engine, tmp_path: Path) -> None:
    many = PULSE.replace(
        "options: [E-learning, Live session, None yet]",
        "options: [A, B, C, D, E, F]",
    )
    survey = load_survey(tmp_path, many)
    run_id = open_run(db, survey, USERS)
    message = invitation_message(survey, get_run(db, run_id), {"training": "F"})
    (control,) = message.rows[2].controls
    assert isinstance(control, Select) and control.selected == f"{run_id}|training|F"


def test_the_comment_button_says_edit_once_there_is_a_comment(
    db: Engine, desk: SurveyDesk, run_id: int
) -> None:
    message = desk.answer(run_id=run_id, user_id="U01", question_id="comment", value="x" * 100)
    (button,) = message.rows[4].controls
    assert isinstance(button, Button) and button.label == "Edit my comment"
    assert message.rows[4].text.endswith("✓ _" + "x" * 79 + "…_")


@pytest.mark.parametrize(
    ("question", "value"),
    [
        ("ready", "0"),
        ("ready", "6"),
        ("ready", "four"),
        ("recommend", "-1"),
        ("recommend", "11"),
        ("recommend", ""),
        ("training", "Other"),
        ("training", "e-learning"),
        ("helped", ["Guides", "Free lunch"]),
    ],
)
def test_invalid_values_are_rejected_and_nothing_is_stored(
    db: Engine, desk: SurveyDesk, run_id: int, question: str, value: Any
) -> None:
    with pytest.raises(ValueError):
        desk.answer(run_id=run_id, user_id="U01", question_id=question, value=value)
    assert responses(db, run_id) == []
    assert not invitation(db, run_id, "U01").answered


def test_an_unknown_question_or_someone_not_invited_is_told_politely(
    desk: SurveyDesk, run_id: int
) -> None:
    with pytest.raises(SurveyClosed, match="no longer part of the survey"):
        desk.answer(run_id=run_id, user_id="U01", question_id="gone", value="1")
    with pytest.raises(SurveyClosed, match="not sent to you"):
        desk.answer(run_id=run_id, user_id="U99", question_id="ready", value="1")
    with pytest.raises(SurveyClosed, match="no longer exists"):
        desk.answer(run_id=run_id + 100, user_id="U01", question_id="ready", value="1")


def test_text_answers_are_cut_at_3000_characters(desk: SurveyDesk, run_id: int) -> None:
    desk.answer(run_id=run_id, user_id="U01", question_id="comment", value="é" * 3500)
    assert desk.answers(run_id, "U01")["comment"] == "é" * 3000


# --- changing and double answers ------------------------------------------------------------


def test_changing_an_answer_keeps_one_row_with_the_new_value(
    db: Engine, desk: SurveyDesk, run_id: int
) -> None:
    desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="2")
    desk.answer(run_id=run_id, user_id="U01", question_id="training", value="None yet")
    message = desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="5")

    (row,) = responses(db, run_id)
    assert plain(db, row) == {"ready": 5, "training": "None yet"}
    assert "✓ _5 – Strongly agree_" in message.rows[0].text


def test_a_multi_answer_can_be_cleared(db: Engine, desk: SurveyDesk, run_id: int) -> None:
    desk.answer(run_id=run_id, user_id="U01", question_id="helped", value=["Guides", "Champions"])
    message = desk.answer(run_id=run_id, user_id="U01", question_id="helped", value=[])

    assert desk.answers(run_id, "U01") == {"helped": []}
    assert "✓" not in message.rows[3].text
    (boxes,) = message.rows[3].controls
    assert isinstance(boxes, Checkboxes) and boxes.selected == ()
    assert len(responses(db, run_id)) == 1


def test_a_double_click_stores_one_row(db: Engine, desk: SurveyDesk, run_id: int) -> None:
    first = desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="3")
    second = desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="3")

    assert first == second
    (row,) = responses(db, run_id)
    assert plain(db, row) == {"ready": 3}


def race(desk: SurveyDesk, *clicks: Callable[[], Message]) -> None:
    """Run the clicks in threads, each held after its first read of the person's response
    until all have read it: every click sees the same state before any of them writes."""
    barrier = threading.Barrier(len(clicks), timeout=10)
    held: set[int] = set()
    read = desk._response

    def response(*args: Any) -> SurveyResponse | None:
        found = read(*args)
        if threading.get_ident() not in held:
            held.add(threading.get_ident())
            barrier.wait()
        return found

    desk._response = response  # type: ignore[method-assign,assignment]
    errors: list[BaseException] = []

    def click(answer: Callable[[], Message]) -> None:
        try:
            answer()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=click, args=(answer,)) for answer in clicks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []


def test_two_first_answers_at_once_make_one_row_with_both(
    db: Engine, desk: SurveyDesk, run_id: int
) -> None:
    race(
        desk,
        lambda: desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="4"),
        lambda: desk.answer(run_id=run_id, user_id="U01", question_id="recommend", value="8"),
    )
    (row,) = responses(db, run_id)
    assert plain(db, row) == {"ready": 4, "recommend": 8}


def test_two_changes_at_once_keep_both_answers(db: Engine, desk: SurveyDesk, run_id: int) -> None:
    desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="2")
    race(
        desk,
        lambda: desk.answer(run_id=run_id, user_id="U01", question_id="training", value="None yet"),
        lambda: desk.answer(run_id=run_id, user_id="U01", question_id="comment", value="Fine."),
    )
    (row,) = responses(db, run_id)
    assert plain(db, row) == {"ready": 2, "training": "None yet", "comment": "Fine."}


# --- late answers ----------------------------------------------------------------------------


def test_an_answer_after_closes_at_is_refused_politely(
    db: Engine, desk: SurveyDesk, run_id: int, clock: Clock
) -> None:
    clock.at = T0 + timedelta(days=5)  # the run closes now; the tick has not closed it yet
    with pytest.raises(SurveyClosed) as closed:
        desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="4")
    assert str(closed.value) == (
        "This survey closed on Sunday 21 February at 10:00 UTC. Thank you anyway!"
    )
    assert responses(db, run_id) == []


def test_an_answer_after_close_run_is_refused_and_changes_nothing(
    db: Engine, desk: SurveyDesk, run_id: int, clock: Clock
) -> None:
    desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="4")
    assert close_run(db=db, run_id=run_id, now=clock.advance(days=1), secret=SECRET)
    with pytest.raises(SurveyClosed, match="Thank you anyway"):
        desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="1")
    with pytest.raises(SurveyClosed):
        desk.answer(run_id=run_id, user_id="U02", question_id="ready", value="1")
    (row,) = responses(db, run_id)
    assert plain(db, row) == {"ready": 4}
    assert desk.answers(run_id, "U01") == {}  # the link is gone: nobody can look it up
    assert not close_run(db=db, run_id=run_id, now=clock())  # closing twice does nothing


def test_an_answer_racing_the_close_loses_its_key_too(
    db: Engine, survey: Survey, run_id: int, clock: Clock
) -> None:
    # The run closes after the answer found it open but before the answer is written.
    def surveys_closing_meanwhile() -> dict[str, Survey]:
        close_run(db=db, run_id=run_id, now=clock(), secret=SECRET)
        return {survey.id: survey}

    desk = SurveyDesk(db=db, secret=SECRET, surveys=surveys_closing_meanwhile, clock=clock)
    desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="4")

    assert get_run(db, run_id).state == "closed"
    assert [row.respondent_key for row in responses(db, run_id)] == [None]


# --- invitations -----------------------------------------------------------------------------


def test_nobody_is_invited_twice_in_a_week_across_runs(db: Engine, survey: Survey) -> None:
    first = open_run(db, survey, ["U01", "U02"])
    # Inviting again into the same run adds nobody twice.
    assert committed(
        db, invite, run_id=first, people=["U01", "U02"], segments={}, now=T0, min_group=3
    ) == (
        [],
        [],
    )
    assert get_run(db, first).population == 2
    later = committed(
        db,
        start_run,
        survey=survey,
        key="pulse@later",
        audience=["everyone"],
        starts_at=T0 + timedelta(days=3),
        closes_at=T0 + timedelta(days=8),
        secret=SECRET,
    )
    assert later is not None
    invited, left_out = committed(
        db,
        invite,
        run_id=later,
        people=["U01", "U03"],
        segments={},
        now=T0 + timedelta(days=3),
        min_group=3,
    )
    assert (invited, left_out) == (["U03"], [("U01", "already invited this week")])

    week_on = committed(
        db,
        start_run,
        survey=survey,
        key="pulse@week-on",
        audience=["everyone"],
        starts_at=T0 + timedelta(days=10),
        closes_at=T0 + timedelta(days=15),
        secret=SECRET,
    )
    assert week_on is not None
    invited, left_out = committed(
        db,
        invite,
        run_id=week_on,
        people=["U01", "U02"],
        segments={},
        now=T0 + timedelta(days=10),
        min_group=3,
    )
    assert (invited, left_out) == (["U01", "U02"], [])


def test_people_who_paused_are_left_out_until_they_resume_or_the_pause_ends(
    db: Engine, survey: Survey, desk: SurveyDesk, clock: Clock
) -> None:
    desk.pause("U01")
    desk.pause("U02", weeks=1)
    run_id = committed(
        db,
        start_run,
        survey=survey,
        key="pulse@1",
        audience=["everyone"],
        starts_at=T0,
        closes_at=T0 + timedelta(days=5),
        secret=SECRET,
    )
    assert run_id is not None
    invited, left_out = committed(
        db, invite, run_id=run_id, people=["U01", "U02", "U03"], segments={}, now=T0, min_group=3
    )
    assert invited == ["U03"]
    assert left_out == [("U01", "paused surveys"), ("U02", "paused surveys")]
    assert get_run(db, run_id).state == "open" and get_run(db, run_id).population == 1

    desk.resume("U01")
    later = committed(
        db,
        start_run,
        survey=survey,
        key="pulse@2",
        audience=["everyone"],
        starts_at=T0 + timedelta(days=8),
        closes_at=T0 + timedelta(days=13),
        secret=SECRET,
    )
    assert later is not None
    invited, left_out = committed(
        db,
        invite,
        run_id=later,
        people=["U01", "U02"],
        segments={},
        now=T0 + timedelta(days=8),
        min_group=3,
    )
    assert (invited, left_out) == (["U01", "U02"], [])  # resumed; the week's pause is over


def test_pause_and_resume_say_what_happens(desk: SurveyDesk) -> None:
    assert "resume surveys" in desk.pause("U01").plain
    assert "Welcome back" in desk.resume("U01").plain
    assert "Welcome back" in desk.resume("U01").plain  # resuming twice is harmless


def test_segment_values_held_by_fewer_than_min_group_invitees_are_not_stored(
    db: Engine, survey: Survey, desk: SurveyDesk
) -> None:
    segments = {
        "U01": {"site": "Coventry"},
        "U02": {"site": "Coventry"},
        "U03": {"site": "Coventry"},
        "U04": {"site": "Dublin"},
        "U05": {"site": "Dublin"},
    }
    run_id = open_run(db, survey, USERS, segments=segments)  # min_group 3

    stored = {user: json.loads(invitation(db, run_id, user).segments) for user in USERS}
    # Dublin (2) is too small; and the two left with no site would be a group of 2 that the
    # ledger names (whoever has {} is U04 or U05), so Coventry is not stored either.
    assert stored == {user: {} for user in USERS}
    desk.answer(run_id=run_id, user_id="U04", question_id="ready", value="2")
    desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="4")
    assert [plain(db, r, "segments") for r in responses(db, run_id)] == [{}, {}]
    segments["U06"] = segments["U07"] = segments["U08"] = {"site": "Dublin"}
    later = T0 + timedelta(days=8)
    run_id = open_run(db, survey, [*USERS, "U06", "U07", "U08"], segments=segments, now=later)
    stored = {user: json.loads(invitation(db, run_id, user).segments) for user in segments}
    assert stored == segments  # 3 in Coventry, 5 in Dublin: both stored


# --- closing ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anonymity", "key_kept", "user_kept"),
    [("anonymous", False, False), ("confidential", True, False), ("named", True, True)],
)
def test_closing_erases_the_respondent_key_only_for_anonymous_runs(
    db: Engine, tmp_path: Path, clock: Clock, anonymity: str, key_kept: bool, user_kept: bool
) -> None:
    survey = load_survey(tmp_path, PULSE.replace("anonymity: anonymous", f"anonymity: {anonymity}"))
    desk = SurveyDesk(db=db, secret=SECRET, surveys=lambda: {survey.id: survey}, clock=clock)
    run_id = open_run(db, survey, USERS)
    desk.answer(run_id=run_id, user_id="U01", question_id="ready", value="4")
    (before,) = responses(db, run_id)
    assert before.respondent_key == desk.respondent(get_run(db, run_id), "U01")
    assert before.user_id == ("U01" if user_kept else None)

    assert close_run(db=db, run_id=run_id, now=clock.advance(days=5), secret=SECRET)

    (after,) = responses(db, run_id)
    assert after.respondent_key == (before.respondent_key if key_kept else None)
    assert after.user_id == ("U01" if user_kept else None)
    assert plain(db, after) == {"ready": 4}
    run = get_run(db, run_id)
    assert (run.state, run.anonymity) == ("closed", anonymity)
    assert run.closed_at is not None
