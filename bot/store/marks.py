"""Scheduler marks: how far a plan has been materialised, so a restart knows what it missed."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from bot.store.models import SchedulerMark, as_utc


def read_mark(db: Engine, name: str) -> datetime | None:
    with Session(db) as session:
        mark = session.get(SchedulerMark, name)
        return as_utc(mark.at) if mark else None


def advance_mark(db: Engine, name: str, now: datetime) -> None:
    """Move the mark to `now`; it never moves back (another process may be ahead)."""
    with Session(db) as session:
        mark = session.get(SchedulerMark, name) or SchedulerMark(name=name, at=now)
        mark.at = max(as_utc(mark.at), now)
        session.add(mark)
        try:
            session.commit()
        except IntegrityError:  # another process created it first: theirs is as good
            session.rollback()
