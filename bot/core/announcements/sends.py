"""Sends: turning the plan (or an ad-hoc request) into delivery rows, and managing them after.

The scheduler only *materialises*: each due occurrence becomes one `AnnouncementSend` (unique
by the occurrence's key, so a second scheduler or a re-plan cannot duplicate it), its audience
is resolved and one `Delivery` row is written per recipient. Workers (bot.core.outbox) do the
sending. Occurrences missed while the bot was down are sent when still within the grace
window, otherwise recorded as `missed` and reported — never silently dropped.
"""

from __future__ import annotations

import csv
import json
import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TextIO

from sqlalchemy import Engine, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.core.announcements.audience import Audience, AudienceError, Directory, resolve
from bot.core.announcements.plan import Occurrence, Plan, occurrences, send_time
from bot.core.content import Rollout
from bot.core.outbox import ANNOUNCEMENT_REMINDER
from bot.core.platforms import GUID, platform_of
from bot.store.marks import advance_mark, read_mark
from bot.store.models import AnnouncementSend, Delivery, as_utc

log = logging.getLogger(__name__)
TERMINAL = ("sent", "failed", "skipped", "cancelled", "deleted")
RESOLVE_LEASE = timedelta(minutes=5)
MARK = "plan"


@dataclass
class MaterialiseReport:
    created: list[int] = field(default_factory=list)  # sends created now
    missed: list[int] = field(default_factory=list)  # sends recorded as missed
    resolved: list[int] = field(default_factory=list)  # sends whose deliveries were written


def _store_send(session: Session, send: AnnouncementSend) -> AnnouncementSend | None:
    """Insert unless its key exists (then None): idempotent across processes."""
    session.add(send)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        return None
    session.refresh(send)
    return send


def materialise(
    *,
    db: Engine,
    plan: Plan,
    rollout: Rollout,
    now: datetime,
    grace: timedelta,
    owner: str = "",
) -> MaterialiseReport:
    """Create a send for every occurrence that fell due since the last run.

    An occurrence due more than `grace` ago that was never created is recorded as missed."""
    report = MaterialiseReport()
    since = read_mark(db, MARK) or now - grace
    start = min(since, now - grace) - timedelta(minutes=1)
    due: list[Occurrence] = occurrences(plan, rollout, start=start, end=now + timedelta(seconds=1))
    for occurrence in due:
        announcement = plan.get(occurrence.announcement_id)
        if announcement is None:
            continue
        missed = occurrence.due_utc < now - grace
        if missed and occurrence.due_utc < since - timedelta(minutes=1):
            continue  # already considered by an earlier run
        send = AnnouncementSend(
            key=occurrence.key,
            announcement_id=announcement.id,
            template=announcement.template,
            audience=json.dumps(list(announcement.audience)),
            state="missed" if missed else "planned",
            local_time=announcement.local_time,
            weekdays_only=announcement.weekdays_only,
            ack=announcement.ack,
            remind_after_days=announcement.remind_after_days,
            owner=owner,
            created_by="plan",
            due_at=occurrence.due_utc,
            error="due while the bot was not running, beyond the grace window" if missed else "",
        )
        with Session(db) as session:
            stored = _store_send(session, send)
        if stored is not None and stored.id is not None:
            (report.missed if missed else report.created).append(stored.id)
            if missed:
                log.warning(
                    "announcement %s was missed (due %s)", occurrence.key, occurrence.due_utc
                )
    advance_mark(db, MARK, now)
    return report


def create_adhoc(
    *,
    session: Session,
    template: str,
    audience: list[str],
    at: datetime,
    by: str,
    ack: bool = False,
) -> int:
    """Queue an ad-hoc send for the running bot; returns its id. The caller commits."""
    send = AnnouncementSend(
        key=f"adhoc:{uuid.uuid4().hex}",
        template=template,
        audience=json.dumps(audience),
        state="planned",
        ack=ack,
        owner=by if by[:1] in {"U", "W"} or GUID.fullmatch(by) else "",  # a person, not a CLI
        created_by=by,
        due_at=at,
    )
    session.add(send)
    session.flush()
    assert send.id is not None
    return send.id


def resolve_due(
    *,
    db: Engine,
    plan: Plan,
    rollout: Rollout,
    directory: Directory,
    content_dir: Path,
    now: datetime,
) -> list[int]:
    """Resolve the audience of every due planned send and write its deliveries."""
    done: list[int] = []
    with Session(db) as session:
        candidates = session.exec(
            select(AnnouncementSend.id).where(
                col(AnnouncementSend.state).in_(["planned", "resolving"]),
                AnnouncementSend.due_at <= now,
            )
        ).all()
    for send_id in candidates:
        assert send_id is not None
        if not _lease_send(db, send_id, now):
            continue
        with Session(db) as session:
            send = session.get(AnnouncementSend, send_id)
        assert send is not None
        try:
            audience = resolve(json.loads(send.audience), directory, content_dir=content_dir)
        except AudienceError as exc:
            log.error("announcement send %s: audience failed: %s", send_id, exc)
            _set_send(
                db, send_id, state="planned", error=str(exc), lease_until=now + timedelta(minutes=1)
            )
            continue
        announcement = plan.get(send.announcement_id) if send.announcement_id else None
        write_deliveries(
            db=db,
            send=send,
            audience=audience,
            rollout=rollout,
            now=now,
            when=_per_recipient(announcement, send, rollout),
        )
        done.append(send_id)
    return done


