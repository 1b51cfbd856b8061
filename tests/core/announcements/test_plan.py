"""The announcement plan: time expressions, recurrences, time zones and file:line errors."""

from __future__ import annotations

import re
import textwrap
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import available_timezones

import pytest

from bot.core.announcements import plan as plan_module
from bot.core.announcements.plan import (
    Announcement,
    Occurrence,
    Plan,
    load_plan,
    occurrences,
    parse_audience,
    send_time,
)
from bot.core.content import Rollout, load_rollout
from bot.core.schedule import (
    DateExpr,
    OneOff,
    Recurrence,
    parse_at,
    parse_date,
    parse_every,
    parse_quiet_hours,
)

ROOT = Path(__file__).resolve().parents[3]
ROLLOUT = Rollout(
    name="Compass",
    timezone="Europe/London",
    milestones={
        "training_opens": date(2027, 2, 15),
        "go_live": date(2027, 4, 6),  # a Tuesday
        "hypercare_ends": date(2027, 5, 14),
    },
)
EVER = {"start": datetime(2000, 1, 1, tzinfo=UTC), "end": datetime(2100, 1, 1, tzinfo=UTC)}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / "schedules" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def plan_of(folder: Path, text: str, rollout: Rollout = ROLLOUT) -> Plan:
    write(folder, "announcements.yaml", text)
    plan, errors = load_plan(folder, rollout)
    assert [str(e) for e in errors] == []
    return plan


def errors_of(folder: Path, text: str, rollout: Rollout = ROLLOUT) -> list[str]:
    write(folder, "announcements.yaml", text)
    _plan, errors = load_plan(folder, rollout)
    return [f"{e.path.name}:{e.line}: {e.reason}" for e in errors]


def one_off(at: datetime, **options: object) -> Announcement:
    fields: dict = {
        "id": "a",
        "template": "a",
        "audience": ("everyone",),
        "schedule": OneOff(DateExpr(at.date()), at.time()),
        "path": Path("schedules/a.yaml"),
        "line": 2,
        **options,
    }
    return Announcement(**fields)


def only(announcement: Announcement, rollout: Rollout = ROLLOUT) -> Occurrence:
    (occurrence,) = occurrences(Plan((announcement,)), rollout, **EVER)
    return occurrence


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


# ----------------------------------------------------------------------- the example repo


def test_example_schedules_load_without_errors() -> None:
    rollout, rollout_errors = load_rollout(ROOT)
    plan, errors = load_plan(ROOT, rollout)
    assert rollout_errors == []
    assert errors == []
    assert all(a.enabled for a in plan.announcements)


def test_the_format_documented_in_the_module_docstring_loads(tmp_path: Path) -> None:
    doc = plan_module.__doc__ or ""
    block = doc.split("::\n\n", 1)[1].split("\n\n", 1)[0]
    plan = plan_of(tmp_path, block)
    assert [a.id for a in plan.announcements] == ["training-opens", "go-live-countdown"]
    countdown = plan.get("go-live-countdown")
    assert countdown is not None
    assert countdown.audience == ("channel:C0123ABCD", "users:U01AAA,U02BBB")
    assert plan.get("nope") is None


