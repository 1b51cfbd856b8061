"""Survey runs: starting, answering in one click, changing answers, closing — with anonymity
that holds against whoever has the database, its backups and the logs.

The participation ledger (`SurveyInvitation`: who was asked) is kept apart from the answers
(`SurveyResponse`). For an anonymous survey a response row has a random id, no user id, no
channel, no message ts and no time. While the run is open it carries HMAC(run key, user), so
the same person can change their answer, and its answers are sealed under the run key; the
run key is derived from the deployment's secret (never in the database) and a salt kept with
the run (`bot.core.surveys.privacy`). Nothing records who answered or when: reminders find
out through the keys. Closing the run opens the answers, shuffles them, writes them again in
plain text with fresh random ids and no key, erases the salt and scrubs the files; after that
nothing links an answer to anyone, and the rows' order says nothing about when they came.
"""

from __future__ import annotations

import json
import random
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, update
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
from bot.core.platforms import GUID
from bot.core.surveys import privacy
from bot.core.surveys.definitions import Question, Survey
from bot.core.surveys.privacy import SecretMissing, WrongSecret
from bot.store.models import SurveyInvitation, SurveyPause, SurveyResponse, SurveyRun, as_utc

SURVEY_ANSWER = "survey.answer"
SURVEY_COMMENT = "survey.comment"
SURVEY_PAUSE = "survey.pause"
LIKERT_LABELS = ("Strongly disagree", "Disagree", "Neutral", "Agree", "Strongly agree")
# Each promise says no more than the README's threat model holds.
PROMISES = {
    "anonymous": "🔒 *Anonymous.* Your answers are stored without your name and encrypted "
    "while the survey is open; when it closes the link to you is erased and this message is "
    "cleared. Results are shown only for groups of {min_group} or more. Slack itself, as for "
    "any app, sees your clicks.",
    "confidential": "🔐 *Confidential.* The survey team can link answers to people but never "
    "shows them; results are only shown for groups of {min_group} or more.",
    "named": "👤 *Not anonymous.* Your name is stored with your answers and the survey owner "
    "can see them.",
}
CLOSED_TEXT = (
    "This survey has closed. Thank you for taking part: your answers are no longer shown here."
)
SEGMENTLESS = "{}"


class SurveyClosed(Exception):
    """The run is no longer open."""


@dataclass(frozen=True)
class RunInfo:
    id: int
    survey_id: str
    state: str
    closes_at: datetime


def start_run(
    *,
    session: Session,
    survey: Survey,
    key: str,
    audience: Sequence[str],
    starts_at: datetime,
    closes_at: datetime,
    reminder_days: Sequence[int] = (),
    by: str = "",
    secret: bytes | None = None,
) -> int | None:
    """Create a run (unique by `key`); None when it exists already. The survey's anonymity is
    frozen into the run. An anonymous or confidential run needs the deployment's survey
    `secret` (SecretMissing without it): its run key is derived from it. The caller commits;
    a run another process creates at the same moment makes the flush raise IntegrityError,
    and the caller rolls back. (No savepoint: with pysqlite a savepoint opened before the
    transaction's first write would commit on release.)"""
    if survey.anonymity != "named" and not secret:
        raise SecretMissing(
            f"survey {survey.id} is {survey.anonymity}: set MOBILIZE_SURVEY_SECRET (or "
            "MOBILIZE_SURVEY_SECRET_FILE) before starting it"
        )
    if session.exec(select(SurveyRun.id).where(SurveyRun.key == key)).first() is not None:
        return None
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
        owner=by if by[:1] in {"U", "W"} or GUID.fullmatch(by) else "",  # a person, not a CLI
        created_by=by,
        key_salt=privacy.new_salt() if survey.anonymity != "named" else None,
    )
    session.add(run)
    session.flush()
    run_id = int(run.id or 0)
    if secret and run.key_salt:
        run.key_check = privacy.key_check(privacy.run_key(secret, run_id, run.key_salt))
        session.add(run)
        session.flush()
    return run_id


