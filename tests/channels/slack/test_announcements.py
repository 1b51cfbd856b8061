"""Announcements end to end: the real Service over HTTP, Slack faked on loopback.

The scheduler's tick and the outbox workers are driven step by step (`deliver()`), so every
test is deterministic; FakeSlack records what Slack would have received."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session, col

from bot.channels.slack.sender import EVENT_TYPE
from bot.core.announcements import sends
from bot.core.announcements.templates import ACKNOWLEDGED
from bot.store.models import Delivery, SchedulerMark
from tests.auxil.db import committed
from tests.auxil.outbox import deliveries, delivery
from tests.auxil.running import (
    ADMIN,
    RunningBot,
    block_text,
    bot_settings,
    button,
    buttons,
    running_bot,
)
from tests.slack.fake_slack import Call, FakeSlack

OWNER = "U2"
EMAILS = "name,email\nAlice,alice@example.com\nChika,CHIKA@example.com\nNobody,nobody@example.com\n"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.add_user("U7", name="gus", real_name="Gus Guest", is_restricted=True)
        # A guest and a deactivated user; the bot is not in it (it only reads its members).
        fake.add_channel("C1", name="general", members=["U1", "U2", "U7", "U9"], bot=False)
        # Announcement channel: someone typed /invite @Mobilize there.
        fake.add_channel("C2", name="compass-news", members=["U1", "U2"])
        fake.usergroup_members["S1"] = ["U2", "U3", "UBOT"]
        yield fake


@pytest.fixture
def bot(database_url: str, content_dir: Path, slack: FakeSlack) -> Iterator[RunningBot]:
    (content_dir / "lists").mkdir()
    (content_dir / "lists" / "pilot.csv").write_text(EMAILS, encoding="utf-8")
    settings = bot_settings(
        database_url=database_url,
        content_dir=content_dir,
        slack=slack,
        MOBILIZE_SEND_RATE=1000,
        MOBILIZE_EDIT_RATE=100,
    )
    with running_bot(settings, slack) as running:
        yield running


def send(bot: RunningBot, template: str, *audience: str, by: str = OWNER) -> int:
    """What `mobilize announce send` queues: an ad-hoc send due now."""
    return committed(
        bot.service.db,
        sends.create_adhoc,
        template=template,
        audience=list(audience),
        at=datetime.now(UTC),
        by=by,
        ack=bot.service.announcer.content.templates[template].ack,
    )


def deliver(bot: RunningBot) -> None:
    """What the running bot's scheduler and workers do, one step at a time, until idle."""
    announcer = bot.service.announcer
    for _ in range(20):
        announcer.tick()
        if announcer.outbox.drain_once(batch=100) == 0:
            break
    announcer.tick()  # sends that finished are completed and reported


def copies(slack: FakeSlack) -> list[Call]:
    """Every announcement copy Slack accepted (they carry the delivery id in metadata)."""
    return [
        call
        for call in slack.calls_to("chat.postMessage")
        if call.ok and (call.params.get("metadata") or {}).get("event_type") == EVENT_TYPE
    ]


def delivery_id_of(call: Call) -> int:
    return int(call.params["metadata"]["event_payload"]["delivery_id"])


def reports(slack: FakeSlack, user: str) -> list[Call]:
    return [
        call
        for call in slack.calls_to("chat.postMessage")
        if call.params.get("channel") == user and "Delivery report" in call.params.get("text", "")
    ]


def set_row(bot: RunningBot, delivery_id: int, **values: Any) -> None:
    with Session(bot.service.db) as session:
        session.execute(update(Delivery).where(col(Delivery.id) == delivery_id).values(**values))
        session.commit()


def where(call: Call) -> tuple[str, str]:
    return str(call.response["channel"]), str(call.response["ts"])


# --- every audience kind -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("audience", "expected"),
    [
        ("everyone", ["U1", "U2", "U3"]),  # not the bot, the deactivated user or the guest
        ("members:C1", ["U1", "U2"]),
        ("group:S1", ["U2", "U3"]),
        ("users:U1,U3", ["U1", "U3"]),
        ("emails:lists/pilot.csv", ["U1", "U3"]),
        ("channel:C2", ["C2"]),  # posted once, in the channel
    ],
)
def test_each_audience_kind_gets_exactly_one_copy_each(
    bot: RunningBot, slack: FakeSlack, audience: str, expected: list[str]
) -> None:
    send_id = send(bot, "go-live-day", audience)
    deliver(bot)

    posted = copies(slack)
    assert sorted(call.params["channel"] for call in posted) == expected
    rows = deliveries(bot.service.db, send_id)
    assert sorted(delivery_id_of(call) for call in posted) == [row.id for row in rows]
    by_id = {delivery_id_of(call): call for call in posted}
    for row in rows:
        assert row.state == "sent"
        assert (row.channel, row.ts) == where(by_id[int(row.id or 0)])
    status = bot.service.announcer.status(send_id)
    assert (status["state"], status["sent"], status["total"]) == (
        "done",
        len(expected),
        len(expected),
    )
    (report,) = reports(slack, OWNER)
    assert f"Sent: {len(expected)}" in block_text(report.params["blocks"])


