"""The message budget: messages per person per ISO week, announcements and surveys together."""

from __future__ import annotations

from datetime import date

import pytest

from bot.core.budget import Planned, iso_week, pushed_over, week_bounds, weekly_load

MON = date(2027, 3, 29)  # ISO 2027-W13
TUE, WED = date(2027, 3, 30), date(2027, 3, 31)
THU, SUN = date(2027, 4, 1), date(2027, 4, 4)


def people(*ids: str) -> frozenset[str]:
    return frozenset(ids)


def test_overlapping_audiences_add_up_per_person() -> None:
    everyone = people("U1", "U2", "U3")
    planned = [
        Planned("countdown mon", MON, everyone),
        Planned("countdown tue", TUE, everyone),
        Planned("warehouse", WED, people("U1")),
        Planned("managers", WED, people("U1", "U2")),
    ]
    (week,) = weekly_load(planned, budget=3)
    assert (week.year, week.number, week.monday) == (2027, 13, MON)
    assert week.messages == 4
    assert week.busiest == 4  # U1: both countdowns, warehouse and managers
    assert week.over == 1  # U2 gets exactly 3: not over
    assert week.over_budget
    # every message that reaches U1, in time order, each once
    assert week.causes == ("countdown mon", "countdown tue", "managers", "warehouse")


def test_a_survey_run_counts_its_invitation_and_each_reminder() -> None:
    team = people("U1", "U2")
    survey = [
        Planned("readiness", TUE, team),
        Planned("readiness reminder 1", date(2027, 4, 1), team),
        Planned("readiness reminder 2", date(2027, 4, 3), team),
    ]
    (week,) = weekly_load([*survey, Planned("go-live", SUN, people("U2"))], budget=3)
    assert week.busiest == 4 and week.over == 1
    assert week.causes == (
        "readiness",
        "readiness reminder 1",
        "readiness reminder 2",
        "go-live",
    )
    (alone,) = weekly_load(survey, budget=3)
    assert alone.busiest == 3 and not alone.over_budget


def test_exactly_at_budget_is_not_flagged() -> None:
    planned = [Planned(f"m{n}", MON, people("U1", "U2")) for n in range(3)]
    (week,) = weekly_load(planned, budget=3)
    assert week.busiest == 3
    assert week.over == 0 and not week.over_budget and week.causes == ()


def test_weeks_are_iso_weeks_in_order_and_split_on_monday() -> None:
    sunday_before = date(2027, 3, 28)  # W12
    planned = [
        Planned("b", MON, people("U1")),
        Planned("a", sunday_before, people("U1")),
        Planned("c", date(2027, 1, 1), people("U1")),  # ISO 2026-W53
    ]
    weeks = weekly_load(planned, budget=0)
    assert [w.label for w in weeks] == ["2026-W53", "2027-W12", "2027-W13"]
    assert all(w.busiest == 1 and w.over == 1 for w in weeks)
    assert iso_week(date(2027, 1, 1)) == (2026, 53)
    assert week_bounds(THU) == (MON, date(2027, 4, 5))


def test_a_person_named_twice_in_one_message_counts_once_and_empty_weeks_are_fine() -> None:
    (week,) = weekly_load([Planned("x", MON, people("U1", "U1"))], budget=1)
    assert week.busiest == 1 and not week.over_budget
    (empty,) = weekly_load([Planned("channel only", MON, people())], budget=1)
    assert empty.busiest == 0 and empty.messages == 1
    assert weekly_load([], budget=3) == []
    with pytest.raises(ValueError):
        weekly_load([], budget=-1)


def test_what_one_more_send_does_to_its_week() -> None:
    planned = [
        Planned("countdown", MON, people("U1", "U2", "U3")),
        Planned("reminder", TUE, people("U1", "U2")),
        Planned("extra", WED, people("U1")),
        Planned("next week", date(2027, 4, 6), people("U1", "U2", "U3")),
    ]
    pushed, already, week = pushed_over(
        planned, Planned("this send", THU, people("U1", "U2", "U3")), budget=2
    )
    # U2 had 2 (at budget): pushed over; U1 had 3: over already; U3 had 1: stays within
    assert (pushed, already) == (1, 1)
    assert week.number == 13 and week.busiest == 4 and week.over == 2
    assert "this send" in week.causes and "next week" not in week.causes
    nothing = pushed_over(planned, Planned("this send", THU, people("U3")), budget=2)
    assert nothing[:2] == (0, 0)
