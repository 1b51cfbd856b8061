"""Outbox test helpers: a fake clock, a recording `Sender`, and sends with delivery rows."""

from __future__ import annotations

import json
import threading
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot.core.messages import Message, say
from bot.core.outbox import Budget, Cancelled, Limits, Outbox, Renderer, SendResult
from bot.core.platforms import is_teams_channel
from bot.store.models import AnnouncementSend, Delivery

T0 = datetime(2027, 4, 6, 8, 0, tzinfo=UTC)


class FakeClock:
    """Time as an argument: `now()` for the outbox, `time()` for the budget, and a `sleep()`
    that moves the clock instead of waiting. `on_sleep` runs after each sleep (a hook for
    making something happen "meanwhile")."""

    def __init__(self, start: datetime = T0) -> None:
        self.at = start
        self.slept: list[float] = []
        self.on_sleep: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def now(self) -> datetime:
        with self._lock:
            return self.at

    def time(self) -> float:
        return self.now().timestamp()

    def advance(self, seconds: float) -> None:
        with self._lock:
            self.at += timedelta(seconds=seconds)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.advance(seconds)
        for hook in list(self.on_sleep):
            hook()


@dataclass(frozen=True)
class Post:
    recipient: str
    delivery_id: int
    message: Message
    channel: str
    ts: str
    at: datetime | None = None


@dataclass
class RecordingSender:
    """A `Sender` that records every call and answers ok unless told otherwise.

    `script(method, *results)` queues answers for the next calls to `post`, `update`,
    `delete` or `find`. `find` looks through what was posted (as Slack's message metadata
    would) unless a scripted answer is queued."""

    clock: FakeClock | None = None
    posts: list[Post] = field(default_factory=list)
    updates: list[tuple[str, str, Message]] = field(default_factory=list)
    deletes: list[tuple[str, str]] = field(default_factory=list)
    finds: list[tuple[str, str, int, datetime]] = field(default_factory=list)
    attempts: list[tuple[str, int]] = field(default_factory=list)  # every post, ok or not
    scripted: dict[str, deque[SendResult]] = field(default_factory=dict)
    _counter: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def script(self, method: str, *results: SendResult) -> None:
        self.scripted.setdefault(method, deque()).extend(results)

    def _next(self, method: str) -> SendResult | None:
        queue = self.scripted.get(method)
        return queue.popleft() if queue else None

    def post(self, *, recipient: str, message: Message, delivery_id: int) -> SendResult:
        with self._lock:
            self.attempts.append((recipient, delivery_id))
            answer = self._next("post")
            if answer is not None:
                return answer
            self._counter += 1
            channel = f"D{recipient}" if recipient[:1] in {"U", "W"} else recipient
            ts = f"1800000000.{self._counter:06d}"
            at = self.clock.now() if self.clock else None
            self.posts.append(Post(recipient, delivery_id, message, channel, ts, at))
            return SendResult(ok=True, channel=channel, ts=ts)

    def update(self, *, channel: str, ts: str, message: Message) -> SendResult:
        with self._lock:
            answer = self._next("update")
            if answer is None:
                self.updates.append((channel, ts, message))
            return answer or SendResult(ok=True, channel=channel, ts=ts)

    def delete(self, *, channel: str, ts: str) -> SendResult:
        with self._lock:
            answer = self._next("delete")
            if answer is None:
                self.deletes.append((channel, ts))
            return answer or SendResult(ok=True, channel=channel, ts=ts)

    def find(
        self, *, recipient: str, channel: str, delivery_id: int, since: datetime
    ) -> SendResult:
        with self._lock:
            self.finds.append((recipient, channel, delivery_id, since))
            answer = self._next("find")
            if answer is not None:
                return answer
            for post in self.posts:
                if post.delivery_id == delivery_id:
                    return SendResult(ok=True, channel=post.channel, ts=post.ts)
            return SendResult(ok=False, error="not_found")

    def posted_to(self, recipient: str) -> list[Post]:
        return [post for post in self.posts if post.recipient == recipient]


def renderer(db: Engine) -> Renderer:
    """A renderer that needs no templates; a cancelled send's rows end cancelled."""

    def render(delivery: Delivery) -> Message:
        send = send_row(db, delivery.send_id or 0)
        if send.state == "cancelled":
            raise Cancelled(send.key)
        return say(f"*{send.template}* for {delivery.recipient}")

    return render


def make_outbox(
    db: Engine,
    sender: RecordingSender,
    clock: FakeClock,
    *,
    limits: Limits = Limits(posts_per_second=1000, burst=1000, edits_per_second=1000),
) -> Outbox:
    """An Outbox on the fake clock, its shared budget included."""
    outbox = Outbox(
        db=db,
        senders={"slack": sender},
        renderers={"announcement": renderer(db)},
        limits=limits,
        clock=clock.now,
        sleep=clock.sleep,
    )
    outbox.budget = Budget(db, clock=clock.time)
    return outbox


def make_send(
    db: Engine,
    recipients: list[str],
    *,
    now: datetime = T0,
    template: str = "notice",
    state: str = "sending",
    ack: bool = False,
    key: str | None = None,
    platform: str = "slack",
) -> tuple[int, list[int]]:
    """A send in `state` with one pending delivery per recipient on `platform` (C… ids are
    Slack channels, 19:…@thread.tacv2 Teams ones); returns the send id and the delivery ids
    in recipient order."""
    with Session(db) as session:
        send = AnnouncementSend(
            key=key or f"test:{uuid.uuid4().hex}",
            template=template,
            audience=json.dumps([f"users:{','.join(recipients)}"]),
            state=state,
            ack=ack,
            due_at=now,
            created_at=now,
        )
        session.add(send)
        session.commit()
        session.refresh(send)
        assert send.id is not None
        rows = [
            Delivery(
                send_id=send.id,
                platform=platform,
                recipient=recipient,
                target="channel" if _is_channel(platform, recipient) else "dm",
                name=recipient.lower(),
                first_name=recipient.lower(),
                not_before=now,
                updated_at=now,
            )
            for recipient in recipients
        ]
        session.add_all(rows)
        session.commit()
        ids = [int(row.id or 0) for row in rows]
        return send.id, ids


def _is_channel(platform: str, recipient: str) -> bool:
    if platform == "teams":
        return is_teams_channel(recipient)
    return recipient[:1] in {"C", "G"}


def deliveries(db: Engine, send_id: int) -> list[Delivery]:
    with Session(db) as session:
        return list(
            session.exec(
                select(Delivery).where(Delivery.send_id == send_id).order_by(col(Delivery.id))
            ).all()
        )


def delivery(db: Engine, delivery_id: int) -> Delivery:
    with Session(db) as session:
        row = session.get(Delivery, delivery_id)
    assert row is not None
    return row


def send_row(db: Engine, send_id: int) -> AnnouncementSend:
    with Session(db) as session:
        row = session.get(AnnouncementSend, send_id)
    assert row is not None
    return row