# ----------------------------------------------------------------------- time expressions


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2027-02-15 09:00", datetime(2027, 2, 15, 9, 0)),
        ("2027-02-15T09:00", datetime(2027, 2, 15, 9, 0)),
        ("  2027-02-15t9:05 ", datetime(2027, 2, 15, 9, 5)),
        ("2027-02-15 at 09:00", datetime(2027, 2, 15, 9, 0)),
        ("go_live at 08:30", datetime(2027, 4, 6, 8, 30)),
        ("go_live - 7 days at 09:00", datetime(2027, 3, 30, 9, 0)),
        ("go_live minus 7 days at 09:00", datetime(2027, 3, 30, 9, 0)),
        ("go_live-7days at 09:00", datetime(2027, 3, 30, 9, 0)),
        ("go_live - 1 day at 17:45", datetime(2027, 4, 5, 17, 45)),
        ("hypercare_ends + 1 week at 10:00", datetime(2027, 5, 21, 10, 0)),
        ("Hypercare_Ends  PLUS  2  Weeks   AT 10:00", datetime(2027, 5, 28, 10, 0)),
        ("2027-02-15 + 2 days at 09:00", datetime(2027, 2, 17, 9, 0)),
        (datetime(2027, 2, 15, 9, 0), datetime(2027, 2, 15, 9, 0)),
    ],
)
def test_at_expressions(text: object, expected: datetime) -> None:
    assert parse_at(text, ROLLOUT).planned(ROLLOUT) == [expected]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("go_live - 7 days", 'say at what time, like "go_live - 7 days at 09:00"'),
        (date(2027, 2, 15), 'say at what time, like "2027-02-15 09:00"'),
        ("next tuesday", 'expected a time like "go_live - 7 days at 09:00"'),
        ("go_live at 25:00", "25:00 is not a time of day"),
        ("2027-02-30 09:00", "2027-02-30 is not a real date"),
        ("golive at 09:00", "unknown milestone 'golive' (did you mean 'go_live'?)"),
        (datetime(2027, 2, 15, 9, 0, tzinfo=UTC), "write the time without a zone"),
        (datetime(2027, 2, 15, 9, 0, 30), "times are to the minute"),
        (42, "expected a time like"),
    ],
)
def test_at_errors_say_what_is_expected(value: object, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_at(value, ROLLOUT)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("go_live - 4 weeks", date(2027, 3, 9)),
        ("go_live minus 1 day", date(2027, 4, 5)),
        ("go_live", date(2027, 4, 6)),
        ("go_live+3 days", date(2027, 4, 9)),
        ("2027-03-01", date(2027, 3, 1)),
        (date(2027, 3, 1), date(2027, 3, 1)),
    ],
)
def test_date_expressions(text: object, expected: date) -> None:
    assert parse_date(text, ROLLOUT).resolve(ROLLOUT) == expected


def test_date_expression_reads_back_as_text() -> None:
    assert str(parse_date("go_live - 4 weeks", ROLLOUT)) == "go_live - 28 days"
    assert str(parse_date("2027-03-01 + 1 day", ROLLOUT)) == "2027-03-01 + 1 days"
    assert str(parse_date("GO_LIVE", ROLLOUT)) == "go_live"


@pytest.mark.parametrize(
    ("text", "weekdays", "interval", "at"),
    [
        ("day at 09:00", set(range(7)), 1, time(9)),
        ("daily at 7:30", set(range(7)), 1, time(7, 30)),
        ("weekday at 09:00", {0, 1, 2, 3, 4}, 1, time(9)),
        ("Monday at 09:00", {0}, 1, time(9)),
        ("fri at 16:00", {4}, 1, time(16)),
        ("every thursdays at 12:00", {3}, 1, time(12)),
        ("2 weeks on monday at 09:00", {0}, 2, time(9)),
        ("every 3 Weeks on Wed at 10:15", {2}, 3, time(10, 15)),
        ("week on tue at 09:00", {1}, 1, time(9)),
    ],
)
def test_every_expressions(text: str, weekdays: set[int], interval: int, at: time) -> None:
    assert parse_every(text) == (frozenset(weekdays), interval, at)


@pytest.mark.parametrize(
    "text",
    ["monday", "fortnightly at 09:00", "2 weeks on funday at 09:00", "0 weeks on mon at 9:00"],
)
def test_every_errors(text: str) -> None:
    with pytest.raises(ValueError, match="every: "):
        parse_every(text)


def test_quiet_hours_and_audiences_parse() -> None:
    assert parse_quiet_hours("20:00-08:00") == (time(20), time(8))
    assert parse_quiet_hours(" 12:00 to 13:30 ") == (time(12), time(13, 30))
    assert parse_audience("Everyone + Guests") == "everyone+guests"
    assert parse_audience("channel: C0123ABCD") == "channel:C0123ABCD"
    assert parse_audience("users:U1, W2") == "users:U1,W2"
    assert parse_audience("emails:audiences/pilot.CSV") == "emails:audiences/pilot.CSV"
    assert parse_audience("group:S0123") == "group:S0123"
    assert parse_audience("members:G0123") == "members:G0123"


# ----------------------------------------------------------------------- recurrences


def countdown(every: str, start: str, until: str, extra: str = "") -> str:
    return f"""\
        announcements:
          - id: countdown
            template: countdown
            to: everyone{extra}
            every: "{every}"
            from: "{start}"
            until: "{until}"
        """


def planned_days(folder: Path, every: str, start: str, until: str) -> list[date]:
    plan = plan_of(folder, countdown(every, start, until))
    return [o.local.date() for o in occurrences(plan, ROLLOUT, **EVER)]