def test_everyone_leaves_out_bots_deactivated_users_and_guests(
    bot: RunningBot, slack: FakeSlack
) -> None:
    send_id = send(bot, "go-live-day", "everyone")
    deliver(bot)
    status = bot.service.announcer.status(send_id)
    assert status["excluded"] == 3
    (report,) = reports(slack, OWNER)
    assert "Left out of the audience: 3" in block_text(report.params["blocks"])


def test_a_channel_copy_greets_everyone_and_a_dm_greets_the_person(
    bot: RunningBot, slack: FakeSlack
) -> None:
    send(bot, "go-live-day", "channel:C2", "users:U1")
    deliver(bot)
    text = {call.params["channel"]: block_text(call.params["blocks"]) for call in copies(slack)}
    assert "Good morning everyone!" in text["C2"]
    assert "Good morning Alice!" in text["U1"]


# --- acknowledgements ---------------------------------------------------------------------


def test_an_acknowledgement_is_recorded_once_and_the_copy_loses_its_button(
    bot: RunningBot, slack: FakeSlack
) -> None:
    announcer = bot.service.announcer
    send_id = send(bot, "peopledesk-read-only", "users:U1,U2", by=ADMIN)
    deliver(bot)
    (copy,) = [call for call in copies(slack) if call.params["channel"] == "U1"]
    ack = button(copy.params["blocks"], "I've read this")
    channel, ts = where(copy)

    assert bot.click(ack, user="U1", channel=channel, message_ts=ts)[0] == 200
    # Shown through the click's response_url (replace_original), not a Tier-3 chat.update.
    (updated,) = slack.wait_for("response_url")
    assert updated.params["replace_original"] is True
    labels = [element["text"]["text"] for element in buttons(updated.params["blocks"])]
    assert labels == ["Save your old documents"]
    assert ACKNOWLEDGED in block_text(updated.params["blocks"])
    row = delivery(bot.service.db, delivery_id_of(copy))
    assert row.acked_at is not None
    assert announcer.status(send_id)["acknowledged"] == 1

    # A second click (from a copy that had not refreshed yet) changes nothing.
    assert bot.click(ack, user="U1", channel=channel, message_ts=ts)[0] == 200
    again = slack.wait_for("response_url", count=2)
    assert again[1].params["blocks"] == updated.params["blocks"]
    assert [call for call in slack.calls_to("chat.update") if call.params.get("ts") == ts] == []
    assert delivery(bot.service.db, delivery_id_of(copy)).acked_at == row.acked_at
    assert announcer.status(send_id)["acknowledged"] == 1

    # The owner's report is kept up to date.
    (report,) = reports(slack, ADMIN)
    announcer.tick()
    refreshed = [
        call
        for call in slack.calls_to("chat.update")
        if call.params.get("ts") == report.response["ts"]
    ]
    assert "Acknowledged: 1 of 2 (50%)" in block_text(refreshed[-1].params["blocks"])


def test_a_channel_copy_has_no_acknowledgement_button(bot: RunningBot, slack: FakeSlack) -> None:
    # A click in a channel cannot say whose acknowledgement it is: only DMs ask for one.
    send(bot, "peopledesk-read-only", "channel:C2", "users:U1")
    deliver(bot)
    labels = {
        call.params["channel"]: [e["text"]["text"] for e in buttons(call.params["blocks"])]
        for call in copies(slack)
    }
    assert labels == {
        "C2": ["Save your old documents"],
        "U1": ["Save your old documents", "I've read this"],
    }