def coarsen_segments(
    segments: dict[str, dict[str, str]], order: Sequence[str], *, min_group: int
) -> dict[str, dict[str, str]]:
    """Each person's segment values as stored: the whole combination (site and team…) only
    when at least `min_group` people share it exactly; otherwise the last segments (in
    `order`) are dropped until it is. The people left with none at all are `min_group` or
    more too (or nobody): otherwise the smallest other combinations are coarsened into them.
    So every stored combination, the empty one included, names a group, never a person."""
    rank = {name: index for index, name in enumerate(order)}
    current = {
        user: tuple(sorted(values.items(), key=lambda item: (rank.get(item[0], len(rank)), item)))
        for user, values in segments.items()
    }
    while True:
        sizes: dict[tuple[tuple[str, str], ...], int] = {}
        for combination in current.values():
            sizes[combination] = sizes.get(combination, 0) + 1
        small = [c for c, n in sizes.items() if c and n < min_group]
        if not small and (not 0 < sizes.get((), 0) < min_group or len(sizes) == 1):
            break
        # Coarsen the most detailed small combination first; with none, the smallest
        # combination, to fill up the people with no segment.
        if small:
            target = max(small, key=lambda c: (len(c), -sizes[c], c))
        else:
            target = min((c for c in sizes if c), key=lambda c: (sizes[c], -len(c), c))
        for user, combination in current.items():
            if combination == target:
                current[user] = combination[:-1]
    return {user: dict(combination) for user, combination in current.items()}


