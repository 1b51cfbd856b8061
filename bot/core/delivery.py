"""The outbox: deliveries are claimed with a lease, sent under one shared rate budget, retried,
and reconciled after a crash, so every recipient gets a message exactly once.

A delivery row goes `pending → sending → sent | failed | skipped | cancelled`. A worker claims
rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL; a conditional update makes it safe on SQLite
too), takes a token from the shared budget and posts. A row found in `sending` with an expired
lease is *in doubt*: its message carries the delivery id in Slack message metadata, so the
recipient's conversation is searched before anything is resent.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine, case, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from bot.core.messages import Message
from bot.store.models import AnnouncementSend, Delivery, RateBudget, as_utc, utcnow

log = logging.getLogger(__name__)

# Slack errors that no retry can fix: the row ends as failed with that code.
PERMANENT_ERRORS = frozenset(
    {
        "user_not_found",
        "users_not_found",
        "account_inactive",
        "user_disabled",
        "channel_not_found",
        "not_in_channel",
        "is_archived",
        "channel_is_archived",
        "cannot_dm_bot",
        "messages_tab_disabled",
        "restricted_action",
        "invalid_blocks",
        "invalid_metadata_format",
        "msg_too_long",
        "no_text",
        "invalid_auth",
        "not_authed",
        "token_revoked",
        "missing_scope",
        "message_not_found",
        "cant_update_message",
        "cant_delete_message",
        "edit_window_closed",
        "template_error",
    }
)
MAX_ATTEMPTS = 6
LEASE = timedelta(seconds=120)  # far longer than one bounded Web API call with its retries
# The longest one post may take (the outbox's Web API client: a 15 s timeout, no retries). A
# post starts only while at least this much of its lease is left, so no other worker can
# reconcile the row and resend it while the post is in flight; a lease must be this long.
POST_BOUND = timedelta(seconds=20)
# The sender's error when a request may have reached Slack but no answer came back (a timeout
# or a dropped connection): the row stays `sending` and reconcile() checks the conversation.
IN_DOUBT = "no_response"


@dataclass(frozen=True)
class SendResult:
    """What the platform said: ok with where the message is, or Slack's error code."""

    ok: bool
    channel: str = ""
    ts: str = ""
    error: str = ""
    retry_after: float | None = None  # seconds, on a 429

    @property
    def permanent(self) -> bool:
        return not self.ok and self.error in PERMANENT_ERRORS


class SkipDelivery(Exception):
    """Raised by a renderer when this recipient should not get the message after all."""


