"""SQLModel tables. Times are timezone-aware and stored in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)


class EmbeddingVector(SQLModel, table=True):
    """A cached sentence embedding, keyed by model and a hash of the text."""

    __tablename__ = "embedding_vector"
    model: str = Field(primary_key=True, max_length=200)
    text_hash: str = Field(primary_key=True, max_length=64)
    dim: int
    vector: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class SlackEvent(SQLModel, table=True):
    """An event id already handled: a retried delivery of it is acknowledged and dropped."""

    __tablename__ = "slack_event"
    event_id: str = Field(primary_key=True, max_length=64)
    received_at: datetime = Field(default_factory=utcnow, index=True)


class QuestionLog(SQLModel, table=True):
    """A question someone asked and what the bot decided."""

    __tablename__ = "question_log"
    id: int | None = Field(default=None, primary_key=True)
    asked_at: datetime = Field(default_factory=utcnow, index=True)
    platform: str = Field(default="slack", max_length=20)
    user_id: str = Field(default="", max_length=40)
    channel_id: str = Field(default="", max_length=40)
    thread_ts: str = Field(default="", max_length=40)
    text: str = Field(sa_column=Column(Text, nullable=False))
    decision: str = Field(max_length=10)  # answer | suggest | unknown
    entry_id: str | None = Field(default=None, max_length=200, index=True)
    score: float = 0.0
    suggestions: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))


class Feedback(SQLModel, table=True):
    """A reaction to an answer: helpful, not_helpful, picked (a "did you mean" pick) or none."""

    __tablename__ = "feedback"
    id: int | None = Field(default=None, primary_key=True)
    question_id: int = Field(foreign_key="question_log.id", index=True)
    kind: str = Field(max_length=20)
    entry_id: str | None = Field(default=None, max_length=200)
    user_id: str = Field(default="", max_length=40)
    created_at: datetime = Field(default_factory=utcnow)


class LearnedAlternate(SQLModel, table=True):
    """A phrasing an admin approved as a new alternate of an entry; the matcher uses it at once."""

    __tablename__ = "learned_alternate"
    __table_args__ = (UniqueConstraint("entry_id", "text"),)
    id: int | None = Field(default=None, primary_key=True)
    entry_id: str = Field(max_length=200, index=True)
    text: str = Field(max_length=2000)
    approved_by: str = Field(default="", max_length=40)
    created_at: datetime = Field(default_factory=utcnow)


class Escalation(SQLModel, table=True):
    """A question handed to a person in the support channel."""

    __tablename__ = "escalation"
    id: int | None = Field(default=None, primary_key=True)
    question_id: int | None = Field(default=None, foreign_key="question_log.id")
    asker_id: str = Field(max_length=40, index=True)
    asker_channel: str = Field(max_length=40)
    asker_thread_ts: str = Field(default="", max_length=40)
    text: str = Field(sa_column=Column(Text, nullable=False))
    support_channel: str = Field(default="", max_length=40)
    support_ts: str = Field(default="", max_length=40, index=True)
    state: str = Field(default="open", max_length=10)  # open | claimed | resolved
    claimed_by: str = Field(default="", max_length=40)
    resolved_by: str = Field(default="", max_length=40)
    last_reply: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class AuditLog(SQLModel, table=True):
    """Who did what, when: every admin action."""

    __tablename__ = "audit_log"
    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(max_length=40)
    action: str = Field(max_length=60)
    detail: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
