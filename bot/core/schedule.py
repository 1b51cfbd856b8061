"""Time expressions, quiet hours and time zones: one module for announcements and surveys.

- `at`: `2027-02-15 09:00`, `2027-02-15T09:00`, or a milestone with an optional offset,
  `go_live at 08:30`, `go_live - 7 days at 09:00`, `go_live minus 1 week at 09:00`,
  `hypercare_ends + 1 week at 10:00` (`+`, `-`, `plus`, `minus`; `day(s)`, `week(s)`).
- `every`: `day at 09:00`, `weekday at 09:00` (Monday to Friday), `monday at 09:00` (any
  weekday name, or its three-letter form), `2 weeks on monday at 09:00` (counted from the
  first Monday on or after `from`).
- `from` / `until`: a date, `go_live - 4 weeks` or `2027-03-01`.
- `quiet_hours`: a window like `20:00-08:00`; a time inside it moves to its end.

The `parse_*()` helpers read single values and raise `Invalid` (a ValueError) saying what was
expected. Wall-clock times become UTC instants with `to_utc()`; a recipient's zone is read with
`zone_or()`, falling back to the rollout's.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from bot.core.content import Rollout

# The first wall clock on Earth to show any given time: Kiribati's Line Islands, UTC+14.
EARLIEST_ZONE = timezone(timedelta(hours=14))


WEEKDAY_NAMES = {
    "monday": 0,
    "mon": 0,
    "tuesday": 1,
    "tue": 1,
    "tues": 1,
    "wednesday": 2,
    "wed": 2,
    "thursday": 3,
    "thu": 3,
    "thur": 3,
    "thurs": 3,
    "friday": 4,
    "fri": 4,
    "saturday": 5,
    "sat": 5,
    "sunday": 6,
    "sun": 6,
}


AT_EXAMPLE = 'a time like "go_live - 7 days at 09:00", "go_live at 08:30" or "2027-02-15 09:00"'


EVERY_EXAMPLE = (
    'a rule like "monday at 09:00", "weekday at 09:00", "day at 09:00" '
    'or "2 weeks on monday at 09:00"'
)


DATE_EXAMPLE = 'a date like "go_live - 4 weeks", "go_live" or "2027-03-01"'


_CLOCK = r"(?P<hour>\d{1,2}):(?P<minute>\d{2})"


_ABSOLUTE = re.compile(rf"(?P<date>\d{{4}}-\d{{2}}-\d{{2}})(?:\s+|t){_CLOCK}")


_WITH_TIME = re.compile(rf"(?P<date>.+?)\s+at\s+{_CLOCK}")


_DATE_EXPR = re.compile(
    r"(?P<base>\d{4}-\d{2}-\d{2}|[a-z_][a-z0-9_-]*?)"
    # `plus`/`minus` need a space before them, so a milestone named `surplus` stays whole.
    r"(?:(?:\s*(?P<symbol>[+-])|\s+(?P<word>plus|minus))"
    r"\s*(?P<count>\d+)\s*(?P<unit>days?|weeks?))?"
)


_WEEKS_ON = re.compile(r"(?:(?P<count>\d+)\s*)?weeks?\s+on\s+(?P<day>[a-z]+)")


_QUIET = re.compile(
    r"(?P<h1>\d{1,2}):(?P<m1>\d{2})\s*(?:-|–|to)\s*(?P<h2>\d{1,2}):(?P<m2>\d{2})", re.I
)


@dataclass(frozen=True)
class DateExpr:
    """A date: a milestone (`base` is its name) or a fixed date, plus `offset_days`."""

    base: str | date
    offset_days: int = 0

    def resolve(self, rollout: Rollout) -> date:
        """The date in `rollout`; ValueError if it lacks the milestone."""
        if isinstance(self.base, str):
            if self.base not in rollout.milestones:
                raise ValueError(f"the rollout has no milestone {self.base!r}")
            start = rollout.milestones[self.base]
        else:
            start = self.base
        return start + timedelta(days=self.offset_days)

    def __str__(self) -> str:
        base = self.base if isinstance(self.base, str) else self.base.isoformat()
        if not self.offset_days:
            return base
        sign = "+" if self.offset_days > 0 else "-"
        return f"{base} {sign} {abs(self.offset_days)} days"


@dataclass(frozen=True)
class OneOff:
    """Sent once: on the date `on` at wall-clock time `at`."""

    on: DateExpr
    at: time

    def planned(self, rollout: Rollout) -> list[datetime]:
        """The naive wall-clock date-time, as a one-item list."""
        return [datetime.combine(self.on.resolve(rollout), self.at)]


@dataclass(frozen=True)
class Recurrence:
    """Sent at `at` on each of `weekdays` (0 = Monday) every `interval_weeks` weeks, from
    `start` to `until` inclusive."""

    weekdays: frozenset[int]
    at: time
    start: DateExpr
    until: DateExpr
    interval_weeks: int = 1

    def planned(self, rollout: Rollout) -> list[datetime]:
        """The naive wall-clock date-times, in order; empty if `start` is after `until`."""
        first, last = self.start.resolve(rollout), self.until.resolve(rollout)
        found: list[datetime] = []
        anchor: date | None = None
        day = first
        while day <= last:
            if day.weekday() in self.weekdays:
                # Weeks are counted from the first matching day, so "2 weeks on monday" from a
                # Wednesday starts the following Monday.
                anchor = anchor or day
                if ((day - anchor).days // 7) % self.interval_weeks == 0:
                    found.append(datetime.combine(day, self.at))
            day += timedelta(days=1)
        return found


def after_quiet_hours(wall: datetime, begin: time, end: time) -> datetime:
    """`wall` moved to the end of the quiet-hours window [begin, end) when it falls inside."""
    clock = wall.time()
    if begin < end:
        if begin <= clock < end:
            return datetime.combine(wall.date(), end)
    elif clock >= begin:  # the window wraps midnight: the evening part ends tomorrow
        return datetime.combine(wall.date() + timedelta(days=1), end)
    elif clock < end:
        return datetime.combine(wall.date(), end)
    return wall


def to_utc(wall: datetime, zone: ZoneInfo) -> datetime:
    """A wall-clock time in `zone` as an aware UTC instant."""
    # fold=0: an ambiguous time (clocks going back) takes its first instant, and a time in a
    # spring-forward gap is read with the offset from before the change, i.e. moved forward by
    # the gap (01:30 on a Europe/London spring-forward day is sent at 02:30 BST).
    return wall.replace(tzinfo=zone, fold=0).astimezone(UTC)


def zone_or(name: str | None, fallback: ZoneInfo) -> ZoneInfo:
    """The named time zone, or `fallback` when the name is empty or unknown."""
    if not name:
        return fallback
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return fallback


class Invalid(ValueError):
    """A value that does not parse; the message says what was expected."""


def parse_at(value: Any, rollout: Rollout) -> OneOff:
    """Parse an `at:` value (text, or a YAML datetime); ValueError says what is wrong."""
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            raise Invalid(
                "at: write the time without a zone (it is in the rollout's zone, or the "
                'recipient\'s with local_time: true), like "2027-02-15 09:00"'
            )
        if value.second or value.microsecond:
            raise Invalid("at: times are to the minute, like 2027-02-15 09:00")
        return OneOff(DateExpr(value.date()), time(value.hour, value.minute))
    if isinstance(value, date):
        raise Invalid(f'at: say at what time, like "{value.isoformat()} 09:00"')
    if not isinstance(value, str):
        raise Invalid(f"at: expected {AT_EXAMPLE}, not {value!r}")
    text = _normalise(value)
    absolute = _ABSOLUTE.fullmatch(text)
    if absolute:
        return OneOff(DateExpr(_iso_date(absolute["date"])), _clock(absolute))
    relative = _WITH_TIME.fullmatch(text)
    if relative:
        return OneOff(_date_expr(relative["date"], rollout, key="at"), _clock(relative))
    if _DATE_EXPR.fullmatch(text):
        raise Invalid(f'at: say at what time, like "{value.strip()} at 09:00"')
    raise Invalid(f"at: expected {AT_EXAMPLE}, not {value!r}")


def parse_every(value: Any) -> tuple[frozenset[int], int, time]:
    """Parse an `every:` value into (weekdays, interval in weeks, time of day)."""
    error = Invalid(f"every: expected {EVERY_EXAMPLE}, not {value!r}")
    if not isinstance(value, str):
        raise error
    text = _normalise(value).removeprefix("every ")
    match = _WITH_TIME.fullmatch(text)
    if not match:
        raise error
    at = _clock(match)
    what = match["date"]
    if what in ("day", "daily"):
        return frozenset(range(7)), 1, at
    if what in ("weekday", "weekdays"):
        return frozenset(range(5)), 1, at
    day = _weekday(what)
    if day is not None:
        return frozenset({day}), 1, at
    weeks = _WEEKS_ON.fullmatch(what)
    if weeks:
        day = _weekday(weeks["day"])
        count = int(weeks["count"] or 1)
        if day is None:
            raise Invalid(f"every: {weeks['day']!r} is not a day of the week, like monday")
        if count < 1:
            raise Invalid("every: the number of weeks must be 1 or more")
        return frozenset({day}), count, at
    raise error


def parse_date(value: Any, rollout: Rollout, *, key: str = "from") -> DateExpr:
    """Parse a `from:`/`until:` value: a milestone ± days or weeks, or a date."""
    if isinstance(value, datetime):
        raise Invalid(f"{key}: takes a date without a time, like {value.date().isoformat()}")
    if isinstance(value, date):
        return DateExpr(value)
    if not isinstance(value, str):
        raise Invalid(f"{key}: expected {DATE_EXAMPLE}, not {value!r}")
    text = _normalise(value)
    if _WITH_TIME.fullmatch(text) or _ABSOLUTE.fullmatch(text):
        raise Invalid(f"{key}: takes a date without a time; the time goes in every:")
    return _date_expr(text, rollout, key=key)


def parse_quiet_hours(value: Any) -> tuple[time, time]:
    """Parse `"20:00-08:00"` into (start, end); the window may wrap midnight."""
    match = _QUIET.fullmatch(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise Invalid(f'quiet_hours: expected a window like "20:00-08:00", not {value!r}')
    begin = _time_of(match["h1"], match["m1"], key="quiet_hours")
    end = _time_of(match["h2"], match["m2"], key="quiet_hours")
    if begin == end:
        raise Invalid("quiet_hours: the window starts and ends at the same time")
    return begin, end


def _date_expr(text: str, rollout: Rollout, *, key: str) -> DateExpr:
    match = _DATE_EXPR.fullmatch(text)
    if match is None:
        example = AT_EXAMPLE if key == "at" else DATE_EXAMPLE
        raise Invalid(f"{key}: expected {example}, not {text!r}")
    offset = 0
    if match["count"]:
        offset = int(match["count"]) * (7 if match["unit"].startswith("week") else 1)
        if match["symbol"] == "-" or match["word"] == "minus":
            offset = -offset
    base = match["base"]
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", base):
        return DateExpr(_iso_date(base), offset)
    return DateExpr(_milestone(base, rollout.milestones), offset)


def _milestone(name: str, milestones: Mapping[str, date]) -> str:
    by_lower = {known.lower(): known for known in milestones}
    if name in by_lower:
        return by_lower[name]
    known = ", ".join(milestones) or "none (add them under milestones: in rollout.yaml)"
    hint = did_you_mean(name, list(milestones))
    raise Invalid(f"unknown milestone {name!r}{hint}; known milestones: {known}")


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _weekday(word: str) -> int | None:
    if word in WEEKDAY_NAMES:
        return WEEKDAY_NAMES[word]
    if word.endswith("s") and word[:-1] in WEEKDAY_NAMES:  # "mondays at 09:00"
        return WEEKDAY_NAMES[word[:-1]]
    return None


def _normalise(text: str) -> str:
    return " ".join(text.split()).lower()


def _iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise Invalid(f"{text} is not a real date") from None


def _clock(match: re.Match[str]) -> time:
    return _time_of(match["hour"], match["minute"])


def _time_of(hour: str, minute: str, *, key: str = "") -> time:
    if int(hour) > 23 or int(minute) > 59:
        prefix = f"{key}: " if key else ""
        raise Invalid(f"{prefix}{hour}:{minute} is not a time of day (00:00 to 23:59)")
    return time(int(hour), int(minute))