def _per_recipient(
    announcement: object, send: AnnouncementSend, rollout: Rollout
) -> Callable[[str | None], datetime]:
    from bot.core.announcements.plan import Announcement

    if not isinstance(announcement, Announcement) or not send.local_time:
        return lambda _tz: as_utc(send.due_at)
    occurrence = Occurrence(
        announcement_id=announcement.id,
        key=send.key,
        local=datetime.fromisoformat(send.key.split("@", 1)[1]),
        due_utc=as_utc(send.due_at),
    )
    return lambda tz: send_time(announcement, occurrence, tz=tz, rollout=rollout)


def _lease_send(db: Engine, send_id: int, now: datetime) -> bool:
    with Session(db) as session:
        result = session.execute(
            update(AnnouncementSend)
            .where(
                col(AnnouncementSend.id) == send_id,
                col(AnnouncementSend.state).in_(["planned", "resolving"]),
                (col(AnnouncementSend.lease_until).is_(None))
                | (col(AnnouncementSend.lease_until) < now),
            )
            .values(state="resolving", lease_until=now + RESOLVE_LEASE)
        )
        session.commit()
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]


def _set_send(db: Engine, send_id: int, **values: object) -> None:
    with Session(db) as session:
        session.execute(
            update(AnnouncementSend).where(col(AnnouncementSend.id) == send_id).values(**values)
        )
        session.commit()


def write_deliveries(
    *,
    db: Engine,
    send: AnnouncementSend,
    audience: Audience,
    rollout: Rollout,
    now: datetime,
    when: Callable[[str | None], datetime],
) -> int:
    """One delivery row per channel and person (unique per send, so a retry adds nothing)."""
    assert send.id is not None
    with Session(db) as session:
        existing = set(
            session.exec(select(Delivery.recipient).where(col(Delivery.send_id) == send.id)).all()
        )
        rows = [
            Delivery(
                send_id=send.id,
                recipient=channel,
                target="channel",
                platform=platform_of(channel),
                not_before=when(None),
            )
            for channel in audience.channels
            if channel not in existing
        ]
        rows += [
            Delivery(
                send_id=send.id,
                recipient=person.id,
                target="dm",
                platform=person.platform,
                name=person.name[:200],
                first_name=person.first_name[:100],
                tz=person.tz or "",
                not_before=when(person.tz),
            )
            for person in audience.people
            if person.id not in existing
        ]
        for start in range(0, len(rows), 1000):
            session.add_all(rows[start : start + 1000])
            session.flush()
        # Conditional: a send cancelled (or recalled) while its audience was being resolved
        # stays cancelled, and its rows are not written.
        moved = session.execute(
            update(AnnouncementSend)
            .where(
                col(AnnouncementSend.id) == send.id,
                col(AnnouncementSend.state) == "resolving",
            )
            .values(
                state="sending",
                lease_until=None,
                excluded=json.dumps([[e.who, e.reason] for e in audience.excluded]),
                error="",
            )
        )
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            session.rollback()
            log.info("announcement send %s was stopped while resolving its audience", send.id)
            return 0
        session.commit()
    log.info("announcement send %s: %s", send.id, audience.summary())
    return len(rows)


def complete(*, session: Session, now: datetime) -> list[int]:
    """Mark sends whose every delivery is settled as done; returns their ids. The caller
    commits."""
    finished: list[int] = []
    sending = session.exec(
        select(AnnouncementSend.id).where(AnnouncementSend.state == "sending")
    ).all()
    for send_id in sending:
        open_rows = session.exec(
            select(func.count()).where(
                col(Delivery.send_id) == send_id, col(Delivery.state).not_in(TERMINAL)
            )
        ).one()
        if open_rows == 0:
            session.execute(
                update(AnnouncementSend)
                .where(
                    col(AnnouncementSend.id) == send_id,
                    col(AnnouncementSend.state) == "sending",
                )
                .values(state="done", completed_at=now)
            )
            finished.append(int(send_id or 0))
    return finished


def acknowledge(
    *, session: Session, delivery_id: int, user_id: str, now: datetime
) -> Delivery | None:
    """Record one person's "I've read this" (once); returns the delivery, or None when the
    click does not belong to this user. The caller commits."""
    delivery = session.get(Delivery, delivery_id)
    if delivery is None or delivery.recipient != user_id:
        return None
    if delivery.acked_at is None:
        session.execute(
            update(Delivery)
            .where(col(Delivery.id) == delivery_id, col(Delivery.acked_at).is_(None))
            .values(acked_at=now)
        )
        session.refresh(delivery)
    return delivery


