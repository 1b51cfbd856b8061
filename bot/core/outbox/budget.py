"""The outbox's shared rate budget: a token bucket in the database that every worker of every
process takes from, and the shared pause a 429's Retry-After puts on it."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, case, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from bot.store.models import RateBudget


@dataclass(frozen=True)
class Limits:
    """The rate budget. Defaults follow Slack's published limits; all configurable."""

    posts_per_second: float = 20.0  # workspace-wide cap across every worker and process
    burst: float = 20.0
    edits_per_second: float = 0.8  # Tier 3 (50+/min) for chat.update / chat.delete
    per_channel_interval: float = 1.0  # Slack: 1 message per second per channel
    # Reconcile's searches (conversations.open / conversations.history, Tier 3) have a bucket
    # of their own: a 429 there must not stop the sending.
    reads_per_second: float = 0.8
    read_burst: float = 3.0


class Budget:
    """A token bucket in the database, shared by every worker of every process.

    A 429's Retry-After pauses the whole bucket, so all workers wait, not just the one hit."""

    def __init__(self, db: Engine, *, clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.clock = clock

    def take(self, name: str, *, rate: float, burst: float, count: int = 1) -> float:
        """Take `count` tokens (all or none, at most `burst`); returns 0 when taken, else the
        seconds to wait before trying again.

        One conditional UPDATE computes the refill and takes the token, so it is atomic on
        every database: a read-then-write lets two workers on SQLite (where FOR UPDATE does
        nothing) take the same token, and the bucket then hands out more than `rate`."""
        count = max(1, min(count, int(burst)))
        return self._withdraw(name, rate=rate, burst=burst, count=count, floor=0.0)

    def borrow(self, name: str, *, rate: float, burst: float, debt: float | None = None) -> float:
        """Take one token for an interactive call (an answer, a notice, a confirmation), which
        must not queue behind the outbox: it may take the bucket below zero, down to `-debt`
        (a burst's worth by default), and the outbox's workers repay by waiting. Returns 0 when
        taken, else the seconds to wait: a 429's pause, or the debt at its limit."""
        floor = -(burst if debt is None else debt)
        return self._withdraw(name, rate=rate, burst=burst, count=1, floor=floor)

    def _withdraw(self, name: str, *, rate: float, burst: float, count: int, floor: float) -> float:
        """Take `count` tokens if the bucket stays at or above `floor` and is not paused."""
        now = self.clock()
        refilled = RateBudget.tokens + (now - col(RateBudget.updated)) * rate
        level = case((refilled > burst, burst), else_=refilled)
        with self.db.begin() as connection:
            taken = connection.execute(
                update(RateBudget)
                .where(
                    col(RateBudget.name) == name,
                    col(RateBudget.paused_until) <= now,
                    level - count >= floor,
                )
                .values(tokens=level - count, updated=now)
            )
        if taken.rowcount == 1:
            return 0.0
        with Session(self.db) as session:
            row = session.get(RateBudget, name)
            if row is None:
                try:
                    session.add(RateBudget(name=name, tokens=burst, updated=now))
                    session.commit()
                except IntegrityError:
                    session.rollback()
                return self._withdraw(name, rate=rate, burst=burst, count=count, floor=floor)
            if row.paused_until > now:
                return row.paused_until - now
            tokens = min(burst, row.tokens + (now - row.updated) * rate)
            return max(0.001, (floor + count - tokens) / rate)

    def pause(self, name: str, seconds: float) -> None:
        """Hold every worker on this bucket for `seconds` (a Retry-After). The bucket is empty
        when the pause ends and refills from then on: no burst straight after a 429."""
        until = self.clock() + seconds
        later = case((col(RateBudget.paused_until) > until, RateBudget.paused_until), else_=until)
        with Session(self.db) as session:
            paused = session.execute(
                update(RateBudget)
                .where(col(RateBudget.name) == name)
                .values(paused_until=later, updated=later, tokens=0.0)
            )
            if paused.rowcount == 0:  # type: ignore[attr-defined]
                session.add(RateBudget(name=name, tokens=0.0, updated=until, paused_until=until))
            try:
                session.commit()
            except IntegrityError:  # created meanwhile: pause that one
                session.rollback()
                self.pause(name, seconds)
