"""Survey definitions and schedules: the example files, every mistake at its line, and runs."""

from __future__ import annotations

import textwrap
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest

from bot.core.announcements.plan import load_plan
from bot.core.content import Rollout, load_rollout
from bot.core.schedule import DateExpr, OneOff, Recurrence
from bot.core.surveys.definitions import (
    ADKAR,
    ENPS_LABELS,
    LIKERT_LABELS,
    Question,
    RecipientTimes,
    RunOccurrence,
    Segment,
    Survey,
    SurveySchedule,
    load_survey_schedules,
    load_surveys,
    recipient_times,
    runs,
)

ROOT = Path(__file__).resolve().parents[3]
ROLLOUT = Rollout(
    name="Compass",
    timezone="Europe/London",
    milestones={
        "training_opens": date(2027, 2, 15),  # a Monday
        "go_live": date(2027, 4, 6),  # a Tuesday
        "hypercare_ends": date(2027, 5, 14),
    },
)
EVER = {"start": datetime(2000, 1, 1, tzinfo=UTC), "end": datetime(2100, 1, 1, tzinfo=UTC)}
GOOD_SURVEY = """\
title: Pulse
questions:
  - id: q
    kind: likert
    text: How is it going?
"""


def write(folder: Path, relative: str, text: str) -> Path:
    path = folder / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def survey_errors(folder: Path, text: str, name: str = "pulse") -> list[str]:
    write(folder, f"messages/surveys/{name}.yaml", text)
    _surveys, errors = load_surveys(folder)
    return [f"{e.path.name}:{e.line}: {e.reason}" for e in errors]


def one_survey(folder: Path, text: str) -> Survey:
    write(folder, "messages/surveys/pulse.yaml", text)
    surveys, errors = load_surveys(folder)
    assert [str(e) for e in errors] == []
    return surveys["pulse"]


def schedule_errors(folder: Path, text: str, rollout: Rollout = ROLLOUT) -> list[str]:
    write(folder, "messages/surveys/pulse.yaml", GOOD_SURVEY)
    write(folder, "schedules/surveys.yaml", text)
    surveys, errors = load_surveys(folder)
    assert errors == []
    _schedules, errors = load_survey_schedules(folder, rollout, surveys)
    return [f"{e.path.name}:{e.line}: {e.reason}" for e in errors]


def one_schedule(folder: Path, text: str, rollout: Rollout = ROLLOUT) -> SurveySchedule:
    write(folder, "messages/surveys/pulse.yaml", GOOD_SURVEY)
    write(folder, "schedules/surveys.yaml", text)
    surveys, _errors = load_surveys(folder)
    schedules, errors = load_survey_schedules(folder, rollout, surveys)
    assert [str(e) for e in errors] == []
    (schedule,) = schedules
    return schedule


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


# ---------------------------------------------------------------------------- the example


def test_the_example_survey_and_schedule_load_without_errors() -> None:
    rollout, rollout_errors = load_rollout(ROOT)
    surveys, survey_errors = load_surveys(ROOT)
    schedules, schedule_errors = load_survey_schedules(ROOT, rollout, surveys)
    _plan, plan_errors = load_plan(ROOT, rollout)  # surveys.yaml must not upset the plan
    assert [str(e) for e in [*rollout_errors, *survey_errors, *schedule_errors, *plan_errors]] == []
    readiness = surveys["readiness"]
    assert readiness.title == "How ready do you feel for Compass?"
    assert (readiness.anonymity, readiness.min_group) == ("anonymous", 5)
    assert [q.id for q in readiness.questions] == [
        *ADKAR,
        "confidence",
        "recommend",
        "comment",
    ]
    assert readiness.adkar == {element: element for element in ADKAR}
    assert all(q.kind == "likert" and q.labels == LIKERT_LABELS for q in readiness.questions[:5])
    confidence = readiness.question("confidence")
    assert confidence is not None
    assert confidence.text == "How confident do you feel using Compass?"
    assert confidence.labels == ("Not at all", "Slightly", "Moderately", "Very", "Completely")
    assert confidence.adkar is None
    assert readiness.question("recommend") == Question(
        "recommend",
        "enps",
        "How likely are you to recommend Compass to a colleague?",
        labels=ENPS_LABELS,
    )
    comment = readiness.question("comment")
    assert comment is not None and comment.kind == "text" and comment.optional
    assert readiness.segments == (
        Segment(
            "site",
            "Site",
            "channel",
            {
                "Coventry DC": "C0COVENTRY",
                "Dublin office": "C0DUBLIN",
                "Head office": "C0HEADOFFICE",
            },
        ),
        Segment("department", "Department", "profile", {}, "Xf0DEPARTMENT"),
    )
    (schedule,) = schedules
    assert schedule.survey == "readiness"
    assert schedule.audience == ("everyone",)
    assert schedule.every == Recurrence(
        frozenset({1}), time(10), DateExpr("training_opens"), DateExpr("go_live", 84), 2
    )
    assert schedule.at is None
    assert (schedule.open_days, schedule.reminder_days, schedule.local_time) == (5, (2, 4), True)
    assert schedule.path == ROOT / "schedules" / "surveys.yaml"


