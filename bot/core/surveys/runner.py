"""The survey side of the scheduler: start runs from the plan, invite through the outbox,
remind only those who have not answered, close runs and send the owner the results."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.core.announcements.audience import AudienceError, Directory, Person, resolve
from bot.core.content import ContentError, Rollout, load_rollout
from bot.core.messages import Address, Chat, Message, say
from bot.core.outbox import (
    SURVEY_INVITATION,
    SURVEY_REMINDER,
    SURVEY_SHARE,
    Renderer,
    SkipDelivery,
)
from bot.core.surveys.definitions import (
    RecipientTimes,
    Survey,
    SurveySchedule,
    load_survey_schedules,
    load_surveys,
    recipient_times,
    runs,
)
from bot.core.surveys.privacy import SecretMissing, WrongSecret
from bot.core.surveys.report import SUPPRESSED, results_message, run_results, summary_lines
from bot.core.surveys.runs import (
    CLOSED_TEXT,
    SurveyDesk,
    close_run,
    invitation_message,
    invite,
    start_run,
)
from bot.store.marks import advance_mark, read_mark
from bot.store.models import (
    Delivery,
    SurveyInvitation,
    SurveyRun,
    SurveySend,
    SurveyShare,
    as_utc,
)

log = logging.getLogger(__name__)
MARK = "surveys"


class SurveyRunner:
    """Runs the surveys of one workspace; every step is idempotent, so every process may tick."""

    def __init__(
        self,
        *,
        db: Engine,
        content_dir: Path,
        directory: Directory,
        chat: Chat,
        secret: bytes | None,
        admins: frozenset[str] = frozenset(),
        grace: timedelta = timedelta(hours=6),
        default_timezone: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.content_dir = content_dir
        self.directory = directory
        self.chat = chat
        self.admins = admins
        self.grace = grace
        self.default_timezone = default_timezone
        self.clock = clock
        self.surveys: dict[str, Survey] = {}
        self.schedules: list[SurveySchedule] = []
        self.rollout = Rollout()
        self.desk = SurveyDesk(db=db, secret=secret, surveys=lambda: self.surveys, clock=clock)
        self._refused: set[str] = set()  # runs the plan could not start (said once)

    def load(self) -> list[ContentError]:
        """Survey files and their schedules; on errors the last good ones stay."""
        rollout, _errors = load_rollout(self.content_dir, default_timezone=self.default_timezone)
        surveys, errors = load_surveys(self.content_dir)
        schedules, schedule_errors = load_survey_schedules(self.content_dir, rollout, surveys)
        errors += schedule_errors
        if not errors or not self.surveys:
            self.surveys, self.schedules, self.rollout = surveys, schedules, rollout
        return errors

    # --- rendering for the outbox -----------------------------------------------------------

    def renderers(self) -> dict[str, Renderer]:
        """The outbox kinds surveys write, each with its renderer (`Outbox.register`)."""
        return {
            SURVEY_INVITATION: self.render,
            SURVEY_REMINDER: self.render,
            SURVEY_SHARE: self.render,
        }

    def render(self, delivery: Delivery) -> Message:
        """An invitation (or reminder) DM: the whole survey, with this person's answers so far;
        once the run closed, the neutral text a sent copy is edited to (no answers left in
        the chat); or a "you said, we did" share."""
        with Session(self.db) as session:
            send = session.get(SurveySend, delivery.survey_send_id)
            run = session.get(SurveyRun, send.run_id) if send else None
            share = session.get(SurveyShare, send.share_id) if send and send.share_id else None
        if send is None or run is None or run.id is None:
            raise KeyError(f"survey send {delivery.survey_send_id} is gone")
        if share is not None:
            return say(share.summary, share.note, summary=share.summary.splitlines()[0])
        title = self.surveys[run.survey_id].title if run.survey_id in self.surveys else ""
        if run.state != "open":
            if delivery.state == "sent":  # the edit at the close
                return say(f"*{title}*" if title else "*Survey*", CLOSED_TEXT, summary=title)
            raise SkipDelivery("run closed")
        survey = self.surveys[run.survey_id]
        answers = self.desk.answers(run.id, delivery.recipient)
        message = invitation_message(survey, run, answers)
        if send.kind == "reminder":
            if self._complete(run, [delivery.recipient]):
                raise SkipDelivery("not needed")
            intro = say("*A gentle reminder:* this survey is still open and takes a minute.")
            return Message(
                (*intro.parts, *message.parts),
                message.context,
                message.buttons,
                f"Reminder: {message.summary}",
                message.rows,
            )
        return message

    def _complete(self, run: SurveyRun, users: list[str]) -> set[str]:
        """Those of `users` who answered every required question (found through the
        respondent keys: the database alone does not say who answered)."""
        survey = self.surveys.get(run.survey_id)
        required = [q.id for q in survey.questions if not q.optional] if survey else []
        return {
            user
            for user, answers in self.desk.answered(run, users).items()
            if all(answers.get(q) not in (None, "", []) for q in required)
        }

    def _times(self, run: SurveyRun) -> Callable[[str | None], RecipientTimes] | None:
        """Per-recipient times for a planned run with local_time; None when everyone shares
        the run's own times."""
        schedule = next(
            (s for s in self.schedules if s.survey == run.survey_id and s.local_time), None
        )
        if schedule is None:
            return None
        starts = as_utc(run.starts_at)
        found = [
            occurrence
            for occurrence in runs(
                schedule,
                self.rollout,
                start=starts - timedelta(seconds=1),
                end=starts + timedelta(seconds=1),
            )
            if occurrence.key == run.key
        ]
        if not found:
            return None
        return lambda tz: recipient_times(schedule, found[0], tz=tz, rollout=self.rollout)

    # --- the tick ---------------------------------------------------------------------------

    def tick(self) -> None:
        now = self.clock()
        self._plan_runs(now)
        for run_id in self._due(now, state="planned", field="starts_at"):
            self.open_run(run_id, now)
        self._remind(now)
        for run_id in self._due(now, state="open", field="closes_at"):
            self.close(run_id)

    def _plan_runs(self, now: datetime) -> None:
        since = read_mark(self.db, MARK) or now - self.grace
        start = min(since, now - self.grace)
        for schedule in self.schedules:
            survey = self.surveys.get(schedule.survey)
            if survey is None:
                continue
            for occurrence in runs(
                schedule, self.rollout, start=start, end=now + timedelta(seconds=1)
            ):
                if occurrence.closes_utc <= now:
                    continue  # the whole run passed while we were down: nothing to ask any more
                try:
                    with Session(self.db) as session:
                        start_run(  # None (nothing to commit) when it exists already
                            session=session,
                            survey=survey,
                            key=occurrence.key,
                            audience=list(schedule.audience),
                            starts_at=occurrence.starts_utc,
                            closes_at=occurrence.closes_utc,
                            reminder_days=list(schedule.reminder_days),
                            by="plan",
                            secret=self.desk.secret,
                        )
                        session.commit()
                except IntegrityError:  # another process started it at the same moment
                    continue
                except SecretMissing as exc:
                    if occurrence.key not in self._refused:
                        self._refused.add(occurrence.key)
                        log.error("survey run %s not started: %s", occurrence.key, exc)
        advance_mark(self.db, MARK, now)

    def _due(self, now: datetime, *, state: str, field: str) -> list[int]:
        column = col(getattr(SurveyRun, field))
        with Session(self.db) as session:
            found = session.exec(
                select(SurveyRun.id).where(SurveyRun.state == state, column <= now)
            ).all()
        return [int(run_id or 0) for run_id in found]

    def start_adhoc(
        self, *, survey_id: str, audience: list[str], by: str, open_days: int = 5
    ) -> int:
        """Start a run now (the running bot sends the invitations on its next tick)."""
        survey = self.surveys.get(survey_id)
        if survey is None:
            raise KeyError(survey_id)
        now = self.clock()
        with Session(self.db) as session:
            run_id = start_run(
                session=session,
                survey=survey,
                key=f"{survey_id}@adhoc-{uuid.uuid4().hex[:12]}",
                audience=audience,
                starts_at=now,
                closes_at=now + timedelta(days=open_days),
                reminder_days=[d for d in (2, 4) if d < open_days],
                by=by,
                secret=self.desk.secret,
            )
            session.commit()
        assert run_id is not None
        return run_id

    def open_run(self, run_id: int, now: datetime) -> int:
        """Resolve the audience, then in one transaction write the participation ledger, open
        the run and queue the invitations: a crash leaves the run planned (tried again on the
        next tick) or open with every invitation in the outbox, never open without them."""
        with Session(self.db) as session:
            run = session.get(SurveyRun, run_id)
        if run is None or run.state != "planned":
            return 0
        survey = self.surveys.get(run.survey_id)
        if survey is None:
            log.error("survey run %s: survey %s is not loaded", run_id, run.survey_id)
            return 0
        try:
            self.desk.run_key(run)
        except (SecretMissing, WrongSecret) as exc:
            log.error("survey run %s not opened: %s", run_id, exc)
            return 0
        try:
            audience = resolve(
                json.loads(run.audience), self.directory, content_dir=self.content_dir
            )
        except AudienceError as exc:
            log.error("survey run %s: audience failed: %s", run_id, exc)
            return 0
        people = {person.id: person for person in audience.people}
        segments = self._segments(survey, list(people))
        times = self._times(run)
        with Session(self.db) as session:
            current = session.get(SurveyRun, run_id)
            if current is None or current.state != "planned":
                return 0  # another process opened (or someone closed) it meanwhile
            invited, left_out = invite(
                session=session,
                run_id=run_id,
                people=list(people),
                segments=segments,
                now=now,
                min_group=run.min_group,
                order=[segment.id for segment in survey.segments],
                zones={user: person.tz or "" for user, person in people.items()},
            )
            queued = self._queue(
                session,
                run,
                [people[user] for user in invited],
                key=f"survey:{run.key}",
                kind="invitation",
                now=now,
                when=(lambda person: times(person.tz).invite_utc) if times else None,
            )
            if invited and queued is None:
                session.rollback()  # queued by another process: its transaction holds it all
                return 0
            try:
                session.commit()
            except IntegrityError:  # another process opened it at the same moment
                session.rollback()
                return 0
        for user, reason in left_out[:20]:
            log.info("survey run %s: %s left out (%s)", run_id, user, reason)
        return len(invited)

    def _segments(self, survey: Survey, users: list[str]) -> dict[str, dict[str, str]]:
        """Each user's segment values (channel or user-group membership)."""
        found: dict[str, dict[str, str]] = {user: {} for user in users}
        for segment in survey.segments:
            if segment.by not in {"channel", "group"}:
                continue  # profile fields need one users.profile.get per person: not at this scale
            for label, target in segment.values.items():
                try:
                    members = (
                        self.directory.channel_members(target)
                        if segment.by == "channel"
                        else self.directory.group_members(target)
                    )
                except AudienceError as exc:
                    log.warning("segment %s/%s: %s", segment.id, label, exc)
                    continue
                for user in members:
                    if user in found:
                        found[user].setdefault(segment.id, label)
        return found

    def _queue(
        self,
        session: Session,
        run: SurveyRun,
        people: list[Person],
        *,
        key: str,
        kind: str,
        now: datetime,
        number: int = 0,
        share_id: int | None = None,
        when: Callable[[Person], datetime] | None = None,
    ) -> int | None:
        """One survey send with a delivery per person, in the caller's transaction (the caller
        commits): they go out through the outbox under the same rate budget. None when nobody
        is to get it, or when the send exists already (unique key); one another process
        writes at the same moment makes the flush raise IntegrityError (the caller rolls
        back the whole operation)."""
        if not people:
            return None
        assert run.id is not None
        if session.exec(select(SurveySend.id).where(SurveySend.key == key)).first() is not None:
            return None
        send = SurveySend(key=key, run_id=run.id, kind=kind, number=number, share_id=share_id)
        session.add(send)
        session.flush()
        outbox_kind = {
            "invitation": SURVEY_INVITATION,
            "reminder": SURVEY_REMINDER,
            "share": SURVEY_SHARE,
        }[kind]
        session.add_all(
            Delivery(
                survey_send_id=int(send.id or 0),
                kind=outbox_kind,
                platform=person.platform,
                recipient=person.id,
                target="dm",
                name=person.name[:200],
                first_name=person.first_name[:100],
                tz=person.tz or "",
                not_before=when(person) if when else now,
            )
            for person in people
        )
        session.flush()
        return send.id

    def _remind(self, now: datetime) -> None:
        """Reminder N goes `reminders[N]` days after the start, only to those who have not
        answered every required question (checked again when each is sent), each at most
        once. Who has answered is found through the respondent keys, never stored."""
        with Session(self.db) as session:
            open_runs = session.exec(select(SurveyRun).where(SurveyRun.state == "open")).all()
        for run in open_runs:
            days = json.loads(run.reminder_days or "[]")
            for number, day in enumerate(days, start=1):
                if as_utc(run.starts_at) + timedelta(days=day) > now:
                    continue
                with Session(self.db) as session:
                    due = session.exec(
                        select(SurveyInvitation).where(
                            SurveyInvitation.run_id == run.id,
                            SurveyInvitation.reminders < number,
                        )
                    ).all()
                    try:
                        done = self._complete(run, [row.user_id for row in due])
                    except (SecretMissing, WrongSecret) as exc:
                        log.error("survey run %s: no reminders: %s", run.id, exc)
                        continue
                    waiting = [row for row in due if row.user_id not in done]
                    # Time zones from the participation ledger, kept when they were invited.
                    people = [Person(w.user_id, "", "", w.tz or None, None) for w in waiting]
                    times = self._times(run)
                    # One transaction: the reminder's rows and the ledger's counts together.
                    queued = self._queue(
                        session,
                        run,
                        people,
                        key=f"survey:{run.key}:reminder:{number}",
                        kind="reminder",
                        number=number,
                        now=now,
                        when=_nth_reminder(times, number) if times else None,
                    )
                    if queued is not None:
                        for row in waiting:
                            row.reminders = number
                            session.add(row)
                        try:
                            session.commit()
                        except IntegrityError:  # another process queued it at the same moment
                            session.rollback()

    def close(self, run_id: int) -> bool:
        """Close the run, edit every copy of its invitation in Slack to a neutral "closed"
        text (no answer stays readable there) and DM its owner (or the admins) the results."""
        now = self.clock()
        try:
            if not close_run(db=self.db, run_id=run_id, now=now, secret=self.desk.secret):
                return False
        except (SecretMissing, WrongSecret) as exc:
            log.error("survey run %s not closed: %s", run_id, exc)
            return False
        with Session(self.db, expire_on_commit=False) as session:
            run = session.get(SurveyRun, run_id)
            assert run is not None
            sends = select(SurveySend.id).where(
                SurveySend.run_id == run_id,
                col(SurveySend.kind).in_(["invitation", "reminder"]),
            )
            # A minute's grace: a click stored just before the close updates its message
            # first, and this edit comes after it.
            session.execute(
                update(Delivery)
                .where(
                    col(Delivery.survey_send_id).in_(sends),
                    col(Delivery.state).in_(["sent", "sending"]),
                )
                .values(op="update", op_not_before=now + timedelta(minutes=1))
            )
            session.commit()
        survey = self.surveys.get(run.survey_id)
        if survey is not None:
            message = results_message(db=self.db, survey=survey, run_id=run_id)
            for user in [run.owner] if run.owner else sorted(self.admins):
                self.chat.post(Address(user), message)
        with Session(self.db) as session:
            stored = session.get(SurveyRun, run_id)
            if stored is not None:
                stored.results_sent_at = now
                session.add(stored)
                session.commit()
        return True

    # --- you said, we did -------------------------------------------------------------------

    def share_preview(self, run_id: int, note: str) -> tuple[Message, list[str]]:
        """The "you said, we did" message for a closed run (the results that passed
        suppression, then `note`) and who would get it (the run's audience)."""
        with Session(self.db) as session:
            run = session.get(SurveyRun, run_id)
            people = list(
                session.exec(
                    select(SurveyInvitation.user_id)
                    .where(SurveyInvitation.run_id == run_id)
                    .order_by(col(SurveyInvitation.user_id))
                ).all()
            )
        if run is None:
            raise KeyError(run_id)
        if run.state != "closed":
            raise ValueError(f"run {run.number} of {run.survey_id} is still open")
        survey = self.surveys[run.survey_id]
        report = run_results(db=self.db, survey=survey, run_id=run_id)
        lines = [f"*You said, we did: {survey.title}*"]
        if report["overall"].get(SUPPRESSED):
            lines.append("Too few people answered to share any results (that is the promise).")
        else:
            lines += summary_lines(survey, report)
        return say("\n".join(lines), note.strip(), summary=lines[0]), people

    def share(self, run_id: int, note: str, *, by: str) -> int:
        """Queue the share to the run's audience through the outbox; returns how many."""
        message, people = self.share_preview(run_id, note)
        with Session(self.db) as session:
            row = SurveyShare(
                run_id=run_id,
                note=message.parts[1].body if len(message.parts) > 1 else "",
                summary=message.parts[0].body,
                created_by=by[:40],
            )
            session.add(row)
            session.flush()
            run = session.get(SurveyRun, run_id)
            assert run is not None
            self._queue(
                session,
                run,
                [Person(user, "", "", None, None) for user in people],
                key=f"survey-share:{run.key}:{row.id}",
                kind="share",
                share_id=row.id,
                now=self.clock(),
            )
            session.commit()
        return len(people)


def _nth_reminder(
    times: Callable[[str | None], RecipientTimes], number: int
) -> Callable[[Person], datetime]:
    return lambda person: times(person.tz).reminders_utc[number - 1]
