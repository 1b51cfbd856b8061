"""The shared rate budget seen from interactive posts (they borrow, the outbox repays) and from
reconcile's searches (a bucket of their own: a 429 there never stops the sending)."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine
from sqlmodel import Session

from bot.core.outbox import LEASE, Budget, SendResult
from bot.store.models import RateBudget
from tests.auxil.outbox import FakeClock, RecordingSender, delivery, make_outbox, make_send


def tokens(db: Engine, name: str) -> float:
    with Session(db) as session:
        row = session.get(RateBudget, name)
    assert row is not None
    return row.tokens


def test_an_interactive_call_borrows_below_zero_and_the_outbox_repays(db: Engine) -> None:
    clock = FakeClock()
    budget = Budget(db, clock=clock.time)
    assert budget.take("posts", rate=2, burst=3, count=3) == 0  # the outbox emptied it
    assert [budget.borrow("posts", rate=2, burst=3) for _ in range(3)] == [0, 0, 0]
    assert tokens(db, "posts") == pytest.approx(-3)
    assert budget.borrow("posts", rate=2, burst=3) == pytest.approx(0.5)  # a burst's debt at most
    assert budget.take("posts", rate=2, burst=3) == pytest.approx(2.0)  # the outbox waits it off
    clock.advance(2.0)
    assert budget.take("posts", rate=2, burst=3) == 0


def test_a_pause_holds_interactive_calls_too(db: Engine) -> None:
    clock = FakeClock()
    budget = Budget(db, clock=clock.time)
    budget.pause("posts", 7)
    assert budget.borrow("posts", rate=20, burst=20) == pytest.approx(7)
    clock.advance(7)
    assert budget.borrow("posts", rate=20, burst=20) == 0


def test_the_edit_debt_is_its_own(db: Engine) -> None:
    clock = FakeClock()
    budget = Budget(db, clock=clock.time)
    assert [budget.borrow("edits", rate=1, burst=1, debt=3) for _ in range(4)] == [0, 0, 0, 0]
    assert budget.borrow("edits", rate=1, burst=1, debt=3) == pytest.approx(1.0)


def test_searches_have_their_own_budget_and_never_hold_up_the_sends(db: Engine) -> None:
    clock = FakeClock()
    sender = RecordingSender(clock=clock)
    outbox = make_outbox(db, sender, clock)
    _send, rows = make_send(db, [f"U{n}" for n in range(6)])
    assert len(outbox.claim(limit=5)) == 5  # five workers died mid-send: five rows in doubt
    clock.advance(LEASE.total_seconds() + 1)

    outbox.drain_once()
    # The search budget (3 tokens, 2 per search of a DM not yet opened) allowed one search;
    # the other rows wait in doubt a little, and the sixth row was sent meanwhile.
    assert len(sender.finds) == 1
    states = [delivery(db, row).state for row in rows]
    assert states == ["sent"] + ["sending"] * 4 + ["sent"]  # the first was not there: sent

    # The next search is answered 429: the searches pause, the sends do not.
    sender.script("find", SendResult(ok=False, error="ratelimited", retry_after=60))
    clock.advance(5)
    outbox.drain_once()
    assert len(sender.finds) == 2
    more = make_send(db, ["U9"])[1]
    clock.advance(5)
    outbox.drain_once()
    assert len(sender.finds) == 2  # paused
    assert delivery(db, more[0]).state == "sent"  # not paused
    clock.advance(60)
    for _ in range(10):
        clock.advance(5)
        outbox.drain_once()
    assert all(delivery(db, row).state == "sent" for row in rows)
    assert len(sender.posts) == 7
