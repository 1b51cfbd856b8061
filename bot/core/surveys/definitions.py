"""Survey definitions (`messages/surveys/<id>.yaml`) and when they run (`surveys:` lists in
`schedules/*.yaml`).

A survey file; its name (without `.yaml`) is the survey's id::

    title: How ready do you feel for Compass?   # required; the heading (at most 150 characters)
    intro: Two minutes, five clicks.            # optional Markdown shown above the questions
    owner: Compass Programme                    # optional: who is asking (shown in small print)
    anonymity: anonymous                        # anonymous (default), confidential or named
    min_group: 5                                # default 5; no result for fewer people, ever
    questions:
      - id: awareness                           # unique in the survey; [a-z0-9][a-z0-9_-]*
        kind: likert                            # likert (1–5), enps (0–10), choice, multi, text
        text: I understand why we are changing. # the question (at most 2000 characters)
        adkar: awareness                        # likert only: the ADKAR element it measures
        labels: [Not at all, Slightly, Moderately, Very, Completely]  # likert: 5; enps: 2 ends
      - id: training
        kind: choice                            # pick one; multi: pick any
        text: Which training did you take?
        options: [E-learning, Live session, None yet]  # 2 to 10, each at most 75 characters
      - id: comment
        kind: text                              # free text, answered in a modal
        text: Anything else?
        optional: true                          # default false
    segments:                                   # optional: how results may be broken down
      - id: site
        label: Site
        by: channel                             # channel membership; or group (a user group)
        values: {Coventry DC: C0COVENTRY, Dublin office: C0DUBLIN}   # label: channel id
      - id: department
        by: profile                             # a Slack profile field
        field: Xf0DEPARTMENT                    # a custom field's id, or title

Every question is answerable in Slack: likert and enps with one row of buttons, choice with
buttons or a select, multi with checkboxes (both at most 10 options), text in a modal.

Anonymity (what the answer store keeps; the rules live where answers are stored and read):
`anonymous` keeps no link from an answer to a person; `confidential` keeps the link for the
survey team but shows results only in groups; `named` shows who answered what. In all three,
no group result (score, comment or segment) is shown for fewer than `min_group` people.

Schedules: any `schedules/*.yaml` may hold a `surveys:` list::

    surveys:
      - survey: readiness                       # messages/surveys/readiness.yaml
        to: everyone                            # the audiences of announcements, or a list
        every: "2 weeks on tuesday at 10:00"    # or at: "go_live + 2 weeks at 10:00" (once)
        from: training_opens                    # required with every:, inclusive
        until: "go_live + 12 weeks"             # required with every:, inclusive
        open_days: 5                            # default 5; how long each run takes answers
        reminders: [2, 4]                       # days after the start, at most 3, before close
        local_time: true                        # 10:00 on each person's own Slack clock
        quiet_hours: "20:00-08:00"              # an invitation inside the window waits for its end

`at`, `every`, `from`, `until`, `to` and `quiet_hours` read exactly as in the announcement plan
(`bot.core.announcements.plan`). Runs of one survey may not overlap.

Use `load_surveys()` and `load_survey_schedules()` to read and check the files (every mistake
is a `ContentError` at `file:line`), `runs()` to list the runs that start in a window, and
`recipient_times()` for when one person is invited and reminded.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta, timezone
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from bot.core.announcements.plan import NAME_PATTERN, parse_audience
from bot.core.content import ContentError, Rollout, compose_yaml, parse_yaml
from bot.core.schedule import (
    EARLIEST_ZONE,
    DateExpr,
    OneOff,
    Recurrence,
    after_quiet_hours,
    parse_at,
    parse_date,
    parse_every,
    parse_quiet_hours,
    to_utc,
    zone_or,
)

ADKAR = ("awareness", "desire", "knowledge", "ability", "reinforcement")

Kind = Literal["likert", "enps", "choice", "multi", "text"]
Anonymity = Literal["anonymous", "confidential", "named"]
SegmentBy = Literal["channel", "group", "profile"]

KINDS: tuple[Kind, ...] = ("likert", "enps", "choice", "multi", "text")
ANONYMITY: tuple[Anonymity, ...] = ("anonymous", "confidential", "named")
SEGMENT_BY: tuple[SegmentBy, ...] = ("channel", "group", "profile")
KIND_HELP = "likert (1–5), enps (0–10), choice (pick one), multi (pick any) or text (free text)"

SURVEY_KEYS = ("title", "intro", "owner", "anonymity", "min_group", "questions", "segments")
QUESTION_KEYS = ("id", "kind", "text", "options", "labels", "adkar", "optional")
SEGMENT_KEYS = ("id", "label", "by", "values", "field")
SCHEDULE_KEYS = (
    "survey",
    "to",
    "at",
    "every",
    "from",
    "until",
    "open_days",
    "reminders",
    "local_time",
    "quiet_hours",
)

DEFAULT_MIN_GROUP = 5
DEFAULT_OPEN_DAYS = 5
MAX_OPEN_DAYS = 28
MAX_REMINDERS = 3
LIKERT_LABELS = ("Strongly disagree", "Disagree", "Neutral", "Agree", "Strongly agree")
ENPS_LABELS = ("Not at all likely", "Extremely likely")
PROFILE_FIELDS = ("title",)  # Slack's standard profile fields worth grouping by

# Slack's limits, so nothing is cut short on screen.
TITLE_LIMIT = 150  # a header block
INTRO_LIMIT = 3000  # a section block
QUESTION_LIMIT = 2000  # an input block's label in a modal, the tightest place a question shows
LABEL_LIMIT = 75  # a button's or an option's text
MAX_OPTIONS = 10  # radio buttons and checkboxes hold at most 10
# Each question takes two blocks (text, then its buttons) of a message's 50, with the intro,
# small print and submit button besides.
MAX_QUESTIONS = 20

# The last wall clock on Earth to show any given time: Baker Island, UTC−12.
LATEST_ZONE = timezone(timedelta(hours=-12))

_CHANNEL_ID = re.compile(r"[CG][A-Z0-9]+")
_GROUP_ID = re.compile(r"S[A-Z0-9]+")
_CUSTOM_FIELD = re.compile(r"Xf[A-Za-z0-9]+")
_ID_LIMIT = 64


@dataclass(frozen=True)
class Question:
    """One question. `options` are a choice/multi question's answers; `labels` name a likert
    scale's five points (1 to 5) or an eNPS scale's two ends (0 and 10)."""

    id: str
    kind: Kind
    text: str
    options: tuple[str, ...] = ()
    labels: tuple[str, ...] = ()
    adkar: str | None = None
    optional: bool = False


@dataclass(frozen=True)
class Segment:
    """A way to break results down. `by: channel` / `group`: `values` maps each label to a
    channel or user-group id, and a person counts in the first listed one they belong to (so
    groups never overlap); `by: profile`: the value of the Slack profile `field`."""

    id: str
    label: str
    by: SegmentBy
    values: dict[str, str] = field(default_factory=dict)
    field: str | None = None


@dataclass(frozen=True)
class Survey:
    """One checked survey definition; its `id` is the file name without `.yaml`."""

    id: str
    title: str
    intro: str
    owner: str
    anonymity: Anonymity
    min_group: int
    questions: tuple[Question, ...]
    segments: tuple[Segment, ...]
    path: Path

    def question(self, question_id: str) -> Question | None:
        """The question with this id, or None."""
        return next((q for q in self.questions if q.id == question_id), None)

    @property
    def adkar(self) -> dict[str, str]:
        """ADKAR element → id of the likert question that measures it, in ADKAR order."""
        tagged = {q.adkar: q.id for q in self.questions if q.adkar}
        return {element: tagged[element] for element in ADKAR if element in tagged}


@dataclass(frozen=True)
class SurveySchedule:
    """When a survey runs (`at` once, or `every`), how long each run stays open, and when
    reminders go to those who have not answered (days after the start)."""

    survey: str
    audience: tuple[str, ...]
    every: Recurrence | None
    at: OneOff | None
    open_days: int
    reminder_days: tuple[int, ...]
    local_time: bool
    quiet_hours: tuple[time, time] | None
    path: Path
    line: int

    @property
    def schedule(self) -> OneOff | Recurrence:
        """`at` or `every`, whichever is given."""
        found = self.at or self.every
        assert found is not None, "a SurveySchedule has at or every"
        return found


@dataclass(frozen=True)
class RunOccurrence:
    """One run of a scheduled survey.

    `key` (`<survey>@<planned local date>T<HH:MM>`) is stable, so creating a run twice is
    harmless. In UTC: `starts_utc` is when invitations may go out, `reminders_utc` when each
    reminder may, `closes_utc` when answers stop. With `local_time`, starts and reminders are
    the first moment anywhere on Earth reaches that wall-clock time and the close is the last,
    so everyone gets the full `open_days` on their own clock; `recipient_times()` gives one
    person's times.
    """

    key: str
    starts_utc: datetime
    closes_utc: datetime
    reminders_utc: tuple[datetime, ...]

    @property
    def survey(self) -> str:
        """The survey's id."""
        return self.key.partition("@")[0]

    @property
    def local(self) -> datetime:
        """The planned naive wall-clock start (before quiet hours move it)."""
        return datetime.strptime(self.key.partition("@")[2], "%Y-%m-%dT%H:%M")


