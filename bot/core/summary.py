"""An admin's week at a glance, for the chat home of any platform: the next announcements,
the open survey runs and how many questions went unanswered in the last seven days.

Only counts and names of things the admin already governs: never who answered a survey or
who asked what."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from bot.core.announcements.plan import Plan, occurrences
from bot.core.content import Rollout
from bot.core.surveys.report import run_counts
from bot.store.models import QuestionLog, SurveyRun, as_utc

NEXT_DAYS = 7  # how far ahead "next sends" looks
NEXT_SENDS = 3  # how many of them the home shows
WEEK = timedelta(days=7)


@dataclass(frozen=True)
class NextSend:
    announcement: str
    template: str
    audience: tuple[str, ...]
    due: datetime  # in the rollout's zone


@dataclass(frozen=True)
class OpenRun:
    survey: str
    number: int
    closes: datetime  # in the rollout's zone
    invited: int
    answered: int


@dataclass(frozen=True)
class AdminSummary:
    next_sends: tuple[NextSend, ...]
    more_sends: int  # planned in the window beyond those shown
    open_runs: tuple[OpenRun, ...]
    unanswered_week: int  # questions the bot could not answer in the last 7 days
    zone: ZoneInfo

    def lines(self) -> list[str]:
        """The summary in plain words (Markdown-ish, as the core's messages are written)."""
        out: list[str] = []
        if self.next_sends:
            sends = [
                f"• {s.due:%a %d %b %H:%M} — {s.announcement} ({s.template}) to "
                f"{', '.join(s.audience)}"
                for s in self.next_sends
            ]
            if self.more_sends:
                sends.append(f"• and {self.more_sends} more in the next {NEXT_DAYS} days")
            out.append("*Next sends*\n" + "\n".join(sends))
        else:
            out.append(f"*Next sends*\n• nothing planned in the next {NEXT_DAYS} days")
        if self.open_runs:
            out.append(
                "*Open surveys*\n"
                + "\n".join(
                    f"• {r.survey} run {r.number}: {r.answered} of {r.invited} answered, "
                    f"closes {r.closes:%a %d %b %H:%M}"
                    for r in self.open_runs
                )
            )
        else:
            out.append("*Open surveys*\n• none")
        unanswered = self.unanswered_week
        out.append(
            "*Unanswered this week*\n• "
            + (
                f"{unanswered} question{'s' if unanswered != 1 else ''} the bot could not "
                "answer (the console's knowledge page groups them)"
                if unanswered
                else "none: every question found an answer or a suggestion"
            )
        )
        return out


def admin_summary(
    *,
    db: Engine,
    now: datetime,
    rollout: Rollout,
    plan: Plan | None = None,
    survey_ids: frozenset[str] | None = None,
) -> AdminSummary:
    """What an admin's home shows. `plan` is None without announcements; `survey_ids` limits
    the open runs to surveys still loaded (None: all)."""
    zone = rollout.zone
    upcoming = (
        occurrences(plan, rollout, start=now, end=now + timedelta(days=NEXT_DAYS))
        if plan is not None
        else []
    )
    sends: list[NextSend] = []
    for occurrence in upcoming[:NEXT_SENDS]:
        announcement = plan.get(occurrence.announcement_id) if plan is not None else None
        if announcement is None:
            continue
        sends.append(
            NextSend(
                announcement.id,
                announcement.template,
                announcement.audience,
                occurrence.due_utc.astimezone(zone),
            )
        )
    with Session(db) as session:
        runs = session.exec(
            select(SurveyRun).where(SurveyRun.state == "open").order_by(col(SurveyRun.closes_at))
        ).all()
        open_runs = []
        for run in runs:
            if survey_ids is not None and run.survey_id not in survey_ids:
                continue
            invited, answered = run_counts(session, run.id)
            closes = as_utc(run.closes_at).astimezone(zone)
            open_runs.append(OpenRun(run.survey_id, run.number, closes, invited, answered))
        since = now - WEEK
        unanswered = session.exec(
            select(func.count())
            .where(QuestionLog.decision == "unknown")
            .where(col(QuestionLog.asked_at) >= since)
        ).one()
    return AdminSummary(
        next_sends=tuple(sends),
        more_sends=max(0, len(upcoming) - len(sends)),
        open_runs=tuple(open_runs),
        unanswered_week=int(unanswered),
        zone=zone,
    )
