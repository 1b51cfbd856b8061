"""The message budget: how many messages one person gets per ISO week, shared by
announcements and surveys (a survey run is its invitation plus each reminder).

Pure functions over already-resolved audiences: the callers (the console's timeline and send
form) resolve each audience once and pass the user ids here.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, timedelta

DEFAULT_BUDGET = 3  # MOBILIZE_MESSAGE_BUDGET's default


@dataclass(frozen=True)
class Planned:
    """One message planned for a set of people: `label` names it (e.g. "readiness reminder"),
    `day` is the day it is sent in the rollout's zone."""

    label: str
    day: date
    recipients: frozenset[str]


@dataclass(frozen=True)
class Week:
    """One ISO week's load: the most messages any one person gets (`busiest`), how many
    people get more than the budget (`over`) and the messages that reach them (`causes`, in
    time order, each label once)."""

    year: int
    number: int
    monday: date
    messages: int  # planned messages this week
    busiest: int
    over: int
    causes: tuple[str, ...]
    budget: int

    @property
    def over_budget(self) -> bool:
        return self.over > 0

    @property
    def label(self) -> str:
        return f"{self.year}-W{self.number:02d}"


def iso_week(day: date) -> tuple[int, int]:
    """(ISO year, ISO week number) of `day`."""
    found = day.isocalendar()
    return found.year, found.week


def weekly_load(planned: Iterable[Planned], *, budget: int) -> list[Week]:
    """Per ISO week with at least one planned message, in order: the busiest person's count
    and who is over `budget` (strictly more messages than it; exactly at budget is fine).
    People in several audiences add up; a person named twice in one message counts once."""
    if budget < 0:
        raise ValueError("the budget is a number of messages, 0 or more")
    by_week: dict[tuple[int, int], list[Planned]] = {}
    for item in sorted(planned, key=lambda p: (p.day, p.label)):
        by_week.setdefault(iso_week(item.day), []).append(item)
    weeks: list[Week] = []
    for (year, number), items in sorted(by_week.items()):
        counts: Counter[str] = Counter()
        for item in items:
            counts.update(item.recipients)
        over_people = {person for person, n in counts.items() if n > budget}
        causes: list[str] = []
        for item in items:
            if item.label not in causes and not over_people.isdisjoint(item.recipients):
                causes.append(item.label)
        weeks.append(
            Week(
                year=year,
                number=number,
                monday=date.fromisocalendar(year, number, 1),
                messages=len(items),
                busiest=max(counts.values(), default=0),
                over=len(over_people),
                causes=tuple(causes),
                budget=budget,
            )
        )
    return weeks


def pushed_over(
    planned: Iterable[Planned], added: Planned, *, budget: int
) -> tuple[int, int, Week]:
    """What adding `added` does to its ISO week: (people it pushes over `budget`, people who
    were over already among its recipients, the week with it added). Only messages in the
    same ISO week as `added` count."""
    week = iso_week(added.day)
    same = [p for p in planned if iso_week(p.day) == week]
    before: Counter[str] = Counter()
    for item in same:
        before.update(item.recipients)
    pushed = sum(1 for person in added.recipients if before[person] == budget)
    already = sum(1 for person in added.recipients if before[person] > budget)
    after = weekly_load([*same, added], budget=budget)
    return pushed, already, after[0]


def week_bounds(day: date) -> tuple[date, date]:
    """The Monday and the next Monday of `day`'s ISO week."""
    monday = day - timedelta(days=day.weekday())
    return monday, monday + timedelta(days=7)