def test_the_example_runs_every_other_tuesday_until_twelve_weeks_after_go_live() -> None:
    rollout, _ = load_rollout(ROOT)
    surveys, _ = load_surveys(ROOT)
    (schedule,) = load_survey_schedules(ROOT, rollout, surveys)[0]
    found = runs(schedule, rollout, **EVER)
    # From training_opens (Mon 15 Feb) the first Tuesday is 16 Feb; until go_live + 12 weeks =
    # Tue 29 June, which is 19 weeks after 16 Feb, so the last fortnightly run is 22 June.
    days = [date(2027, 2, 16) + timedelta(weeks=2 * i) for i in range(10)]
    assert days[-1] == date(2027, 6, 22)
    assert [run.key for run in found] == [f"readiness@{day.isoformat()}T10:00" for day in days]
    assert all(run.survey == "readiness" for run in found)
    assert [run.local for run in found] == [datetime.combine(day, time(10)) for day in days]
    # local_time: each person's 10:00. For someone in London, in winter (GMT = UTC):
    first = recipient_times(schedule, found[0], tz="Europe/London", rollout=rollout)
    assert first == RecipientTimes(
        invite_utc=utc(2027, 2, 16, 10),  # Tuesday 10:00
        closes_utc=utc(2027, 2, 21, 10),  # open 5 days: Sunday 10:00
        reminders_utc=(utc(2027, 2, 18, 10), utc(2027, 2, 20, 10)),  # Thursday, Saturday
    )
    # After the clocks go forward on 28 March (BST = UTC+1), 10:00 is 09:00 UTC.
    after = recipient_times(schedule, found[4], tz="Europe/London", rollout=rollout)
    assert after == RecipientTimes(
        utc(2027, 4, 13, 9), utc(2027, 4, 18, 9), (utc(2027, 4, 15, 9), utc(2027, 4, 17, 9))
    )
    # Dublin keeps the same clock; an unknown zone falls back to the rollout's.
    assert recipient_times(schedule, found[4], tz="Europe/Dublin", rollout=rollout) == after
    assert recipient_times(schedule, found[4], tz="Mars/Olympus", rollout=rollout) == after
    assert recipient_times(schedule, found[4], tz=None, rollout=rollout) == after
    # The run itself opens when the first place on Earth (UTC+14) reaches Tuesday 10:00 and
    # closes when the last (UTC−12) reaches Sunday 10:00, so nobody gets less than 5 days.
    assert found[0] == RunOccurrence(
        "readiness@2027-02-16T10:00",
        starts_utc=utc(2027, 2, 15, 20),
        closes_utc=utc(2027, 2, 21, 22),
        reminders_utc=(utc(2027, 2, 17, 20), utc(2027, 2, 19, 20)),
    )
    tokyo = recipient_times(schedule, found[0], tz="Asia/Tokyo", rollout=rollout)
    assert tokyo.invite_utc == utc(2027, 2, 16, 1)  # 10:00 JST
    for run in found:
        for zone in ("Pacific/Kiritimati", "Europe/London", "Pacific/Pago_Pago"):
            times = recipient_times(schedule, run, tz=zone, rollout=rollout)
            assert run.starts_utc <= times.invite_utc
            assert times.closes_utc <= run.closes_utc


# ---------------------------------------------------------------------------- runs


