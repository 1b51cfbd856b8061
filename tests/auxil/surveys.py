"""Survey test helpers: a small survey with every kind of question, a settable clock, an
in-memory directory, a recording chat, and rows written straight into the survey tables."""

from __future__ import annotations

import json
import secrets
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot.core.announcements.audience import DirectoryError, Person
from bot.core.messages import Address, Message, Posted
from bot.core.outbox import Budget, Limits, Outbox
from bot.core.surveys.definitions import Survey, load_surveys
from bot.core.surveys.privacy import run_key, unseal
from bot.core.surveys.runner import SurveyRunner
from bot.core.surveys.runs import invite, start_run
from bot.store.models import (
    Delivery,
    SurveyInvitation,
    SurveyResponse,
    SurveyRun,
    SurveySend,
)
from tests.auxil.outbox import FakeClock, RecordingSender

SECRET = b"survey-test-secret"
T0 = datetime(2027, 2, 16, 10, 0, tzinfo=UTC)  # a Tuesday

# One question of every kind; min_group 3 keeps the fixtures small.
# Four questions, one of each kind a click answers, and a comment: the end-to-end tests'.
QUICK = """\
title: Quick pulse
intro: Four questions, one click each.
anonymity: anonymous
min_group: 2
questions:
  - id: ready
    kind: likert
    text: I feel ready for Compass.
  - id: recommend
    kind: enps
    text: How likely are you to recommend Compass?
  - id: helped
    kind: multi
    text: What helped?
    options: [Guides, Champions, My manager]
  - id: comment
    kind: text
    text: Anything else?
    optional: true
"""

PULSE = """\
title: Pulse check
intro: Five quick questions about the move to Compass.
anonymity: anonymous
min_group: 3
questions:
  - id: ready
    kind: likert
    adkar: awareness
    text: I understand why we are changing.
  - id: recommend
    kind: enps
    text: How likely are you to recommend Compass?
  - id: training
    kind: choice
    text: Which training did you take?
    options: [E-learning, Live session, None yet]
  - id: helped
    kind: multi
    text: What helped you most?
    options: [Guides, Champions, My manager]
  - id: comment
    kind: text
    text: Anything else?
    optional: true
segments:
  - id: site
    label: Site
    by: channel
    values: {Coventry: C0COVENTRY, Dublin: C0DUBLIN}
"""


def write(root: Path, relative: str, text: str) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def load_survey(root: Path, text: str = PULSE, name: str = "pulse") -> Survey:
    """Write `messages/surveys/<name>.yaml` under `root` and load it (it must be valid)."""
    write(root, f"messages/surveys/{name}.yaml", text)
    surveys, errors = load_surveys(root)
    assert [str(error) for error in errors] == []
    return surveys[name]


class Clock:
    """Time as an argument: call it for now; `advance()` or set `at` to move it."""

    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def advance(self, **delta: float) -> datetime:
        self.at += timedelta(**delta)
        return self.at


def person(user_id: str, tz: str | None = "Europe/London", name: str = "") -> Person:
    name = name or f"Person {user_id[-2:]}"
    return Person(user_id, name, name.split()[0], tz, f"{user_id.lower()}@example.com")


@dataclass
class FakeDirectory:
    """An in-memory `Directory`: people, channel and user-group members."""

    people: list[Person]
    channels: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)

    def everyone(self) -> Iterator[Person]:
        yield from self.people

    def channel_members(self, channel: str) -> list[str]:
        if channel not in self.channels:
            raise DirectoryError("channel_not_found")
        return list(self.channels[channel])

    def can_post(self, channel: str) -> bool:
        return True

    def group_members(self, group: str) -> list[str]:
        if group not in self.groups:
            raise DirectoryError("no_such_subteam")
        return list(self.groups[group])

    def person(self, user_id: str) -> Person | None:
        return next((p for p in self.people if p.id == user_id), None)

    def by_email(self, email: str) -> Person | None:
        return next((p for p in self.people if p.email == email), None)


@dataclass
class RecordingChat:
    """A `Chat` that keeps a transcript."""

    posts: list[tuple[Address, Message]] = field(default_factory=list)
    updates: list[tuple[Posted, Message]] = field(default_factory=list)

    def post(self, address: Address, message: Message) -> Posted | None:
        self.posts.append((address, message))
        return Posted(address.channel, f"1800000000.{len(self.posts):06d}")

    def update(self, posted: Posted, message: Message) -> None:
        self.updates.append((posted, message))

    def permalink(self, channel: str, ts: str) -> str | None:
        return None

    def to(self, user: str) -> list[Message]:
        return [message for address, message in self.posts if address.channel == user]


def plain(db: Engine, row: SurveyResponse, field: str = "answers") -> Any:
    """A response's answers (or segments) as the bot reads them: sealed under the run key
    while the run is open, plain after it closed."""
    with Session(db) as session:
        run = session.get(SurveyRun, row.run_id)
    assert run is not None
    key = run_key(SECRET, row.run_id, run.key_salt) if run.key_salt else b""
    return json.loads(unseal(key, getattr(row, field)))