class Sender(Protocol):
    """The platform side of delivery. Implementations never raise for API errors."""

    def post(self, *, recipient: str, message: Message, delivery_id: int) -> SendResult: ...

    def update(self, *, channel: str, ts: str, message: Message) -> SendResult: ...

    def delete(self, *, channel: str, ts: str) -> SendResult: ...

    def find(
        self, *, recipient: str, channel: str, delivery_id: int, since: datetime
    ) -> SendResult:
        """Look for the message carrying `delivery_id`: ok with its ts, ok=False with
        error "not_found" when it is not there, or another error when the search failed."""
        ...


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
        now = self.clock()
        count = max(1, min(count, int(burst)))
        refilled = RateBudget.tokens + (now - col(RateBudget.updated)) * rate
        level = case((refilled > burst, burst), else_=refilled)
        with self.db.begin() as connection:
            taken = connection.execute(
                update(RateBudget)
                .where(
                    col(RateBudget.name) == name,
                    col(RateBudget.paused_until) <= now,
                    level >= count,
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
                return self.take(name, rate=rate, burst=burst, count=count)
            if row.paused_until > now:
                return row.paused_until - now
            tokens = min(burst, row.tokens + (now - row.updated) * rate)
            return max(0.001, (count - tokens) / rate)

    def borrow(self, name: str, *, rate: float, burst: float, debt: float | None = None) -> float:
        """Take one token for an interactive call (an answer, a notice, a confirmation), which
        must not queue behind the outbox: it may take the bucket below zero, down to `-debt`
        (a burst's worth by default), and the outbox's workers repay by waiting. Returns 0 when
        taken, else the seconds to wait: a 429's pause, or the debt at its limit. One
        conditional UPDATE, like `take()`."""
        now = self.clock()
        floor = -(burst if debt is None else debt)
        refilled = RateBudget.tokens + (now - col(RateBudget.updated)) * rate
        level = case((refilled > burst, burst), else_=refilled)
        with self.db.begin() as connection:
            taken = connection.execute(
                update(RateBudget)
                .where(
                    col(RateBudget.name) == name,
                    col(RateBudget.paused_until) <= now,
                    level - 1 >= floor,
                )
                .values(tokens=level - 1, updated=now)
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
                return self.borrow(name, rate=rate, burst=burst, debt=debt)
            if row.paused_until > now:
                return row.paused_until - now
            tokens = min(burst, row.tokens + (now - row.updated) * rate)
            return max(0.001, (floor + 1 - tokens) / rate)

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


Renderer = Callable[[Delivery, AnnouncementSend], Message]


class Outbox:
    """Claims, sends, retries and reconciles deliveries. Safe to run in many threads and
    processes at once."""

    def __init__(
        self,
        *,
        db: Engine,
        sender: Sender,
        render: Renderer,
        limits: Limits = Limits(),
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        lease: timedelta = LEASE,
    ) -> None:
        self.db = db
        self.sender = sender
        self.render = render
        self.limits = limits
        self.clock = clock
        self.sleep = sleep
        self.lease = lease  # must outlast one post (the outbox client: 15 s, no retries)
        self.budget = Budget(db)
        self._channel_last: dict[str, float] = {}
        self._channel_lock = threading.Lock()
        # One thread per process and bucket asks the database for tokens; the others queue.
        self._budget_locks = {"posts": threading.RLock(), "edits": threading.RLock()}
        self._held: dict[str, tuple[int, float]] = {}  # bucket -> (tokens taken, unused; until)

    # --- claiming ---------------------------------------------------------------------

    def claim(self, *, limit: int = 10) -> list[int]:
        """Lease up to `limit` due pending rows; returns their ids.

        One statement, UPDATE … WHERE id IN (the oldest due rows) … RETURNING: atomic on
        SQLite (one writer at a time); on PostgreSQL `FOR UPDATE SKIP LOCKED` lets concurrent
        workers take different rows. `state = 'pending'` is checked again either way."""
        now = self.clock()
        due = (
            select(Delivery.id)
            .where(col(Delivery.state) == "pending", col(Delivery.not_before) <= now)
            .order_by(col(Delivery.not_before), col(Delivery.id))
            .limit(limit)
            .with_for_update(skip_locked=True)
            # A CTE: PostgreSQL may rerun a plain `IN (subquery)` per row, and a LIMIT …
            # SKIP LOCKED subquery rerun that way takes far more than `limit` rows.
            .cte("due")
        )
        with self.db.begin() as connection:
            rows = connection.execute(
                update(Delivery)
                .where(col(Delivery.id).in_(select(due.c.id)), col(Delivery.state) == "pending")
                .values(
                    state="sending",
                    lease_until=now + self.lease,
                    claimed_at=now,
                    attempts=Delivery.attempts + 1,
                    updated_at=now,
                )
                .returning(col(Delivery.id), col(Delivery.not_before))
            ).all()
        return [int(row[0] or 0) for row in sorted(rows, key=lambda row: (row[1], row[0] or 0))]

    # --- sending ----------------------------------------------------------------------

    def deliver(self, delivery_id: int) -> str:
        """Send one claimed row; returns its new state."""
        with Session(self.db) as session:
            found = session.exec(
                select(Delivery, AnnouncementSend)
                .join(AnnouncementSend, col(AnnouncementSend.id) == col(Delivery.send_id))
                .where(col(Delivery.id) == delivery_id)
            ).first()
        if found is None or found[0].state != "sending":
            return "gone"
        delivery, send = found
        if send.state == "cancelled":
            return self._finish(delivery_id, state="cancelled", error="cancelled")
        try:
            message = self.render(delivery, send)
        except SkipDelivery as skip:  # e.g. a survey reminder to someone who has since answered
            return self._finish(delivery_id, state="skipped", error=str(skip)[:100])
        except Exception as exc:  # a template that fails for this person: fail the row, say why
            log.error("rendering delivery %s failed: %s", delivery_id, exc)
            return self._finish(delivery_id, state="failed", error="template_error")
        self._wait_for_budget("posts", self.limits.posts_per_second, self.limits.burst)
        if delivery.kind == "channel":
            self._pace_channel(delivery.recipient)
        if not self._renew_lease(delivery):
            return "gone"  # the lease ran out while waiting and another worker took the row
        result = self.sender.post(
            recipient=delivery.recipient, message=message, delivery_id=delivery_id
        )
        return self._settle(delivery, result)

    def _renew_lease(self, delivery: Delivery) -> bool:
        """Make sure this worker's lease outlasts the post it is about to make: renew it when
        less than POST_BOUND is left (a long wait for the budget); False when the row is no
        longer the one it claimed (reconciled or claimed again after the lease ran out)."""
        if delivery.lease_until and as_utc(delivery.lease_until) - self.clock() >= POST_BOUND:
            return True  # nobody can take the row over before this post is done
        with Session(self.db) as session:
            result = session.execute(
                update(Delivery)
                .where(
                    col(Delivery.id) == delivery.id,
                    col(Delivery.state) == "sending",
                    col(Delivery.attempts) == delivery.attempts,
                    col(Delivery.lease_until) == delivery.lease_until,
                )
                .values(lease_until=self.clock() + self.lease)
            )
            session.commit()
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def _settle(self, delivery: Delivery, result: SendResult) -> str:
        assert delivery.id is not None
        if result.ok:
            return self._finish(delivery.id, state="sent", channel=result.channel, ts=result.ts)
        if result.retry_after is not None:
            self.budget.pause("posts", result.retry_after)
            self._held.pop("posts", None)  # this process's unused tokens wait too
            return self._retry(delivery, result.error or "ratelimited", count_attempt=False)
        if result.permanent:
            return self._finish(delivery.id, state="failed", error=result.error)
        if result.error == IN_DOUBT:
            # Slack may have posted it: resending now could duplicate. The row stays `sending`;
            # once its lease runs out, reconcile() looks in the conversation first.
            log.warning("delivery %s: no answer from Slack; check before resending", delivery.id)
            return "sending"
        return self._retry(delivery, result.error)

    def _retry(self, delivery: Delivery, error: str, *, count_attempt: bool = True) -> str:
        assert delivery.id is not None
        attempts = delivery.attempts if count_attempt else max(0, delivery.attempts - 1)
        if attempts >= MAX_ATTEMPTS:
            return self._finish(delivery.id, state="failed", error=error)
        backoff = timedelta(seconds=min(300, 2 ** max(0, attempts)))
        with Session(self.db) as session:
            session.execute(
                update(Delivery)
                .where(col(Delivery.id) == delivery.id, col(Delivery.state) == "sending")
                .values(
                    state="pending",
                    lease_until=None,
                    error=error[:100],
                    attempts=attempts,
                    not_before=self.clock() + (backoff if count_attempt else timedelta(0)),
                    updated_at=self.clock(),
                )
            )
            session.commit()
        return "pending"

    def _finish(
        self, delivery_id: int, *, state: str, error: str = "", channel: str = "", ts: str = ""
    ) -> str:
        values: dict[str, object] = {
            "state": state,
            "lease_until": None,
            "error": error[:100],
            "updated_at": self.clock(),
        }
        if channel:
            values["channel"] = channel
        if ts:
            values["ts"] = ts
        with self.db.begin() as connection:
            connection.execute(
                update(Delivery).where(col(Delivery.id) == delivery_id).values(**values)
            )
        return state

    def _wait_for_budget(self, name: str, rate: float, burst: float) -> None:
        """Take a token from the shared bucket. The lock is held while sleeping: the other
        workers of this process wait here instead of all polling the bucket (each poll is a
        write transaction). Above 40/s the tokens come a twentieth of a second's worth at a
        time and the rest are used by the next workers; unused, they lapse after that time."""
        with self._budget_locks.setdefault(name, threading.RLock()):
            held, until = self._held.get(name, (0, 0.0))
            if held > 0 and self.budget.clock() < until:
                self._held[name] = (held - 1, until)
                return
            count = max(1, min(int(burst), int(rate / 20)))
            while True:
                wait = self.budget.take(name, rate=rate, burst=burst, count=count)
                if wait <= 0:
                    self._held[name] = (count - 1, self.budget.clock() + count / rate)
                    return
                self.sleep(min(wait, 5.0))

    def _pace_channel(self, channel: str) -> None:
        """At most one message per second into one channel (Slack's per-channel limit)."""
        with self._channel_lock:
            now = time.monotonic()
            ready = self._channel_last.get(channel, 0.0) + self.limits.per_channel_interval
            self._channel_last[channel] = max(now, ready)
        if ready > now:
            self.sleep(ready - now)

    # --- crash recovery ---------------------------------------------------------------

    def reconcile(self, *, limit: int = 50) -> int:
        """Settle rows whose lease expired while `sending`: sent if the recipient's
        conversation holds the message, else pending again. Returns how many were settled."""
        now = self.clock()
        # The rows are read after the commit below: keep their attributes loaded.
        with Session(self.db, expire_on_commit=False) as session:
            doubtful = session.exec(
                select(Delivery)
                .where(Delivery.state == "sending", col(Delivery.lease_until) < now)
                .order_by(col(Delivery.id))
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            taken = []
            for row in doubtful:
                result = session.execute(
                    update(Delivery)
                    .where(
                        col(Delivery.id) == row.id,
                        col(Delivery.state) == "sending",
                        col(Delivery.lease_until) == row.lease_until,
                    )
                    .values(lease_until=now + self.lease, updated_at=now)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    taken.append(row)
            session.commit()
        settled = 0
        for row in taken:
            assert row.id is not None
            # The search has its own budget (conversations.open when the channel is unknown,
            # then conversations.history): when it is spent or paused by a 429, the row waits
            # in doubt and the worker goes on sending instead of waiting here.
            wait = self.budget.take(
                "reads",
                rate=self.limits.reads_per_second,
                burst=self.limits.read_burst,
                count=1 if row.channel else 2,
            )
            if wait > 0:
                self._hold_in_doubt(row.id, seconds=max(1.0, wait))
                continue
            # as_utc: SQLite gives naive datetimes, which .timestamp() would take as local time
            since = as_utc(row.claimed_at or now) - timedelta(minutes=5)
            found = self.sender.find(
                recipient=row.recipient, channel=row.channel, delivery_id=row.id, since=since
            )
            if found.ok:
                self._finish(row.id, state="sent", channel=found.channel, ts=found.ts)
                log.info("delivery %s was sent before a crash: found in %s", row.id, found.channel)
            elif found.error == "not_found":
                with Session(self.db) as session:
                    session.execute(
                        update(Delivery)
                        .where(col(Delivery.id) == row.id, col(Delivery.state) == "sending")
                        .values(state="pending", lease_until=None, updated_at=self.clock())
                    )
                    session.commit()
            elif found.permanent:
                self._finish(row.id, state="failed", error=found.error)
            else:
                # The search itself failed (429, outage): leave it in doubt, try later. A 429
                # pauses the searches only; posting goes on.
                self._hold_in_doubt(row.id, seconds=30)
                if found.retry_after:
                    self.budget.pause("reads", found.retry_after)
                continue
            settled += 1
        return settled

    def _hold_in_doubt(self, delivery_id: int, *, seconds: float) -> None:
        """Leave a row in doubt for `seconds` more before the next search."""
        with Session(self.db) as session:
            session.execute(
                update(Delivery)
                .where(col(Delivery.id) == delivery_id)
                .values(lease_until=self.clock() + timedelta(seconds=seconds))
            )
            session.commit()

    # --- edits: update and recall -------------------------------------------------------

    def claim_edits(self, *, limit: int = 5) -> list[int]:
        now = self.clock()
        with Session(self.db) as session:
            candidates = session.exec(
                select(Delivery.id)
                .where(
                    col(Delivery.op).in_(["update", "delete"]),
                    col(Delivery.op_not_before) <= now,
                    # A copy still in flight is edited once its post is recorded.
                    col(Delivery.state) == "sent",
                )
                .order_by(col(Delivery.id))
                .limit(limit)
                .with_for_update(skip_locked=True)
            ).all()
            claimed = []
            for delivery_id in candidates:
                result = session.execute(
                    update(Delivery)
                    .where(col(Delivery.id) == delivery_id, col(Delivery.op_not_before) <= now)
                    .values(op_not_before=now + self.lease)
                )
                if result.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(int(delivery_id or 0))
            session.commit()
        return claimed

    def edit(self, delivery_id: int) -> str:
        """Apply a pending update or delete to a sent copy, at Tier-3 pace."""
        with Session(self.db) as session:
            delivery = session.get(Delivery, delivery_id)
            send = session.get(AnnouncementSend, delivery.send_id) if delivery else None
        if delivery is None or send is None or not delivery.op:
            return "gone"
        self._wait_for_budget("edits", self.limits.edits_per_second, 1.0)
        if delivery.op == "delete":
            result = self.sender.delete(channel=delivery.channel, ts=delivery.ts)
        else:
            try:
                message = self.render(delivery, send)
            except Exception as exc:
                log.error("re-rendering delivery %s failed: %s", delivery_id, exc)
                result = SendResult(ok=False, error="template_error")
            else:
                result = self.sender.update(
                    channel=delivery.channel, ts=delivery.ts, message=message
                )
        values: dict[str, object]
        if result.ok or result.permanent:
            values = {"op": "", "op_not_before": None, "updated_at": self.clock()}
            if delivery.op == "delete" and (result.ok or result.error == "message_not_found"):
                values["state"] = "deleted"
            if not result.ok:
                values["error"] = f"{delivery.op}:{result.error}"[:100]
        else:
            if result.retry_after is not None:
                self.budget.pause("edits", result.retry_after)
            values = {"op_not_before": self.clock() + timedelta(seconds=result.retry_after or 5)}
        with Session(self.db) as session:
            session.execute(
                update(Delivery).where(col(Delivery.id) == delivery_id).values(**values)
            )
            session.commit()
        return "done" if result.ok else result.error

    # --- running ----------------------------------------------------------------------

    def drain_once(self, *, batch: int = 10) -> int:
        """Reconcile, then send one batch of posts and edits; returns how many rows moved."""
        moved = self.reconcile()
        for delivery_id in self.claim(limit=batch):
            self.deliver(delivery_id)
            moved += 1
        for delivery_id in self.claim_edits():
            self.edit(delivery_id)
            moved += 1
        return moved

    def run(self, stop: threading.Event, *, idle: float = 1.0, batch: int = 10) -> None:
        """Drain until `stop` is set; sleeps `idle` seconds when there is nothing to do."""
        while not stop.is_set():
            try:
                moved = self.drain_once(batch=batch)
            except OperationalError as exc:  # database briefly unavailable or locked
                log.warning("outbox: database error, retrying: %s", exc.orig)
                moved = 0
            except Exception:
                log.exception("outbox worker error")
                moved = 0
            if not moved:
                stop.wait(idle)


def counts(db: Engine, send_id: int) -> dict[str, int]:
    """Deliveries of one send by state, plus `acknowledged`."""
    from sqlalchemy import func

    with Session(db) as session:
        rows = session.exec(
            select(Delivery.state, func.count())
            .where(Delivery.send_id == send_id)
            .group_by(Delivery.state)
        ).all()
        acked = session.exec(
            select(func.count()).where(
                Delivery.send_id == send_id, col(Delivery.acked_at).is_not(None)
            )
        ).one()
    found = {str(state): int(number) for state, number in rows}
    found["acknowledged"] = int(acked)
    return found