def test_runs_in_the_rollout_zone_across_the_clock_change(tmp_path: Path) -> None:
    schedule = one_schedule(
        tmp_path,
        """\
        surveys:
          - survey: pulse
            to: everyone
            every: "tuesday at 10:00"
            from: 2027-03-22
            until: 2027-03-30
            open_days: 5
            reminders: [1, 3, 4]
        """,
    )
    assert schedule.local_time is False
    first, second = runs(schedule, ROLLOUT, **EVER)
    # Tue 23 March 10:00 GMT; closes Sun 28 March 10:00, after the clocks went forward: BST.
    assert first == RunOccurrence(
        "pulse@2027-03-23T10:00",
        starts_utc=utc(2027, 3, 23, 10),
        closes_utc=utc(2027, 3, 28, 9),
        reminders_utc=(utc(2027, 3, 24, 10), utc(2027, 3, 26, 10), utc(2027, 3, 27, 10)),
    )
    assert second.key == "pulse@2027-03-30T10:00"
    assert second.starts_utc == utc(2027, 3, 30, 9)
    # Not local_time: everyone gets the run's own times.
    times = recipient_times(schedule, first, tz="Asia/Tokyo", rollout=ROLLOUT)
    assert times == RecipientTimes(first.starts_utc, first.closes_utc, first.reminders_utc)


def test_runs_are_filtered_by_start_and_need_aware_bounds(tmp_path: Path) -> None:
    schedule = one_schedule(
        tmp_path,
        """\
        surveys:
          - survey: pulse
            to: everyone
            every: "2 weeks on tuesday at 10:00"
            from: training_opens
            until: "go_live + 12 weeks"
        """,
    )
    assert (schedule.open_days, schedule.reminder_days) == (5, ())  # the defaults
    window = runs(schedule, ROLLOUT, start=utc(2027, 3, 2, 10), end=utc(2027, 3, 16, 10))
    assert [run.key for run in window] == ["pulse@2027-03-02T10:00"]  # start in, end out
    assert runs(schedule, ROLLOUT, **EVER)[0].reminders_utc == ()
    with pytest.raises(ValueError, match="timezone-aware"):
        runs(schedule, ROLLOUT, start=datetime(2027, 1, 1), end=utc(2028, 1, 1))
    other = RunOccurrence("other@2027-03-02T10:00", utc(2027, 3, 2), utc(2027, 3, 3), ())
    with pytest.raises(ValueError, match="not a run of pulse"):
        recipient_times(schedule, other, tz=None, rollout=ROLLOUT)


def test_a_one_off_run_and_quiet_hours(tmp_path: Path) -> None:
    schedule = one_schedule(
        tmp_path,
        """\
        surveys:
          - survey: pulse
            to: [everyone, "channel:C0PILOT"]
            at: "go_live + 1 week at 21:00"
            open_days: 3
            reminders: [2]
            quiet_hours: "20:00-08:00"
        """,
    )
    assert schedule.at == OneOff(DateExpr("go_live", 7), time(21))
    assert schedule.every is None
    assert schedule.audience == ("everyone", "channel:C0PILOT")
    assert schedule.quiet_hours == (time(20), time(8))
    (run,) = runs(schedule, ROLLOUT, **EVER)
    # Planned Tue 13 April 21:00, inside quiet hours: it opens at 08:00 BST the next morning and
    # stays open the full 3 days from then; the key keeps the planned time.
    assert run == RunOccurrence(
        "pulse@2027-04-13T21:00",
        starts_utc=utc(2027, 4, 14, 7),
        closes_utc=utc(2027, 4, 17, 7),
        reminders_utc=(utc(2027, 4, 16, 7),),
    )


# ---------------------------------------------------------------------------- survey files


