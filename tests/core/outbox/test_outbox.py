"""The outbox: leases, exactly-once posting, retries, the shared 429 pause, reconciliation after
a crash, edits and the token budget, with a recording Sender and a fixed clock."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from bot.core.announcements.sends import cancel, request_edit
from bot.core.messages import Message, say
from bot.core.outbox import (
    CANNOT_TELL,
    IN_DOUBT,
    LEASE,
    MAX_ATTEMPTS,
    Budget,
    Limits,
    Outbox,
    SendResult,
    counts,
    resolve_unknown,
)
from bot.store.db import make_engine
from bot.store.models import Delivery, RateBudget, as_utc
from tests.auxil.db import committed
from tests.auxil.outbox import (
    T0,
    FakeClock,
    RecordingSender,
    deliveries,
    delivery,
    make_outbox,
    make_send,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def sender(clock: FakeClock) -> RecordingSender:
    return RecordingSender(clock=clock)


@pytest.fixture
def outbox(db: Engine, sender: RecordingSender, clock: FakeClock) -> Outbox:
    return make_outbox(db, sender, clock)


@pytest.fixture
def second_db(database_url: str, db: Engine) -> Iterator[Engine]:
    """Another engine on the same database: what a second process would use."""
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def paused_until(db: Engine, name: str) -> float:
    with Session(db) as session:
        row = session.get(RateBudget, name)
    return row.paused_until if row else 0.0


# --- claiming -----------------------------------------------------------------------------


def test_claim_leases_due_rows_oldest_first(db: Engine, outbox: Outbox, clock: FakeClock) -> None:
    _send, ids = make_send(db, ["U1", "U2", "U3"])
    _later, (later,) = make_send(db, ["U4"], now=T0 + timedelta(minutes=5))

    assert outbox.claim(limit=2) == ids[:2]
    row = delivery(db, ids[0])
    assert (row.state, row.lease_until, row.claimed_at, row.attempts) == (
        "sending",
        T0 + LEASE,
        T0,
        1,
    )
    assert outbox.claim(limit=10) == [ids[2]]  # the row due in five minutes waits
    clock.advance(300)
    assert outbox.claim(limit=10) == [later]
    assert outbox.claim(limit=10) == []


def test_a_claimed_row_is_not_claimed_again_by_another_outbox(
    db: Engine, second_db: Engine, clock: FakeClock
) -> None:
    _send, ids = make_send(db, ["U1", "U2"])
    first = make_outbox(db, RecordingSender(), clock)
    second = make_outbox(second_db, RecordingSender(), clock)
    assert first.claim() == ids
    assert second.claim() == []


def test_outboxes_claiming_at_once_never_both_get_a_row(
    db: Engine, second_db: Engine, clock: FakeClock
) -> None:
    _send, ids = make_send(db, [f"U{n:03d}" for n in range(120)])
    outboxes = [make_outbox(engine, RecordingSender(), clock) for engine in (db, second_db)]
    claimed: list[list[int]] = []
    errors: list[BaseException] = []

    def work(outbox: Outbox) -> None:
        mine: list[int] = []
        try:
            while batch := outbox.claim(limit=7):
                mine.extend(batch)
        except BaseException as exc:  # surfaced below: a thread's failure must fail the test
            errors.append(exc)
        claimed.append(mine)

    threads = [threading.Thread(target=work, args=(outboxes[n % 2],)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    every = [delivery_id for mine in claimed for delivery_id in mine]
    assert sorted(every) == sorted(ids)  # each row exactly once, none lost


# --- sending ------------------------------------------------------------------------------


def test_each_row_is_posted_once_with_its_delivery_id_and_where_it_landed_is_kept(
    db: Engine, outbox: Outbox, sender: RecordingSender
) -> None:
    send_id, ids = make_send(db, ["U1", "C1"])
    assert outbox.drain_once() == 2
    assert [(p.recipient, p.delivery_id) for p in sender.posts] == [("U1", ids[0]), ("C1", ids[1])]
    rows = deliveries(db, send_id)
    assert [(r.state, r.channel, r.ts, r.error, r.lease_until) for r in rows] == [
        ("sent", "DU1", sender.posts[0].ts, "", None),
        ("sent", "C1", sender.posts[1].ts, "", None),
    ]
    assert outbox.drain_once() == 0
    assert len(sender.posts) == 2
    assert counts(db, send_id) == {"sent": 2, "acknowledged": 0}


def test_posts_into_one_channel_are_a_second_apart(
    db: Engine, outbox: Outbox, sender: RecordingSender, clock: FakeClock
) -> None:
    make_send(db, ["C1"])
    make_send(db, ["C1"])
    outbox.drain_once()
    assert len(sender.posts) == 2
    assert len(clock.slept) == 1 and 0.5 < clock.slept[0] <= 1.0


@pytest.mark.parametrize("code", ["account_inactive", "channel_not_found", "cannot_dm_bot"])
def test_a_permanent_error_ends_the_row_with_slacks_code(
    db: Engine, outbox: Outbox, sender: RecordingSender, clock: FakeClock, code: str
) -> None:
    sender.script("post", SendResult(ok=False, error=code, permanent=True))
    send_id, (row_id,) = make_send(db, ["U1"])
    outbox.drain_once()
    row = delivery(db, row_id)
    assert (row.state, row.error, row.attempts) == ("failed", code, 1)
    clock.advance(3600)
    assert outbox.drain_once() == 0
    assert len(sender.attempts) == 1
    assert counts(db, send_id)["failed"] == 1


def test_a_transient_error_is_retried_after_a_backoff(
    db: Engine, outbox: Outbox, sender: RecordingSender, clock: FakeClock
) -> None:
    sender.script("post", SendResult(ok=False, error="internal_error"))
    _send, (row_id,) = make_send(db, ["U1"])
    outbox.drain_once()
    row = delivery(db, row_id)
    assert (row.state, row.error) == ("pending", "internal_error")
    wait = (as_utc(row.not_before) - T0).total_seconds()
    assert 1 <= wait <= 3  # 2 s, with jitter
    clock.advance(wait - 0.1)
    assert outbox.drain_once() == 0
    clock.advance(0.1)
    assert outbox.drain_once() == 1
    row = delivery(db, row_id)
    assert (row.state, row.attempts) == ("sent", 2)
    assert len(sender.posts) == 1


def test_backoff_grows_until_max_attempts_then_the_row_fails(
    db: Engine, outbox: Outbox, sender: RecordingSender, clock: FakeClock
) -> None:
    sender.script("post", *[SendResult(ok=False, error="service_unavailable")] * MAX_ATTEMPTS)
    _send, (row_id,) = make_send(db, ["U1"])
    waits = []
    for attempt in range(1, MAX_ATTEMPTS):
        outbox.drain_once()
        row = delivery(db, row_id)
        assert (row.state, row.attempts) == ("pending", attempt)
        waits.append((row.not_before - clock.now()).total_seconds())
        clock.advance(waits[-1])
    outbox.drain_once()
    row = delivery(db, row_id)
    assert (row.state, row.error, row.attempts) == ("failed", "service_unavailable", MAX_ATTEMPTS)
    # Doubling each time, each with up to ±50% jitter (rows failing together come back apart).
    assert all(2**n / 2 <= wait <= 2**n * 1.5 for n, wait in enumerate(waits, start=1)), waits
    assert len(sender.attempts) == MAX_ATTEMPTS and sender.posts == []


def test_a_template_that_fails_for_a_recipient_fails_that_row(
    db: Engine, sender: RecordingSender, clock: FakeClock
) -> None:
    def render(row: Delivery) -> Message:
        if row.recipient == "U2":
            raise ValueError("boom")
        return say("hi")

    outbox = make_outbox(db, sender, clock)
    outbox.renderers["announcement"] = render
    send_id, _ids = make_send(db, ["U1", "U2"])
    outbox.drain_once()
    assert [(r.state, r.error) for r in deliveries(db, send_id)] == [
        ("sent", ""),
        ("failed", "template_error"),
    ]


# --- 429: one pause for everyone ------------------------------------------------------------


def test_a_429_pauses_every_worker_for_its_retry_after(
    db: Engine, second_db: Engine, sender: RecordingSender, clock: FakeClock
) -> None:
    first = make_outbox(db, sender, clock)
    second = make_outbox(second_db, sender, clock)  # another process on the same database
    _send, (hit, other) = make_send(db, ["U1", "U2"])
    sender.script("post", SendResult(ok=False, error="ratelimited", retry_after=30))

    assert first.deliver(first.claim(limit=1)[0]) == "pending"
    row = delivery(db, hit)
    assert (row.state, row.attempts, row.not_before) == ("pending", 0, T0)  # a 429 is no attempt
    assert paused_until(db, "posts") == (T0 + timedelta(seconds=30)).timestamp()
    assert Budget(second_db, clock=clock.time).take("posts", rate=1000, burst=1000) == 30

    assert second.drain_once() == 2
    assert 30 <= sum(clock.slept) < 31
    assert [p.recipient for p in sender.posts] == ["U1", "U2"]
    assert all(p.at is not None and p.at >= T0 + timedelta(seconds=30) for p in sender.posts)
    assert delivery(db, hit).state == delivery(db, other).state == "sent"


def test_edits_wait_for_their_own_budget_not_for_paused_posts(
    db: Engine, sender: RecordingSender, clock: FakeClock
) -> None:
    outbox = make_outbox(
        db, sender, clock, limits=Limits(posts_per_second=1000, burst=1000, edits_per_second=0.5)
    )
    send_id, _ids = make_send(db, ["U1", "U2", "U3"])
    outbox.drain_once()
    assert clock.slept == []

    assert committed(db, request_edit, send_id=send_id, op="update", now=clock.now()) == 3
    while outbox.drain_once():
        pass
    assert [(channel, ts) for channel, ts, _m in sender.updates] == [
        (p.channel, p.ts) for p in sender.posts
    ]
    assert clock.slept == [pytest.approx(2.0), pytest.approx(2.0)]  # 0.5/s, no burst
    assert [(r.state, r.op) for r in deliveries(db, send_id)] == [("sent", "")] * 3

    outbox.budget.pause("posts", 600)
    clock.slept.clear()
    assert committed(db, request_edit, send_id=send_id, op="delete", now=clock.now()) == 3
    while outbox.drain_once():
        pass
    assert sender.deletes == [(p.channel, p.ts) for p in sender.posts]
    assert max(clock.slept) < 600
    assert [(r.state, r.op) for r in deliveries(db, send_id)] == [("deleted", "")] * 3
    assert len(sender.posts) == 3


def test_a_copy_in_flight_during_a_recall_is_deleted_once_its_post_is_recorded(
    db: Engine, outbox: Outbox, sender: RecordingSender, clock: FakeClock
) -> None:
    send_id, (row_id,) = make_send(db, ["U1"])
    (claimed,) = outbox.claim()
    committed(db, request_edit, send_id=send_id, op="delete", now=clock.now())
    assert outbox.claim_edits() == []  # nothing to delete yet
    assert outbox.deliver(claimed) == "sent"
    outbox.drain_once()
    assert sender.deletes == [(sender.posts[0].channel, sender.posts[0].ts)]
    assert delivery(db, row_id).state == "deleted"


def test_a_failed_edit_keeps_the_copy_and_says_why(
    db: Engine, outbox: Outbox, sender: RecordingSender, clock: FakeClock
) -> None:
    send_id, (row_id,) = make_send(db, ["U1"])
    outbox.drain_once()
    sender.script("delete", SendResult(ok=False, error="ratelimited", retry_after=7))
    sender.script("delete", SendResult(ok=False, error="cant_delete_message", permanent=True))
    committed(db, request_edit, send_id=send_id, op="delete", now=clock.now())
    outbox.drain_once()
    row = delivery(db, row_id)
    assert (row.state, row.op, row.op_not_before) == ("sent", "delete", T0 + timedelta(seconds=7))
    assert paused_until(db, "edits") == (T0 + timedelta(seconds=7)).timestamp()
    clock.advance(7)
    outbox.drain_once()
    row = delivery(db, row_id)
    assert (row.state, row.op, row.error) == ("sent", "", "delete:cant_delete_message")


# --- cancelled ------------------------------------------------------------------------------


def test_a_cancelled_send_is_not_posted(
    db: Engine, outbox: Outbox, sender: RecordingSender
) -> None:
    send_id, _ids = make_send(db, ["U1", "U2"])
    assert committed(db, cancel, send_id=send_id) == 2
    assert outbox.drain_once() == 0
    assert [(r.state, r.error) for r in deliveries(db, send_id)] == [("cancelled", "cancelled")] * 2
    assert sender.attempts == []


def test_rows_claimed_before_a_cancel_are_not_posted(
    db: Engine, outbox: Outbox, sender: RecordingSender
) -> None:
    send_id, _ids = make_send(db, ["U1", "U2"])
    claimed = outbox.claim()
    committed(db, cancel, send_id=send_id)
    assert [outbox.deliver(delivery_id) for delivery_id in claimed] == ["cancelled"] * 2
    assert sender.attempts == []


# --- crash recovery ---------------------------------------------------------------------------


def test_an_in_doubt_row_found_in_the_conversation_is_marked_sent_without_a_repost(
    db: Engine, outbox: Outbox, sender: RecordingSender, clock: FakeClock
) -> None:
    _send, (row_id,) = make_send(db, ["U1"])
    assert outbox.claim() == [row_id]
    posted = sender.post(recipient="U1", message=say("hi"), delivery_id=row_id)
    # ...and the worker died before it could record it.

    clock.advance(LEASE.total_seconds() - 1)
    assert outbox.drain_once() == 0  # a live lease is left alone
    assert sender.finds == []

    clock.advance(2)
    assert outbox.drain_once() == 1
    row = delivery(db, row_id)
    assert (row.state, row.channel, row.ts) == ("sent", posted.channel, posted.ts)
    assert len(sender.posts) == 1
    assert sender.finds == [("U1", "", row_id, T0 - timedelta(minutes=5))]


def test_an_in_doubt_row_not_found_is_posted_once(
    db: Engine, outbox: Outbox, sender: RecordingSender, clock: FakeClock
) -> None:
    _send, (row_id,) = make_send(db, ["U1"])
    outbox.claim()  # the worker died before posting
    clock.advance(LEASE.total_seconds() + 1)
    assert outbox.reconcile() == 1
    assert delivery(db, row_id).state == "pending"
    outbox.drain_once()
    assert [p.delivery_id for p in sender.posts] == [row_id]
    assert delivery(db, row_id).state == "sent"
    outbox.drain_once()
    assert len(sender.posts) == 1


def test_an_in_doubt_row_stays_in_doubt_when_the_search_fails(
    db: Engine, outbox: Outbox, sender: RecordingSender, clock: FakeClock
) -> None:
    _send, (row_id,) = make_send(db, ["U1"])
    outbox.claim()
    clock.advance(LEASE.total_seconds() + 1)
    sender.script("find", SendResult(ok=False, error="internal_error"))
    sender.script("find", SendResult(ok=False, error="ratelimited", retry_after=20))

    assert outbox.drain_once() == 0
    row = delivery(db, row_id)
    assert (row.state, row.lease_until) == ("sending", clock.now() + timedelta(seconds=30))
    assert sender.attempts == []

    clock.advance(31)
    assert outbox.drain_once() == 0
    assert delivery(db, row_id).state == "sending"
    # A 429 on the search pauses the searches only, never the sends.
    assert paused_until(db, "reads") == (clock.now() + timedelta(seconds=20)).timestamp()
    assert paused_until(db, "posts") == 0.0
    assert sender.attempts == []

    clock.advance(31)
    outbox.drain_once()  # the search works now: not there, so it is posted, once
    assert delivery(db, row_id).state == "sent"
    assert len(sender.posts) == 1 and len(sender.finds) == 3


def test_an_in_doubt_row_whose_recipient_is_gone_fails(
    db: Engine, outbox: Outbox, sender: RecordingSender, clock: FakeClock
) -> None:
    _send, (row_id,) = make_send(db, ["U1"])
    outbox.claim()
    clock.advance(LEASE.total_seconds() + 1)
    sender.script("find", SendResult(ok=False, error="user_disabled", permanent=True))
    assert outbox.reconcile() == 1
    row = delivery(db, row_id)
    assert (row.state, row.error) == ("failed", "user_disabled")
    assert sender.attempts == []


def test_a_worker_that_waited_past_its_lease_does_not_post_a_row_taken_over(
    db: Engine, second_db: Engine, sender: RecordingSender, clock: FakeClock
) -> None:
    slow = make_outbox(db, sender, clock)
    other = make_outbox(second_db, sender, clock)
    _send, (row_id,) = make_send(db, ["U1"])
    slow.budget.pause("posts", LEASE.total_seconds() + 60)  # a long Retry-After
    (claimed,) = slow.claim()
    taken_over: list[int] = []

    def meanwhile() -> None:
        # While `slow` waits for the budget its lease runs out; another worker reconciles the
        # row (not in the conversation), claims it and posts it.
        if clock.now() > T0 + LEASE and not taken_over:
            taken_over.append(row_id)
            other.drain_once()

    clock.on_sleep.append(meanwhile)
    slow.deliver(claimed)
    assert taken_over == [row_id]
    assert [p.delivery_id for p in sender.posts] == [row_id]  # once, not twice
    assert delivery(db, row_id).state == "sent"


# --- the budget -----------------------------------------------------------------------------


def test_budget_tokens_refill_at_the_rate_up_to_the_burst(db: Engine, second_db: Engine) -> None:
    clock = FakeClock()
    budget = Budget(db, clock=clock.time)

    def take() -> float:
        return budget.take("posts", rate=2, burst=3)

    assert [take(), take(), take()] == [0, 0, 0]
    assert take() == pytest.approx(0.5)
    clock.advance(0.25)
    assert take() == pytest.approx(0.25)
    clock.advance(0.25)
    assert take() == 0
    clock.advance(60)  # a long quiet spell fills the bucket only to the burst
    assert [take(), take(), take()] == [0, 0, 0]
    assert take() == pytest.approx(0.5)


def test_a_pause_holds_every_budget_user_until_it_ends(db: Engine, second_db: Engine) -> None:
    clock = FakeClock()
    budget = Budget(db, clock=clock.time)
    elsewhere = Budget(second_db, clock=clock.time)
    assert budget.take("posts", rate=10, burst=10) == 0
    budget.pause("posts", 10)
    assert budget.take("posts", rate=10, burst=10) == pytest.approx(10)
    clock.advance(4)
    assert elsewhere.take("posts", rate=10, burst=10) == pytest.approx(6)
    elsewhere.pause("posts", 2)  # a shorter Retry-After does not shorten the pause
    assert budget.take("posts", rate=10, burst=10) == pytest.approx(6)
    assert budget.take("edits", rate=1, burst=1) == 0  # other buckets run on
    clock.advance(5.9)
    assert elsewhere.take("posts", rate=10, burst=10) > 0
    clock.advance(0.5)
    assert elsewhere.take("posts", rate=10, burst=10) == 0


# --- kinds and platforms ---------------------------------------------------------------------


def _move(db: Engine, row_ids: list[int], **values: object) -> None:
    with Session(db) as session:
        for row_id in row_ids:
            row = session.get(Delivery, row_id)
            assert row is not None
            for name, value in values.items():
                setattr(row, name, value)
            session.add(row)
        session.commit()


def test_each_kind_is_rendered_by_its_own_renderer(
    db: Engine, outbox: Outbox, sender: RecordingSender
) -> None:
    _send, (_first, second) = make_send(db, ["U1", "U2"])
    _move(db, [second], kind="survey_invitation")
    outbox.register("survey_invitation", lambda row: say(f"survey for {row.recipient}"))
    outbox.drain_once()
    assert sorted(post.message.plain for post in sender.posts) == [
        "*notice* for U1",
        "survey for U2",
    ]
    with pytest.raises(ValueError, match="registered already"):
        outbox.register("survey_invitation", lambda row: say("another"))


def test_a_kind_without_a_renderer_fails_its_row(db: Engine, outbox: Outbox) -> None:
    _send, (row_id,) = make_send(db, ["U1"])
    _move(db, [row_id], kind="survey_share")
    outbox.drain_once()
    assert (delivery(db, row_id).state, delivery(db, row_id).error) == (
        "failed",
        "template_error",
    )


def test_rows_of_a_platform_without_a_sender_here_are_left_alone(
    db: Engine, outbox: Outbox, sender: RecordingSender
) -> None:
    _send, (_slack_row, teams_row) = make_send(db, ["U1", "U2"])
    _move(db, [teams_row], platform="teams")
    outbox.drain_once()
    assert [post.recipient for post in sender.posts] == ["U1"]
    assert delivery(db, teams_row).state == "pending"  # for a process with a Teams sender


class NoReadBack(RecordingSender):
    """A platform that cannot look up what it posted (as Teams)."""

    reads_back = False

    def find(
        self, *, recipient: str, channel: str, delivery_id: int, since: datetime
    ) -> SendResult:
        self.finds.append((recipient, channel, delivery_id, since))
        return SendResult(ok=False, error=CANNOT_TELL)


def test_an_in_doubt_row_on_a_platform_without_read_back_becomes_unknown(
    db: Engine, clock: FakeClock
) -> None:
    sender = NoReadBack(clock=clock)
    sender.script("post", SendResult(ok=False, error=IN_DOUBT))  # no answer came back
    outbox = make_outbox(db, sender, clock)
    send_id, (row_id, untried) = make_send(db, ["U1", "U2"])
    claimed = outbox.claim(limit=2)
    outbox.deliver(claimed[0])  # U1's post got no answer; then the process died
    clock.advance(LEASE.total_seconds() + 1)
    assert outbox.reconcile() == 2
    row = delivery(db, row_id)
    assert (row.state, row.error) == ("unknown", "in_doubt")
    # U2 was claimed in the same batch but never tried: it goes back, it is not in doubt.
    assert delivery(db, untried).state == "pending"
    outbox.drain_once()
    assert [post.recipient for post in sender.posts] == ["U2"]
    sender.posts.clear()
    outbox.drain_once()
    clock.advance(LEASE.total_seconds() + 1)
    outbox.drain_once()
    assert sender.posts == []  # never resent on its own
    assert counts(db, send_id)["unknown"] == 1

    # An operator decides: resend.
    with Session(db) as session:
        assert resolve_unknown(session=session, delivery_ids=[row_id], resend=True, now=clock.now())
        session.commit()
    outbox.drain_once()
    assert [post.recipient for post in sender.posts] == ["U1"]
    assert delivery(db, row_id).state == "sent"


def test_an_unknown_row_can_be_marked_sent(db: Engine, clock: FakeClock) -> None:
    sender = NoReadBack(clock=clock)
    sender.script("post", SendResult(ok=False, error=IN_DOUBT))
    outbox = make_outbox(db, sender, clock)
    _send, (row_id,) = make_send(db, ["U1"])
    outbox.drain_once()  # posted, no answer: in doubt
    clock.advance(LEASE.total_seconds() + 1)
    outbox.reconcile()
    assert delivery(db, row_id).state == "unknown"
    with Session(db) as session:
        resolve_unknown(session=session, delivery_ids=[row_id], resend=False, now=clock.now())
        session.commit()
    outbox.drain_once()
    assert sender.posts == [] and delivery(db, row_id).state == "sent"


def test_a_copy_recorded_as_sent_by_an_operator_cannot_be_edited_and_says_so(
    db: Engine, outbox: Outbox, sender: RecordingSender, clock: FakeClock
) -> None:
    # After a post in doubt on a platform that cannot read back, an operator recorded the row
    # as sent: where the message is, is not known, so an update or recall cannot reach it.
    send_id, (row_id,) = make_send(db, ["U1"])
    with Session(db) as session:
        row = session.get(Delivery, row_id)
        assert row is not None
        row.state, row.error = "unknown", "in_doubt"
        session.add(row)
        session.commit()
        resolve_unknown(session=session, delivery_ids=[row_id], resend=False, now=clock.now())
        session.commit()
    assert committed(db, request_edit, send_id=send_id, op="update", now=clock.now()) == 1
    while outbox.drain_once():
        pass
    row = delivery(db, row_id)
    assert (row.state, row.op, row.error) == ("sent", "", "update:message_unknown")
    assert sender.updates == [] and sender.posts == []