def open_run(
    db: Engine,
    survey: Survey,
    users: Sequence[str],
    *,
    now: datetime = T0,
    days: int = 5,
    segments: dict[str, dict[str, str]] | None = None,
    key: str | None = None,
) -> int:
    """A run of `survey` started now with `users` invited (what `SurveyRunner.open_run` does
    without the directory and the outbox)."""
    with Session(db) as session:
        run_id = start_run(
            session=session,
            survey=survey,
            key=key or f"{survey.id}@test-{secrets.token_hex(4)}",
            audience=[f"users:{','.join(users)}"],
            starts_at=now,
            closes_at=now + timedelta(days=days),
            by="U0OWNER",
            secret=SECRET,
        )
        assert run_id is not None
        invite(
            session=session,
            run_id=run_id,
            people=list(users),
            segments=segments or {},
            now=now,
            min_group=survey.min_group,
            order=[segment.id for segment in survey.segments],
        )
        session.commit()
    return run_id


def insert_run(
    db: Engine,
    survey: Survey,
    *,
    invitations: Iterable[dict[str, str]],
    responses: Iterable[tuple[dict[str, Any], dict[str, str]]],
    number: int = 1,
    state: str = "closed",
) -> int:
    """A run written straight into the tables: one invitation per segments dict, one response
    per (answers, segments). For results tests, where how the rows came is beside the point."""
    invited = list(invitations)
    with Session(db) as session:
        run = SurveyRun(
            key=f"{survey.id}@rows-{secrets.token_hex(4)}",
            survey_id=survey.id,
            number=number,
            anonymity=survey.anonymity,
            min_group=survey.min_group,
            audience='["everyone"]',
            state=state,
            starts_at=T0,
            closes_at=T0 + timedelta(days=5),
            population=len(invited),
        )
        session.add(run)
        session.commit()
        run_id = int(run.id or 0)
        session.add_all(
            SurveyInvitation(run_id=run_id, user_id=f"U{n:05d}", segments=json.dumps(segments))
            for n, segments in enumerate(invited)
        )
        session.add_all(
            SurveyResponse(
                id=secrets.token_hex(16),
                run_id=run_id,
                segments=json.dumps(segments),
                answers=json.dumps(answers),
            )
            for answers, segments in responses
        )
        session.commit()
    return run_id


@dataclass
class Bot:
    """The survey runner and the outbox on one fake clock, with Slack replaced by recorders."""

    db: Engine
    clock: FakeClock
    runner: SurveyRunner
    outbox: Outbox
    sender: RecordingSender
    chat: RecordingChat

    def at(self, moment: datetime) -> None:
        """Move the clock to `moment`, run the scheduler's tick and send whatever is due."""
        self.clock.at = moment
        self.runner.tick()
        while self.outbox.drain_once(batch=50):
            pass

    def run(self, key: str) -> SurveyRun:
        with Session(self.db) as session:
            run = session.exec(select(SurveyRun).where(SurveyRun.key == key)).one()
        return run

    def sends(self) -> list[SurveySend]:
        with Session(self.db) as session:
            return list(session.exec(select(SurveySend).order_by(col(SurveySend.id))))

    def deliveries(self, key: str) -> dict[str, Delivery]:
        """The deliveries of the send `key`, by recipient."""
        with Session(self.db) as session:
            rows = session.exec(
                select(Delivery)
                .join(SurveySend, col(SurveySend.id) == col(Delivery.survey_send_id))
                .where(SurveySend.key == key)
            ).all()
        return {row.recipient: row for row in rows}

    def posted(self) -> list[tuple[str, str, datetime | None]]:
        """(recipient, first line, when) of every DM the outbox sent."""
        return [
            (post.recipient, post.message.parts[0].body.splitlines()[0], post.at)
            for post in self.sender.posts
        ]


def make_bot(
    db: Engine,
    content_dir: Path,
    directory: FakeDirectory,
    *,
    start: datetime,
    admins: frozenset[str] = frozenset(),
) -> Bot:
    """A `SurveyRunner` on `content_dir` and an `Outbox` rendering with it, both on a
    FakeClock set to `start`."""
    clock = FakeClock(start)
    chat = RecordingChat()
    runner = SurveyRunner(
        db=db,
        content_dir=content_dir,
        directory=directory,
        chat=chat,
        secret=SECRET,
        admins=admins,
        clock=clock.now,
    )
    assert runner.load() == []
    sender = RecordingSender(clock=clock)
    outbox = Outbox(
        db=db,
        senders={"slack": sender},
        renderers=runner.renderers(),
        limits=Limits(posts_per_second=1000, burst=1000, edits_per_second=1000),
        clock=clock.now,
        sleep=clock.sleep,
    )
    outbox.budget = Budget(db, clock=clock.time)
    return Bot(db, clock, runner, outbox, sender, chat)