def test_a_survey_with_every_kind_of_question(tmp_path: Path) -> None:
    survey = one_survey(
        tmp_path,
        """\
        title: "  Pulse  "
        intro: |
          Two minutes.
        owner: Compass Programme
        anonymity: confidential
        min_group: 3
        questions:
          - {id: ready, kind: likert, text: I feel ready., adkar: ability}
          - id: enps
            kind: enps
            text: Recommend?
            labels: [Never, Always]
          - id: training
            kind: choice
            text: Which training?
            options: [E-learning, Live session, "No"]
          - id: help
            kind: multi
            text: What helped?
            options: [Guides, Champions]
            optional: false
          - id: comment
            kind: text
            text: Anything else?
            optional: true
        segments:
          - id: team
            by: group
            values:
              Warehouse leads: S0LEADS
              Drivers: S0DRIVERS
          - id: job-title
            by: profile
            field: title
        """,
    )
    assert survey == Survey(
        id="pulse",
        title="Pulse",
        intro="Two minutes.",
        owner="Compass Programme",
        anonymity="confidential",
        min_group=3,
        questions=(
            Question("ready", "likert", "I feel ready.", labels=LIKERT_LABELS, adkar="ability"),
            Question("enps", "enps", "Recommend?", labels=("Never", "Always")),
            Question("training", "choice", "Which training?", ("E-learning", "Live session", "No")),
            Question("help", "multi", "What helped?", ("Guides", "Champions")),
            Question("comment", "text", "Anything else?", optional=True),
        ),
        segments=(
            Segment(
                "team", "Team", "group", {"Warehouse leads": "S0LEADS", "Drivers": "S0DRIVERS"}
            ),
            Segment("job-title", "Job title", "profile", {}, "title"),
        ),
        path=tmp_path / "messages" / "surveys" / "pulse.yaml",
    )
    assert survey.adkar == {"ability": "ready"}
    assert survey.question("nope") is None


def test_defaults(tmp_path: Path) -> None:
    survey = one_survey(tmp_path, GOOD_SURVEY)
    assert (survey.anonymity, survey.min_group, survey.intro, survey.owner) == (
        "anonymous",
        5,
        "",
        "",
    )
    assert survey.segments == ()
    assert survey.questions[0].optional is False


def test_no_surveys_folder_is_no_surveys(tmp_path: Path) -> None:
    assert load_surveys(tmp_path) == ({}, [])
    assert load_survey_schedules(tmp_path, ROLLOUT, {}) == ([], [])


def test_survey_level_mistakes(tmp_path: Path) -> None:
    errors = survey_errors(
        tmp_path,
        """\
        titel: Pulse
        anonymity: secret
        min_group: 1
        owner: [a, b]
        questions:
          - id: q
            kind: likert
            text: Fine?
        """,
    )
    assert errors == [
        "pulse.yaml:1: unknown key 'titel' in a survey (did you mean 'title'?); known keys: "
        "title, intro, owner, anonymity, min_group, questions, segments",
        "pulse.yaml:1: missing title",
        "pulse.yaml:2: anonymity 'secret' must be anonymous (no answer is linked to a person), "
        "confidential (linked, shown only in groups) or named",
        "pulse.yaml:3: min_group must be 2 or more, not 1: a group of one person's answers is "
        "that person's answers, so its results would identify them",
        "pulse.yaml:4: owner must be text, not ['a', 'b']",
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("min_group: 0\n", "pulse.yaml:1: min_group must be 2 or more, not 0: a group of one"),
        ("min_group: five\n", "pulse.yaml:1: min_group must be a whole number like 5, not 'five'"),
        ("min_group: true\n", "pulse.yaml:1: min_group must be a whole number like 5, not True"),
        ("title: x\ntitle: y\n", "pulse.yaml:2: title: given twice"),
        (
            "title: " + "x" * 151 + "\n",
            "pulse.yaml:1: title is 151 characters; Slack shows at most 150",
        ),
        ("title: 2027\n", 'pulse.yaml:1: title: YAML reads 2027 as 2027; quote it: "2027"'),
    ],
)
def test_more_survey_level_mistakes(tmp_path: Path, text: str, expected: str) -> None:
    body = "questions: [{id: q, kind: likert, text: Fine}]\n"
    if "title" not in text:
        body += "title: Pulse\n"
    errors = survey_errors(tmp_path, text + body)
    assert len(errors) == 1
    assert errors[0].startswith(expected)


