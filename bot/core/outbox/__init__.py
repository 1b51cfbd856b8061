"""The outbox: durable deliveries with a kind (rendered by the renderer registered for it) and
a platform (posted by that platform's sender), claimed with a lease under one shared rate
budget, retried, and reconciled after a crash."""

from bot.core.outbox.budget import Budget, Limits
from bot.core.outbox.outbox import (
    ANNOUNCEMENT,
    ANNOUNCEMENT_REMINDER,
    CANNOT_TELL,
    GONE,
    IN_DOUBT,
    LEASE,
    MAX_ATTEMPTS,
    NOT_FOUND,
    POST_BOUND,
    SLACK,
    SURVEY_INVITATION,
    SURVEY_REMINDER,
    SURVEY_SHARE,
    Cancelled,
    Outbox,
    Renderer,
    Sender,
    SendResult,
    SkipDelivery,
    counts,
    resolve_unknown,
)

__all__ = [
    "ANNOUNCEMENT",
    "ANNOUNCEMENT_REMINDER",
    "CANNOT_TELL",
    "GONE",
    "IN_DOUBT",
    "LEASE",
    "MAX_ATTEMPTS",
    "NOT_FOUND",
    "POST_BOUND",
    "SLACK",
    "SURVEY_INVITATION",
    "SURVEY_REMINDER",
    "SURVEY_SHARE",
    "Budget",
    "Cancelled",
    "Limits",
    "Outbox",
    "Renderer",
    "SendResult",
    "Sender",
    "SkipDelivery",
    "counts",
    "resolve_unknown",
]
