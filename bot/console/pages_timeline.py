"""Console pages: the timeline (registered on the app by `create_app`).

The milestones and what is planned around them (from the same plan functions as `mobilize
announce plan` and the survey runner), each announcement and survey run with its audience's
size, the messages per person per ISO week against MOBILIZE_MESSAGE_BUDGET, and moving a
milestone: a preview of every message whose time changes, then a save that edits that one
line of `schedules/rollout.yaml` after the bot's own loaders accept the result.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import TYPE_CHECKING, Any

from flask import Flask, flash, g, redirect, request, url_for
from werkzeug.wrappers.response import Response as Redirect

from bot.console.content import check_content, save_file, set_milestone
from bot.core.announcements.audience import Audience
from bot.core.announcements.plan import occurrences, send_time
from bot.core.budget import Planned, Week, iso_week, pushed_over, week_bounds, weekly_load
from bot.core.content import Rollout
from bot.core.surveys.definitions import recipient_times, runs
from bot.store.audit import record

if TYPE_CHECKING:
    from bot.console.app import Console, Resolved
    from bot.console.links import SignedIn

log = logging.getLogger(__name__)
Page = Callable[..., tuple[str, int]]

TIMELINE_MARGIN_DAYS = 30  # the timeline shows this long before the first milestone and after
TIMELINE_ROWS = 1000
ROLLOUT_FILE = "schedules/rollout.yaml"
KIND_ORDER = {"milestone": 0, "announcement": 1, "survey": 2}
# Every message ever planned: the window a move preview looks at.
ALL_TIME = (datetime(1900, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC))


@dataclass(frozen=True)
class Sent:
    """One planned message: an announcement or its acknowledgement reminder, a survey run's
    invitation or one of its reminders. `moment` is in the rollout's zone (for a
    `local_time` one, the wall clock everyone gets it at, read in the rollout's zone)."""

    kind: str  # announcement | survey
    source: str  # the announcement's or the survey's id
    label: str  # e.g. "readiness reminder 1"
    moment: datetime
    audience: tuple[str, ...]
    local_time: bool
    due_utc: datetime  # when the run or occurrence starts (its past/future)
    closes: datetime | None = None  # a survey invitation: when the run closes
    reminders: tuple[datetime, ...] = ()  # a survey invitation: its reminders
    series: str = ""  # what it is paired with when a milestone moves
    reminder: bool = False  # a reminder of an announcement or a survey run


@dataclass(frozen=True)
class TimelineEvent:
    """One row of the timeline: a milestone, an announcement or a survey run's opening."""

    day: date  # in the rollout's zone
    kind: str  # milestone | announcement | survey
    name: str
    note: str
    past: bool
    time: str = ""  # HH:MM in the rollout's zone
    audience: tuple[str, ...] = ()


@dataclass(frozen=True)
class Move:
    """A message whose time a milestone move changes: `old` None when the move adds it,
    `new` None when the move drops it."""

    label: str
    kind: str
    old: datetime | None
    new: datetime | None


def planned_messages(
    console: Console, rollout: Rollout, *, start: datetime, end: datetime
) -> list[Sent]:
    """Every message the loaded plan and survey schedules send with `rollout`'s milestones,
    for the occurrences and runs starting in [start, end), in time order."""
    zone = rollout.zone
    content = console.announcer.content
    found: list[Sent] = []
    for occurrence in occurrences(content.plan, rollout, start=start, end=end):
        announcement = content.plan.get(occurrence.announcement_id)
        if announcement is None:
            continue
        moment = send_time(announcement, occurrence, tz=None, rollout=rollout).astimezone(zone)
        found.append(
            Sent(
                "announcement",
                announcement.id,
                announcement.id,
                moment,
                announcement.audience,
                announcement.local_time,
                occurrence.due_utc,
                series=f"a:{announcement.id}",
            )
        )
        if announcement.ack and announcement.remind_after_days:
            found.append(
                Sent(
                    "announcement",
                    announcement.id,
                    f"{announcement.id} reminder",
                    moment + timedelta(days=announcement.remind_after_days),
                    announcement.audience,
                    announcement.local_time,
                    occurrence.due_utc,
                    series=f"ar:{announcement.id}",
                    reminder=True,
                )
            )
    for schedule in console.service.surveys.schedules:
        for run in runs(schedule, rollout, start=start, end=end):
            times = recipient_times(schedule, run, tz=None, rollout=rollout)
            reminders = tuple(r.astimezone(zone) for r in times.reminders_utc)
            found.append(
                Sent(
                    "survey",
                    schedule.survey,
                    schedule.survey,
                    times.invite_utc.astimezone(zone),
                    schedule.audience,
                    schedule.local_time,
                    run.starts_utc,
                    closes=times.closes_utc.astimezone(zone),
                    reminders=reminders,
                    series=f"s:{schedule.survey}",
                )
            )
            for number, moment in enumerate(reminders, start=1):
                found.append(
                    Sent(
                        "survey",
                        schedule.survey,
                        f"{schedule.survey} reminder {number}",
                        moment,
                        schedule.audience,
                        schedule.local_time,
                        run.starts_utc,
                        series=f"s:{schedule.survey}:r{number}",
                        reminder=True,
                    )
                )
    return sorted(found, key=lambda s: (s.moment, s.label))