def test_question_mistakes_each_at_its_line(tmp_path: Path) -> None:
    errors = survey_errors(
        tmp_path,
        """\
        title: Pulse
        questions:
          - id: scale
            kind: likret
            text: Fine?
          - id: many
            kind: choice
            text: Pick one
            options: [a, b, c, d, e, f, g, h, i, j, k]
          - id: labels
            kind: likert
            text: Agree?
            labels: [No way, Maybe, Yes please]
          - id: labels
            kind: text
            text: Duplicate id
          - id: ends
            kind: enps
            text: Recommend?
            labels: [Low, Middle, High]
          - id: Bad Id
            kind: text
            text: Hmm
          - id: nothing
            kind: multi
            text: Pick any
          - id: yesno
            kind: choice
            text: Did you?
            options: [Yes, No]
          - id: wrong-extras
            kind: likert
            text: Agree?
            options: [a, b]
          - id: choice-labels
            kind: choice
            text: Which?
            options: [a, b]
            labels: [x, y]
          - id: tagged
            kind: enps
            text: Recommend?
            adkar: desire
          - id: unknown-element
            kind: likert
            text: Agree?
            adkar: desires
          - id: first-ability
            kind: likert
            text: Able?
            adkar: ability
          - id: second-ability
            kind: likert
            text: Able, again?
            adkar: ability
          - id: one-option
            kind: choice
            text: Only?
            options: [alone]
          - id: repeated-option
            kind: multi
            text: Twice?
            options: [a, a]
          - id: flag
            kind: text
            text: Optional?
            optional: "yes"
            colour: blue
          - kind: likert
          - just a string
        """,
    )
    assert errors == [
        "pulse.yaml:4: unknown kind 'likret' (did you mean 'likert'?); expected likert (1–5), "
        "enps (0–10), choice (pick one), multi (pick any) or text (free text)",
        "pulse.yaml:9: a choice question takes at most 10 options, not 11: Slack's radio buttons "
        "and checkboxes hold 10, and a longer list is hard to answer in one click",
        "pulse.yaml:13: a likert question takes 5 labels, one for each point from 1 to 5, not 3",
        "pulse.yaml:14: duplicate question id 'labels' (first used at line 10)",
        "pulse.yaml:20: an enps question takes 2 labels, for the ends of the scale (0 and 10), "
        "not 3",
        "pulse.yaml:21: id 'Bad Id' must be lowercase letters, digits, '-' and '_', starting "
        "with a letter or digit, like awareness",
        "pulse.yaml:24: a multi question needs options: (2 to 10)",
        'pulse.yaml:30: option: YAML reads Yes as True; quote it: "Yes"',
        'pulse.yaml:30: option: YAML reads No as False; quote it: "No"',
        "pulse.yaml:34: options: are for choice and multi questions, not likert",
        "pulse.yaml:39: labels: are for likert and enps questions, not choice",
        "pulse.yaml:43: adkar: tags a likert (1–5) question, not enps",
        "pulse.yaml:47: adkar: 'desires' (did you mean 'desire'?) is not one of awareness, "
        "desire, knowledge, ability, reinforcement",
        "pulse.yaml:55: adkar: ability is already measured by the question at line 51; one "
        "question per element",
        "pulse.yaml:59: a choice question needs at least 2 options",
        "pulse.yaml:63: option 'a' is given twice",
        "pulse.yaml:67: optional must be true or false, not 'yes'",
        "pulse.yaml:68: unknown key 'colour' in a question; known keys: id, kind, text, options, "
        "labels, adkar, optional",
        "pulse.yaml:69: missing id",
        "pulse.yaml:69: missing text",
        "pulse.yaml:70: each question must be a mapping with id:, kind: and text:",
    ]


def test_questions_must_fit_in_slack(tmp_path: Path) -> None:
    long_text = "x" * 2001
    long_label = "y" * 76
    questions = "\n".join(f"  - {{id: q{i}, kind: likert, text: Fine}}" for i in range(21))
    errors = survey_errors(
        tmp_path,
        f"title: Pulse\nquestions:\n{questions}\n"
        f"  - {{id: long, kind: text, text: {long_text}}}\n"
        f"  - {{id: label, kind: choice, text: Which, options: [a, {long_label}]}}\n",
    )
    assert errors == [
        "pulse.yaml:2: 23 questions; at most 20 fit in one Slack message (and a pulse should "
        "take two minutes)",
        "pulse.yaml:24: text is 2001 characters; Slack shows at most 2000",
        "pulse.yaml:25: option is 76 characters; Slack shows at most 75",
    ]


