"""The audit log: who did what, when."""

from sqlalchemy import Engine
from sqlmodel import Session

from bot.store.models import AuditLog


def record(db: Engine, *, actor: str, action: str, detail: str = "") -> None:
    with Session(db) as session:
        session.add(AuditLog(actor=actor, action=action, detail=detail))
        session.commit()
