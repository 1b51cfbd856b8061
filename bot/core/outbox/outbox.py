"""The outbox: deliveries are claimed with a lease, sent under one shared rate budget, retried,
and reconciled after a crash, so every recipient gets a message exactly once.

A delivery row goes `pending → sending → sent | failed | skipped | cancelled | unknown`. Each
row has a *kind* (what it is: an announcement, a survey invitation, …), whose registered
renderer turns it into a `Message`, and a *platform*, whose `Sender` posts it. A worker claims
rows of the platforms it has a sender for (`FOR UPDATE SKIP LOCKED` on PostgreSQL; a
conditional update makes it safe on SQLite too), takes a token from the shared budget and
posts. A row found in `sending` with an expired lease is *in doubt*: the platform's sender
looks for it in the recipient's conversation before anything is resent; a platform that cannot
read back answers `CANNOT_TELL` and the row becomes `unknown`, for an operator to resend or
settle (`resolve_unknown`) — never resent silently.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from sqlalchemy import Engine, update
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col, select

from bot.core.messages import Message
from bot.core.outbox.budget import Budget, Limits
from bot.store.models import AuditLog, Delivery, as_utc, utcnow

log = logging.getLogger(__name__)

# What a delivery is; each kind has one renderer, registered by the part of the core that
# writes such rows (announcements, surveys).
ANNOUNCEMENT = "announcement"
ANNOUNCEMENT_REMINDER = "announcement_reminder"
SURVEY_INVITATION = "survey_invitation"  # edited to the "closed" notice when the run closes
SURVEY_REMINDER = "survey_reminder"
SURVEY_SHARE = "survey_share"
SLACK = "slack"

MAX_ATTEMPTS = 6
LEASE = timedelta(seconds=120)  # far longer than one bounded Web API call with its retries
# The longest one post may take (the outbox's Web API client: a 15 s timeout, no retries). A
# post starts only while at least this much of its lease is left, so no other worker can
# reconcile the row and resend it while the post is in flight; a lease must be this long.
POST_BOUND = timedelta(seconds=20)
# The sender's error when a request may have reached the platform but no answer came back (a
# timeout or a dropped connection): the row stays `sending` and reconcile() asks find().
IN_DOUBT = "no_response"
# find()'s answers when the message is not there, and when the platform cannot say.
NOT_FOUND = "not_found"
CANNOT_TELL = "cannot_tell"
# The error an edit gets when the message is no longer there (a delete then counts as done).
GONE = "message_not_found"
# On a platform that cannot read back, a row is marked just before its post: after a crash,
# only marked rows are in doubt; the rest of a claimed batch was never tried and goes back.
POSTING = "posting"


@dataclass(frozen=True)
class SendResult:
    """What the platform said: ok with where the message is, or the platform's error code and
    whether no retry can fix it (the sender knows its platform's codes; the core does not)."""

    ok: bool
    channel: str = ""
    ts: str = ""
    error: str = ""
    retry_after: float | None = None  # seconds, on a 429
    permanent: bool = False


class SkipDelivery(Exception):
    """Raised by a renderer when this recipient should not get the message after all."""


class Cancelled(SkipDelivery):
    """Raised by a renderer when the whole batch was cancelled: the row ends `cancelled`."""


class Sender(Protocol):
    """The platform side of delivery. Implementations never raise for API errors."""

    def post(self, *, recipient: str, message: Message, delivery_id: int) -> SendResult: ...

    def update(self, *, channel: str, ts: str, message: Message) -> SendResult: ...

    def delete(self, *, channel: str, ts: str) -> SendResult: ...

    def find(
        self, *, recipient: str, channel: str, delivery_id: int, since: datetime
    ) -> SendResult:
        """Look for the message carrying `delivery_id` (after a crash mid-post): ok with where
        it is; ok=False with NOT_FOUND when it is surely not there (the outbox sends it);
        CANNOT_TELL when the platform offers no read-back (the row becomes `unknown` for an
        operator); another error when the search failed (tried again later)."""
        ...


Renderer = Callable[[Delivery], Message]


def reads_back(sender: Sender) -> bool:
    """Whether the platform can look for a message after a crash (`find`); a sender says it
    cannot with `reads_back = False` (Teams)."""
    return bool(getattr(sender, "reads_back", True))


class Outbox:
    """Claims, sends, retries and reconciles deliveries. Safe to run in many threads and
    processes at once."""

    def __init__(
        self,
        *,
        db: Engine,
        senders: Mapping[str, Sender],
        renderers: Mapping[str, Renderer] | None = None,
        limits: Limits = Limits(),
        platform_limits: Mapping[str, Limits] | None = None,
        clock: Callable[[], datetime] = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        lease: timedelta = LEASE,
    ) -> None:
        self.db = db
        self.senders = dict(senders)
        self.renderers: dict[str, Renderer] = dict(renderers or {})
        self.limits = limits  # Slack's, and any platform without its own
        self.platform_limits = dict(platform_limits or {})
        self.clock = clock
        self.sleep = sleep
        self.lease = lease  # must outlast one post (the outbox client: 15 s, no retries)
        self.budget = Budget(db)
        self._channel_last: dict[str, float] = {}
        self._channel_lock = threading.Lock()
        # One thread per process and bucket asks the database for tokens; the others queue.
        self._budget_locks = {"posts": threading.RLock(), "edits": threading.RLock()}
        self._held: dict[str, tuple[int, float]] = {}  # bucket -> (tokens taken, unused; until)

    def register(self, kind: str, renderer: Renderer) -> None:
        """Render deliveries of `kind` with `renderer` (one per kind)."""
        if self.renderers.get(kind, renderer) is not renderer:
            raise ValueError(f"a renderer for {kind!r} is registered already")
        self.renderers[kind] = renderer

    def render(self, delivery: Delivery) -> Message:
        renderer = self.renderers.get(delivery.kind)
        if renderer is None:
            raise KeyError(f"no renderer for {delivery.kind!r} deliveries in this process")
        return renderer(delivery)

    def _sender(self, delivery: Delivery) -> Sender:
        return self.senders[delivery.platform]

    def limits_for(self, platform: str) -> Limits:
        """The rate budget of one platform (each has its own buckets in the shared budget)."""
        return self.platform_limits.get(platform, self.limits)

    @staticmethod
    def _bucket(platform: str, name: str) -> str:
        """The shared budget's bucket: Slack's keep their names ("posts", "edits", "reads"),
        which the Slack chat port charges too; other platforms' are their own."""
        return name if platform == SLACK else f"{platform}.{name}"

    # --- claiming ---------------------------------------------------------------------

    def claim(self, *, limit: int = 10) -> list[int]:
        """Lease up to `limit` due pending rows; returns their ids.

        One statement, UPDATE … WHERE id IN (the oldest due rows) … RETURNING: atomic on
        SQLite (one writer at a time); on PostgreSQL `FOR UPDATE SKIP LOCKED` lets concurrent
        workers take different rows. `state = 'pending'` is checked again either way."""
        now = self.clock()
        due = (
            select(Delivery.id)
            .where(
                col(Delivery.state) == "pending",
                col(Delivery.not_before) <= now,
                col(Delivery.platform).in_(list(self.senders)),
            )
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
            delivery = session.get(Delivery, delivery_id)
        if delivery is None or delivery.state != "sending":
            return "gone"
        try:
            message = self.render(delivery)
        except Cancelled:
            return self._finish(delivery_id, state="cancelled", error="cancelled")
        except SkipDelivery as skip:  # e.g. a survey reminder to someone who has since answered
            return self._finish(delivery_id, state="skipped", error=str(skip)[:100])
        except Exception as exc:  # a template that fails for this person: fail the row, say why
            log.error("rendering delivery %s failed: %s", delivery_id, exc)
            return self._finish(delivery_id, state="failed", error="template_error")
        posts = self._bucket(delivery.platform, "posts")
        limits = self.limits_for(delivery.platform)
        self._wait_for_budget(posts, limits.posts_per_second, limits.burst)
        if delivery.target == "channel":
            self._pace_channel(delivery.recipient, limits.per_channel_interval)
        if not self._renew_lease(delivery):
            return "gone"  # the lease ran out while waiting and another worker took the row
        if not reads_back(self._sender(delivery)) and not self._mark_posting(delivery):
            return "gone"
        result = self._sender(delivery).post(
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

    def _mark_posting(self, delivery: Delivery) -> bool:
        with Session(self.db) as session:
            result = session.execute(
                update(Delivery)
                .where(
                    col(Delivery.id) == delivery.id,
                    col(Delivery.state) == "sending",
                    col(Delivery.attempts) == delivery.attempts,
                )
                .values(error=POSTING)
            )
            session.commit()
        return bool(result.rowcount == 1)  # type: ignore[attr-defined]

    def _settle(self, delivery: Delivery, result: SendResult) -> str:
        assert delivery.id is not None
        if result.ok:
            return self._finish(delivery.id, state="sent", channel=result.channel, ts=result.ts)
        if result.retry_after is not None:
            posts = self._bucket(delivery.platform, "posts")
            self.budget.pause(posts, result.retry_after)
            self._held.pop(posts, None)  # this process's unused tokens wait too
            return self._retry(delivery, result.error or "ratelimited", count_attempt=False)
        if result.permanent:
            return self._finish(delivery.id, state="failed", error=result.error)
        if result.error == IN_DOUBT:
            # Slack may have posted it: resending now could duplicate. The row stays `sending`;
            # once its lease runs out, reconcile() looks in the conversation first.
            log.warning("delivery %s: no answer from the platform; check first", delivery.id)
            return "sending"
        return self._retry(delivery, result.error)

    def _retry(self, delivery: Delivery, error: str, *, count_attempt: bool = True) -> str:
        assert delivery.id is not None
        attempts = delivery.attempts if count_attempt else max(0, delivery.attempts - 1)
        if attempts >= MAX_ATTEMPTS:
            return self._finish(delivery.id, state="failed", error=error)
        # Exponential, with jitter: rows that failed together (a 502 burst) come back apart.
        backoff = timedelta(seconds=min(300, 2 ** max(0, attempts)) * random.uniform(0.5, 1.5))
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

    def _pace_channel(self, channel: str, interval: float) -> None:
        """At most one message per `interval` into one channel (Slack: one a second)."""
        with self._channel_lock:
            now = time.monotonic()
            ready = self._channel_last.get(channel, 0.0) + interval
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
                .where(
                    Delivery.state == "sending",
                    col(Delivery.lease_until) < now,
                    col(Delivery.platform).in_(list(self.senders)),
                )
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
            if not reads_back(self._sender(row)) and row.error != POSTING:
                # Claimed in a batch but never tried before the crash: nothing can be there.
                self._back_to_pending(row.id)
                settled += 1
                continue
            # The search has its own budget (conversations.open when the channel is unknown,
            # then conversations.history): when it is spent or paused by a 429, the row waits
            # in doubt and the worker goes on sending instead of waiting here.
            wait = self.budget.take(
                self._bucket(row.platform, "reads"),
                rate=self.limits_for(row.platform).reads_per_second,
                burst=self.limits_for(row.platform).read_burst,
                count=1 if row.channel else 2,
            )
            if wait > 0:
                self._hold_in_doubt(row.id, seconds=max(1.0, wait))
                continue
            # as_utc: SQLite gives naive datetimes, which .timestamp() would take as local time
            since = as_utc(row.claimed_at or now) - timedelta(minutes=5)
            found = self._sender(row).find(
                recipient=row.recipient, channel=row.channel, delivery_id=row.id, since=since
            )
            if found.error == CANNOT_TELL:
                # No read-back on this platform: an operator decides (resolve_unknown).
                self._finish(row.id, state="unknown", error="in_doubt")
                log.warning("delivery %s is in doubt and cannot be checked: unknown", row.id)
            elif found.ok:
                self._finish(row.id, state="sent", channel=found.channel, ts=found.ts)
                log.info("delivery %s was sent before a crash: found in %s", row.id, found.channel)
            elif found.error == NOT_FOUND:
                self._back_to_pending(row.id)
            elif found.permanent:
                self._finish(row.id, state="failed", error=found.error)
            else:
                # The search itself failed (429, outage): leave it in doubt, try later. A 429
                # pauses the searches only; posting goes on.
                self._hold_in_doubt(row.id, seconds=30)
                if found.retry_after:
                    self.budget.pause(self._bucket(row.platform, "reads"), found.retry_after)
                continue
            settled += 1
        return settled

    def _back_to_pending(self, delivery_id: int) -> None:
        with Session(self.db) as session:
            session.execute(
                update(Delivery)
                .where(col(Delivery.id) == delivery_id, col(Delivery.state) == "sending")
                .values(state="pending", lease_until=None, updated_at=self.clock())
            )
            session.commit()

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
                    col(Delivery.platform).in_(list(self.senders)),
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
        if delivery is None or not delivery.op:
            return "gone"
        if not delivery.ts:
            # Recorded as sent by an operator after a post in doubt: where it landed is not
            # known, so it cannot be edited or deleted; say so on the row.
            with Session(self.db) as session:
                session.execute(
                    update(Delivery)
                    .where(col(Delivery.id) == delivery_id)
                    .values(op="", op_not_before=None, error=f"{delivery.op}:message_unknown")
                )
                session.commit()
            return "message_unknown"
        sender = self._sender(delivery)
        edits = self._bucket(delivery.platform, "edits")
        self._wait_for_budget(edits, self.limits_for(delivery.platform).edits_per_second, 1.0)
        if delivery.op == "delete":
            result = sender.delete(channel=delivery.channel, ts=delivery.ts)
        else:
            try:
                message = self.render(delivery)
            except Exception as exc:
                log.error("re-rendering delivery %s failed: %s", delivery_id, exc)
                result = SendResult(ok=False, error="template_error", permanent=True)
            else:
                result = sender.update(channel=delivery.channel, ts=delivery.ts, message=message)
        values: dict[str, object]
        if result.ok or result.permanent:
            values = {"op": "", "op_not_before": None, "updated_at": self.clock()}
            if delivery.op == "delete" and (result.ok or result.error == GONE):
                values["state"] = "deleted"
            if not result.ok:
                values["error"] = f"{delivery.op}:{result.error}"[:100]
        else:
            if result.retry_after is not None:
                self.budget.pause(edits, result.retry_after)
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


def resolve_unknown(
    *, session: Session, delivery_ids: Iterable[int], resend: bool, now: datetime
) -> int:
    """An operator's decision on `unknown` rows (in doubt on a platform that cannot read back):
    resend them (pending again) or record them as sent. Returns how many rows changed."""
    result = session.execute(
        update(Delivery)
        .where(col(Delivery.id).in_(list(delivery_ids)), col(Delivery.state) == "unknown")
        .values(
            state="pending" if resend else "sent",
            error="" if resend else "in_doubt:marked_sent",
            not_before=now,
            updated_at=now,
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def settle_unknown(
    *,
    session: Session,
    delivery_ids: Iterable[int],
    resend: bool,
    actor: str,
    now: datetime,
    note: str = "",
) -> list[int]:
    """An operator's decision on deliveries in doubt, as one operation (the caller commits):
    the rows still `unknown` among `delivery_ids` are locked (PostgreSQL), resent or recorded
    as sent, and the decision is audited. Returns the ids that changed; two operators
    deciding at once cannot both act on a row."""
    query = select(Delivery.id).where(
        col(Delivery.id).in_(list(delivery_ids)), col(Delivery.state) == "unknown"
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update()
    locked = sorted(int(i) for i in session.exec(query).all() if i is not None)
    if not locked:
        return []
    changed = resolve_unknown(session=session, delivery_ids=locked, resend=resend, now=now)
    shown = ", ".join(f"#{i}" for i in locked[:50]) + (" …" if len(locked) > 50 else "")
    session.add(
        AuditLog(
            actor=actor[:40],
            action="announce.settle",
            detail=f"{'resend' if resend else 'mark sent'}: {changed} in doubt: {shown}{note}",
        )
    )
    return locked


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