@pytest.mark.parametrize(
    ("questions", "expected"),
    [
        ("", 'pulse.yaml:1: missing questions (a list, each starting with "- id: …")'),
        ("questions: []\n", "pulse.yaml:2: missing questions (a list, each starting with"),
        ("questions: {id: q}\n", "pulse.yaml:2: questions: must be a list, each starting with"),
    ],
)
def test_questions_are_required(tmp_path: Path, questions: str, expected: str) -> None:
    errors = survey_errors(tmp_path, "title: Pulse\n" + questions)
    assert len(errors) == 1
    assert errors[0].startswith(expected)


def test_segment_mistakes_each_at_its_line(tmp_path: Path) -> None:
    errors = survey_errors(
        tmp_path,
        """\
        title: Pulse
        questions: [{id: q, kind: likert, text: Fine}]
        segments:
          - id: site
            by: channel
            values:
              Coventry DC: "#coventry"
              Dublin office: C0DUBLIN
              Head office: C0DUBLIN
              Yes: C0YES
          - id: team
            by: group
            values: {Leads: C0LEADS, Drivers: S0DRIVERS}
          - id: one
            by: channel
            values: {Only: C0ONLY}
          - id: dept
            by: profile
          - id: dept2
            by: profile
            field: Department
            values: {A: C0A, B: C0B}
          - id: where
            by: location
          - id: chan
            by: channel
            field: Xf0ABC
            values: {A: C0A, B: C0B}
            sort: asc
          - id: site
            by: group
            values: {A: S0A, B: S0B}
          - id: empty
            by: group
          - site
        """,
    )
    assert errors == [
        "pulse.yaml:7: Coventry DC: takes a channel id like C0123ABCD (not a name: names "
        "change), not '#coventry'",
        "pulse.yaml:9: C0DUBLIN is already the id of 'Dublin office'; each group needs its own",
        'pulse.yaml:10: YAML reads Yes as True; quote it: "Yes"',
        "pulse.yaml:13: Leads: takes a user group id like S0123ABCD (not a name: names change), "
        "not 'C0LEADS'",
        "pulse.yaml:16: a segment needs at least 2 values: with one, its results are the total "
        "minus everyone else",
        "pulse.yaml:17: a profile segment needs field: (a custom field's id like Xf0123ABCD)",
        "pulse.yaml:21: field: 'Department' must be a custom profile field's id like Xf0123ABCD "
        "(an admin finds it in team.profile.get) or one of: title",
        "pulse.yaml:22: values: are for channel and group segments; a profile segment groups by "
        "each value of its field:",
        "pulse.yaml:24: by: 'location' must be channel (membership), group (a user group) or "
        "profile (a Slack profile field)",
        "pulse.yaml:27: field: is for profile segments, not channel",
        "pulse.yaml:29: unknown key 'sort' in a segment; known keys: id, label, by, values, field",
        "pulse.yaml:30: duplicate segment id 'site' (first used at line 4)",
        "pulse.yaml:33: a group segment needs values: mapping each label to an id "
        "(Warehouse leads: S0123ABCD)",
        "pulse.yaml:35: each segment must be a mapping with id:, by: and values: or field:",
    ]


def test_segments_must_be_a_list(tmp_path: Path) -> None:
    errors = survey_errors(
        tmp_path, "title: Pulse\nquestions: [{id: q, kind: likert, text: Fine}]\nsegments: site\n"
    )
    assert errors == ['pulse.yaml:3: segments: must be a list, each starting with "- id: …"']


def test_file_level_mistakes(tmp_path: Path) -> None:
    assert survey_errors(tmp_path, GOOD_SURVEY, name="Pulse Check") == [
        "Pulse Check.yaml:1: the file name is the survey's id: 'Pulse Check' must be lowercase "
        "letters, digits, '-' and '_', like readiness.yaml"
    ]
    (tmp_path / "messages/surveys/Pulse Check.yaml").unlink()
    assert survey_errors(tmp_path, "title: Pulse\nquestions: [\n  {id: q}\n") == [
        "pulse.yaml:2: invalid YAML: while parsing a flow sequence expected ',' or ']', but got "
        "'<stream end>'"
    ]
    assert survey_errors(tmp_path, "- just\n- a list\n") == [
        "pulse.yaml:1: expected a mapping with title:, questions: …"
    ]