def test_a_reminder_goes_to_who_has_not_acknowledged_and_its_click_counts(
    bot: RunningBot, slack: FakeSlack
) -> None:
    announcer = bot.service.announcer
    clock = [datetime(2027, 3, 31, 7, 30, tzinfo=UTC)]  # PeopleDesk went read-only at 07:00
    announcer.clock = announcer.outbox.clock = lambda: clock[0]
    with Session(bot.service.db) as session:
        session.add(SchedulerMark(name=sends.MARK, at=datetime(2027, 3, 31, 6, 0, tzinfo=UTC)))
        session.commit()
    deliver(bot)
    first = {call.params["channel"]: call for call in copies(slack)}
    assert sorted(first) == ["U1", "U2", "U3"]
    u1 = where(first["U1"])
    bot.click(
        button(first["U1"].params["blocks"], "I've read this"),
        user="U1",
        channel=u1[0],
        message_ts=u1[1],
    )
    slack.wait_for("response_url")

    clock[0] += timedelta(days=1)
    deliver(bot)
    assert len(copies(slack)) == 3  # remind_after_days: 2
    clock[0] += timedelta(days=1)
    deliver(bot)
    reminders = copies(slack)[3:]
    assert sorted(call.params["channel"] for call in reminders) == ["U2", "U3"]
    (to_u2,) = [call for call in reminders if call.params["channel"] == "U2"]
    assert "*Reminder:*" in block_text(to_u2.params["blocks"])

    parent_id = delivery(bot.service.db, delivery_id_of(first["U1"])).send_id
    assert parent_id is not None
    channel, ts = where(to_u2)
    bot.click(
        button(to_u2.params["blocks"], "I've read this"), user="U2", channel=channel, message_ts=ts
    )
    slack.wait_for("response_url", count=2)
    assert announcer.status(parent_id)["acknowledged"] == 2
    clock[0] += timedelta(days=3)
    deliver(bot)
    assert len(copies(slack)) == 5  # one reminder, never a second


# --- errors, 429s and resending --------------------------------------------------------------


def test_a_permanent_error_ends_that_row_with_slacks_code(
    bot: RunningBot, slack: FakeSlack
) -> None:
    slack.fail("chat.postMessage", "account_inactive")
    send_id = send(bot, "go-live-day", "users:U1,U2")
    deliver(bot)

    rows = {row.recipient: row for row in deliveries(bot.service.db, send_id)}
    assert (rows["U1"].state, rows["U1"].error) == ("failed", "account_inactive")
    assert rows["U2"].state == "sent"
    attempts = [c for c in slack.calls_to("chat.postMessage") if c.params["channel"] == "U1"]
    assert len(attempts) == 1  # no retry can fix it
    status = bot.service.announcer.status(send_id)
    assert {k: status[k] for k in ("state", "sent", "failed", "failures")} == {
        "state": "done",
        "sent": 1,
        "failed": 1,
        "failures": {"account_inactive": 1},
    }
    (report,) = reports(slack, OWNER)
    assert "`account_inactive` ×1" in block_text(report.params["blocks"])


def test_resend_failed_delivers_to_those_it_failed_for_once(
    bot: RunningBot, slack: FakeSlack
) -> None:
    slack.fail("chat.postMessage", "account_inactive")
    send_id = send(bot, "go-live-day", "users:U1,U2")
    deliver(bot)
    assert bot.service.announcer.status(send_id)["failed"] == 1

    assert (
        committed(bot.service.db, sends.resend_failed, send_id=send_id, now=datetime.now(UTC)) == 1
    )
    deliver(bot)
    assert sorted(call.params["channel"] for call in copies(slack)) == ["U1", "U2"]
    status = bot.service.announcer.status(send_id)
    assert (status["state"], status["sent"], status["failed"], status["failures"]) == (
        "done",
        2,
        0,
        {},
    )
    assert len(reports(slack, OWNER)) == 2  # reported again once the resend finished


def test_a_429_is_honoured_then_the_message_is_sent(bot: RunningBot, slack: FakeSlack) -> None:
    slack.rate_limit("chat.postMessage", retry_after=1)
    send_id = send(bot, "go-live-day", "users:U1,U2")
    deliver(bot)

    calls = [c for c in slack.calls_to("chat.postMessage") if c.params["channel"] in {"U1", "U2"}]
    (limited,) = [c for c in calls if c.status == 429]
    assert sorted(call.params["channel"] for call in copies(slack)) == ["U1", "U2"]
    later = [c for c in calls if c.ok]
    # Every worker waited out the Retry-After, not just the one that was told.
    assert min(c.at for c in later) - limited.at >= 0.9
    rows = {row.recipient: row for row in deliveries(bot.service.db, send_id)}
    assert rows["U1"].state == rows["U2"].state == "sent"
    assert rows["U1"].attempts == 1  # a 429 is not an attempt


# --- update, recall, cancel ---------------------------------------------------------------------


