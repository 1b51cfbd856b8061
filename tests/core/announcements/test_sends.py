"""Sends: materialising the plan with a fixed `now` (idempotent, grace window, missed), writing
one delivery per recipient with per-recipient times, and managing a send afterwards."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select

from bot.core.announcements import sends
from bot.core.announcements.audience import DirectoryError, Person
from bot.core.announcements.plan import Announcement, Plan, occurrences
from bot.core.content import Rollout
from bot.core.schedule import DateExpr, OneOff
from bot.store.models import AnnouncementSend, Delivery, SchedulerMark
from tests.auxil.db import committed
from tests.auxil.outbox import deliveries, make_send, send_row

ROLLOUT = Rollout(
    name="Compass",
    timezone="Europe/London",
    milestones={"training_opens": date(2027, 2, 15), "go_live": date(2027, 4, 6)},
)
GRACE = timedelta(hours=6)
# go_live at 09:00 in London (BST, UTC+1) is 08:00 UTC.
GO_LIVE_DUE = datetime(2027, 4, 6, 8, 0, tzinfo=UTC)


def announcement(
    announcement_id: str = "notice",
    on: DateExpr = DateExpr("go_live"),
    at: time = time(9, 0),
    **options: object,
) -> Announcement:
    fields: dict = {
        "id": announcement_id,
        "template": "notice",
        "audience": ("everyone",),
        "schedule": OneOff(on, at),
        "path": Path("schedules/announcements.yaml"),
        "line": 1,
        **options,
    }
    return Announcement(**fields)


def person(user_id: str, tz: str = "Europe/London", **fields: object) -> Person:
    values: dict = {
        "id": user_id,
        "name": user_id.lower(),
        "first_name": user_id.lower(),
        "tz": tz,
        "email": f"{user_id.lower()}@example.com",
        **fields,
    }
    return Person(**values)


@dataclasses.dataclass
class Directory:
    """An in-memory directory; `during` runs while the workspace is being listed."""

    people: list[Person]
    channels: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    during: Callable[[], object] | None = None

    def everyone(self) -> Iterator[Person]:
        if self.during:
            self.during()
        yield from self.people

    def channel_members(self, channel: str) -> list[str]:
        if channel not in self.channels:
            raise DirectoryError("channel_not_found")
        return self.channels[channel]

    def can_post(self, channel: str) -> bool:
        return True

    def group_members(self, group: str) -> list[str]:
        raise DirectoryError("no_such_subteam")

    def person(self, user_id: str) -> Person | None:
        return next((p for p in self.people if p.id == user_id), None)

    def by_email(self, email: str) -> Person | None:
        return next((p for p in self.people if p.email == email), None)


PEOPLE = [person("U1"), person("U2", "America/New_York"), person("UBOT", is_bot=True)]


def all_sends(db: Engine) -> list[AnnouncementSend]:
    with Session(db) as session:
        return list(session.exec(select(AnnouncementSend).order_by(col(AnnouncementSend.id))))


def mark(db: Engine) -> datetime | None:
    with Session(db) as session:
        row = session.get(SchedulerMark, sends.MARK)
    return row.at if row else None


def set_mark(db: Engine, at: datetime) -> None:
    with Session(db) as session:
        session.add(SchedulerMark(name=sends.MARK, at=at))
        session.commit()


def set_rows(db: Engine, send_id: int, recipient: str, **values: object) -> None:
    with Session(db) as session:
        session.execute(
            update(Delivery)
            .where(col(Delivery.send_id) == send_id, col(Delivery.recipient) == recipient)
            .values(**values)
        )
        session.commit()


def states(db: Engine, send_id: int) -> dict[str, str]:
    return {row.recipient: row.state for row in deliveries(db, send_id)}


# --- materialising -----------------------------------------------------------------------


def test_materialising_twice_creates_one_send_per_occurrence(db: Engine) -> None:
    plan = Plan((announcement(),))
    now = GO_LIVE_DUE + timedelta(hours=1)
    first = sends.materialise(db=db, plan=plan, rollout=ROLLOUT, now=now, grace=GRACE)
    again = sends.materialise(db=db, plan=plan, rollout=ROLLOUT, now=now, grace=GRACE)
    later = sends.materialise(
        db=db, plan=plan, rollout=ROLLOUT, now=now + timedelta(minutes=10), grace=GRACE
    )
    assert len(first.created) == 1
    assert again.created == again.missed == later.created == later.missed == []
    (send,) = all_sends(db)
    assert (send.key, send.state, send.due_at, send.template, json.loads(send.audience)) == (
        "notice@2027-04-06T09:00",
        "planned",
        GO_LIVE_DUE,
        "notice",
        ["everyone"],
    )


def test_nothing_is_created_before_it_falls_due(db: Engine) -> None:
    plan = Plan((announcement(),))
    report = sends.materialise(
        db=db, plan=plan, rollout=ROLLOUT, now=GO_LIVE_DUE - timedelta(seconds=2), grace=GRACE
    )
    assert report.created == [] and all_sends(db) == []
    report = sends.materialise(db=db, plan=plan, rollout=ROLLOUT, now=GO_LIVE_DUE, grace=GRACE)
    assert len(report.created) == 1


def test_after_downtime_what_is_within_grace_is_sent_and_older_is_recorded_missed(
    db: Engine,
) -> None:
    recent = announcement("recent")  # due an hour before the bot is back
    old = announcement("old", on=DateExpr("go_live", -2))  # due two days before
    plan = Plan((recent, old))
    now = GO_LIVE_DUE + timedelta(hours=1)
    set_mark(db, now - timedelta(days=3))  # the bot last ran three days ago

    report = sends.materialise(db=db, plan=plan, rollout=ROLLOUT, now=now, grace=GRACE)
    by_key = {send.key: send for send in all_sends(db)}
    assert set(by_key) == {"recent@2027-04-06T09:00", "old@2027-04-04T09:00"}
    assert by_key["recent@2027-04-06T09:00"].state == "planned"
    missed = by_key["old@2027-04-04T09:00"]
    assert missed.state == "missed" and "grace" in missed.error
    assert report.created == [by_key["recent@2027-04-06T09:00"].id]
    assert report.missed == [missed.id]

    again = sends.materialise(db=db, plan=plan, rollout=ROLLOUT, now=now, grace=GRACE)
    assert again.created == again.missed == []
    assert len(all_sends(db)) == 2
    # A missed send is never resolved or sent.
    assert sends.resolve_due(
        db=db,
        plan=plan,
        rollout=ROLLOUT,
        directory=Directory(PEOPLE),
        content_dir=Path("."),
        now=now,
    ) == [by_key["recent@2027-04-06T09:00"].id]
    assert deliveries(db, int(missed.id or 0)) == []


def test_the_scheduler_mark_records_how_far_the_plan_was_materialised(db: Engine) -> None:
    plan = Plan((announcement(),))
    now = GO_LIVE_DUE + timedelta(hours=1)
    assert mark(db) is None
    sends.materialise(db=db, plan=plan, rollout=ROLLOUT, now=now, grace=GRACE)
    assert mark(db) == now
    # A process whose clock is behind does not move the mark back.
    sends.materialise(
        db=db, plan=plan, rollout=ROLLOUT, now=now - timedelta(minutes=5), grace=GRACE
    )
    assert mark(db) == now
    sends.materialise(
        db=db, plan=plan, rollout=ROLLOUT, now=now + timedelta(minutes=5), grace=GRACE
    )
    assert mark(db) == now + timedelta(minutes=5)


def test_moving_a_milestone_re_plans_the_occurrence(db: Engine) -> None:
    plan = Plan((announcement(),))
    moved = dataclasses.replace(ROLLOUT, milestones={"go_live": date(2027, 4, 8)})
    before = GO_LIVE_DUE - timedelta(days=3)
    sends.materialise(db=db, plan=plan, rollout=ROLLOUT, now=before, grace=GRACE)
    # go-live moves two days later before the original date comes
    sends.materialise(
        db=db, plan=plan, rollout=moved, now=GO_LIVE_DUE + timedelta(hours=1), grace=GRACE
    )
    assert all_sends(db) == []
    new_due = GO_LIVE_DUE + timedelta(days=2)
    report = sends.materialise(
        db=db, plan=plan, rollout=moved, now=new_due + timedelta(minutes=1), grace=GRACE
    )
    (send,) = all_sends(db)
    assert report.created == [send.id]
    assert (send.key, send.due_at) == ("notice@2027-04-08T09:00", new_due)


# --- resolving: one delivery per recipient ----------------------------------------------------


def test_local_time_deliveries_wait_for_each_recipients_own_clock(db: Engine) -> None:
    hello = announcement(
        "hello",
        on=DateExpr("training_opens"),
        local_time=True,
        audience=("everyone", "channel:C1"),
    )
    plan = Plan((hello,))
    (occurrence,) = occurrences(
        plan,
        ROLLOUT,
        start=datetime(2027, 1, 1, tzinfo=UTC),
        end=datetime(2028, 1, 1, tzinfo=UTC),
    )
    # 09:00 comes first at UTC+14, the evening before in UTC.
    assert occurrence.due_utc == datetime(2027, 2, 14, 19, 0, tzinfo=UTC)
    now = occurrence.due_utc + timedelta(minutes=1)
    sends.materialise(db=db, plan=plan, rollout=ROLLOUT, now=now, grace=GRACE)
    (send,) = all_sends(db)
    assert send.local_time

    directory = Directory(PEOPLE)
    resolved = sends.resolve_due(
        db=db, plan=plan, rollout=ROLLOUT, directory=directory, content_dir=Path("."), now=now
    )
    assert resolved == [send.id]
    rows = {row.recipient: row for row in deliveries(db, int(send.id or 0))}
    assert {r: (row.target, row.not_before, row.state) for r, row in rows.items()} == {
        "C1": ("channel", datetime(2027, 2, 15, 9, 0, tzinfo=UTC), "pending"),  # rollout zone
        "U1": ("dm", datetime(2027, 2, 15, 9, 0, tzinfo=UTC), "pending"),  # London, GMT
        "U2": ("dm", datetime(2027, 2, 15, 14, 0, tzinfo=UTC), "pending"),  # New York, EST
    }
    assert (rows["U2"].tz, rows["U2"].name) == ("America/New_York", "u2")
    stored = send_row(db, int(send.id or 0))
    assert stored.state == "sending"
    assert json.loads(stored.excluded) == [["UBOT", "bot"]]

    # Resolving again writes nothing more.
    assert (
        sends.resolve_due(
            db=db, plan=plan, rollout=ROLLOUT, directory=directory, content_dir=Path("."), now=now
        )
        == []
    )
    assert len(deliveries(db, int(send.id or 0))) == 3


def test_an_adhoc_send_goes_to_everyone_at_its_time(db: Engine) -> None:
    at = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    send_id = committed(
        db,
        sends.create_adhoc,
        template="notice",
        audience=["users:U1,U2"],
        at=at,
        by="U9",
        ack=True,
    )
    send = send_row(db, send_id)
    assert (send.state, send.owner, send.created_by, send.ack, send.key[:6]) == (
        "planned",
        "U9",
        "U9",
        True,
        "adhoc:",
    )
    kwargs = {
        "db": db,
        "plan": Plan(),
        "rollout": ROLLOUT,
        "directory": Directory(PEOPLE),
        "content_dir": Path("."),
    }
    assert sends.resolve_due(**kwargs, now=at - timedelta(seconds=1)) == []  # type: ignore[arg-type]
    assert sends.resolve_due(**kwargs, now=at) == [send_id]  # type: ignore[arg-type]
    assert [(r.recipient, r.not_before) for r in deliveries(db, send_id)] == [
        ("U1", at),
        ("U2", at),
    ]
    cli_send = committed(
        db, sends.create_adhoc, template="notice", audience=["everyone"], at=at, by="cli:ann"
    )
    assert send_row(db, cli_send).owner == ""  # the report goes to the admins


def test_an_audience_that_fails_leaves_the_send_planned_and_retries_later(db: Engine) -> None:
    at = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    send_id = committed(
        db, sends.create_adhoc, template="notice", audience=["members:C404"], at=at, by="U9"
    )
    directory = Directory(PEOPLE)
    kwargs = {
        "db": db,
        "plan": Plan(),
        "rollout": ROLLOUT,
        "directory": directory,
        "content_dir": Path("."),
    }
    assert sends.resolve_due(**kwargs, now=at) == []  # type: ignore[arg-type]
    send = send_row(db, send_id)
    assert send.state == "planned" and "channel_not_found" in send.error
    directory.channels["C404"] = ["U1"]
    assert sends.resolve_due(**kwargs, now=at + timedelta(seconds=30)) == []  # type: ignore[arg-type]
    assert sends.resolve_due(**kwargs, now=at + timedelta(seconds=61)) == [send_id]  # type: ignore[arg-type]
    assert states(db, send_id) == {"U1": "pending"}
    assert send_row(db, send_id).error == ""


def test_a_send_left_resolving_by_a_crashed_scheduler_is_taken_over_after_its_lease(
    db: Engine,
) -> None:
    at = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    send_id = committed(
        db, sends.create_adhoc, template="notice", audience=["users:U1"], at=at, by="U9"
    )
    with Session(db) as session:  # another process took it and died mid-resolution
        session.execute(
            update(AnnouncementSend)
            .where(col(AnnouncementSend.id) == send_id)
            .values(state="resolving", lease_until=at + sends.RESOLVE_LEASE)
        )
        session.commit()
    kwargs = {
        "db": db,
        "plan": Plan(),
        "rollout": ROLLOUT,
        "directory": Directory(PEOPLE),
        "content_dir": Path("."),
    }
    assert sends.resolve_due(**kwargs, now=at + timedelta(minutes=1)) == []  # type: ignore[arg-type]
    later = at + sends.RESOLVE_LEASE + timedelta(seconds=1)
    assert sends.resolve_due(**kwargs, now=later) == [send_id]  # type: ignore[arg-type]
    assert states(db, send_id) == {"U1": "pending"}


# --- after sending ------------------------------------------------------------------------------


def test_complete_marks_a_send_done_once_every_row_is_settled(db: Engine) -> None:
    now = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    settled, _ = make_send(db, ["U1", "U2", "U3"])
    set_rows(db, settled, "U1", state="sent")
    set_rows(db, settled, "U2", state="failed", error="account_inactive")
    set_rows(db, settled, "U3", state="cancelled")
    open_send, _ = make_send(db, ["U1", "U2"])
    set_rows(db, open_send, "U1", state="sent")
    planned, _ = make_send(db, [], state="planned")

    assert committed(db, sends.complete, now=now) == [settled]
    assert (send_row(db, settled).state, send_row(db, settled).completed_at) == ("done", now)
    assert send_row(db, open_send).state == "sending"
    assert send_row(db, planned).state == "planned"
    assert committed(db, sends.complete, now=now) == []


def test_a_reminder_goes_only_to_who_has_not_acknowledged(db: Engine) -> None:
    now = datetime(2027, 3, 3, 12, 0, tzinfo=UTC)
    parent_id, _ = make_send(db, ["U1", "U2", "U3", "C1"], ack=True)
    set_rows(db, parent_id, "U1", state="sent", acked_at=now - timedelta(days=1))
    set_rows(db, parent_id, "U2", state="sent")
    set_rows(db, parent_id, "U3", state="failed", error="account_inactive")
    set_rows(db, parent_id, "C1", state="sent")
    parent = send_row(db, parent_id)

    waiting = committed(db, sends.unacknowledged, send_id=parent_id)
    assert [row.recipient for row in waiting] == ["U2"]
    child_id = committed(db, sends.create_reminder, parent=parent, recipients=waiting, now=now)
    assert child_id is not None
    child = send_row(db, child_id)
    assert (child.reminder_of, child.key, child.state, child.ack) == (
        parent_id,
        f"{parent.key}:reminder",
        "sending",
        True,
    )
    assert [(r.recipient, r.state, r.not_before) for r in deliveries(db, child_id)] == [
        ("U2", "pending", now)
    ]
    assert send_row(db, parent_id).reminded_at == now

    assert committed(db, sends.create_reminder, parent=parent, recipients=waiting, now=now) is None
    assert len(all_sends(db)) == 2


def test_nobody_left_to_remind_means_no_reminder(db: Engine) -> None:
    now = datetime(2027, 3, 3, 12, 0, tzinfo=UTC)
    parent_id, _ = make_send(db, ["U1"], ack=True)
    set_rows(db, parent_id, "U1", state="sent", acked_at=now)
    parent = send_row(db, parent_id)
    waiting = committed(db, sends.unacknowledged, send_id=parent_id)
    assert committed(db, sends.create_reminder, parent=parent, recipients=waiting, now=now) is None
    assert len(all_sends(db)) == 1
    assert send_row(db, parent_id).reminded_at == now


def test_acknowledging_is_recorded_once_and_only_for_the_recipient(db: Engine) -> None:
    now = datetime(2027, 3, 3, 12, 0, tzinfo=UTC)
    send_id, (mine, _theirs) = make_send(db, ["U1", "U2"], ack=True)
    assert committed(db, sends.acknowledge, delivery_id=mine, user_id="U2", now=now) is None
    first = committed(db, sends.acknowledge, delivery_id=mine, user_id="U1", now=now)
    assert first is not None and first.acked_at == now
    again = committed(
        db, sends.acknowledge, delivery_id=mine, user_id="U1", now=now + timedelta(hours=1)
    )
    assert again is not None and again.acked_at == now
    assert [row.acked_at for row in deliveries(db, send_id)] == [now, None]


@pytest.fixture
def mixed(db: Engine) -> int:
    """A send with two sent copies, one pending, one in flight and one failed."""
    send_id, _ = make_send(db, ["U1", "U2", "U3", "U4", "U5"])
    set_rows(db, send_id, "U1", state="sent", channel="DU1", ts="1.1")
    set_rows(db, send_id, "U2", state="sent", channel="DU2", ts="1.2")
    set_rows(db, send_id, "U4", state="failed", error="account_inactive", attempts=3)
    set_rows(db, send_id, "U5", state="sending")
    return send_id


def test_an_update_is_queued_for_every_sent_copy(db: Engine, mixed: int) -> None:
    now = datetime(2027, 3, 3, 12, 0, tzinfo=UTC)
    assert committed(db, sends.request_edit, send_id=mixed, op="update", now=now) == 2
    rows = {row.recipient: row for row in deliveries(db, mixed)}
    assert {r: (row.state, row.op) for r, row in rows.items()} == {
        "U1": ("sent", "update"),
        "U2": ("sent", "update"),
        "U3": ("pending", ""),
        "U4": ("failed", ""),
        "U5": ("sending", ""),
    }
    assert rows["U1"].op_not_before == now


def test_a_recall_deletes_sent_copies_and_stops_the_rest(db: Engine, mixed: int) -> None:
    now = datetime(2027, 3, 3, 12, 0, tzinfo=UTC)
    assert committed(db, sends.request_edit, send_id=mixed, op="delete", now=now) >= 2
    rows = {row.recipient: row for row in deliveries(db, mixed)}
    assert {r: (row.state, row.op) for r, row in rows.items()} == {
        "U1": ("sent", "delete"),
        "U2": ("sent", "delete"),
        "U3": ("cancelled", ""),
        "U4": ("failed", ""),
        # In flight: deleted once its post is recorded.
        "U5": ("sending", "delete"),
    }
    assert rows["U3"].error == "recalled"


def test_recalling_a_send_that_has_not_gone_out_yet_cancels_it(db: Engine) -> None:
    at = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    send_id = committed(
        db, sends.create_adhoc, template="notice", audience=["everyone"], at=at, by="U9"
    )
    assert (
        committed(db, sends.request_edit, send_id=send_id, op="delete", now=at - timedelta(hours=1))
        == 0
    )
    assert send_row(db, send_id).state == "cancelled"
    resolved = sends.resolve_due(
        db=db,
        plan=Plan(),
        rollout=ROLLOUT,
        directory=Directory(PEOPLE),
        content_dir=Path("."),
        now=at,
    )
    assert resolved == [] and deliveries(db, send_id) == []


def test_resend_failed_queues_the_failed_rows_again(db: Engine, mixed: int) -> None:
    now = datetime(2027, 3, 3, 12, 0, tzinfo=UTC)
    with Session(db) as session:
        session.execute(
            update(AnnouncementSend)
            .where(col(AnnouncementSend.id) == mixed)
            .values(state="done", completed_at=now, reported_at=now)
        )
        session.commit()
    assert committed(db, sends.resend_failed, send_id=mixed, now=now) == 1
    (row,) = [row for row in deliveries(db, mixed) if row.recipient == "U4"]
    assert (row.state, row.attempts, row.error, row.not_before) == ("pending", 0, "", now)
    send = send_row(db, mixed)
    assert (send.state, send.completed_at, send.reported_at) == ("sending", None, None)
    assert states(db, mixed)["U1"] == "sent"


def test_cancel_stops_what_has_not_gone_and_keeps_what_has(db: Engine, mixed: int) -> None:
    assert committed(db, sends.cancel, send_id=mixed) == 1
    assert states(db, mixed) == {
        "U1": "sent",
        "U2": "sent",
        "U3": "cancelled",
        "U4": "failed",
        "U5": "sending",  # in flight: the worker sees the cancelled send and stops it
    }
    assert send_row(db, mixed).state == "cancelled"


def test_a_send_cancelled_while_its_audience_is_resolved_stays_cancelled(db: Engine) -> None:
    at = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
    send_id = committed(
        db, sends.create_adhoc, template="notice", audience=["everyone"], at=at, by="U9"
    )
    directory = Directory(PEOPLE, during=lambda: committed(db, sends.cancel, send_id=send_id))
    sends.resolve_due(
        db=db, plan=Plan(), rollout=ROLLOUT, directory=directory, content_dir=Path("."), now=at
    )
    assert send_row(db, send_id).state == "cancelled"
    assert all(row.state == "cancelled" for row in deliveries(db, send_id))