def test_a_broken_survey_is_left_out_and_the_good_ones_kept(tmp_path: Path) -> None:
    write(tmp_path, "messages/surveys/good.yaml", GOOD_SURVEY)
    write(tmp_path, "messages/surveys/bad.yaml", "title: Bad\n")
    surveys, errors = load_surveys(tmp_path)
    assert list(surveys) == ["good"]
    assert [str(e) for e in errors] == [
        f"{tmp_path}/messages/surveys/bad.yaml:1: missing questions (a list, each starting with "
        '"- id: …")'
    ]


# ---------------------------------------------------------------------------- schedule files


def test_schedule_mistakes_each_at_its_line(tmp_path: Path) -> None:
    errors = schedule_errors(
        tmp_path,
        """\
        surveys:
          - survey: pulses
            to: everyone
            at: "go_live at 10:00"
          - survey: pulse
            to: "channel:#general"
            at: "go_live at 10:00"
            every: "monday at 10:00"
          - survey: pulse
            to: everyone
          - survey: pulse
            to: everyone
            every: "fortnightly at 10:00"
            from: "go_liv"
          - survey: pulse
            to: everyone
            at: "go_live + 8 weeks at 10:00"
            from: training_opens
            open_days: 0
            reminders: 2
            local_time: "yes"
            quiet_hours: "late"
            repeat: true
          - survey: pulse
            to: everyone
            every: "2 weeks on tuesday at 10:00"
            from: go_live
            until: training_opens
          - survey: pulse
            to: [everyone, "group:#leads"]
            at: "hypercare_ends at 10:00"
            open_days: 4
            reminders: [3, 2, 4, 0]
          - survey: pulse
            to: everyone
            at: "hypercare_ends + 4 weeks at 10:00"
            reminders: [1, 2, 3, 4]
          - survey: pulse
            to: everyone
            at: "hypercare_ends + 8 weeks at 10:00"
            open_days: 29
          - survey: pulse
            to: everyone
            every: "tuesday at 10:00"
            from: 2027-02-15
            until: 2027-02-15
          - to: everyone
            at: "go_live at 10:00"
          - just text
        """,
    )
    assert errors == [
        "surveys.yaml:2: unknown survey 'pulses' (did you mean 'pulse'?): no "
        "messages/surveys/pulses.yaml; known surveys: pulse",
        "surveys.yaml:6: channel: takes a channel id like C0123ABCD (not a #name: names change), "
        "or a Teams channel's 19:…@thread.tacv2, not '#general'",
        "surveys.yaml:8: give either at: (once) or every: (recurring), not both",
        "surveys.yaml:9: missing at: (once) or every: (recurring)",
        'surveys.yaml:13: every: needs until: (e.g. from: training_opens, until: "go_live + 12 '
        'weeks")',
        'surveys.yaml:13: every: expected a rule like "monday at 09:00", "weekday at 09:00", '
        '"day at 09:00" or "2 weeks on monday at 09:00", not \'fortnightly at 10:00\'',
        "surveys.yaml:14: unknown milestone 'go_liv' (did you mean 'go_live'?); known "
        "milestones: training_opens, go_live, hypercare_ends",
        "surveys.yaml:18: from: only applies to every:, not at:",
        "surveys.yaml:19: open_days must be a whole number from 1 to 28, not 0",
        "surveys.yaml:20: reminders: must be a list of days after the start, like [2, 4]",
        "surveys.yaml:21: local_time must be true or false, not 'yes'",
        "surveys.yaml:22: quiet_hours: expected a window like \"20:00-08:00\", not 'late'",
        "surveys.yaml:23: unknown key 'repeat' in a survey schedule; known keys: survey, to, at, "
        "every, from, until, open_days, reminders, local_time, quiet_hours",
        "surveys.yaml:27: from (2027-04-06) is after until (2027-02-15)",
        "surveys.yaml:30: group: takes a user group id like S0123ABCD, or a Microsoft Entra "
        "group or team id (a GUID), not '#leads'",
        "surveys.yaml:33: at most 3 reminders, not 4: more nudges feel like pressure and cost "
        "goodwill for the next run",
        "surveys.yaml:33: reminders go in increasing order without repeats, like [2, 4]",
        "surveys.yaml:33: a reminder 4 days after the start comes after the run closes "
        "(open_days: 4)",
        "surveys.yaml:33: a reminder is a whole number of days after the start, not 0",
        "surveys.yaml:37: at most 3 reminders, not 4: more nudges feel like pressure and cost "
        "goodwill for the next run",
        "surveys.yaml:41: open_days must be a whole number from 1 to 28, not 29",
        "surveys.yaml:44: no run falls between from (2027-02-15) and until (2027-02-15)",
        "surveys.yaml:47: missing survey",
        "surveys.yaml:49: each item must be a mapping with survey:, to: …",
    ]