def test_an_update_re_renders_and_edits_every_copy(
    bot: RunningBot, slack: FakeSlack, content_dir: Path
) -> None:
    send_id = send(bot, "go-live-day", "users:U1,U2", "channel:C2")
    deliver(bot)
    sent = {where(call) for call in copies(slack)}
    template = content_dir / "messages" / "announcements" / "go-live-day.md"
    template.write_text(
        template.read_text(encoding="utf-8").replace(
            "Thank you for getting ready for this.", "Welcome aboard."
        ),
        encoding="utf-8",
    )
    assert bot.service.announcer.load() == []

    assert (
        committed(
            bot.service.db, sends.request_edit, send_id=send_id, op="update", now=datetime.now(UTC)
        )
        == 3
    )
    deliver(bot)
    edits = [call for call in slack.calls_to("chat.update") if call.ok]
    assert sorted((c.params["channel"], c.params["ts"]) for c in edits) == sorted(sent)
    assert all("Welcome aboard." in block_text(c.params["blocks"]) for c in edits)
    assert len(copies(slack)) == 3  # edited, not posted again
    assert [row.op for row in deliveries(bot.service.db, send_id)] == ["", "", ""]


def test_a_recall_deletes_every_copy(bot: RunningBot, slack: FakeSlack) -> None:
    send_id = send(bot, "go-live-day", "users:U1,U2", "channel:C2")
    deliver(bot)
    sent = {where(call) for call in copies(slack)}

    assert (
        committed(
            bot.service.db, sends.request_edit, send_id=send_id, op="delete", now=datetime.now(UTC)
        )
        == 3
    )
    deliver(bot)
    deletes = [call for call in slack.calls_to("chat.delete") if call.ok]
    assert sorted((c.params["channel"], c.params["ts"]) for c in deletes) == sorted(sent)
    for channel, ts in sent:
        assert all(message["ts"] != ts for message in slack.messages.get(channel, []))
    status = bot.service.announcer.status(send_id)
    assert (status["deleted"], status["sent"]) == (3, 0)


def test_a_cancelled_send_is_not_posted(bot: RunningBot, slack: FakeSlack) -> None:
    send_id = send(bot, "go-live-day", "users:U1,U2")
    bot.service.announcer.tick()  # the audience is resolved: two rows wait for a worker
    assert committed(bot.service.db, sends.cancel, send_id=send_id) == 2
    deliver(bot)
    assert copies(slack) == []
    status = bot.service.announcer.status(send_id)
    assert (status["state"], status["skipped"], status["sent"]) == ("cancelled", 2, 0)


# --- previews ---------------------------------------------------------------------------------


def test_an_admin_gets_a_preview_and_anyone_else_an_answer(
    bot: RunningBot, slack: FakeSlack
) -> None:
    bot.dm("preview go-live-day", user=ADMIN)
    (preview,) = slack.wait_for("chat.postMessage", where=lambda c: c.params["channel"] == "DU3")
    text = block_text(preview.params["blocks"])
    assert "Preview of `go-live-day`" in text and "Compass is live" in text

    bot.dm("preview go-live-day", user="U1")
    (answer,) = slack.wait_for("chat.postMessage", where=lambda c: c.params["channel"] == "DU1")
    assert "Preview of" not in block_text(answer.params["blocks"])
    assert copies(slack) == []

    bot.dm("preview no-such-thing", user=ADMIN)
    replies = slack.wait_for(
        "chat.postMessage", count=2, where=lambda c: c.params["channel"] == "DU3"
    )
    text = block_text(replies[1].params["blocks"])
    assert "No template `no-such-thing`" in text and "go-live-day" in text


def test_a_member_of_the_admin_group_is_an_admin(
    database_url: str, content_dir: Path, slack: FakeSlack
) -> None:
    """With exactly the manifest's scopes, MOBILIZE_ADMIN_GROUP resolves (usergroups:read,
    form arguments) and its members may preview."""
    slack.usergroup_members["S0ADMINS"] = ["U2"]
    settings = bot_settings(
        database_url=database_url,
        content_dir=content_dir,
        slack=slack,
        MOBILIZE_ADMINS="",
        MOBILIZE_ADMIN_GROUP="S0ADMINS",
    )
    with running_bot(settings, slack) as running:
        running.dm("preview go-live-day", user="U2")
        (preview,) = slack.wait_for(
            "chat.postMessage", where=lambda c: c.params["channel"] == "DU2"
        )
    assert "Preview of `go-live-day`" in block_text(preview.params["blocks"])
    (lookup,) = slack.calls_to("usergroups.users.list")
    assert lookup.ok and lookup.params["usergroup"] == "S0ADMINS"


