"""Survey runs: starting, answering in one click, changing answers, closing — with anonymity
that holds in the database.

The participation ledger (`SurveyInvitation`: who was asked, whether they answered) is kept
apart from the answers (`SurveyResponse`). For an anonymous survey a response row has a random
id, no user id, no channel, no message ts and no time; while the run is open it carries
HMAC(secret, run:user), so the same person can change their answer, and the secret is not in
the database. Closing the run erases that key: after that nothing links an answer to anyone.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.core.messages import (
    Button,
    Checkboxes,
    Choice,
    Control,
    Message,
    Row,
    Select,
    say,
)
from bot.core.surveys.definitions import Question, Survey
from bot.store.models import SurveyInvitation, SurveyPause, SurveyResponse, SurveyRun, as_utc

SURVEY_ANSWER = "survey.answer"
SURVEY_COMMENT = "survey.comment"
SURVEY_PAUSE = "survey.pause"
LIKERT_LABELS = ("Strongly disagree", "Disagree", "Neutral", "Agree", "Strongly agree")
PROMISES = {
    "anonymous": "🔒 *Anonymous.* Your answers are stored without your name or any link to you. "
    "Results are only shown for groups of {min_group} or more people.",
    "confidential": "🔐 *Confidential.* The survey team can link answers to people but never "
    "shows them; results are only shown for groups of {min_group} or more.",
    "named": "👤 *Not anonymous.* Your name is stored with your answers and the survey owner "
    "can see them.",
}


class SurveyClosed(Exception):
    """The run is no longer open."""


@dataclass(frozen=True)
class RunInfo:
    id: int
    survey_id: str
    state: str
    closes_at: datetime


def respondent_key(secret: bytes, run_id: int, user_id: str) -> str:
    """HMAC of run and user: lets a person change their answer, names nobody without the secret."""
    return hmac.new(secret, f"{run_id}:{user_id}".encode(), hashlib.sha256).hexdigest()


def start_run(
    *,
    db: Engine,
    survey: Survey,
    key: str,
    audience: Sequence[str],
    starts_at: datetime,
    closes_at: datetime,
    reminder_days: Sequence[int] = (),
    by: str = "",
) -> int | None:
    """Create a run (unique by `key`); None when it exists already. The survey's anonymity is
    frozen into the run."""
    with Session(db) as session:
        number = (
            session.exec(select(func.count()).where(SurveyRun.survey_id == survey.id)).one() or 0
        ) + 1
        run = SurveyRun(
            key=key,
            survey_id=survey.id,
            number=int(number),
            anonymity=survey.anonymity,
            min_group=survey.min_group,
            audience=json.dumps(list(audience)),
            state="planned",
            starts_at=starts_at,
            closes_at=closes_at,
            reminder_days=json.dumps(list(reminder_days)),
            owner=by if by[:1] in {"U", "W"} else "",
            created_by=by,
        )
        session.add(run)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            return None
        return int(run.id or 0)


def invite(
    *,
    db: Engine,
    run_id: int,
    people: Sequence[str],
    segments: dict[str, dict[str, str]],
    now: datetime,
    min_group: int,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Write the participation ledger; returns (invited, [(user, reason) left out]).

    At most one invitation per person per week, and nobody who paused surveys. A segment value
    held by fewer than `min_group` invitees is not stored at all, so a response cannot single
    anyone out by segment even to someone reading the database."""
    week_ago = now - timedelta(days=7)
    with Session(db) as session:
        recent = set(
            session.exec(
                select(SurveyInvitation.user_id)
                .join(SurveyRun, col(SurveyRun.id) == col(SurveyInvitation.run_id))
                .where(col(SurveyRun.starts_at) >= week_ago, col(SurveyRun.id) != run_id)
            ).all()
        )
        paused = {
            row.user_id
            for row in session.exec(select(SurveyPause))
            if row.until is None or as_utc(row.until) > now
        }
        existing = set(
            session.exec(
                select(SurveyInvitation.user_id).where(SurveyInvitation.run_id == run_id)
            ).all()
        )
        invited: list[str] = []
        left_out: list[tuple[str, str]] = []
        for user in people:
            if user in paused:
                left_out.append((user, "paused surveys"))
            elif user in recent:
                left_out.append((user, "already invited this week"))
            elif user not in existing:
                invited.append(user)
        sizes: dict[tuple[str, str], int] = {}
        for user in invited:
            for name, value in segments.get(user, {}).items():
                sizes[(name, value)] = sizes.get((name, value), 0) + 1
        for user in invited:
            kept = {
                name: value
                for name, value in segments.get(user, {}).items()
                if sizes[(name, value)] >= min_group
            }
            session.add(SurveyInvitation(run_id=run_id, user_id=user, segments=json.dumps(kept)))
        run = session.get(SurveyRun, run_id)
        assert run is not None
        run.state = "open"
        run.population = len(existing) + len(invited)
        session.add(run)
        session.commit()
    return invited, left_out