def test_reminders_in_block_style_are_reported_at_their_own_line(tmp_path: Path) -> None:
    errors = schedule_errors(
        tmp_path,
        """\
        surveys:
          - survey: pulse
            to: everyone
            at: "go_live at 10:00"
            reminders:
              - 2
              - 5
        """,
    )
    assert errors == [
        "surveys.yaml:7: a reminder 5 days after the start comes after the run closes (open_days: 5)"
    ]


def test_runs_of_one_survey_may_not_overlap(tmp_path: Path) -> None:
    errors = schedule_errors(
        tmp_path,
        """\
        surveys:
          - survey: pulse
            to: everyone
            every: "tuesday at 10:00"
            from: training_opens
            until: go_live
            open_days: 8
        """,
    )
    assert errors == [
        "surveys.yaml:7: runs of 'pulse' would overlap: the run from 2027-02-16 10:00 is open "
        "for 8 days, past the next start at 2027-02-23 10:00; shorten open_days or space the "
        "runs out"
    ]
    write(
        tmp_path,
        "schedules/pilot.yaml",
        """\
        surveys:
          - survey: pulse
            to: "channel:C0PILOT"
            at: "training_opens at 09:00"
        """,
    )
    errors = schedule_errors(
        tmp_path,
        """\
        surveys:
          - survey: pulse
            to: everyone
            every: "2 weeks on tuesday at 10:00"
            from: training_opens
            until: go_live
        """,
    )
    assert errors == [
        "surveys.yaml:2: runs of 'pulse' would overlap: this schedule starts one at "
        "2027-02-16 10:00, while the run from 2027-02-15 09:00 (line 2 of pilot.yaml) is open "
        "until 2027-02-20 09:00"
    ]


def test_schedules_across_files_and_of_broken_surveys(tmp_path: Path) -> None:
    write(tmp_path, "messages/surveys/pulse.yaml", GOOD_SURVEY)
    write(tmp_path, "messages/surveys/broken.yaml", "title: Broken\n")
    item = "surveys:\n  - {{survey: {0}, to: everyone, at: '{1} at 10:00'}}\n"
    write(tmp_path, "schedules/b.yaml", item.format("pulse", "go_live"))
    write(tmp_path, "schedules/a.yaml", item.format("pulse", "training_opens"))
    write(tmp_path, "schedules/c.yaml", item.format("broken", "go_live"))
    write(tmp_path, "schedules/announcements.yaml", "announcements:\n")
    write(tmp_path, "schedules/empty.yaml", "")
    write(tmp_path, "schedules/nothing.yaml", "surveys:\n")
    write(tmp_path, "schedules/syntax.yaml", "surveys: [\n")  # load_plan reports this one
    surveys, survey_errors = load_surveys(tmp_path)
    assert list(surveys) == ["pulse"] and len(survey_errors) == 1
    schedules, errors = load_survey_schedules(tmp_path, ROLLOUT, surveys)
    # The broken survey's schedule is left out with no error of its own: its file says why.
    assert errors == []
    assert [(s.path.name, s.line, s.at) for s in schedules] == [
        ("a.yaml", 2, OneOff(DateExpr("training_opens"), time(10))),
        ("b.yaml", 2, OneOff(DateExpr("go_live"), time(10))),
    ]


def test_surveys_must_be_a_list(tmp_path: Path) -> None:
    assert schedule_errors(tmp_path, "surveys:\n  survey: pulse\n") == [
        'surveys.yaml:1: surveys: must be a list, each starting with "- survey: …"'
    ]
