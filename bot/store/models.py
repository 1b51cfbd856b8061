"""SQLModel tables. Times are timezone-aware and stored in UTC."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import Column, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    """Now, aware, in UTC."""
    return datetime.now(UTC)


def as_utc(moment: datetime) -> datetime:
    """An aware UTC datetime; naive values (as some drivers return them) are taken as UTC."""
    return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)


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
    handled_at: datetime | None = None


class QuestionLog(SQLModel, table=True):
    """A question someone asked and what the bot decided."""

    __tablename__ = "question_log"
    id: int | None = Field(default=None, primary_key=True)
    asked_at: datetime = Field(default_factory=utcnow, index=True)
    platform: str = Field(default="slack", max_length=20)
    user_id: str = Field(default="", max_length=40)
    channel_id: str = Field(default="", max_length=255)  # Teams conversation ids are long
    thread_ts: str = Field(default="", max_length=255)
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
    asker_channel: str = Field(max_length=255)  # Teams conversation ids are long
    asker_thread_ts: str = Field(default="", max_length=255)
    text: str = Field(sa_column=Column(Text, nullable=False))
    support_channel: str = Field(default="", max_length=255)
    support_ts: str = Field(default="", max_length=255, index=True)
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


# --- Announcements: the outbox ------------------------------------------------------------


class AnnouncementSend(SQLModel, table=True):
    """One announcement going out: an occurrence of the plan or an ad-hoc send.

    `key` is unique (the plan occurrence's key, or `adhoc:<uuid>`), so a second scheduler or a
    re-plan cannot create the same send twice."""

    __tablename__ = "announcement_send"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=200, unique=True)
    announcement_id: str = Field(default="", max_length=100, index=True)
    template: str = Field(max_length=100)
    audience: str = Field(sa_column=Column(Text, nullable=False))  # JSON list of audience parts
    # planned → resolving → sending → done; or cancelled | missed
    state: str = Field(default="planned", max_length=12, index=True)
    local_time: bool = False
    weekdays_only: bool = False
    quiet_hours: str = Field(default="", max_length=20)
    ack: bool = False
    remind_after_days: int | None = None
    owner: str = Field(default="", max_length=40)  # gets the delivery report
    created_by: str = Field(default="", max_length=40)
    due_at: datetime = Field(index=True)
    lease_until: datetime | None = None  # while a process resolves the audience
    excluded: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    error: str = Field(default="", sa_column=Column(Text, nullable=False, default=""))
    created_at: datetime = Field(default_factory=utcnow)
    completed_at: datetime | None = None
    reported_at: datetime | None = None
    # the owner's report, kept up to date (255: a Teams 1:1 conversation id is long)
    report_channel: str = Field(default="", max_length=255)
    report_ts: str = Field(default="", max_length=255)
    reminded_at: datetime | None = None
    reminder_of: int | None = Field(default=None, foreign_key="announcement_send.id")


class Delivery(SQLModel, table=True):
    """One recipient of one batch (an announcement send or a survey send): the unit the
    workers claim, send, retry and reconcile. `kind` picks the renderer, `platform` the
    sender (bot.core.outbox)."""

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("send_id", "recipient"),
        UniqueConstraint("survey_send_id", "recipient"),
    )
    id: int | None = Field(default=None, primary_key=True)
    # Exactly one of send_id (announcements) and survey_send_id (surveys) is set.
    send_id: int | None = Field(default=None, foreign_key="announcement_send.id", index=True)
    survey_send_id: int | None = Field(default=None, foreign_key="survey_send.id", index=True)
    kind: str = Field(default="announcement", max_length=40)  # bot.core.outbox kinds
    platform: str = Field(default="slack", max_length=20)
    # A user id (DM) or a channel id; 255: Teams' conversation ids are long.
    recipient: str = Field(max_length=255)
    target: str = Field(default="dm", max_length=8)  # dm | channel
    name: str = Field(default="", max_length=200)
    first_name: str = Field(default="", max_length=100)
    tz: str = Field(default="", max_length=64)
    # pending → sending → sent | failed | skipped | cancelled | unknown (in doubt on a
    # platform that cannot read back: an operator decides); deleted after a recall
    state: str = Field(default="pending", max_length=10)
    not_before: datetime = Field(default_factory=utcnow)
    attempts: int = 0
    lease_until: datetime | None = None
    claimed_at: datetime | None = None
    channel: str = Field(default="", max_length=255)  # the conversation it landed in
    ts: str = Field(default="", max_length=255)  # its message (Teams: the activity id)
    error: str = Field(default="", max_length=100)
    # pending edit of a sent copy: "" | update | delete
    op: str = Field(default="", max_length=8)
    op_not_before: datetime | None = None
    acked_at: datetime | None = None
    reminded_at: datetime | None = None
    updated_at: datetime = Field(default_factory=utcnow)


class RateBudget(SQLModel, table=True):
    """A token bucket shared by every worker of every process, and the shared 429 pause."""

    __tablename__ = "rate_budget"
    name: str = Field(primary_key=True, max_length=40)
    tokens: float = 0.0
    updated: float = 0.0  # epoch seconds
    paused_until: float = 0.0  # epoch seconds: a Retry-After holds every worker


class SchedulerMark(SQLModel, table=True):
    """How far the plan has been materialised, so a restart knows what it missed."""

    __tablename__ = "scheduler_mark"
    name: str = Field(primary_key=True, max_length=40)
    at: datetime


# --- Surveys ------------------------------------------------------------------------------
# The participation ledger (who was asked) is kept apart from the answers. For anonymous
# surveys an answer row holds no user id, DM channel, message ts or timestamp. While the run
# is open it holds an HMAC of the user under the run's key (derived from a secret that is not
# in the database and a salt that is) and the answers sealed under that key; closing the run
# erases salt and keys, rewrites the answers in plain text in random order and scrubs the
# files (bot.core.surveys.privacy).


class SurveyRun(SQLModel, table=True):
    """One run of a survey: open from `starts_at` until `closes_at`."""

    __tablename__ = "survey_run"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=200, unique=True)
    survey_id: str = Field(max_length=100, index=True)
    number: int = 1  # 1, 2, 3… per survey
    anonymity: str = Field(max_length=12)  # frozen when the run starts
    min_group: int = 5
    audience: str = Field(sa_column=Column(Text, nullable=False))
    state: str = Field(default="planned", max_length=10)  # planned | open | closed
    starts_at: datetime
    closes_at: datetime
    reminder_days: str = Field(default="[]", max_length=100)  # JSON list of days after start
    population: int = 0
    owner: str = Field(default="", max_length=40)
    created_by: str = Field(default="", max_length=40)
    closed_at: datetime | None = None
    results_sent_at: datetime | None = None
    # The run key's salt while the run is open (erased at close) and the key's fingerprint.
    key_salt: str | None = Field(default=None, max_length=64)
    key_check: str = Field(default="", max_length=64)


class SurveyInvitation(SQLModel, table=True):
    """The participation ledger: who was asked (never what they said). `answered` is kept for
    named and confidential runs only: for an anonymous run nothing records who answered or
    when (reminders find out through the respondent keys, which need the secret)."""

    __tablename__ = "survey_invitation"
    __table_args__ = (UniqueConstraint("run_id", "user_id"),)
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="survey_run.id", index=True)
    user_id: str = Field(max_length=40)
    channel: str = Field(default="", max_length=255)  # Teams' conversation ids are long
    ts: str = Field(default="", max_length=255)
    segments: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    answered: bool = False
    reminders: int = 0
    tz: str = Field(default="", max_length=64)  # for local-time reminders ("" = the run's)


class SurveySend(SQLModel, table=True):
    """One batch of survey messages in the outbox: a run's invitations, its Nth reminder, or a
    "you said, we did" share. `key` is unique, so a second process cannot queue it twice."""

    __tablename__ = "survey_send"
    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=200, unique=True)
    run_id: int = Field(foreign_key="survey_run.id", index=True)
    kind: str = Field(max_length=20)  # invitation | reminder | share
    number: int = 0  # the reminder's number
    share_id: int | None = Field(default=None, foreign_key="survey_share.id")
    created_at: datetime = Field(default_factory=utcnow)


class SurveyResponse(SQLModel, table=True):
    """One person's answers to one run. Anonymous: no user id, no time, a random id; sealed
    answers and a respondent key while open, plain answers in random row order after close."""

    __tablename__ = "survey_response"
    __table_args__ = (UniqueConstraint("run_id", "respondent_key"),)
    id: str = Field(primary_key=True, max_length=32)  # random, so row order reveals nothing
    run_id: int = Field(foreign_key="survey_run.id", index=True)
    respondent_key: str | None = Field(default=None, max_length=64)  # HMAC; erased at close
    user_id: str | None = Field(default=None, max_length=40)  # only for named surveys
    segments: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))
    answers: str = Field(default="{}", sa_column=Column(Text, nullable=False, default="{}"))


class SurveyPause(SQLModel, table=True):
    """People who paused survey invitations for themselves."""

    __tablename__ = "survey_pause"
    user_id: str = Field(primary_key=True, max_length=40)
    until: datetime | None = None


class SurveyShare(SQLModel, table=True):
    """A "you said, we did" message: the suppressed summary of a closed run and the owner's
    note, sent to the run's audience through the outbox."""

    __tablename__ = "survey_share"
    id: int | None = Field(default=None, primary_key=True)
    run_id: int = Field(foreign_key="survey_run.id", index=True)
    note: str = Field(sa_column=Column(Text, nullable=False))
    summary: str = Field(sa_column=Column(Text, nullable=False))
    created_by: str = Field(default="", max_length=40)


# --- Microsoft Teams -----------------------------------------------------------------------


class TeamsPerson(SQLModel, table=True):
    """Someone who has the Teams app: where their 1:1 chat with the bot is (conversation id and
    service URL), so the bot can write to them first (answers relayed from support, and later
    announcements and surveys). Keyed by the Entra object id, the core's Teams user id."""

    __tablename__ = "teams_person"
    user_id: str = Field(primary_key=True, max_length=64)  # Entra object id (aadObjectId)
    teams_id: str = Field(max_length=255)  # the pairwise 29:… id the Bot Connector uses
    name: str = Field(default="", max_length=200)
    tenant_id: str = Field(default="", max_length=64)
    conversation_id: str = Field(default="", max_length=255)  # their 1:1 chat ("" until known)
    service_url: str = Field(default="", max_length=255)
    installed: bool = True
    updated_at: datetime = Field(default_factory=utcnow)


class TeamsConversation(SQLModel, table=True):
    """A team channel or group chat the bot has heard from: its service URL and names (for
    posting to a support channel after a restart, and for deep links)."""

    __tablename__ = "teams_conversation"
    conversation_id: str = Field(primary_key=True, max_length=255)  # without ;messageid=
    kind: str = Field(default="channel", max_length=20)  # channel | groupChat
    service_url: str = Field(default="", max_length=255)
    tenant_id: str = Field(default="", max_length=64)
    team_id: str = Field(default="", max_length=255)  # the team's 19:… thread id
    team_group_id: str = Field(default="", max_length=64)  # the team's Entra group id
    name: str = Field(default="", max_length=200)
    installed: bool = True
    updated_at: datetime = Field(default_factory=utcnow)


# --- The comms lead's console (bot.console) ------------------------------------------------


class ConsoleLink(SQLModel, table=True):
    """A one-time sign-in link an admin asked the bot for: only the SHA-256 of its random
    token is kept; it works once, before `expires_at`."""

    __tablename__ = "console_link"
    token_hash: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(max_length=64, index=True)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime
    used_at: datetime | None = None


class ConsoleSession(SQLModel, table=True):
    """A signed-in console session (the cookie holds its random id; only the SHA-256 is kept
    here, so signing out or removing the row ends it). It ends after a spell of idleness."""

    __tablename__ = "console_session"
    id_hash: str = Field(primary_key=True, max_length=64)
    user_id: str = Field(max_length=64, index=True)
    csrf: str = Field(max_length=64)  # the per-session token every form carries
    created_at: datetime = Field(default_factory=utcnow)
    last_seen_at: datetime = Field(default_factory=utcnow)