def test_weekly_between_milestones_is_inclusive(tmp_path: Path) -> None:
    # from 2027-03-09 (Tue) until 2027-04-05 (Mon): the last Monday is included.
    days = planned_days(tmp_path, "monday at 09:00", "go_live - 4 weeks", "go_live - 1 day")
    assert days == [date(2027, 3, 15), date(2027, 3, 22), date(2027, 3, 29), date(2027, 4, 5)]


def test_weekly_includes_a_from_that_falls_on_the_day(tmp_path: Path) -> None:
    days = planned_days(tmp_path, "monday at 09:00", "2027-03-15", "2027-03-29")
    assert days == [date(2027, 3, 15), date(2027, 3, 22), date(2027, 3, 29)]


def test_weekday_rule_skips_the_weekend(tmp_path: Path) -> None:
    days = planned_days(tmp_path, "weekday at 09:00", "2027-03-12", "2027-03-16")
    assert days == [date(2027, 3, 12), date(2027, 3, 15), date(2027, 3, 16)]


def test_every_day(tmp_path: Path) -> None:
    days = planned_days(tmp_path, "day at 09:00", "go_live", "go_live + 2 days")
    assert days == [date(2027, 4, 6), date(2027, 4, 7), date(2027, 4, 8)]


def test_every_two_weeks_counts_from_the_first_matching_day(tmp_path: Path) -> None:
    days = planned_days(
        tmp_path, "2 weeks on monday at 09:00", "go_live - 4 weeks", "go_live - 1 day"
    )
    assert days == [date(2027, 3, 15), date(2027, 3, 29)]


def test_recurrence_with_from_after_until_plans_nothing() -> None:
    rule = Recurrence(frozenset({0}), time(9), DateExpr("go_live"), DateExpr("go_live", -1))
    assert rule.planned(ROLLOUT) == []


# ----------------------------------------------------------------------- moves: weekends, quiet


def test_weekdays_only_moves_saturday_to_monday_keeping_the_key() -> None:
    occurrence = only(one_off(datetime(2027, 3, 13, 9, 0), weekdays_only=True))  # a Saturday
    assert occurrence.key == "a@2027-03-13T09:00"
    assert occurrence.local == datetime(2027, 3, 13, 9, 0)
    assert occurrence.due_utc == utc(2027, 3, 15, 9, 0)  # Monday, GMT


def test_without_weekdays_only_saturday_stays() -> None:
    assert only(one_off(datetime(2027, 3, 13, 9, 0))).due_utc == utc(2027, 3, 13, 9, 0)


def test_weekend_occurrences_moved_onto_monday_are_sent_once(tmp_path: Path) -> None:
    text = countdown(
        "day at 09:00", "2027-03-12", "2027-03-16", extra="\n            weekdays_only: true"
    )
    plan = plan_of(tmp_path, text)
    found = occurrences(plan, ROLLOUT, **EVER)
    assert [(o.key, o.due_utc) for o in found] == [
        ("countdown@2027-03-12T09:00", utc(2027, 3, 12, 9)),
        ("countdown@2027-03-15T09:00", utc(2027, 3, 15, 9)),
        ("countdown@2027-03-16T09:00", utc(2027, 3, 16, 9)),
    ]


@pytest.mark.parametrize(
    ("planned", "window", "due"),
    [
        (datetime(2027, 3, 2, 21, 30), "20:00-08:00", utc(2027, 3, 3, 8, 0)),  # evening
        (datetime(2027, 3, 2, 7, 0), "20:00-08:00", utc(2027, 3, 2, 8, 0)),  # early morning
        (datetime(2027, 3, 2, 8, 0), "20:00-08:00", utc(2027, 3, 2, 8, 0)),  # end is not quiet
        (datetime(2027, 3, 2, 19, 59), "20:00-08:00", utc(2027, 3, 2, 19, 59)),
        (datetime(2027, 3, 2, 12, 30), "12:00-13:00", utc(2027, 3, 2, 13, 0)),  # lunch
        (datetime(2027, 3, 2, 13, 0), "12:00-13:00", utc(2027, 3, 2, 13, 0)),
    ],
)
def test_quiet_hours_move_a_send_to_the_end_of_the_window(
    planned: datetime, window: str, due: datetime
) -> None:
    quiet = parse_quiet_hours(window)
    assert only(one_off(planned, quiet_hours=quiet)).due_utc == due