class SurveyDesk:
    """Answers and the messages that show them; the platform only translates clicks."""

    def __init__(
        self,
        *,
        db: Engine,
        secret: bytes,
        surveys: Callable[[], dict[str, Survey]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.secret = secret
        self.surveys = surveys
        self.clock = clock

    def _run(self, session: Session, run_id: int) -> SurveyRun:
        run = session.get(SurveyRun, run_id)
        if run is None:
            raise SurveyClosed("This survey no longer exists.")
        if run.state != "open" or as_utc(run.closes_at) <= self.clock():
            closed = as_utc(run.closes_at)
            raise SurveyClosed(
                f"This survey closed on {closed:%A %d %B at %H:%M} UTC. Thank you anyway!"
            )
        return run

    def _response(self, session: Session, run: SurveyRun, user_id: str) -> SurveyResponse | None:
        assert run.id is not None
        key = respondent_key(self.secret, run.id, user_id)
        return session.exec(
            select(SurveyResponse).where(
                SurveyResponse.run_id == run.id, SurveyResponse.respondent_key == key
            )
        ).first()

    def question(self, run_id: int, question_id: str) -> Question | None:
        with Session(self.db) as session:
            run = session.get(SurveyRun, run_id)
        survey = self.surveys().get(run.survey_id) if run else None
        return next((q for q in survey.questions if q.id == question_id), None) if survey else None

    def answers(self, run_id: int, user_id: str) -> dict[str, Any]:
        with Session(self.db) as session:
            run = session.get(SurveyRun, run_id)
            if run is None:
                return {}
            response = self._response(session, run, user_id)
            return dict(json.loads(response.answers)) if response else {}

    def answer(self, *, run_id: int, user_id: str, question_id: str, value: Any) -> Message:
        """Save one answer (a second click of the same value changes nothing) and return the
        invitation as it should now look. Raises SurveyClosed after the run closed."""
        with Session(self.db) as session:
            run = self._run(session, run_id)
            survey = self.surveys().get(run.survey_id)
            if survey is None:
                raise SurveyClosed("This survey is no longer available.")
            question = next((q for q in survey.questions if q.id == question_id), None)
            if question is None:
                raise SurveyClosed("That question is no longer part of the survey.")
            invitation = session.exec(
                select(SurveyInvitation).where(
                    SurveyInvitation.run_id == run_id, SurveyInvitation.user_id == user_id
                )
            ).first()
            if invitation is None:
                raise SurveyClosed("This survey was not sent to you.")
            clean = _validate(question, value)
            # Clicks at once: a second first answer finds the first's row (the unique key), and
            # a change is written only over the answers it read, so no click is lost.
            for _attempt in range(10):
                response = self._response(session, run, user_id)
                if response is None:
                    answers = {question_id: clean}
                    session.add(
                        SurveyResponse(
                            id=secrets.token_hex(16),
                            run_id=run_id,
                            respondent_key=respondent_key(self.secret, run_id, user_id),
                            user_id=user_id if run.anonymity == "named" else None,
                            segments=invitation.segments,
                            answers=json.dumps(answers, sort_keys=True),
                        )
                    )
                    try:
                        session.commit()
                        break
                    except IntegrityError:
                        session.rollback()
                        continue
                answers = json.loads(response.answers)
                answers[question_id] = clean
                written = session.execute(
                    update(SurveyResponse)
                    .where(
                        col(SurveyResponse.id) == response.id,
                        col(SurveyResponse.answers) == response.answers,
                    )
                    .values(answers=json.dumps(answers, sort_keys=True))
                )
                session.commit()
                if written.rowcount == 1:  # type: ignore[attr-defined]
                    break
            else:
                raise RuntimeError(f"survey run {run_id}: the answer kept changing; not saved")
            if run.anonymity == "anonymous" and run.state == "closed":
                # The run closed while this answer was written, after the close erased the keys
                # it could see: erase this one too.
                _erase_keys(session, run_id)
            if not invitation.answered:
                session.execute(
                    update(SurveyInvitation)
                    .where(col(SurveyInvitation.id) == invitation.id)
                    .values(answered=True)
                )
                session.commit()
            return invitation_message(survey, run, answers)

    def pause(self, user_id: str, *, weeks: int | None = None) -> Message:
        until = self.clock() + timedelta(weeks=weeks) if weeks else None
        with Session(self.db) as session:
            row = session.get(SurveyPause, user_id) or SurveyPause(user_id=user_id)
            row.until = until
            session.add(row)
            session.commit()
        return say(
            "Done: you won't get survey invitations until you ask for them again "
            "(send me `resume surveys`)."
        )

    def resume(self, user_id: str) -> Message:
        with Session(self.db) as session:
            row = session.get(SurveyPause, user_id)
            if row is not None:
                session.delete(row)
                session.commit()
        return say("Welcome back: you'll get survey invitations again.")


def close_run(*, db: Engine, run_id: int, now: datetime) -> bool:
    """Close a run: no more answers; anonymous responses lose their respondent key."""
    with Session(db) as session:
        # One conditional update: of two processes closing at once, one does (and reports).
        closed = session.execute(
            update(SurveyRun)
            .where(col(SurveyRun.id) == run_id, col(SurveyRun.state) != "closed")
            .values(state="closed", closed_at=now)
        )
        session.commit()
        if closed.rowcount != 1:  # type: ignore[attr-defined]
            return False
        run = session.get(SurveyRun, run_id)
        # Erased after the close is committed: an answer written meanwhile either is erased
        # here or sees the run closed and erases its own key (SurveyDesk.answer).
        if run is not None and run.anonymity == "anonymous":
            _erase_keys(session, run_id)
    return True


def _erase_keys(session: Session, run_id: int) -> None:
    session.execute(
        update(SurveyResponse)
        .where(col(SurveyResponse.run_id) == run_id)
        .values(respondent_key=None)
    )
    session.commit()


def _validate(question: Question, value: Any) -> Any:
    if question.kind == "likert":
        number = int(value)
        if not 1 <= number <= 5:
            raise ValueError("a 1–5 answer")
        return number
    if question.kind == "enps":
        number = int(value)
        if not 0 <= number <= 10:
            raise ValueError("a 0–10 answer")
        return number
    if question.kind == "choice":
        if str(value) not in question.options:
            raise ValueError("one of the options")
        return str(value)
    if question.kind == "multi":
        chosen = [str(v) for v in (value if isinstance(value, list | tuple) else [value])]
        if any(option not in question.options for option in chosen):
            raise ValueError("some of the options")
        return [option for option in question.options if option in chosen]
    return str(value)[:3000]


def invitation_message(survey: Survey, run: SurveyRun, answers: dict[str, Any]) -> Message:
    """The survey as one DM: every question answerable by a click, the promise in plain words."""
    assert run.id is not None
    rows: list[Row] = []
    for number, question in enumerate(survey.questions, start=1):
        chosen = answers.get(question.id)
        text = f"*{number}. {question.text}*"
        if chosen not in (None, "", []):
            shown = ", ".join(chosen) if isinstance(chosen, list) else _label(question, chosen)
            text += f"\n✓ _{shown}_"
        rows.append(Row(text, _controls(question, run.id, chosen)))
    closes = as_utc(run.closes_at)
    promise = PROMISES.get(run.anonymity, PROMISES["anonymous"]).format(min_group=run.min_group)
    return say(
        f"*{survey.title}*",
        survey.intro,
        rows=tuple(rows),
        context=(
            promise,
            f"Open until {closes:%A %d %B}. You can change your answers until then.",
        ),
        buttons=(Button("Pause surveys for me", SURVEY_PAUSE, "pause"),),
        summary=survey.title,
    )


def _label(question: Question, value: Any) -> str:
    if question.kind == "likert":
        labels = question.labels or LIKERT_LABELS
        return f"{value} – {labels[int(value) - 1]}"
    if question.kind == "text":
        text = str(value)
        return text if len(text) <= 80 else text[:79] + "…"
    return str(value)


def _controls(question: Question, run_id: int, chosen: Any) -> tuple[Control, ...]:
    value = f"{run_id}|{question.id}|"
    if question.kind == "likert":
        labels = question.labels or LIKERT_LABELS
        return tuple(
            Button(
                f"{score} {labels[score - 1]}" if score in (1, 5) else str(score),
                SURVEY_ANSWER,
                f"{value}{score}",
                style="primary" if chosen == score else None,
            )
            for score in range(1, 6)
        )
    if question.kind == "enps":
        options = tuple(Choice(str(score), f"{value}{score}") for score in range(11))
        selected = f"{value}{chosen}" if chosen is not None else None
        return (
            Select(
                "0 = not at all likely … 10 = extremely likely", SURVEY_ANSWER, options, selected
            ),
        )
    if question.kind == "choice":
        if len(question.options) <= 5:
            return tuple(
                Button(
                    option,
                    SURVEY_ANSWER,
                    f"{value}{option}",
                    style="primary" if chosen == option else None,
                )
                for option in question.options
            )
        options = tuple(Choice(option, f"{value}{option}") for option in question.options)
        return (
            Select("Choose one", SURVEY_ANSWER, options, f"{value}{chosen}" if chosen else None),
        )
    if question.kind == "multi":
        options = tuple(Choice(option, f"{value}{option}") for option in question.options)
        picked = tuple(f"{value}{option}" for option in (chosen or []))
        return (Checkboxes(SURVEY_ANSWER, options, picked),)
    label = "Edit my comment" if chosen else "Write a comment"
    return (Button(label, SURVEY_COMMENT, f"{run_id}|{question.id}"),)
