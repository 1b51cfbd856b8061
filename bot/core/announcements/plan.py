"""The announcement plan: what is sent when, and to whom, written in `schedules/*.yaml`.

Any file in `schedules/` may hold an `announcements:` list (other top-level keys are left to
their own loaders; `rollout.yaml` holds `rollout:` and `milestones:`)::

    announcements:
      - id: training-opens          # unique across all schedule files; [a-z0-9][a-z0-9_-]*
        template: training-opens    # messages/announcements/<template>.md; same pattern as id
        to: everyone                # or a list of audiences, sent to their union
        at: "training_opens at 09:00"
        local_time: false           # true: 09:00 on each recipient's own Slack clock
        weekdays_only: false        # true: a Saturday or Sunday send moves to Monday, same time
        quiet_hours: "20:00-08:00"  # a send inside the window moves to its end
        ack: true                   # ask for an "I've read this" click (default false)
        remind_after_days: 3        # remind who has not acknowledged (needs ack: true)
        enabled: true               # default true; false keeps it in the plan but never sends
      - id: go-live-countdown
        template: countdown
        to: [channel:C0123ABCD, "users:U01AAA,U02BBB"]
        every: "monday at 09:00"
        from: "go_live - 4 weeks"   # required with every:, inclusive
        until: "go_live - 1 day"    # required with every:, inclusive

Audiences are checked for syntax only (resolving them to people is the audiences module's
job): `everyone`, `everyone+guests`, `channel:C…` (the channel), `members:C…` (each member of
the channel), `group:S…` (a user group), `users:U…,U…`, `emails:relative/path.csv`.

Exactly one of `at` (once) or `every` (recurring) is given:

- `at`: `2027-02-15 09:00`, `2027-02-15T09:00`, or a milestone with an optional offset,
  `go_live at 08:30`, `go_live - 7 days at 09:00`, `go_live minus 1 week at 09:00`,
  `hypercare_ends + 1 week at 10:00` (`+`, `-`, `plus`, `minus`; `day(s)`, `week(s)`).
- `every`: `day at 09:00`, `weekday at 09:00` (Monday to Friday), `monday at 09:00` (any
  weekday name, or its three-letter form), `2 weeks on monday at 09:00` (counted from the
  first Monday on or after `from`).
- `from` / `until`: a date, `go_live - 4 weeks` or `2027-03-01`.

Case and spacing are free. Times are wall-clock times in the rollout's time zone, or in each
recipient's zone with `local_time: true`. Quiet hours apply first, then `weekdays_only`, so a
Friday-evening send pushed past quiet hours into Saturday still lands on Monday. When these
rules move several occurrences of one announcement to the same moment (Saturday, Sunday and
Monday all to Monday 09:00), it is sent once, under the latest planned occurrence's key.

Use `load_plan()` to read and check the files, `occurrences()` to find what falls due in a
window, and `send_time()` to find when one recipient should get one occurrence. The
`parse_*()` helpers read single values and raise ValueError saying what was expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from bot.core.content import ContentError, Rollout, parse_yaml
from bot.core.platforms import GUID
from bot.core.schedule import (
    EARLIEST_ZONE,
    DateExpr,
    OneOff,
    Recurrence,
    after_quiet_hours,
    did_you_mean,
    parse_at,
    parse_date,
    parse_every,
    parse_quiet_hours,
    to_utc,
    zone_or,
)
from bot.core.schedule import Invalid as _Invalid

KNOWN_KEYS = (
    "id",
    "template",
    "to",
    "at",
    "every",
    "from",
    "until",
    "local_time",
    "weekdays_only",
    "quiet_hours",
    "ack",
    "remind_after_days",
    "enabled",
)
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]*")


AUDIENCE_EXAMPLE = (
    "everyone, everyone+guests, channel:C…, members:C…, group:S…, users:U…,U… "
    "or emails:path/to/list.csv"
)

# Slack ids, and Microsoft Teams ones (see bot.core.platforms): a channel conversation id, an
# Entra object id for a person, a group or a team (a team is its Microsoft 365 group).
_CHANNEL_ID = re.compile(r"[CG][A-Z0-9]+|19:[A-Za-z0-9_\-.]+@thread\.(?:tacv2|skype)")
_GROUP_ID = re.compile(r"S[A-Z0-9]+|" + GUID.pattern)
_USER_ID = re.compile(r"[UW][A-Z0-9]+|" + GUID.pattern)
_AUDIENCE = re.compile(r"(?P<kind>[a-z]+)\s*:\s*(?P<rest>.*)", re.I | re.S)


@dataclass(frozen=True)
class Announcement:
    """One entry of the plan: which template goes to whom, and when."""

    id: str
    template: str
    audience: tuple[str, ...]
    schedule: OneOff | Recurrence
    path: Path
    line: int
    local_time: bool = False
    weekdays_only: bool = False
    quiet_hours: tuple[time, time] | None = None
    ack: bool = False
    remind_after_days: int | None = None
    enabled: bool = True


@dataclass(frozen=True)
class Plan:
    """Every valid announcement from `schedules/*.yaml`, in file order."""

    announcements: tuple[Announcement, ...] = ()

    def get(self, announcement_id: str) -> Announcement | None:
        """The announcement with this id, or None."""
        return next((a for a in self.announcements if a.id == announcement_id), None)


@dataclass(frozen=True)
class Occurrence:
    """One planned send of an announcement.

    `key` (`<id>@<local date>T<HH:MM>`) is the same every time the same occurrence is
    computed, so materialising it twice is harmless; `local` is the planned naive wall-clock
    time (before weekday and quiet-hours moves); `due_utc` is when materialising may start:
    the send time for a rollout-zone announcement, or the first instant anywhere on Earth
    reaches it for a `local_time` one.
    """

    announcement_id: str
    key: str
    local: datetime
    due_utc: datetime


# ---------------------------------------------------------------------------- occurrences


def occurrences(
    plan: Plan, rollout: Rollout, *, start: datetime, end: datetime
) -> list[Occurrence]:
    """Occurrences of the enabled announcements with `start <= due_utc < end` (both aware),
    sorted by due time then announcement id."""
    if start.tzinfo is None or end.tzinfo is None:
        raise ValueError("start and end must be timezone-aware")
    found = [
        occurrence
        for announcement in plan.announcements
        if announcement.enabled
        for occurrence in _occurrences_of(announcement, rollout)
        if start <= occurrence.due_utc < end
    ]
    return sorted(found, key=lambda o: (o.due_utc, o.announcement_id, o.key))


def send_time(
    announcement: Announcement, occurrence: Occurrence, *, tz: str | None, rollout: Rollout
) -> datetime:
    """When (aware, UTC) a recipient whose Slack time zone is `tz` should get `occurrence`.

    For a `local_time` announcement that is the planned wall-clock time in `tz` (the rollout's
    zone when `tz` is None or unknown); for any other, the rollout-zone time, the same for
    everyone. Quiet hours and `weekdays_only` apply in that zone.
    """
    if occurrence.announcement_id != announcement.id:
        raise ValueError(f"{occurrence.key} is not an occurrence of {announcement.id}")
    zone = zone_or(tz, rollout.zone) if announcement.local_time else rollout.zone
    return to_utc(_adjust(announcement, occurrence.local), zone)


def _occurrences_of(announcement: Announcement, rollout: Rollout) -> list[Occurrence]:
    by_moment: dict[datetime, Occurrence] = {}
    for local in announcement.schedule.planned(rollout):
        moved = _adjust(announcement, local)
        if announcement.local_time:
            # Every zone shows `moved` at `moved - its offset`, and no offset exceeds +14h.
            due = moved.replace(tzinfo=EARLIEST_ZONE).astimezone(UTC)
        else:
            due = to_utc(moved, rollout.zone)
        key = f"{announcement.id}@{local.date().isoformat()}T{local:%H:%M}"
        # Later planned occurrences replace earlier ones moved onto the same moment.
        by_moment[moved] = Occurrence(announcement.id, key, local, due)
    return list(by_moment.values())


def _adjust(announcement: Announcement, wall: datetime) -> datetime:
    if announcement.quiet_hours is not None:
        wall = after_quiet_hours(wall, *announcement.quiet_hours)
    if announcement.weekdays_only and wall.weekday() >= 5:
        wall += timedelta(days=7 - wall.weekday())
    return wall


# ---------------------------------------------------------------------------- loading


def load_plan(content_dir: Path, rollout: Rollout) -> tuple[Plan, list[ContentError]]:
    """Read the `announcements:` of every `schedules/*.yaml` (sorted by name) and check them
    against `rollout`; the plan holds only the announcements without errors."""
    folder = content_dir / "schedules"
    paths = sorted(folder.glob("*.yaml")) if folder.is_dir() else []
    errors: list[ContentError] = []
    announcements: list[Announcement] = []
    first_seen: dict[str, tuple[Path, int]] = {}
    for path in paths:
        file_errors: list[ContentError] = []
        for item in _items(path, file_errors):
            announcement = item.parse(rollout)
            item_id = item.data.get("id")
            if isinstance(item_id, str) and NAME_PATTERN.fullmatch(item_id):
                if item_id in first_seen:
                    other, other_line = first_seen[item_id]
                    item.error(
                        "id",
                        f"duplicate id {item_id!r} (first used at "
                        f"{_display(other, content_dir)}:{other_line})",
                    )
                    continue
                first_seen[item_id] = (path, item.line("id"))
            if announcement is not None and not item.failed:
                announcements.append(announcement)
        errors.extend(sorted(file_errors, key=lambda error: error.line))
    return Plan(tuple(announcements)), errors


def _display(path: Path, content_dir: Path) -> str:
    try:
        return str(path.relative_to(content_dir))
    except ValueError:
        return str(path)


def _items(path: Path, errors: list[ContentError]) -> list[_Item]:
    """The announcement items of one file, with their YAML nodes for line numbers."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        errors.append(ContentError(path, 1, f"cannot read: {exc}"))
        return []
    # load_rollout already reports rollout.yaml's syntax and shape; saying it twice is noise.
    owned_elsewhere = path.name == "rollout.yaml"
    data, parse_errors = parse_yaml(text, path)
    if parse_errors:
        if not owned_elsewhere:
            errors.extend(parse_errors)
        return []
    if data is None:
        return []
    if not isinstance(data, dict):
        if not owned_elsewhere:
            errors.append(ContentError(path, 1, "expected a mapping with announcements:"))
        return []
    if "announcements" not in data:
        return []
    root = yaml.compose(text)
    key_node, list_node = _child(root, "announcements")
    list_line = key_node.start_mark.line + 1 if key_node is not None else 1
    raw = data["announcements"]
    if raw is None:
        return []
    if not isinstance(raw, list):
        errors.append(
            ContentError(
                path,
                list_line,
                'announcements: must be a list, each item starting with "- id: …"',
            )
        )
        return []
    nodes = list_node.value if isinstance(list_node, yaml.SequenceNode) else []
    items: list[_Item] = []
    for index, value in enumerate(raw):
        node = nodes[index] if index < len(nodes) else None
        line = node.start_mark.line + 1 if node is not None else list_line
        if not isinstance(value, dict):
            errors.append(
                ContentError(path, line, "each announcement must be a mapping with id:, to: …")
            )
            continue
        items.append(_Item(path, value, node, line, errors))
    return items