def test_a_channel_the_bot_is_not_in_is_left_out_and_named(
    bot: RunningBot, slack: FakeSlack
) -> None:
    slack.add_channel("C3", name="warehouse", members=["U1"], bot=False)
    send(bot, "go-live-day", "channel:C3", "channel:C2")
    deliver(bot)
    assert [c.params["channel"] for c in copies(slack)] == ["C2"]
    assert not [c for c in slack.calls_to("chat.postMessage") if c.params["channel"] == "C3"]
    (report,) = reports(slack, OWNER)
    assert "channel the bot is not in" in report.params["text"] + json.dumps(
        report.params.get("blocks")
    )


# --- crash recovery ------------------------------------------------------------------------------


def test_a_copy_posted_just_before_a_crash_is_found_and_not_sent_again(
    bot: RunningBot, slack: FakeSlack
) -> None:
    announcer = bot.service.announcer
    send_id = send(bot, "go-live-day", "users:U1,U2")
    announcer.tick()
    u1, u2 = deliveries(bot.service.db, send_id)
    assert u1.id is not None
    # A worker claimed U1's row, posted it, and was killed before it could record that.
    message = announcer.render_delivery(u1)
    posted = announcer.outbox.senders["slack"].post(
        recipient="U1", message=message, delivery_id=u1.id
    )
    assert posted.ok
    # FakeSlack's clock starts at ts 1700000000 (2023), so the claim is dated just before the
    # post, as it would be against Slack: the search looks from the claim onwards.
    claimed = datetime.fromtimestamp(float(posted.ts), UTC) - timedelta(seconds=1)
    set_row(
        bot,
        u1.id,
        state="sending",
        attempts=1,
        claimed_at=claimed,
        lease_until=datetime.now(UTC) - timedelta(seconds=1),
    )

    deliver(bot)
    row = delivery(bot.service.db, u1.id)
    assert (row.state, row.channel, row.ts) == ("sent", posted.channel, posted.ts)
    assert [call.params["channel"] for call in copies(slack)] == ["U1", "U2"]  # U1's only once
    assert [m["ts"] for m in slack.messages["DU1"] if m.get("metadata")] == [posted.ts]
    history = slack.calls_to("conversations.history")
    assert [call.params["channel"] for call in history] == ["DU1"]
    assert delivery(bot.service.db, int(u2.id or 0)).state == "sent"


def test_a_row_left_sending_whose_post_never_happened_is_posted_once(
    bot: RunningBot, slack: FakeSlack
) -> None:
    announcer = bot.service.announcer
    send_id = send(bot, "go-live-day", "users:U1")
    announcer.tick()
    (u1,) = deliveries(bot.service.db, send_id)
    now = datetime.now(UTC)
    set_row(
        bot,
        int(u1.id or 0),
        state="sending",
        attempts=1,
        claimed_at=now - timedelta(minutes=3),
        lease_until=now - timedelta(minutes=1),
    )
    deliver(bot)
    assert [call.params["channel"] for call in copies(slack)] == ["U1"]
    assert delivery(bot.service.db, int(u1.id or 0)).state == "sent"
    assert len(slack.calls_to("conversations.history")) == 1


# --- downtime -----------------------------------------------------------------------------------


def test_after_downtime_recent_occurrences_are_sent_and_older_ones_reported_missed(
    bot: RunningBot, slack: FakeSlack
) -> None:
    announcer = bot.service.announcer
    now = datetime(2027, 4, 1, 12, 0, tzinfo=UTC)  # Thursday, back at noon
    announcer.clock = announcer.outbox.clock = lambda: now
    with Session(bot.service.db) as session:  # the bot last ran on Monday 29 March
        session.add(SchedulerMark(name=sends.MARK, at=datetime(2027, 3, 29, tzinfo=UTC)))
        session.commit()

    deliver(bot)
    missed = [
        call
        for call in slack.calls_to("chat.postMessage")
        if call.params["channel"] == ADMIN and "Missed announcement" in call.params["text"]
    ]
    assert sorted(block_text(call.params["blocks"]).split("`")[1] for call in missed) == [
        "go-live-countdown@2027-03-30T09:30",
        "go-live-countdown@2027-03-31T09:30",
        "peopledesk-read-only@2027-03-31T08:00",
    ]
    # This morning's countdown (09:30 BST, 2.5 hours ago) is within the grace window: sent.
    assert sorted(call.params["channel"] for call in copies(slack)) == ["U1", "U2", "U3"]
    assert "5 days until Compass goes live" in copies(slack)[0].params["text"]