def test_friday_night_past_quiet_hours_lands_on_monday() -> None:
    announcement = one_off(
        datetime(2027, 3, 12, 21, 0), quiet_hours=(time(20), time(8)), weekdays_only=True
    )
    assert only(announcement).due_utc == utc(2027, 3, 15, 8, 0)


def test_quiet_hours_apply_in_the_recipients_zone_for_local_time() -> None:
    announcement = one_off(
        datetime(2027, 3, 2, 21, 0), quiet_hours=(time(20), time(8)), local_time=True
    )
    occurrence = only(announcement)
    sent = send_time(announcement, occurrence, tz="America/New_York", rollout=ROLLOUT)
    assert sent == utc(2027, 3, 3, 13, 0)  # 08:00 EST the next morning
    assert occurrence.due_utc <= sent


# ----------------------------------------------------------------------- time zones


def test_rollout_zone_announcements_reach_everyone_at_the_same_instant() -> None:
    announcement = one_off(datetime(2027, 3, 1, 9, 0))
    occurrence = only(announcement)
    assert occurrence.due_utc == utc(2027, 3, 1, 9, 0)
    for tz in ("Asia/Tokyo", "America/New_York", None):
        assert send_time(announcement, occurrence, tz=tz, rollout=ROLLOUT) == occurrence.due_utc


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        ("Europe/London", utc(2027, 3, 1, 9, 0)),
        ("America/New_York", utc(2027, 3, 1, 14, 0)),
        ("Asia/Tokyo", utc(2027, 3, 1, 0, 0)),
        ("Pacific/Kiritimati", utc(2027, 2, 28, 19, 0)),
        (None, utc(2027, 3, 1, 9, 0)),  # the rollout's zone
        ("Mars/Olympus_Mons", utc(2027, 3, 1, 9, 0)),
        ("", utc(2027, 3, 1, 9, 0)),
    ],
)
def test_local_time_sends_at_the_recipients_wall_clock(tz: str | None, expected: datetime) -> None:
    announcement = one_off(datetime(2027, 3, 1, 9, 0), local_time=True)
    occurrence = only(announcement)
    assert occurrence.due_utc == utc(2027, 2, 28, 19, 0)  # 09:00 at UTC+14
    sent = send_time(announcement, occurrence, tz=tz, rollout=ROLLOUT)
    assert sent == expected
    assert occurrence.due_utc <= sent


@pytest.mark.parametrize(
    "planned",
    [
        datetime(2027, 3, 14, 2, 30),  # New York springs forward
        datetime(2027, 3, 28, 1, 30),  # London springs forward
        datetime(2027, 10, 31, 1, 30),  # London falls back
        datetime(2027, 11, 6, 22, 0),  # a Saturday, moved to Monday
    ],
)
def test_local_time_due_is_no_later_than_any_zones_send_time(planned: datetime) -> None:
    announcement = one_off(
        planned, local_time=True, weekdays_only=True, quiet_hours=(time(23), time(6))
    )
    occurrence = only(announcement)
    earliest = min(
        send_time(announcement, occurrence, tz=tz, rollout=ROLLOUT) for tz in available_timezones()
    )
    assert occurrence.due_utc <= earliest
    assert earliest - occurrence.due_utc < timedelta(hours=1)