class Audiences:
    """Audiences resolved once per page load (through `Console.resolve_audience`, which
    also reuses a result for a minute); a failure is kept as its reason, never raised."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._found: dict[tuple[str, ...], Resolved | str] = {}

    def get(self, parts: tuple[str, ...]) -> Resolved | str:
        if parts not in self._found:
            try:
                resolved: Resolved | str = self.console.resolve_audience("; ".join(parts))
            except Exception as exc:  # a remote directory: show why, never crash the page
                log.warning("console: resolving %s failed", parts, exc_info=True)
                resolved = f"could not be resolved ({type(exc).__name__})"
            self._found[parts] = resolved
        return self._found[parts]

    def people(self, parts: tuple[str, ...]) -> frozenset[str] | None:
        """The user ids an audience reaches by direct message; None when it did not resolve."""
        resolved = self.get(parts)
        if isinstance(resolved, str) or resolved.audience is None:
            return None
        return frozenset(person.id for person in resolved.audience.people)

    def size(self, parts: tuple[str, ...]) -> dict[str, Any]:
        """What the timeline shows beside an item: people and channels, or why not."""
        resolved = self.get(parts)
        if isinstance(resolved, str):
            return {"error": resolved}
        if resolved.audience is None:
            return {"error": resolved.error or "could not be resolved"}
        return {
            "people": len(resolved.audience.people),
            "channels": len(resolved.audience.channels),
            "summary": resolved.audience.summary(),
        }


def week_loads(
    messages: list[Sent], audiences: Audiences, *, budget: int
) -> tuple[list[Week], list[str]]:
    """Messages per person per ISO week, and the labels of the messages left out because
    their audience did not resolve."""
    planned: list[Planned] = []
    unresolved: list[str] = []
    for message in messages:
        people = audiences.people(message.audience)
        if people is None:
            if message.label not in unresolved:
                unresolved.append(message.label)
            continue
        planned.append(Planned(message.label, message.moment.date(), people))
    return weekly_load(planned, budget=budget), unresolved


def budget_warning(console: Console, audience: Audience, due: datetime) -> str:
    """For the send form: a warning when sending to `audience` at `due` pushes people over
    MOBILIZE_MESSAGE_BUDGET in that ISO week (counting the plan's messages that week), or
    ""; a failure to check says so rather than stopping the send."""
    budget = console.settings.message_budget
    rollout = console.announcer.content.rollout
    zone = rollout.zone
    day = due.astimezone(zone).date()
    monday, next_monday = week_bounds(day)
    try:
        # A day either side: local_time messages start up to 14 hours early in UTC.
        start = datetime.combine(monday - timedelta(days=1), dtime(), zone)
        end = datetime.combine(next_monday + timedelta(days=1), dtime(), zone)
        messages = [
            m
            for m in planned_messages(console, rollout, start=start, end=end)
            if iso_week(m.moment.date()) == iso_week(day)
        ]
        audiences = Audiences(console)
        planned: list[Planned] = []
        for message in messages:
            people = audiences.people(message.audience)
            if people is not None:
                planned.append(Planned(message.label, message.moment.date(), people))
        added = Planned("this send", day, frozenset(p.id for p in audience.people))
        pushed, already, week = pushed_over(planned, added, budget=budget)
    except Exception:
        log.warning("console: checking the message budget failed", exc_info=True)
        return "The message budget could not be checked (see the bot's log)."
    if not pushed and not already:
        return ""
    others = [c for c in week.causes if c != "this send"]
    text = (
        f"Message budget: in the week of {monday:%a %d %b} this send takes "
        f"{pushed + already:,} people over {budget} messages per person "
        f"(the busiest would get {week.busiest})"
    )
    if already:
        text += f"; {already:,} of them are over it already"
    if others:
        text += f". Also planned that week: {', '.join(others)}"
    return text + "."


def _pair(old: list[datetime], new: list[datetime]) -> tuple[list[tuple[Any, Any]], int]:
    """Pairs (old, new) of what changed in one series, and how many stay as they are: equal
    times stay; the rest pair in order; what is left is added (None, new) or dropped (old,
    None)."""
    left_old, left_new = list(old), list(new)
    same = 0
    for moment in old:
        if moment in left_new:
            left_new.remove(moment)
            left_old.remove(moment)
            same += 1
    pairs: list[tuple[Any, Any]] = list(zip(left_old, left_new, strict=False))
    pairs += [(moment, None) for moment in left_old[len(left_new) :]]
    pairs += [(None, moment) for moment in left_new[len(left_old) :]]
    return pairs, same


def moves(before: list[Sent], after: list[Sent]) -> tuple[list[Move], list[Sent]]:
    """What a milestone move changes: the messages whose time changes (old → new, in time
    order) and those that do not move."""
    series: dict[str, tuple[str, str, list[Sent], list[Sent]]] = {}
    for message in before:
        series.setdefault(message.series, (message.label, message.kind, [], []))[2].append(message)
    for message in after:
        series.setdefault(message.series, (message.label, message.kind, [], []))[3].append(message)
    changed: list[Move] = []
    kept: list[Sent] = []
    for label, kind, old, new in series.values():
        pairs, _same = _pair([m.moment for m in old], [m.moment for m in new])
        changed.extend(Move(label, kind, a, b) for a, b in pairs)
        moved = {a for a, _b in pairs}
        kept.extend(m for m in old if m.moment not in moved)
    changed.sort(key=lambda m: (m.old or m.new or ALL_TIME[0], m.label))
    kept.sort(key=lambda m: (m.moment, m.label))
    return changed, kept


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def register(app: Flask, console: Console, page: Page) -> None:
    """Add the timeline's routes to the console's app; `page(template, code, **values)`
    renders a page with the console's common values."""
    settings = console.settings
    db = console.service.db

    def is_htmx() -> bool:
        return request.headers.get("HX-Request") == "true"

    @app.get("/timeline")
    def timeline() -> tuple[str, int]:
        """The milestones, and the announcements and survey runs planned around them, with
        their audiences' sizes and the messages per person per ISO week."""
        content = console.announcer.content
        rollout = content.rollout
        zone = rollout.zone
        now = console.clock()
        today = rollout.today(now)
        days = sorted(rollout.milestones.values())
        first = min([today, *days[:1]])
        last = max([today, *days[-1:]])
        start = datetime.combine(first - timedelta(days=TIMELINE_MARGIN_DAYS), dtime(), zone)
        end = datetime.combine(last + timedelta(days=TIMELINE_MARGIN_DAYS + 1), dtime(), zone)
        messages = planned_messages(console, rollout, start=start, end=end)
        audiences = Audiences(console)
        budget = settings.message_budget
        weeks, unresolved = week_loads(messages, audiences, budget=budget)
        events = [
            TimelineEvent(day, "milestone", name, "", day < today)
            for name, day in rollout.milestones.items()
        ]
        for message in messages:
            if message.reminder:
                continue
            to = ", ".join(message.audience)
            if message.kind == "announcement":
                note = f"{message.label} to {to}"
            else:
                note = f"to {to}"
                if message.closes is not None:
                    note += f" · open until {message.closes:%a %d %b %H:%M}"
                if message.reminders:
                    note += " · reminders " + ", ".join(f"{r:%d %b}" for r in message.reminders)
            if message.local_time:
                note += " · on each person's own clock"
            events.append(
                TimelineEvent(
                    message.moment.date(),
                    message.kind,
                    message.source,
                    note,
                    message.due_utc < now,
                    f"{message.moment:%H:%M}",
                    message.audience,
                )
            )
        events.sort(key=lambda e: (e.day, KIND_ORDER[e.kind], e.time, e.name))
        events = events[:TIMELINE_ROWS]
        by_week = {(w.year, w.number): w for w in weeks}
        months: list[tuple[str, list[dict[str, Any]]]] = []
        for event in events:
            label = f"{event.day:%B %Y}"
            if not months or months[-1][0] != label:
                months.append((label, []))
            months[-1][1].append(
                {
                    "event": event,
                    "near": _nearest(event, rollout.milestones),
                    "size": audiences.size(event.audience) if event.kind != "milestone" else None,
                    "week": by_week.get(iso_week(event.day)),
                }
            )
        return page(
            "timeline.html",
            months=months,
            today=today,
            zone=rollout.timezone,
            start=start.date(),
            end=(end - timedelta(days=1)).date(),
            milestones=len(rollout.milestones),
            milestone_dates=sorted(rollout.milestones.items(), key=lambda item: item[1]),
            announcements=sum(1 for e in events if e.kind == "announcement"),
            survey_runs=sum(1 for e in events if e.kind == "survey"),
            weeks=weeks,
            over_weeks=sum(1 for w in weeks if w.over_budget),
            budget=budget,
            unresolved=unresolved,
        )

    # --- moving a milestone -----------------------------------------------------------------

    def _rollout_text() -> str:
        path = settings.content_dir / ROLLOUT_FILE
        return path.read_text(encoding="utf-8") if path.is_file() else ""

    def _move(name: str, wanted: str) -> dict[str, Any]:
        """Everything the preview shows, and `refused` when the move cannot be saved."""
        rollout = console.announcer.content.rollout
        values: dict[str, Any] = {
            "milestone": name,
            "day": wanted,
            "zone": rollout.timezone,
            "milestone_dates": sorted(rollout.milestones.items(), key=lambda item: item[1]),
            "changed": [],
            "kept": [],
            "problems": [],
            "refused": "",
            "base": "",
        }
        if name not in rollout.milestones:
            values["refused"] = f"There is no milestone {name!r}: pick one from the list."
            return values
        old_day = rollout.milestones[name]
        values["old_day"] = old_day
        try:
            new_day = date.fromisoformat(wanted.strip())
        except ValueError:
            values["refused"] = "Give the new date as YYYY-MM-DD, e.g. 2027-04-13."
            return values
        values["new_day"] = new_day
        if new_day == old_day:
            values["refused"] = f"{name} is already on {old_day:%a %d %b %Y}: nothing moves."
            return values
        text = _rollout_text()
        values["base"] = _digest(text)
        try:
            new_text = set_milestone(text, name, new_day)
        except ValueError as exc:
            values["refused"] = f"Cannot edit {ROLLOUT_FILE}: {exc}."
            return values
        values["new_text"] = new_text
        moved = replace(rollout, milestones={**rollout.milestones, name: new_day})
        before = planned_messages(console, rollout, start=ALL_TIME[0], end=ALL_TIME[1])
        after = planned_messages(console, moved, start=ALL_TIME[0], end=ALL_TIME[1])
        values["changed"], values["kept"] = moves(before, after)
        problems = check_content(
            settings.content_dir,
            ROLLOUT_FILE,
            new_text,
            now=console.clock(),
            default_timezone=settings.timezone,
        )
        values["problems"] = problems
        if problems:
            values["refused"] = (
                f"Moving {name} to {new_day:%a %d %b %Y} makes the plan invalid; fix these "
                "first or pick another date. Nothing was written."
            )
        return values

    @app.get("/timeline/move")
    def timeline_move() -> tuple[str, int]:
        values = _move(request.args.get("milestone", ""), request.args.get("day", ""))
        if is_htmx():
            return page("_move_preview.html", **values)
        return page("timeline_move.html", **values)

    @app.post("/timeline/move")
    def timeline_move_save() -> Redirect | tuple[str, int]:
        name = request.form.get("milestone", "")
        values = _move(name, request.form.get("day", ""))
        base = request.form.get("base", "")
        if not values["refused"] and base and base != values["base"]:
            values["refused"] = (
                f"Not saved: {ROLLOUT_FILE} changed since the preview. Check the preview "
                "below again, then save."
            )
            return page("timeline_move.html", 409, **values)
        if values["refused"]:
            return page("timeline_move.html", 422, **values)
        from bot.console.app import _sanitize  # the console's own cleaning of names

        signed: SignedIn = g.signed
        who, email = console.person(signed.user_id)
        old_day: date = values["old_day"]
        new_day: date = values["new_day"]
        saved = save_file(
            settings.content_dir,
            ROLLOUT_FILE,
            values["new_text"],
            author_name=_sanitize(who) or signed.user_id,
            author_email=_sanitize(email, 200) or f"{signed.user_id}@mobilize.invalid",
            message=f"Move milestone {name} from {old_day} to {new_day} (console)",
        )
        console.reload_content(f"moving {name}")
        record(
            db,
            actor=signed.user_id,
            action="console.milestone.move",
            detail=f"{name}: {old_day} -> {new_day} in {ROLLOUT_FILE}"
            + (f" (commit {saved.commit})" if saved.commit else ""),
        )
        moved = len(values["changed"])
        message = (
            f"Moved {name} to {new_day:%a %d %b %Y}; {moved} planned message"
            f"{'' if moved == 1 else 's'} moved with it."
        )
        message += saved.outcome
        flash(message)
        return redirect(url_for("timeline"), 303)


def _nearest(event: TimelineEvent, milestones: dict[str, date]) -> str:
    """Where an announcement or a run sits against the nearest milestone, e.g. "3 days
    before go_live"."""
    if event.kind == "milestone" or not milestones:
        return ""
    name, day = min(milestones.items(), key=lambda item: (abs((item[1] - event.day).days), item[1]))
    gap = (event.day - day).days
    if gap == 0:
        return f"on {name}"
    unit = "day" if abs(gap) == 1 else "days"
    return f"{abs(gap)} {unit} {'after' if gap > 0 else 'before'} {name}"
