"""Database helpers for tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlmodel import Session

T = TypeVar("T")


def committed(db: Engine, function: Callable[..., T], /, **arguments: Any) -> T:
    """Call a data function (keyword-only, taking the session) in one transaction, committed,
    as its callers in the bot do."""
    with Session(db, expire_on_commit=False) as session:
        result = function(session=session, **arguments)
        session.commit()
    return result