@dataclass(frozen=True)
class RecipientTimes:
    """When one person is invited to a run, reminded, and told it closes (all UTC)."""

    invite_utc: datetime
    closes_utc: datetime
    reminders_utc: tuple[datetime, ...]


# ---------------------------------------------------------------------------- runs


def runs(
    schedule: SurveySchedule, rollout: Rollout, *, start: datetime, end: datetime
) -> list[RunOccurrence]:
    """The runs of `schedule` with `start <= starts_utc < end` (both aware), in order."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    found = []
    for planned in schedule.schedule.planned(rollout):
        begins = _after_quiet_hours(planned, schedule.quiet_hours)
        closes = begins + timedelta(days=schedule.open_days)
        reminders = [begins + timedelta(days=days) for days in schedule.reminder_days]
        if schedule.local_time:
            starts_utc = begins.replace(tzinfo=EARLIEST_ZONE).astimezone(UTC)
            closes_utc = closes.replace(tzinfo=LATEST_ZONE).astimezone(UTC)
            reminders_utc = tuple(
                r.replace(tzinfo=EARLIEST_ZONE).astimezone(UTC) for r in reminders
            )
        else:
            starts_utc = to_utc(begins, rollout.zone)
            closes_utc = to_utc(closes, rollout.zone)
            reminders_utc = tuple(to_utc(r, rollout.zone) for r in reminders)
        if start <= starts_utc < end:
            key = f"{schedule.survey}@{planned:%Y-%m-%dT%H:%M}"
            found.append(RunOccurrence(key, starts_utc, closes_utc, reminders_utc))
    return sorted(found, key=lambda run: (run.starts_utc, run.key))


def recipient_times(
    schedule: SurveySchedule, run: RunOccurrence, *, tz: str | None, rollout: Rollout
) -> RecipientTimes:
    """When a person whose Slack time zone is `tz` gets `run`'s invitation and reminders, and
    the close to tell them. Without `local_time` these are the run's own times; with it, the
    wall-clock times in `tz` (the rollout's zone when `tz` is None or unknown)."""
    if run.survey != schedule.survey:
        raise ValueError(f"{run.key} is not a run of {schedule.survey}")
    if not schedule.local_time:
        return RecipientTimes(run.starts_utc, run.closes_utc, run.reminders_utc)
    zone = zone_or(tz, rollout.zone)
    begins = _after_quiet_hours(run.local, schedule.quiet_hours)
    return RecipientTimes(
        to_utc(begins, zone),
        to_utc(begins + timedelta(days=schedule.open_days), zone),
        tuple(to_utc(begins + timedelta(days=d), zone) for d in schedule.reminder_days),
    )


def _after_quiet_hours(wall: datetime, window: tuple[time, time] | None) -> datetime:
    # The same rule as announcements: a start inside the window moves to the window's end.
    return wall if window is None else after_quiet_hours(wall, *window)


# ---------------------------------------------------------------------------- YAML helpers


class _Node:
    """A parsed YAML value with its node, to point errors at the right line."""

    def __init__(self, value: Any, node: yaml.Node | None, line: int) -> None:
        self.value = value
        self.node = node
        self.line = line  # where the value starts (its key's line for mapping values)

    def key_line(self, key: str) -> int:
        """The line of `key` in this mapping, or this value's line if absent."""
        key_node, _value = _child(self.node, key)
        return key_node.start_mark.line + 1 if key_node is not None else self.line

    def get(self, key: str) -> _Node:
        """The value of `key` (None when absent), with its line."""
        _key, value_node = _child(self.node, key)
        value = self.value.get(key) if isinstance(self.value, dict) else None
        return _Node(value, value_node, self.key_line(key))

    def items(self) -> list[_Node]:
        """The items of a list, each with its own line."""
        if not isinstance(self.value, list):
            return []
        nodes = self.node.value if isinstance(self.node, yaml.SequenceNode) else []
        return [
            _Node(value, nodes[i] if i < len(nodes) else None, _line(nodes, i, self.line))
            for i, value in enumerate(self.value)
        ]

    def entries(self) -> list[tuple[Any, str, _Node]]:
        """The pairs of a mapping: each key as loaded and as written, and its value (whose line
        is the key's)."""
        if not isinstance(self.value, dict) or not isinstance(self.node, yaml.MappingNode):
            return []
        found = []
        for key_node, value_node in self.node.value:
            # Load the key alone: YAML 1.1 turns keys like `yes` or `2027` into other types.
            key = yaml.safe_load(yaml.serialize(key_node))
            if key in self.value:
                line = key_node.start_mark.line + 1
                found.append((key, str(key_node.value), _Node(self.value[key], value_node, line)))
        return found

    def written(self) -> str:
        """The value as written in the file, when it is a plain scalar."""
        return str(self.node.value) if isinstance(self.node, yaml.ScalarNode) else ""


def _line(nodes: list[Any], index: int, fallback: int) -> int:
    return int(nodes[index].start_mark.line) + 1 if index < len(nodes) else fallback


def _child(node: yaml.Node | None, key: str) -> tuple[yaml.Node | None, yaml.Node | None]:
    # The last of duplicate keys, as safe_load keeps (duplicates are reported separately).
    found: tuple[yaml.Node | None, yaml.Node | None] = (None, None)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                found = (key_node, value_node)
    return found


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class _Report:
    """Collects the errors of one file; `failed` tells whether the current item had any."""

    def __init__(self, path: Path, errors: list[ContentError]) -> None:
        self.path = path
        self.errors = errors
        self.failed = False

    def __call__(self, line: int, reason: str) -> None:
        self.failed = True
        self.errors.append(ContentError(self.path, line, reason))

    def keys(self, item: _Node, known: tuple[str, ...], what: str) -> None:
        """Report unknown and repeated keys of a mapping."""
        if isinstance(item.node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _value in item.node.value:
                name = str(key_node.value)
                if name in seen:
                    self(key_node.start_mark.line + 1, f"{name}: given twice")
                seen.add(name)
        if isinstance(item.value, dict):
            for key in item.value:
                if key not in known:
                    self(
                        item.key_line(str(key)),
                        f"unknown key {key!r} in {what}{_did_you_mean(str(key), known)}; "
                        f"known keys: {', '.join(known)}",
                    )

    def text(self, item: _Node, key: str, *, limit: int, required: bool) -> str | None:
        """A text value; None (reported) when it is missing, not text, or too long."""
        value = item.value
        if value is None or (isinstance(value, str) and not value.strip()):
            if required:
                self(item.line, f"missing {key}")
                return None
            return ""
        if not isinstance(value, str):
            written = item.written()
            if written:
                # YAML 1.1 reads `yes`, `no`, `on`, `12:30`, `1.0` … as booleans and numbers.
                self(item.line, f'{key}: YAML reads {written} as {value!r}; quote it: "{written}"')
            else:
                self(item.line, f"{key} must be text, not {value!r}")
            return None
        value = value.strip()
        if len(value) > limit:
            self(
                item.line,
                f"{key} is {len(value)} characters; Slack shows at most {limit}",
            )
            return None
        return value

    def name(self, item: _Node, key: str, *, example: str) -> str | None:
        """An id: lowercase letters, digits, `-` and `_`."""
        value = item.value
        if value is None:
            self(item.line, f"missing {key}")
            return None
        written = item.written()
        if not isinstance(value, str) and NAME_PATTERN.fullmatch(written):
            self(item.line, f'{key}: YAML reads {written} as {value!r}; quote it: "{written}"')
            return None
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            self(
                item.line,
                f"{key} {value!r} must be lowercase letters, digits, '-' and '_', starting "
                f"with a letter or digit, like {example}",
            )
            return None
        if len(value) > _ID_LIMIT:
            self(item.line, f"{key} is longer than {_ID_LIMIT} characters")
            return None
        return value

    def flag(self, item: _Node, key: str, *, default: bool) -> bool:
        if item.value is None:
            return default
        if not isinstance(item.value, bool):
            self(item.line, f"{key} must be true or false, not {item.value!r}")
            return default
        return item.value


def _read(path: Path, errors: list[ContentError]) -> tuple[Any, _Node | None]:
    """Parse one YAML file: its data and the root node, or (None, None) after reporting."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(ContentError(path, 1, f"cannot read: {exc}"))
        return None, None
    data, parse_errors = parse_yaml(text, path)
    if parse_errors:
        errors.extend(parse_errors)
        return None, None
    return data, _Node(data, compose_yaml(text), 1)


# ---------------------------------------------------------------------------- surveys


def surveys_dir(content_dir: Path) -> Path:
    """Where survey definitions live: `messages/surveys/`."""
    return content_dir / "messages" / "surveys"


def load_surveys(content_dir: Path) -> tuple[dict[str, Survey], list[ContentError]]:
    """Read and check every `messages/surveys/*.yaml`; the dict holds the surveys without
    errors, by id (the file name without `.yaml`)."""
    folder = surveys_dir(content_dir)
    paths = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    surveys: dict[str, Survey] = {}
    errors: list[ContentError] = []
    for path in paths:
        file_errors: list[ContentError] = []
        survey = _load_survey(path, file_errors)
        if survey is not None and not file_errors:
            surveys[survey.id] = survey
        errors.extend(sorted(file_errors, key=lambda error: error.line))
    return surveys, errors


def _load_survey(path: Path, errors: list[ContentError]) -> Survey | None:
    report = _Report(path, errors)
    survey_id = path.stem
    if not NAME_PATTERN.fullmatch(survey_id) or len(survey_id) > _ID_LIMIT:
        report(
            1,
            f"the file name is the survey's id: {survey_id!r} must be lowercase letters, "
            "digits, '-' and '_', like readiness.yaml",
        )
    data, root = _read(path, errors)
    if root is None:
        return None
    if not isinstance(data, dict):
        report(1, "expected a mapping with title:, questions: …")
        return None
    report.keys(root, SURVEY_KEYS, "a survey")
    title = report.text(root.get("title"), "title", limit=TITLE_LIMIT, required=True)
    intro = report.text(root.get("intro"), "intro", limit=INTRO_LIMIT, required=False)
    owner = report.text(root.get("owner"), "owner", limit=LABEL_LIMIT, required=False)
    anonymity = _anonymity(root.get("anonymity"), report)
    min_group = _min_group(root.get("min_group"), report)
    questions = _questions(root.get("questions"), report)
    segments = _segments(root.get("segments"), report)
    if report.failed or title is None or questions is None or segments is None:
        return None
    return Survey(
        id=survey_id,
        title=title,
        intro=intro or "",
        owner=owner or "",
        anonymity=anonymity,
        min_group=min_group,
        questions=questions,
        segments=segments,
        path=path,
    )


def _anonymity(item: _Node, report: _Report) -> Anonymity:
    if item.value is None:
        return "anonymous"
    if item.value not in ANONYMITY:
        report(
            item.line,
            f"anonymity {item.value!r} must be anonymous (no answer is linked to a person), "
            "confidential (linked, shown only in groups) or named",
        )
        return "anonymous"
    return cast(Anonymity, item.value)


def _min_group(item: _Node, report: _Report) -> int:
    value = item.value
    if value is None:
        return DEFAULT_MIN_GROUP
    if isinstance(value, bool) or not isinstance(value, int):
        report(item.line, f"min_group must be a whole number like 5, not {value!r}")
        return DEFAULT_MIN_GROUP
    if value < 2:
        report(
            item.line,
            f"min_group must be 2 or more, not {value}: a group of one person's answers is "
            "that person's answers, so its results would identify them",
        )
        return DEFAULT_MIN_GROUP
    return value


def _questions(item: _Node, report: _Report) -> tuple[Question, ...] | None:
    if item.value is None or item.value == []:
        report(item.line, 'missing questions (a list, each starting with "- id: …")')
        return None
    if not isinstance(item.value, list):
        report(item.line, 'questions: must be a list, each starting with "- id: …"')
        return None
    if len(item.value) > MAX_QUESTIONS:
        report(
            item.line,
            f"{len(item.value)} questions; at most {MAX_QUESTIONS} fit in one Slack message "
            "(and a pulse should take two minutes)",
        )
    found: list[Question] = []
    first_line: dict[str, int] = {}
    adkar_line: dict[str, int] = {}
    for entry in item.items():
        if _duplicate(entry, first_line, "question", report):
            continue
        question = _question(entry, report)
        if question is None:
            continue
        if question.adkar is not None:
            if question.adkar in adkar_line:
                report(
                    entry.key_line("adkar"),
                    f"adkar: {question.adkar} is already measured by the question at line "
                    f"{adkar_line[question.adkar]}; one question per element",
                )
                continue
            adkar_line[question.adkar] = entry.key_line("adkar")
        found.append(question)
    return tuple(found)


def _duplicate(entry: _Node, first_line: dict[str, int], what: str, report: _Report) -> bool:
    """Report an item whose id was used before (even when the first item has other errors)."""
    item_id = entry.value.get("id") if isinstance(entry.value, dict) else None
    if not isinstance(item_id, str):
        return False
    if item_id in first_line:
        report(
            entry.key_line("id"),
            f"duplicate {what} id {item_id!r} (first used at line {first_line[item_id]})",
        )
        return True
    first_line[item_id] = entry.key_line("id")
    return False


def _question(item: _Node, report: _Report) -> Question | None:
    if not isinstance(item.value, dict):
        report(item.line, "each question must be a mapping with id:, kind: and text:")
        return None
    before = len(report.errors)
    report.keys(item, QUESTION_KEYS, "a question")
    question_id = report.name(item.get("id"), "id", example="awareness")
    text = report.text(item.get("text"), "text", limit=QUESTION_LIMIT, required=True)
    kind_node = item.get("kind")
    kind: Kind | None = None
    if kind_node.value is None:
        report(item.line, f"missing kind: {KIND_HELP}")
    elif kind_node.value not in KINDS:
        hint = _did_you_mean(str(kind_node.value), KINDS)
        report(kind_node.line, f"unknown kind {kind_node.value!r}{hint}; expected {KIND_HELP}")
    else:
        kind = cast(Kind, kind_node.value)
    options = _options(item.get("options"), kind, report)
    labels = _labels(item.get("labels"), kind, report)
    adkar = _adkar(item.get("adkar"), kind, report)
    optional = report.flag(item.get("optional"), "optional", default=False)
    if len(report.errors) > before or question_id is None or text is None or kind is None:
        return None
    if kind == "likert" and not labels:
        labels = LIKERT_LABELS
    if kind == "enps" and not labels:
        labels = ENPS_LABELS
    return Question(question_id, kind, text, options, labels, adkar, optional)


def _strings(item: _Node, key: str, report: _Report) -> tuple[str, ...] | None:
    """A list of distinct, non-empty texts of at most LABEL_LIMIT characters each."""
    if not isinstance(item.value, list):
        report(item.line, f"{key}: must be a list, like [Yes, No] on one line or one per line")
        return None
    found: list[str] = []
    ok = True
    for entry in item.items():
        text = report.text(entry, f"{key[:-1]}", limit=LABEL_LIMIT, required=True)
        if text is None:
            ok = False
            continue
        if text in found:
            report(entry.line, f"{key[:-1]} {text!r} is given twice")
            ok = False
            continue
        found.append(text)
    return tuple(found) if ok else None


def _options(item: _Node, kind: Kind | None, report: _Report) -> tuple[str, ...]:
    if item.value is None:
        if kind in ("choice", "multi"):
            report(item.line, f"a {kind} question needs options: (2 to {MAX_OPTIONS})")
        return ()
    if kind not in ("choice", "multi"):
        if kind is not None:
            report(item.line, f"options: are for choice and multi questions, not {kind}")
        return ()
    options = _strings(item, "options", report)
    if options is None:
        return ()
    if len(options) > MAX_OPTIONS:
        report(
            item.line,
            f"a {kind} question takes at most {MAX_OPTIONS} options, not {len(options)}: "
            "Slack's radio buttons and checkboxes hold 10, and a longer list is hard to answer "
            "in one click",
        )
    elif len(options) < 2:
        report(item.line, f"a {kind} question needs at least 2 options")
    return options


def _labels(item: _Node, kind: Kind | None, report: _Report) -> tuple[str, ...]:
    if item.value is None:
        return ()
    if kind not in ("likert", "enps"):
        if kind is not None:
            report(item.line, f"labels: are for likert and enps questions, not {kind}")
        return ()
    labels = _strings(item, "labels", report)
    if labels is None:
        return ()
    if kind == "likert" and len(labels) != 5:
        report(
            item.line,
            f"a likert question takes 5 labels, one for each point from 1 to 5, not {len(labels)}",
        )
    if kind == "enps" and len(labels) != 2:
        report(
            item.line,
            f"an enps question takes 2 labels, for the ends of the scale (0 and 10), "
            f"not {len(labels)}",
        )
    return labels


def _adkar(item: _Node, kind: Kind | None, report: _Report) -> str | None:
    if item.value is None:
        return None
    if item.value not in ADKAR:
        hint = _did_you_mean(str(item.value), ADKAR)
        report(item.line, f"adkar: {item.value!r}{hint} is not one of {', '.join(ADKAR)}")
        return None
    if kind is not None and kind != "likert":
        report(item.line, f"adkar: tags a likert (1–5) question, not {kind}")
        return None
    return str(item.value)


def _segments(item: _Node, report: _Report) -> tuple[Segment, ...] | None:
    if item.value is None:
        return ()
    if not isinstance(item.value, list):
        report(item.line, 'segments: must be a list, each starting with "- id: …"')
        return None
    found: list[Segment] = []
    first_line: dict[str, int] = {}
    for entry in item.items():
        if _duplicate(entry, first_line, "segment", report):
            continue
        segment = _segment(entry, report)
        if segment is not None:
            found.append(segment)
    return tuple(found)


def _segment(item: _Node, report: _Report) -> Segment | None:
    if not isinstance(item.value, dict):
        report(item.line, "each segment must be a mapping with id:, by: and values: or field:")
        return None
    before = len(report.errors)
    report.keys(item, SEGMENT_KEYS, "a segment")
    segment_id = report.name(item.get("id"), "id", example="site")
    label = report.text(item.get("label"), "label", limit=LABEL_LIMIT, required=False)
    by_node = item.get("by")
    by: SegmentBy | None = None
    if by_node.value is None:
        report(item.line, "missing by: channel (membership), group (a user group) or profile")
    elif by_node.value not in SEGMENT_BY:
        report(
            by_node.line,
            f"by: {by_node.value!r} must be channel (membership), group (a user group) "
            "or profile (a Slack profile field)",
        )
    else:
        by = cast(SegmentBy, by_node.value)
    values: dict[str, str] = {}
    profile_field: str | None = None
    if by == "profile":
        if item.get("values").value is not None:
            report(
                item.key_line("values"),
                "values: are for channel and group segments; a profile segment groups by "
                "each value of its field:",
            )
        profile_field = _profile_field(item.get("field"), report)
    elif by is not None:
        if item.get("field").value is not None:
            report(item.key_line("field"), f"field: is for profile segments, not {by}")
        values = _segment_values(item.get("values"), by, report)
    if len(report.errors) > before or segment_id is None or by is None:
        return None
    label = label or segment_id.replace("_", " ").replace("-", " ").capitalize()
    return Segment(segment_id, label, by, values, profile_field)


def _profile_field(item: _Node, report: _Report) -> str | None:
    value = item.value
    if value is None:
        report(item.line, "a profile segment needs field: (a custom field's id like Xf0123ABCD)")
        return None
    if not isinstance(value, str) or not (
        value in PROFILE_FIELDS or _CUSTOM_FIELD.fullmatch(value)
    ):
        report(
            item.line,
            f"field: {value!r} must be a custom profile field's id like Xf0123ABCD (an admin "
            f"finds it in team.profile.get) or one of: {', '.join(PROFILE_FIELDS)}",
        )
        return None
    return value


def _segment_values(item: _Node, by: SegmentBy, report: _Report) -> dict[str, str]:
    example = "Coventry DC: C0123ABCD" if by == "channel" else "Warehouse leads: S0123ABCD"
    if not isinstance(item.value, dict) or not item.value:
        report(item.line, f"a {by} segment needs values: mapping each label to an id ({example})")
        return {}
    pattern = _CHANNEL_ID if by == "channel" else _GROUP_ID
    kind = "channel id like C0123ABCD" if by == "channel" else "user group id like S0123ABCD"
    values: dict[str, str] = {}
    first_label: dict[str, str] = {}
    for label, written, entry in item.entries():
        if not isinstance(label, str):
            report(entry.line, f'YAML reads {written} as {label!r}; quote it: "{written}"')
            continue
        if not label.strip() or len(label) > LABEL_LIMIT:
            report(entry.line, f"a segment label is 1 to {LABEL_LIMIT} characters, not {label!r}")
            continue
        if not isinstance(entry.value, str) or not pattern.fullmatch(entry.value):
            report(
                entry.line,
                f"{label}: takes a {kind} (not a name: names change), not {entry.value!r}",
            )
            continue
        if entry.value in first_label:
            report(
                entry.line,
                f"{entry.value} is already the id of {first_label[entry.value]!r}; each group "
                "needs its own",
            )
            continue
        first_label[entry.value] = label
        values[label] = entry.value
    if len(item.value) < 2:
        report(
            item.line,
            "a segment needs at least 2 values: with one, its results are the total minus "
            "everyone else",
        )
    return values


# ---------------------------------------------------------------------------- schedules


def load_survey_schedules(
    content_dir: Path, rollout: Rollout, surveys: Mapping[str, Survey]
) -> tuple[list[SurveySchedule], list[ContentError]]:
    """Read the `surveys:` lists of every `schedules/*.yaml` (sorted by name) and check them
    against `rollout` and the loaded `surveys`; only schedules without errors are returned.

    A schedule naming a survey whose file exists but has errors is left out without a further
    error (the survey's own errors say what to fix)."""
    folder = content_dir / "schedules"
    paths = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    schedules: list[SurveySchedule] = []
    errors: list[ContentError] = []
    by_survey: dict[str, list[tuple[SurveySchedule, _Node, _Report]]] = {}
    for path in paths:
        for entry in _schedule_items(path, errors):
            report = _Report(path, errors)
            schedule = _schedule(entry, report, rollout, surveys, content_dir)
            if schedule is not None and not report.failed:
                by_survey.setdefault(schedule.survey, []).append((schedule, entry, report))
    overlapping: set[int] = set()
    for entries in by_survey.values():
        overlapping |= _check_overlaps(entries, rollout)
    for entries in by_survey.values():
        schedules.extend(s for s, _entry, _r in entries if id(s) not in overlapping)
    schedules.sort(key=lambda s: (str(s.path), s.line))
    errors.sort(key=lambda error: (str(error.path), error.line))
    return schedules, errors


def _schedule_items(path: Path, errors: list[ContentError]) -> list[_Node]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []  # the announcement plan reports unreadable schedule files
    data, parse_errors = parse_yaml(text, path)
    if parse_errors or not isinstance(data, dict) or data.get("surveys") is None:
        # Syntax and shape errors of whole schedule files are load_rollout's and load_plan's
        # to report; saying them twice in `mobilize check` is noise.
        return []
    root = _Node(data, compose_yaml(text), 1)
    listed = root.get("surveys")
    if not isinstance(listed.value, list):
        errors.append(
            ContentError(
                path, listed.line, 'surveys: must be a list, each starting with "- survey: …"'
            )
        )
        return []
    items = []
    for entry in listed.items():
        if not isinstance(entry.value, dict):
            errors.append(
                ContentError(path, entry.line, "each item must be a mapping with survey:, to: …")
            )
            continue
        items.append(entry)
    return items


def _schedule(
    item: _Node,
    report: _Report,
    rollout: Rollout,
    surveys: Mapping[str, Survey],
    content_dir: Path,
) -> SurveySchedule | None:
    report.keys(item, SCHEDULE_KEYS, "a survey schedule")
    survey = _survey_name(item.get("survey"), report, surveys, content_dir)
    audience = _audience(item.get("to"), report)
    when = _when(item, report, rollout)
    open_days = _open_days(item.get("open_days"), report)
    reminders = _reminders(item.get("reminders"), open_days, report)
    local_time = report.flag(item.get("local_time"), "local_time", default=False)
    quiet_hours: tuple[time, time] | None = None
    quiet = item.get("quiet_hours")
    if quiet.value is not None:
        try:
            quiet_hours = parse_quiet_hours(quiet.value)
        except ValueError as exc:
            report(quiet.line, str(exc))
    if survey is None or audience is None or when is None:
        return None
    return SurveySchedule(
        survey=survey,
        audience=audience,
        every=when if isinstance(when, Recurrence) else None,
        at=when if isinstance(when, OneOff) else None,
        open_days=open_days,
        reminder_days=reminders,
        local_time=local_time,
        quiet_hours=quiet_hours,
        path=report.path,
        line=item.line,
    )


def _survey_name(
    item: _Node, report: _Report, surveys: Mapping[str, Survey], content_dir: Path
) -> str | None:
    name = report.name(item, "survey", example="readiness")
    if name is None or name in surveys:
        return name
    if (surveys_dir(content_dir) / f"{name}.yaml").exists():
        report.failed = True  # the survey file's own errors are reported by load_surveys
        return None
    known = ", ".join(sorted(surveys)) or "none"
    report(
        item.line,
        f"unknown survey {name!r}{_did_you_mean(name, surveys)}: no "
        f"messages/surveys/{name}.yaml; known surveys: {known}",
    )
    return None


def _audience(item: _Node, report: _Report) -> tuple[str, ...] | None:
    if item.value is None or item.value == []:
        report(item.line, "missing to (who is asked, e.g. everyone)")
        return None
    entries = item.items() if isinstance(item.value, list) else [item]
    found: list[str] = []
    ok = True
    for entry in entries:
        try:
            if not isinstance(entry.value, str):
                raise ValueError(
                    f"an audience is text like channel:C0123ABCD, not {entry.value!r} "
                    "(quote it: a colon followed by a space makes YAML read a mapping)"
                )
            audience = parse_audience(entry.value)
        except ValueError as exc:
            report(entry.line, str(exc))
            ok = False
            continue
        if audience not in found:
            found.append(audience)
    return tuple(found) if ok else None


def _when(item: _Node, report: _Report, rollout: Rollout) -> OneOff | Recurrence | None:
    at, every = item.get("at"), item.get("every")
    if at.value is not None and every.value is not None:
        report(every.line, "give either at: (once) or every: (recurring), not both")
        return None
    if at.value is None and every.value is None:
        report(item.line, "missing at: (once) or every: (recurring)")
        return None
    if at.value is not None:
        for key in ("from", "until"):
            if item.get(key).value is not None:
                report(item.key_line(key), f"{key}: only applies to every:, not at:")
        try:
            return parse_at(at.value, rollout)
        except ValueError as exc:
            report(at.line, str(exc))
            return None
    missing = [key for key in ("from", "until") if item.get(key).value is None]
    if missing:
        report(
            every.line,
            f"every: needs {' and '.join(k + ':' for k in missing)} "
            '(e.g. from: training_opens, until: "go_live + 12 weeks")',
        )
    rule: tuple[frozenset[int], int, time] | None = None
    try:
        rule = parse_every(every.value)
    except ValueError as exc:
        report(every.line, str(exc))
    bounds: dict[str, DateExpr] = {}
    for key in ("from", "until"):
        bound = item.get(key)
        if bound.value is None:
            continue
        try:
            bounds[key] = parse_date(bound.value, rollout, key=key)
        except ValueError as exc:
            report(bound.line, str(exc))
    if rule is None or len(bounds) < 2:
        return None
    first, last = bounds["from"].resolve(rollout), bounds["until"].resolve(rollout)
    if first > last:
        report(item.key_line("from"), f"from ({first}) is after until ({last})")
        return None
    weekdays, interval, at_time = rule
    recurrence = Recurrence(weekdays, at_time, bounds["from"], bounds["until"], interval)
    if not recurrence.planned(rollout):
        report(every.line, f"no run falls between from ({first}) and until ({last})")
        return None
    return recurrence


def _open_days(item: _Node, report: _Report) -> int:
    value = item.value
    if value is None:
        return DEFAULT_OPEN_DAYS
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_OPEN_DAYS:
        report(
            item.line, f"open_days must be a whole number from 1 to {MAX_OPEN_DAYS}, not {value!r}"
        )
        return DEFAULT_OPEN_DAYS
    return value


def _reminders(item: _Node, open_days: int, report: _Report) -> tuple[int, ...]:
    if item.value is None:
        return ()
    if not isinstance(item.value, list):
        report(item.line, "reminders: must be a list of days after the start, like [2, 4]")
        return ()
    if len(item.value) > MAX_REMINDERS:
        report(
            item.line,
            f"at most {MAX_REMINDERS} reminders, not {len(item.value)}: more nudges feel like "
            "pressure and cost goodwill for the next run",
        )
    found: list[int] = []
    for entry in item.items():
        day = entry.value
        if isinstance(day, bool) or not isinstance(day, int) or day < 1:
            report(entry.line, f"a reminder is a whole number of days after the start, not {day!r}")
            continue
        if day >= open_days:
            report(
                entry.line,
                f"a reminder {day} days after the start comes after the run closes "
                f"(open_days: {open_days})",
            )
            continue
        if found and day <= found[-1]:
            report(entry.line, "reminders go in increasing order without repeats, like [2, 4]")
            continue
        found.append(day)
    return tuple(found)


def _check_overlaps(
    entries: list[tuple[SurveySchedule, _Node, _Report]], rollout: Rollout
) -> set[int]:
    """Report runs of one survey that would be open at once (a person would hold two
    invitations to the same survey); returns the ids of the schedules at fault."""
    windows: list[tuple[datetime, datetime, SurveySchedule, _Node, _Report]] = []
    for schedule, entry, report in entries:
        for planned in schedule.schedule.planned(rollout):
            begins = _after_quiet_hours(planned, schedule.quiet_hours)
            windows.append(
                (begins, begins + timedelta(days=schedule.open_days), schedule, entry, report)
            )
    windows.sort(key=lambda window: window[0])
    faulty: set[int] = set()
    for before, after in pairwise(windows):
        begins, closes, earlier, _e, _r = before
        next_begins, _closes, later, entry, report = after
        if next_begins >= closes or id(later) in faulty:
            continue
        faulty.add(id(later))
        if later is earlier:
            line = entry.key_line("open_days")
            reason = (
                f"runs of {later.survey!r} would overlap: the run from {begins:%Y-%m-%d %H:%M} "
                f"is open for {later.open_days} days, past the next start at "
                f"{next_begins:%Y-%m-%d %H:%M}; shorten open_days or space the runs out"
            )
        else:
            line = entry.line
            where = "" if earlier.path == later.path else f" of {earlier.path.name}"
            reason = (
                f"runs of {later.survey!r} would overlap: this schedule starts one at "
                f"{next_begins:%Y-%m-%d %H:%M}, while the run from {begins:%Y-%m-%d %H:%M} "
                f"(line {earlier.line}{where}) "
                f"is open until {closes:%Y-%m-%d %H:%M}"
            )
        report(line, reason)
    return faulty