@pytest.mark.parametrize(
    ("tz", "planned", "expected"),
    [
        # Europe/London, 28 March 2027: 01:00 GMT -> 02:00 BST. 01:30 does not exist: moved on.
        ("Europe/London", datetime(2027, 3, 28, 1, 30), utc(2027, 3, 28, 1, 30)),  # 02:30 BST
        ("Europe/London", datetime(2027, 3, 26, 9, 0), utc(2027, 3, 26, 9, 0)),  # GMT
        ("Europe/London", datetime(2027, 3, 29, 9, 0), utc(2027, 3, 29, 8, 0)),  # BST
        # 31 October 2027: 02:00 BST -> 01:00 GMT. 01:30 happens twice: the first (BST) wins.
        ("Europe/London", datetime(2027, 10, 31, 1, 30), utc(2027, 10, 31, 0, 30)),
        ("Europe/London", datetime(2027, 11, 1, 9, 0), utc(2027, 11, 1, 9, 0)),
        # America/New_York, 14 March 2027: 02:00 EST -> 03:00 EDT.
        ("America/New_York", datetime(2027, 3, 14, 2, 30), utc(2027, 3, 14, 7, 30)),  # 03:30
        ("America/New_York", datetime(2027, 3, 13, 9, 0), utc(2027, 3, 13, 14, 0)),  # EST
        ("America/New_York", datetime(2027, 3, 15, 9, 0), utc(2027, 3, 15, 13, 0)),  # EDT
        # 7 November 2027: 02:00 EDT -> 01:00 EST; 01:30 EDT first.
        ("America/New_York", datetime(2027, 11, 7, 1, 30), utc(2027, 11, 7, 5, 30)),
        ("America/New_York", datetime(2027, 11, 8, 9, 0), utc(2027, 11, 8, 14, 0)),
    ],
)
def test_daylight_saving_changes(tz: str, planned: datetime, expected: datetime) -> None:
    local = one_off(planned, local_time=True)
    assert send_time(local, only(local), tz=tz, rollout=ROLLOUT) == expected
    # The same in a rollout run in that zone, without local_time.
    rollout = Rollout(timezone=tz, milestones=ROLLOUT.milestones)
    central = one_off(planned)
    occurrence = only(central, rollout)
    assert occurrence.due_utc == expected
    assert send_time(central, occurrence, tz="Asia/Tokyo", rollout=rollout) == expected


def test_daylight_saving_in_a_recurrence(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, countdown("day at 09:00", "2027-03-27", "2027-03-29"))
    due = [o.due_utc for o in occurrences(plan, ROLLOUT, **EVER)]
    assert due == [utc(2027, 3, 27, 9), utc(2027, 3, 28, 8), utc(2027, 3, 29, 8)]


# ----------------------------------------------------------------------- windows and keys


SENDS = """\
    announcements:
      - id: reminder
        template: reminder
        to: everyone
        at: "go_live - 7 days at 09:00"
      - id: countdown
        template: countdown
        to: everyone
        every: "monday at 09:00"
        from: "go_live - 2 weeks"
        until: "go_live"
      - id: a-first
        template: reminder
        to: everyone
        at: "go_live - 7 days at 09:00"
      - id: paused
        template: reminder
        to: everyone
        at: "go_live at 09:00"
        enabled: false
    """


def test_occurrences_in_a_window_are_sorted_by_due_time_then_id(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SENDS)
    found = occurrences(plan, ROLLOUT, **EVER)
    assert [o.key for o in found] == [
        "countdown@2027-03-29T09:00",
        "a-first@2027-03-30T09:00",
        "reminder@2027-03-30T09:00",
        "countdown@2027-04-05T09:00",
    ]
    # BST from 28 March: 09:00 is 08:00 UTC. The window is [start, end).
    window = occurrences(plan, ROLLOUT, start=utc(2027, 3, 30, 8), end=utc(2027, 4, 5, 8))
    assert [o.key for o in window] == ["a-first@2027-03-30T09:00", "reminder@2027-03-30T09:00"]


def test_disabled_announcements_stay_in_the_plan_but_never_fall_due(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SENDS)
    paused = plan.get("paused")
    assert paused is not None and not paused.enabled
    assert not [o for o in occurrences(plan, ROLLOUT, **EVER) if o.announcement_id == "paused"]


def test_keys_are_stable_across_calls_and_loads(tmp_path: Path) -> None:
    first = occurrences(plan_of(tmp_path, SENDS), ROLLOUT, **EVER)
    again = occurrences(plan_of(tmp_path, SENDS), ROLLOUT, **EVER)
    assert first == again
    assert len({o.key for o in first}) == len(first)


def test_moving_a_milestone_moves_the_key_and_the_time(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SENDS)
    later = Rollout(
        timezone="Europe/London", milestones={**ROLLOUT.milestones, "go_live": date(2027, 4, 13)}
    )
    before = {o.key: o.due_utc for o in occurrences(plan, ROLLOUT, **EVER)}
    after = {o.key: o.due_utc for o in occurrences(plan, later, **EVER)}
    assert before["reminder@2027-03-30T09:00"] == utc(2027, 3, 30, 8)
    assert after["reminder@2027-04-06T09:00"] == utc(2027, 4, 6, 8)
    assert "reminder@2027-03-30T09:00" not in after
    # Reloading the files against the moved rollout gives the same.
    reloaded, errors = load_plan(tmp_path, later)
    assert errors == []
    assert {o.key for o in occurrences(reloaded, later, **EVER)} == set(after)