def _child(node: yaml.Node | None, key: str) -> tuple[yaml.Node | None, yaml.Node | None]:
    """The last key node named `key` in a mapping node and its value (safe_load keeps the
    last of duplicate keys too)."""
    found: tuple[yaml.Node | None, yaml.Node | None] = (None, None)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
                found = (key_node, value_node)
    return found


class _Item:
    """One item of an `announcements:` list, parsed and checked key by key."""

    def __init__(
        self,
        path: Path,
        data: dict[Any, Any],
        node: yaml.Node | None,
        line: int,
        errors: list[ContentError],
    ) -> None:
        self.path = path
        self.data = data
        self.node = node
        self.item_line = line
        self.errors = errors
        self.failed = False

    def line(self, key: str | None = None) -> int:
        if key is not None:
            key_node, _value = _child(self.node, key)
            if key_node is not None:
                return int(key_node.start_mark.line) + 1
        return self.item_line

    def written(self, key: str) -> str:
        """The value of `key` as written in the file, if it is a plain scalar."""
        _key, value = _child(self.node, key)
        return str(value.value) if isinstance(value, yaml.ScalarNode) else ""

    def value_lines(self, key: str) -> list[int]:
        _key, value = _child(self.node, key)
        if isinstance(value, yaml.SequenceNode):
            return [int(child.start_mark.line) + 1 for child in value.value]
        return []

    def error(self, key: str | None, reason: str) -> None:
        self.failed = True
        self.errors.append(ContentError(self.path, self.line(key), reason))

    def parse(self, rollout: Rollout) -> Announcement | None:
        self._check_keys()
        announcement_id = self._name("id")
        template = self._name("template")
        audience = self._audience()
        schedule = self._schedule(rollout)
        local_time = self._flag("local_time", default=False)
        weekdays_only = self._flag("weekdays_only", default=False)
        ack = self._flag("ack", default=False)
        enabled = self._flag("enabled", default=True)
        quiet_hours = self._quiet_hours()
        remind_after_days = self._remind_after_days(ack)
        if announcement_id is None or template is None or audience is None or schedule is None:
            return None
        return Announcement(
            id=announcement_id,
            template=template,
            audience=audience,
            schedule=schedule,
            path=self.path,
            line=self.item_line,
            local_time=local_time,
            weekdays_only=weekdays_only,
            quiet_hours=quiet_hours,
            ack=ack,
            remind_after_days=remind_after_days,
            enabled=enabled,
        )

    def _check_keys(self) -> None:
        if isinstance(self.node, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, _value in self.node.value:
                name = str(key_node.value)
                if name in seen and name != "<<":
                    self.errors.append(
                        ContentError(
                            self.path, key_node.start_mark.line + 1, f"{name}: given twice"
                        )
                    )
                    self.failed = True
                seen.add(name)
        for key in self.data:
            if key not in KNOWN_KEYS:
                hint = did_you_mean(str(key), KNOWN_KEYS)
                self.error(
                    str(key), f"unknown key {key!r}{hint}; known keys: {', '.join(KNOWN_KEYS)}"
                )

    def _name(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is None:
            self.error(None, f"missing {key}")
            return None
        written = self.written(key)
        if not isinstance(value, str) and NAME_PATTERN.fullmatch(written):
            # YAML 1.1 reads `off`, `yes`, `2027` … as booleans and numbers, not names.
            self.error(key, f'{key}: YAML reads {written} as {value!r}; quote it: "{written}"')
            return None
        if not isinstance(value, str) or not NAME_PATTERN.fullmatch(value):
            self.error(
                key,
                f"{key} {value!r} must be lowercase letters, digits, '-' and '_', starting "
                "with a letter or digit, like training-opens",
            )
            return None
        return value

    def _audience(self) -> tuple[str, ...] | None:
        value = self.data.get("to")
        if value is None or value == []:
            self.error(None if value is None else "to", "missing to (who gets it, e.g. everyone)")
            return None
        values = value if isinstance(value, list) else [value]
        lines = self.value_lines("to") if isinstance(value, list) else []
        parsed: list[str] = []
        ok = True
        for index, text in enumerate(values):
            try:
                if not isinstance(text, str):
                    raise _Invalid(
                        f"an audience is text like channel:C0123ABCD, not {text!r} "
                        "(quote it: a colon followed by a space makes YAML read a mapping)"
                    )
                audience = parse_audience(text)
            except _Invalid as exc:
                ok = False
                self.failed = True
                line = lines[index] if index < len(lines) else self.line("to")
                self.errors.append(ContentError(self.path, line, str(exc)))
                continue
            if audience not in parsed:
                parsed.append(audience)
        return tuple(parsed) if ok else None

    def _schedule(self, rollout: Rollout) -> OneOff | Recurrence | None:
        has_at, has_every = "at" in self.data, "every" in self.data
        if has_at and has_every:
            self.error("every", "give either at: (once) or every: (recurring), not both")
            return None
        if not has_at and not has_every:
            self.error(None, "missing at: (once) or every: (recurring)")
            return None
        if has_at:
            for key in ("from", "until"):
                if key in self.data:
                    self.error(key, f"{key}: only applies to every:, not at:")
            try:
                return parse_at(self.data["at"], rollout)
            except _Invalid as exc:
                self.error("at", str(exc))
                return None
        missing = [key for key in ("from", "until") if self.data.get(key) is None]
        if missing:
            self.error(
                "every",
                f"every: needs {' and '.join(k + ':' for k in missing)} "
                '(e.g. from: "go_live - 4 weeks", until: "go_live - 1 day")',
            )
        rule: tuple[frozenset[int], int, time] | None = None
        try:
            rule = parse_every(self.data["every"])
        except _Invalid as exc:
            self.error("every", str(exc))
        bounds: dict[str, DateExpr] = {}
        for key in ("from", "until"):
            if self.data.get(key) is None:
                continue
            try:
                bounds[key] = parse_date(self.data[key], rollout, key=key)
            except _Invalid as exc:
                self.error(key, str(exc))
        if rule is None or len(bounds) < 2:
            return None
        first, last = bounds["from"].resolve(rollout), bounds["until"].resolve(rollout)
        if first > last:
            self.error("from", f"from ({first}) is after until ({last})")
            return None
        weekdays, interval, at = rule
        return Recurrence(weekdays, at, bounds["from"], bounds["until"], interval)

    def _flag(self, key: str, *, default: bool) -> bool:
        value = self.data.get(key, default)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.error(key, f"{key} must be true or false, not {value!r}")
            return default
        return value

    def _quiet_hours(self) -> tuple[time, time] | None:
        value = self.data.get("quiet_hours")
        if value is None:
            return None
        try:
            return parse_quiet_hours(value)
        except _Invalid as exc:
            self.error("quiet_hours", str(exc))
            return None

    def _remind_after_days(self, ack: bool) -> int | None:
        value = self.data.get("remind_after_days")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            self.error("remind_after_days", f"remind_after_days must be 1 or more, not {value!r}")
            return None
        if not ack:
            self.error(
                "remind_after_days",
                "remind_after_days needs ack: true (reminders go to who has not acknowledged)",
            )
            return None
        return value


# ---------------------------------------------------------------------------- expressions


def parse_audience(text: str) -> str:
    """Check one audience and return its normal form (`everyone`, `channel:C0123ABCD`, …)."""
    compact = " ".join(text.split())
    lowered = compact.lower()
    if lowered == "everyone":
        return "everyone"
    if re.fullmatch(r"everyone\s*\+\s*guests", lowered):
        return "everyone+guests"
    match = _AUDIENCE.fullmatch(compact)
    kind = match["kind"].lower() if match else ""
    rest = match["rest"].strip() if match else ""
    if kind in ("channel", "members"):
        if not _CHANNEL_ID.fullmatch(rest):
            raise _Invalid(
                f"{kind}: takes a channel id like C0123ABCD (not a #name: names change), or a "
                f"Teams channel's 19:…@thread.tacv2, not {rest!r}"
            )
        return f"{kind}:{rest}"
    if kind in ("group", "team"):  # a Teams team's members are its Microsoft 365 group's
        if not _GROUP_ID.fullmatch(rest):
            raise _Invalid(
                f"{kind}: takes a user group id like S0123ABCD, or a Microsoft Entra group or "
                f"team id (a GUID), not {rest!r}"
            )
        return f"group:{rest.lower() if GUID.fullmatch(rest) else rest}"
    if kind == "users":
        users = [user.strip() for user in rest.split(",")]
        bad = [user for user in users if not _USER_ID.fullmatch(user)]
        if bad:
            raise _Invalid(
                "users: takes user ids like U0123ABCD separated by commas (on Teams, Microsoft "
                f"Entra object ids), not {bad[0]!r}"
            )
        return "users:" + ",".join(u.lower() if GUID.fullmatch(u) else u for u in users)
    if kind == "emails":
        path = PurePosixPath(rest)
        if (
            not rest
            or path.is_absolute()
            or rest.startswith("~")
            or "\\" in rest
            or ".." in path.parts
            or path.suffix.lower() != ".csv"
        ):
            raise _Invalid(
                "emails: takes a .csv file's path relative to the content folder, "
                f"like emails:audiences/pilot.csv, not {rest!r}"
            )
        return f"emails:{rest}"
    raise _Invalid(f"unknown audience {text!r}; expected {AUDIENCE_EXAMPLE}")