def request_edit(*, session: Session, send_id: int, op: str, now: datetime) -> int:
    """Queue an update or delete of every sent copy; returns how many copies. A delete (a
    recall) also cancels what has not gone yet, and the send itself if it is not resolved.
    The caller commits."""
    result = session.execute(
        update(Delivery)
        .where(col(Delivery.send_id) == send_id, col(Delivery.state) == "sent")
        .values(op=op, op_not_before=now)
    )
    if op == "delete":
        session.execute(
            update(Delivery)
            .where(col(Delivery.send_id) == send_id, col(Delivery.state).in_(["pending"]))
            .values(state="cancelled", error="recalled")
        )
        # In flight now: the workers delete these copies once their post is recorded.
        session.execute(
            update(Delivery)
            .where(col(Delivery.send_id) == send_id, col(Delivery.state) == "sending")
            .values(op=op, op_not_before=now)
        )
        session.execute(
            update(AnnouncementSend)
            .where(
                col(AnnouncementSend.id) == send_id,
                col(AnnouncementSend.state).in_(["planned", "resolving"]),
            )
            .values(state="cancelled")
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def resend_failed(*, session: Session, send_id: int, now: datetime) -> int:
    """Put failed deliveries back in the queue; returns how many. The caller commits."""
    result = session.execute(
        update(Delivery)
        .where(col(Delivery.send_id) == send_id, col(Delivery.state) == "failed")
        .values(state="pending", attempts=0, error="", not_before=now)
    )
    session.execute(
        update(AnnouncementSend)
        .where(col(AnnouncementSend.id) == send_id, col(AnnouncementSend.state) == "done")
        .values(state="sending", completed_at=None, reported_at=None)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def cancel(*, session: Session, send_id: int) -> int:
    """Stop a send: pending deliveries are cancelled; sent copies stay (recall deletes them).
    The caller commits."""
    result = session.execute(
        update(Delivery)
        .where(col(Delivery.send_id) == send_id, col(Delivery.state) == "pending")
        .values(state="cancelled", error="cancelled")
    )
    session.execute(
        update(AnnouncementSend)
        .where(
            col(AnnouncementSend.id) == send_id,
            col(AnnouncementSend.state).in_(["planned", "resolving", "sending"]),
        )
        .values(state="cancelled")
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def unacknowledged(*, session: Session, send_id: int) -> list[Delivery]:
    return list(
        session.exec(
            select(Delivery).where(
                col(Delivery.send_id) == send_id,
                col(Delivery.state) == "sent",
                col(Delivery.target) == "dm",
                col(Delivery.acked_at).is_(None),
            )
        ).all()
    )


def create_reminder(
    *, session: Session, parent: AnnouncementSend, recipients: Iterable[Delivery], now: datetime
) -> int | None:
    """A reminder send to `recipients` (copied from the parent's rows); None if one exists or
    nobody is left to remind. The parent is marked reminded either way. The caller commits:
    the reminder with all its rows and the parent's mark are one transaction, so a crash
    leaves either all of it or nothing (and the next tick tries again). A reminder another
    process writes at the same moment makes the flush raise IntegrityError: the caller rolls
    back. (No savepoint: with pysqlite one opened before the transaction's first write
    would commit on release.)"""
    assert parent.id is not None
    people = list(recipients)
    child_id: int | None = None
    if people:
        child = AnnouncementSend(
            key=f"{parent.key}:reminder",
            announcement_id=parent.announcement_id,
            template=parent.template,
            audience=json.dumps([f"reminder of #{parent.id}"]),
            state="sending",
            ack=True,
            owner="",
            created_by="reminder",
            due_at=now,
            reminder_of=parent.id,
        )
        existing = select(AnnouncementSend.id).where(AnnouncementSend.key == child.key)
        if session.exec(existing).first() is not None:
            return None
        session.add(child)
        session.flush()
        assert child.id is not None
        child_id = child.id
        session.add_all(
            Delivery(
                send_id=child.id,
                kind=ANNOUNCEMENT_REMINDER,
                recipient=row.recipient,
                target="dm",
                platform=row.platform,
                name=row.name,
                first_name=row.first_name,
                tz=row.tz,
                not_before=now,
            )
            for row in people
        )
    session.execute(
        update(AnnouncementSend)
        .where(col(AnnouncementSend.id) == parent.id)
        .values(reminded_at=now)
    )
    session.flush()
    return child_id


CSV_COLUMNS = (
    "recipient",
    "kind",
    "name",
    "state",
    "error",
    "channel",
    "ts",
    "updated_at",
    "acknowledged_at",
)


def write_csv(*, db: Engine, send_id: int, out: TextIO) -> None:
    """One CSV row per recipient of a send (`announce export`, the console's download). A
    name starting like a formula is prefixed with ' so a spreadsheet shows it as text."""
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    with Session(db) as session:
        for row in session.exec(
            select(Delivery).where(Delivery.send_id == send_id).order_by(col(Delivery.id))
        ):
            name = "'" + row.name if row.name[:1] in {"=", "+", "-", "@"} else row.name
            writer.writerow(
                [
                    row.recipient,
                    row.target,
                    name,
                    row.state,
                    row.error,
                    row.channel,
                    row.ts,
                    row.updated_at.isoformat(),
                    row.acked_at.isoformat() if row.acked_at else "",
                ]
            )