def test_naive_windows_and_mismatched_occurrences_are_refused() -> None:
    announcement = one_off(datetime(2027, 3, 1, 9))
    with pytest.raises(ValueError, match="timezone-aware"):
        occurrences(Plan((announcement,)), ROLLOUT, start=datetime(2027, 1, 1), end=utc(2028, 1, 1))
    stranger = Occurrence("b", "b@2027-03-01T09:00", datetime(2027, 3, 1, 9), utc(2027, 3, 1, 9))
    with pytest.raises(ValueError, match="not an occurrence of a"):
        send_time(announcement, stranger, tz=None, rollout=ROLLOUT)


def test_a_rollout_without_the_milestone_is_refused_not_skipped(tmp_path: Path) -> None:
    plan = plan_of(tmp_path, SENDS)
    with pytest.raises(ValueError, match="no milestone 'go_live'"):
        occurrences(plan, Rollout(timezone="Europe/London"), **EVER)


# ----------------------------------------------------------------------- loading


def test_all_options_load(tmp_path: Path) -> None:
    plan = plan_of(
        tmp_path,
        """\
        announcements:
          - id: training-opens
            template: training-opens
            to: [everyone, "channel:C0123ABCD", everyone]
            at: 2027-02-15 09:00:00
            local_time: true
            weekdays_only: true
            quiet_hours: "20:00-08:00"
            ack: true
            remind_after_days: 3
            enabled: true
        """,
    )
    (announcement,) = plan.announcements
    assert announcement == Announcement(
        id="training-opens",
        template="training-opens",
        audience=("everyone", "channel:C0123ABCD"),
        schedule=OneOff(DateExpr(date(2027, 2, 15)), time(9, 0)),
        path=tmp_path / "schedules" / "announcements.yaml",
        line=2,
        local_time=True,
        weekdays_only=True,
        quiet_hours=(time(20), time(8)),
        ack=True,
        remind_after_days=3,
        enabled=True,
    )


def test_files_are_read_in_name_order_and_files_without_announcements_are_fine(
    tmp_path: Path,
) -> None:
    item = "announcements:\n  - {{id: {0}, template: t, to: everyone, at: 'go_live at 09:00'}}\n"
    write(tmp_path, "b.yaml", item.format("from-b"))
    write(tmp_path, "a.yaml", item.format("from-a"))
    write(tmp_path, "surveys.yaml", "surveys:\n  - id: pulse\n")
    write(tmp_path, "empty.yaml", "")
    write(tmp_path, "nothing.yaml", "announcements:\n")
    plan, errors = load_plan(tmp_path, ROLLOUT)
    assert errors == []
    assert [a.id for a in plan.announcements] == ["from-a", "from-b"]


def test_no_schedules_folder_is_an_empty_plan(tmp_path: Path) -> None:
    assert load_plan(tmp_path, ROLLOUT) == (Plan(), [])


def test_a_bad_item_is_left_out_and_the_good_ones_kept(tmp_path: Path) -> None:
    write(
        tmp_path,
        "announcements.yaml",
        """\
        announcements:
          - id: good
            template: good
            to: everyone
            at: "go_live at 09:00"
          - id: bad
            template: bad
            to: everyone
            at: "whenever"
        """,
    )
    plan, errors = load_plan(tmp_path, ROLLOUT)
    assert [a.id for a in plan.announcements] == ["good"]
    assert [e.line for e in errors] == [9]


def test_duplicate_ids_name_the_other_file_and_line(tmp_path: Path) -> None:
    item = "announcements:\n  - id: same\n    template: t\n    to: everyone\n    at: 'go_live at 09:00'\n"
    write(tmp_path, "a.yaml", item)
    write(tmp_path, "b.yaml", "# second\n" + item)
    plan, errors = load_plan(tmp_path, ROLLOUT)
    assert [str(e.path.name) + f":{e.line}: {e.reason}" for e in errors] == [
        "b.yaml:3: duplicate id 'same' (first used at schedules/a.yaml:2)"
    ]
    assert [a.path.name for a in plan.announcements] == ["a.yaml"]