def invite(
    *,
    session: Session,
    run_id: int,
    people: Sequence[str],
    segments: dict[str, dict[str, str]],
    now: datetime,
    min_group: int,
    order: Sequence[str] = (),
    zones: Mapping[str, str] | None = None,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Write the participation ledger; returns (invited, [(user, reason) left out]).

    At most one invitation per person per week, and nobody who paused surveys. Segment values
    are stored only as combinations at least `min_group` invitees share (`coarsen_segments`),
    so a response cannot single anyone out by segment even to someone reading the database.
    A closed run stays closed: inviting to it does nothing. `zones`: each person's time zone,
    kept for local-time reminders. The caller commits (with the invitations' outbox rows)."""
    week_ago = now - timedelta(days=7)
    zones = zones or {}
    run = session.get(SurveyRun, run_id)
    if run is None or run.state == "closed":
        return [], []
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
    existing = {
        row.user_id: json.loads(row.segments)
        for row in session.exec(
            select(SurveyInvitation).where(SurveyInvitation.run_id == run_id)
        ).all()
    }
    invited: list[str] = []
    left_out: list[tuple[str, str]] = []
    for user in people:
        if user in paused:
            left_out.append((user, "paused surveys"))
        elif user in recent:
            left_out.append((user, "already invited this week"))
        elif user not in existing:
            invited.append(user)
    # Those already invited keep what they have: their answers may carry it.
    names = list(order) or sorted({name for s in segments.values() for name in s})
    kept = coarsen_segments(
        {user: segments.get(user, {}) for user in invited}, names, min_group=min_group
    )
    for user in invited:
        session.add(
            SurveyInvitation(
                run_id=run_id,
                user_id=user,
                segments=json.dumps(kept[user]),
                tz=(zones.get(user) or "")[:64],
            )
        )
    # Only the conditional update opens the run: a close in between wins.
    session.execute(
        update(SurveyRun)
        .where(col(SurveyRun.id) == run_id, col(SurveyRun.state) != "closed")
        .values(state="open", population=len(existing) + len(invited))
    )
    session.flush()
    return invited, left_out


class SurveyDesk:
    """Answers and the messages that show them; the platform only translates clicks."""

    def __init__(
        self,
        *,
        db: Engine,
        secret: bytes | None,
        surveys: Callable[[], dict[str, Survey]],
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.secret = secret or b""
        self.surveys = surveys
        self.clock = clock

    def run_key(self, run: SurveyRun) -> bytes | None:
        """The run's key (None for named runs); WrongSecret when this process's secret is not
        the one the run was started with, SecretMissing without one."""
        if run.anonymity == "named":
            return None
        if not self.secret:
            raise SecretMissing("this process has no survey secret")
        assert run.id is not None
        key = privacy.run_key(self.secret, run.id, run.key_salt or "")
        if run.key_check and privacy.key_check(key) != run.key_check:
            raise WrongSecret(
                f"survey run {run.id} was started with another MOBILIZE_SURVEY_SECRET; "
                "every process must use the same one"
            )
        return key

    def respondent(self, run: SurveyRun, user_id: str) -> str:
        """The respondent key of `user_id` in `run` (the user id itself for named runs)."""
        key = self.run_key(run)
        return user_id if key is None else privacy.respondent_key(key, user_id)

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

    def _response(self, session: Session, run_id: int, respondent: str) -> SurveyResponse | None:
        return session.exec(
            select(SurveyResponse).where(
                SurveyResponse.run_id == run_id, SurveyResponse.respondent_key == respondent
            )
        ).first()

    def question(self, run_id: int, question_id: str) -> Question | None:
        with Session(self.db) as session:
            run = session.get(SurveyRun, run_id)
        survey = self.surveys().get(run.survey_id) if run else None
        return next((q for q in survey.questions if q.id == question_id), None) if survey else None

    def answers(self, run_id: int, user_id: str) -> dict[str, Any]:
        """This person's answers so far (empty once the run closed: nothing links them)."""
        with Session(self.db) as session:
            run = session.get(SurveyRun, run_id)
            if run is None or (run.state == "closed" and run.anonymity == "anonymous"):
                return {}
            assert run.id is not None
            response = self._response(session, run.id, self.respondent(run, user_id))
            if response is None:
                return {}
            return dict(json.loads(privacy.unseal(self.run_key(run) or b"", response.answers)))

    def answered(self, run: SurveyRun, users: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The answers so far of each of `users` who answered (for reminders: the bot needs
        the secret to know who answered; the database alone does not say)."""
        key = self.run_key(run)
        with Session(self.db) as session:
            stored = dict(
                session.exec(
                    select(SurveyResponse.respondent_key, SurveyResponse.answers).where(
                        SurveyResponse.run_id == run.id
                    )
                ).all()
            )
        found: dict[str, dict[str, Any]] = {}
        for user in users:
            respondent = user if key is None else privacy.respondent_key(key, user)
            if respondent in stored:
                found[user] = json.loads(privacy.unseal(key or b"", stored[respondent]))
        return found

    def answer(self, *, run_id: int, user_id: str, question_id: str, value: Any) -> Message:
        """Save one answer (a second click of the same value changes nothing) and return the
        invitation as it should now look. Raises SurveyClosed after the run closed."""
        with Session(self.db) as session:
            run = self._run(session, run_id)
            # The run key now: a close meanwhile erases its salt, and this answer must still be
            # written (and then rewritten with the rest, see below).
            key = self.run_key(run)
            respondent = user_id if key is None else privacy.respondent_key(key, user_id)
            anonymity = run.anonymity
            session.commit()  # hold no transaction (and no lock) while the rest is looked up
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

            def stored(plain: dict[str, Any]) -> str:
                text = json.dumps(plain, sort_keys=True)
                return text if key is None else privacy.seal(key, text)

            # Clicks at once: a second first answer finds the first's row (the unique key), and
            # a change is written only over the answers it read, so no click is lost.
            for _attempt in range(10):
                response = self._response(session, run_id, respondent)
                if response is None:
                    answers = {question_id: clean}
                    segments = invitation.segments
                    session.add(
                        SurveyResponse(
                            id=secrets.token_hex(16),
                            run_id=run_id,
                            respondent_key=respondent,
                            user_id=user_id if anonymity == "named" else None,
                            segments=segments if key is None else privacy.seal(key, segments),
                            answers=stored(answers),
                        )
                    )
                    try:
                        session.commit()
                        break
                    except IntegrityError:
                        session.rollback()
                        continue
                answers = json.loads(privacy.unseal(key or b"", response.answers))
                answers[question_id] = clean
                written = session.execute(
                    update(SurveyResponse)
                    .where(
                        col(SurveyResponse.id) == response.id,
                        col(SurveyResponse.answers) == response.answers,
                    )
                    .values(answers=stored(answers))
                )
                session.commit()
                if written.rowcount == 1:  # type: ignore[attr-defined]
                    break
            else:
                raise RuntimeError(f"survey run {run_id}: the answer kept changing; not saved")
            if anonymity == "named" and not invitation.answered:
                # Named runs may say who answered; anonymous and confidential ones record no
                # participation at all (it would say who answered when).
                session.execute(
                    update(SurveyInvitation)
                    .where(col(SurveyInvitation.id) == invitation.id)
                    .values(answered=True)
                )
                session.commit()
            session.expire(run)
            if anonymity != "named" and run.state == "closed":
                # The run closed while this answer was written, after the close rewrote what it
                # could see: rewrite again, this answer with it.
                finalise(db=self.db, run_id=run_id, secret=self.secret, key=key)
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


def close_run(*, db: Engine, run_id: int, now: datetime, secret: bytes | None = None) -> bool:
    """Close a run: no more answers; its answers are opened, shuffled and written again in
    plain text (anonymous runs: without keys, and the run key's salt erased), and the files are
    scrubbed. SecretMissing/WrongSecret, before anything changes, when this process cannot
    open the answers."""
    with Session(db) as session:
        run = session.get(SurveyRun, run_id)
        if run is None or run.state == "closed":
            return False
        anonymity = run.anonymity
        if anonymity != "named":
            SurveyDesk(db=db, secret=secret, surveys=dict).run_key(run)  # raises if unusable
        # One conditional update: of two processes closing at once, one does (and reports).
        closed = session.execute(
            update(SurveyRun)
            .where(col(SurveyRun.id) == run_id, col(SurveyRun.state) != "closed")
            .values(state="closed", closed_at=now)
        )
        session.commit()
        if closed.rowcount != 1:  # type: ignore[attr-defined]
            return False
    # Rewritten after the close is committed: an answer written meanwhile either is rewritten
    # here or sees the run closed and rewrites again (SurveyDesk.answer).
    if anonymity != "named":
        finalise(db=db, run_id=run_id, secret=secret)
    return True


def finalise(*, db: Engine, run_id: int, secret: bytes | None, key: bytes | None = None) -> None:
    """Open every sealed answer of a closed run, and write all its answers again in a random
    order with fresh random ids (anonymous: no key, and the salt erased); then scrub. `key` is
    the run key when the caller holds it (an answer that raced the close)."""
    shuffle = random.SystemRandom().shuffle
    with db.begin() as connection:
        privacy.secure_delete(connection)
        # A write first: it locks the run (PostgreSQL) or the database (SQLite), so two
        # rewrites never read the same rows.
        connection.execute(
            update(SurveyRun).where(col(SurveyRun.id) == run_id).values(state="closed")
        )
        run = connection.execute(
            select(SurveyRun.anonymity, SurveyRun.key_salt, SurveyRun.key_check).where(
                col(SurveyRun.id) == run_id
            )
        ).one()
        anonymity, salt, check = run
        if key is None and secret and salt is not None:
            key = privacy.run_key(secret, run_id, salt)
            if check and privacy.key_check(key) != check:
                raise WrongSecret(f"survey run {run_id}: cannot open its answers")
        if key is None and salt is not None:
            raise SecretMissing(f"survey run {run_id}: cannot open its answers")
        key = key or b""  # finalised before: nothing sealed is left but what `key` opens
        rows = connection.execute(
            select(
                SurveyResponse.respondent_key, SurveyResponse.segments, SurveyResponse.answers
            ).where(col(SurveyResponse.run_id) == run_id)
        ).all()
        plain = [
            {
                "respondent_key": respondent if anonymity != "anonymous" else None,
                "segments": privacy.unseal(key, segments),
                "answers": privacy.unseal(key, answers),
            }
            for respondent, segments, answers in rows
        ]
        shuffle(plain)
        connection.execute(delete(SurveyResponse).where(col(SurveyResponse.run_id) == run_id))
        if plain:
            connection.execute(
                insert(SurveyResponse),
                [
                    {"id": secrets.token_hex(16), "run_id": run_id, "user_id": None, **row}
                    for row in plain
                ],
            )
        if anonymity == "anonymous":
            connection.execute(
                update(SurveyRun).where(col(SurveyRun.id) == run_id).values(key_salt=None)
            )
    privacy.scrub(db, ["survey_response", "survey_run"])


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
