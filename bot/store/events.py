"""Which incoming events have been handled: each answered at least once and at most once.

Slack retries an event it got no quick 200 for (after about 1 and 5 minutes), with the same
`event_id`; the Bot Framework may deliver a Teams activity again (keyed `teams:` + a hash of
its conversation and activity ids). The ledger is claimed before an event is handled and
marked handled after its answer is posted. A retry of a handled event is dropped; a retry of an
event claimed but never handled (the process died in between) is handled again, once the claim
is `stale`.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

from sqlalchemy import Engine, delete, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from bot.store.models import SlackEvent, utcnow

log = logging.getLogger(__name__)


class EventLedger:
    """Claims and completions of event ids, in the database (shared by processes)."""

    def __init__(
        self,
        db: Engine,
        *,
        stale: timedelta = timedelta(seconds=30),
        keep: timedelta = timedelta(days=2),
        prune_every: float = 3600.0,
    ) -> None:
        self.db = db
        self.stale = stale
        self.keep = keep
        self.prune_every = prune_every
        self._pruned = 0.0
        self._lock = threading.Lock()

    def claim(self, event_id: str) -> bool:
        """True when this process should handle the event now."""
        self._maybe_prune()
        with Session(self.db) as session:
            session.add(SlackEvent(event_id=event_id))
            try:
                session.commit()
                return True
            except IntegrityError:
                session.rollback()
            row = session.get(SlackEvent, event_id)
            if row is None or row.handled_at is not None:
                return False
            now = utcnow()
            # Taken over only when the earlier claim is stale, and by one claimant only.
            taken = session.execute(
                update(SlackEvent)
                .where(
                    col(SlackEvent.event_id) == event_id,
                    col(SlackEvent.handled_at).is_(None),
                    col(SlackEvent.received_at) < now - self.stale,
                )
                .values(received_at=now)
            )
            session.commit()
            if taken.rowcount == 1:  # type: ignore[attr-defined]
                log.warning("event %s was claimed but never handled; handling it again", event_id)
                return True
            return False

    def done(self, event_id: str) -> None:
        """The event's answer is out: a retry of it is dropped from now on."""
        with Session(self.db) as session:
            session.execute(
                update(SlackEvent)
                .where(col(SlackEvent.event_id) == event_id)
                .values(handled_at=utcnow())
            )
            session.commit()

    def prune(self) -> int:
        """Forget event ids older than `keep` (Slack retries for minutes, not days)."""
        with Session(self.db) as session:
            result = session.execute(
                delete(SlackEvent).where(col(SlackEvent.received_at) < utcnow() - self.keep)
            )
            session.commit()
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    def _maybe_prune(self) -> None:
        with self._lock:
            if time.monotonic() - self._pruned < self.prune_every and self._pruned:
                return
            self._pruned = time.monotonic()
        try:
            self.prune()
        except Exception:  # pruning is housekeeping; never fail an event over it
            log.exception("pruning old Slack event ids failed")