def test_yaml_syntax_errors_and_shapes(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "announcements:\n  - id: [oops\n")
    write(tmp_path, "b.yaml", "- just a list\n")
    write(tmp_path, "c.yaml", "announcements:\n  id: not-a-list\n")
    write(tmp_path, "d.yaml", "announcements:\n  - just text\n")
    # rollout.yaml's own syntax is load_rollout's to report; it is not said twice.
    write(tmp_path, "rollout.yaml", "rollout: [oops\n")
    _plan, errors = load_plan(tmp_path, ROLLOUT)
    lines = [f"{e.path.name}:{e.line}: {e.reason}" for e in errors]
    assert len(lines) == 4
    assert lines[0].startswith("a.yaml:2: invalid YAML")  # where the bracket opened
    assert lines[1:] == [
        "b.yaml:1: expected a mapping with announcements:",
        'c.yaml:1: announcements: must be a list, each item starting with "- id: …"',
        "d.yaml:2: each announcement must be a mapping with id:, to: …",
    ]


HEAD = """\
announcements:
  - id: x
    template: x
    to: everyone
"""


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # missing keys: the item's line
        (
            "announcements:\n  - template: x\n    to: everyone\n    at: 'go_live at 09:00'\n",
            "2: missing id",
        ),
        (
            "announcements:\n  - id: x\n    to: everyone\n    at: 'go_live at 09:00'\n",
            "2: missing template",
        ),
        (
            "announcements:\n  - id: x\n    template: x\n    at: 'go_live at 09:00'\n",
            "2: missing to",
        ),
        (
            "announcements:\n  - id: x\n    template: x\n    to: []\n    at: 'go_live at 09:00'\n",
            "4: missing to",
        ),
        (HEAD, "2: missing at: (once) or every: (recurring)"),
        # names
        (
            "announcements:\n  - id: Bad Id\n    template: x\n    to: everyone\n    at: 'go_live at 09:00'\n",
            "2: id 'Bad Id' must be lowercase letters",
        ),
        (
            "announcements:\n  - id: x\n    template: ../secrets\n    to: everyone\n    at: 'go_live at 09:00'\n",
            "3: template '../secrets' must be lowercase letters",
        ),
        (
            "announcements:\n  - id: off\n    template: x\n    to: everyone\n    at: 'go_live at 09:00'\n",
            '2: id: YAML reads off as False; quote it: "off"',
        ),
        # schedule
        (
            HEAD + "    at: 'go_live at 09:00'\n    every: 'monday at 09:00'\n",
            "6: give either at: (once) or every: (recurring), not both",
        ),
        (
            HEAD + "    at: next tuesday\n",
            '5: at: expected a time like "go_live - 7 days at 09:00"',
        ),
        (HEAD + "    at: 2027-02-15\n", '5: at: say at what time, like "2027-02-15 09:00"'),
        (HEAD + "    at: go_live - 1 week\n", '5: at: say at what time, like "go_live - 1 week at'),
        (
            HEAD + "    at: golive at 09:00\n",
            "5: unknown milestone 'golive' (did you mean 'go_live'?); known milestones: "
            "training_opens, go_live, hypercare_ends",
        ),
        (
            HEAD + "    every: fortnightly\n    from: go_live - 4 weeks\n    until: go_live\n",
            '5: every: expected a rule like "monday at 09:00"',
        ),
        (
            HEAD + "    every: monday at 09:00\n    from: go_live - 4 weeks\n",
            "5: every: needs until:",
        ),
        (HEAD + "    every: monday at 09:00\n", "5: every: needs from: and until:"),
        (
            HEAD + "    every: monday at 09:00\n    from: soon\n    until: go_live\n",
            "6: unknown milestone 'soon'",
        ),
        (
            HEAD + "    every: monday at 09:00\n    from: go_live\n    until: go_live at 09:00\n",
            "7: until: takes a date without a time",
        ),
        (
            HEAD + "    every: monday at 09:00\n    from: go_live\n    until: go_live in a bit\n",
            '7: until: expected a date like "go_live - 4 weeks"',
        ),
        (
            HEAD + "    every: monday at 09:00\n    from: go_live + 1 day\n    until: go_live\n",
            "6: from (2027-04-07) is after until (2027-04-06)",
        ),
        (
            HEAD + "    at: go_live at 09:00\n    until: go_live\n",
            "6: until: only applies to every:, not at:",
        ),
        # options
        (
            HEAD + "    at: go_live at 09:00\n    quiet_hours: 8pm-8am\n",
            "6: quiet_hours: expected a window like",
        ),
        (
            HEAD + "    at: go_live at 09:00\n    quiet_hours: '20:00-25:00'\n",
            "6: quiet_hours: 25:00 is not a time",
        ),
        (
            HEAD + "    at: go_live at 09:00\n    quiet_hours: '20:00-20:00'\n",
            "6: quiet_hours: the window starts and ends",
        ),
        (
            HEAD + "    at: go_live at 09:00\n    remind_after_days: 3\n",
            "6: remind_after_days needs ack: true",
        ),
        (
            HEAD + "    at: go_live at 09:00\n    ack: false\n    remind_after_days: 3\n",
            "7: remind_after_days needs ack: true",
        ),
        (
            HEAD + "    at: go_live at 09:00\n    ack: true\n    remind_after_days: 0\n",
            "7: remind_after_days must be 1 or more, not 0",
        ),
        (
            HEAD + "    at: go_live at 09:00\n    local_time: sometimes\n",
            "6: local_time must be true or false",
        ),
        (HEAD + "    at: go_live at 09:00\n    enabled: 1\n", "6: enabled must be true or false"),
        (
            HEAD + "    at: go_live at 09:00\n    when: now\n",
            "6: unknown key 'when'; known keys: id, template, to, at, every, from, until, "
            "local_time, weekdays_only, quiet_hours, ack, remind_after_days, enabled",
        ),
        (
            HEAD + "    at: go_live at 09:00\n    akc: true\n",
            "6: unknown key 'akc' (did you mean 'ack'?)",
        ),
        (HEAD + "    at: go_live at 09:00\n    at: go_live at 10:00\n", "6: at: given twice"),
    ],
)
def test_errors_point_at_the_item_or_key(tmp_path: Path, body: str, expected: str) -> None:
    found = errors_of(tmp_path, body)
    assert len(found) == 1, found
    assert found[0].startswith(f"announcements.yaml:{expected}"), found


AUDIENCE = """\
announcements:
  - id: x
    template: x
    at: go_live at 09:00
    to:
      - everyone
      - {0}
"""


@pytest.mark.parametrize(
    ("audience", "expected"),
    [
        ("some people", "7: unknown audience 'some people'; expected everyone, everyone+guests"),
        ("'channel:#general'", "7: channel: takes a channel id like C0123ABCD (not a #name"),
        ("members:general", "7: members: takes a channel id"),
        ("group:U123", "7: group: takes a user group id like S0123ABCD"),
        ("users:U1,,U2", "7: users: takes user ids like U0123ABCD separated by commas"),
        ("users:alice", "7: users: takes user ids"),
        ("emails:/etc/people.csv", "7: emails: takes a .csv file's path relative"),
        ("emails:../people.csv", "7: emails: takes a .csv file's path relative"),
        ("emails:people.xlsx", "7: emails: takes a .csv file's path relative"),
        (
            "channel: C0123",
            "7: an audience is text like channel:C0123ABCD, not {'channel': 'C0123'}",
        ),
    ],
)
def test_bad_audiences_point_at_their_list_item(
    tmp_path: Path, audience: str, expected: str
) -> None:
    found = errors_of(tmp_path, AUDIENCE.format(audience))
    assert len(found) == 1, found
    assert found[0].startswith(f"announcements.yaml:{expected}"), found


def test_a_single_bad_audience_points_at_to(tmp_path: Path) -> None:
    found = errors_of(tmp_path, HEAD.replace("everyone", "nobody") + "    at: go_live at 09:00\n")
    assert found == [
        "announcements.yaml:4: unknown audience 'nobody'; expected everyone, everyone+guests, "
        "channel:C…, members:C…, group:S…, users:U…,U… or emails:path/to/list.csv"
    ]


def test_several_errors_in_one_item_come_in_line_order(tmp_path: Path) -> None:
    found = errors_of(
        tmp_path,
        "announcements:\n  - id: x\n    colour: red\n    to: nobody\n    at: soon\n",
    )
    assert [line.split(":")[1] for line in found] == ["2", "3", "4", "5"]
    assert "missing template" in found[0]


def test_unknown_milestone_with_no_milestones_says_where_to_add_them(tmp_path: Path) -> None:
    found = errors_of(tmp_path, HEAD + "    at: go_live at 09:00\n", Rollout())
    assert found == [
        "announcements.yaml:5: unknown milestone 'go_live'; known milestones: none "
        "(add them under milestones: in rollout.yaml)"
    ]
