"""Loading and validating the rollout's content files, with `file:line: reason` errors.

`schedules/rollout.yaml` holds the rollout (name, time zone, links) and its milestones; every
template (FAQ answers now, announcements later) renders in one sandboxed Jinja2 environment
with `StrictUndefined`, so a typo fails `mobilize check`, not a user's question.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment


@dataclass(frozen=True)
class ContentError:
    """One problem in one content file, printed as `file:line: reason`."""

    path: Path
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


class ContentErrors(Exception):
    """Raised when content does not load; `errors` lists every problem found."""

    def __init__(self, errors: list[ContentError]) -> None:
        super().__init__("\n".join(str(error) for error in errors))
        self.errors = errors


@dataclass(frozen=True)
class Rollout:
    """The rollout the content describes: its name, zone, links and milestone dates."""

    name: str = "the new system"
    organisation: str = ""
    timezone: str = "UTC"
    links: dict[str, str] = field(default_factory=dict)
    milestones: dict[str, date] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)  # the whole rollout.yaml, for later sections

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    def today(self, now: datetime) -> date:
        return now.astimezone(self.zone).date()


# libyaml's loader when PyYAML was built with it: content is parsed at every start and reload,
# and the pure-Python parser took ~0.4 s of `mobilize run`'s start (benchmarks/serving.py).
# Its error messages are worded differently, so a document it refuses is parsed again by the
# pure-Python loader, whose messages and marks are the ones reported.
_FAST_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load`, on libyaml when available (the same values; errors as PyYAML's)."""
    try:
        return yaml.load(text, Loader=_FAST_LOADER)
    except yaml.YAMLError:
        if _FAST_LOADER is yaml.SafeLoader:
            raise
    return yaml.safe_load(text)


def compose_yaml(text: str) -> yaml.Node | None:
    """`yaml.compose` (nodes with their line marks), on libyaml when available."""
    try:
        return yaml.compose(text, Loader=_FAST_LOADER)
    except yaml.YAMLError:
        if _FAST_LOADER is yaml.SafeLoader:
            raise
    return yaml.compose(text, Loader=yaml.SafeLoader)


def key_lines(text: str, *, offset: int = 0) -> dict[str, int]:
    """Line (1-based, plus `offset`) of each top-level key of a YAML mapping; empty if not one."""
    try:
        node = compose_yaml(text)
    except yaml.YAMLError:
        return {}
    if not isinstance(node, yaml.MappingNode):
        return {}
    return {
        str(key.value): key.start_mark.line + 1 + offset
        for key, _value in node.value
        if isinstance(key, yaml.ScalarNode)
    }


def parse_yaml(text: str, path: Path, *, offset: int = 0) -> tuple[Any, list[ContentError]]:
    """Parse YAML, turning syntax errors into ContentErrors at the right line."""
    try:
        return load_yaml(text), []
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        if exc.context_mark and "stream end" in (exc.problem or ""):
            mark = exc.context_mark  # an unclosed bracket: point at where it opened
        line = (mark.line + 1 if mark else 1) + offset
        reason = " ".join(filter(None, [exc.context, exc.problem])) or "invalid YAML"
        return None, [ContentError(path, line, f"invalid YAML: {reason}")]
    except yaml.YAMLError as exc:
        return None, [ContentError(path, 1 + offset, f"invalid YAML: {exc}")]


def load_rollout(
    content_dir: Path, *, default_timezone: str = ""
) -> tuple[Rollout, list[ContentError]]:
    """Read `schedules/rollout.yaml`; a missing file gives an empty rollout, not an error.
    `default_timezone` (MOBILIZE_TIMEZONE) applies when the file names no time zone."""
    path = content_dir / "schedules" / "rollout.yaml"
    if not path.exists():
        return Rollout(timezone=default_timezone or "UTC"), []
    text = path.read_text(encoding="utf-8")
    data, errors = parse_yaml(text, path)
    if errors:
        return Rollout(), errors
    if data is None:
        data = {}
    lines = key_lines(text)
    if not isinstance(data, dict):
        return Rollout(), [
            ContentError(path, 1, "expected a mapping with rollout: and milestones:")
        ]
    info = data.get("rollout") or {}
    if not isinstance(info, dict):
        return Rollout(), [
            ContentError(path, lines.get("rollout", 1), "rollout: must be a mapping")
        ]
    timezone = str(info.get("timezone") or default_timezone or "UTC")
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        errors.append(
            ContentError(path, _line_of(text, "timezone"), f"unknown time zone {timezone!r}")
        )
        timezone = "UTC"
    links = info.get("links") or {}
    if not isinstance(links, dict) or not all(isinstance(v, str) for v in links.values()):
        errors.append(ContentError(path, _line_of(text, "links"), "links: must map names to URLs"))
        links = {}
    milestones: dict[str, date] = {}
    raw_milestones = data.get("milestones") or {}
    if not isinstance(raw_milestones, dict):
        errors.append(
            ContentError(path, lines.get("milestones", 1), "milestones: must map names to dates")
        )
        raw_milestones = {}
    for name, value in raw_milestones.items():
        if isinstance(value, datetime):
            value = value.date()
        if not isinstance(value, date):
            errors.append(
                ContentError(
                    path,
                    _line_of(text, f"{name}:"),
                    f"milestone {name!r} must be a date like 2027-02-15, not {value!r}",
                )
            )
            continue
        milestones[str(name)] = value
    rollout = Rollout(
        name=str(info.get("name") or Rollout.name),
        organisation=str(info.get("organisation") or ""),
        timezone=timezone,
        links={str(k): str(v) for k, v in links.items()},
        milestones=milestones,
        raw=data,
    )
    return rollout, errors


def _line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith(needle):
            return number
    return 1


def _defined(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        value._fail_with_undefined_error()
    return value


def longdate(value: date | datetime) -> str:
    """`Monday 15 February 2027`."""
    value = _defined(value)
    return f"{value:%A} {value.day} {value:%B %Y}"


def shortdate(value: date | datetime) -> str:
    """`15 Feb`."""
    value = _defined(value)
    return f"{value.day} {value:%b}"


def make_environment() -> SandboxedEnvironment:
    """The one Jinja2 environment for every template: sandboxed, strict, no HTML escaping
    (Slack would show `&#39;` literally; user values are escaped for mrkdwn instead)."""
    env = SandboxedEnvironment(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
    )
    env.filters["longdate"] = longdate
    env.filters["shortdate"] = shortdate
    return env


ENVIRONMENT = make_environment()


def template_variables(rollout: Rollout, *, now: datetime) -> dict[str, Any]:
    """What every template can use: rollout, links, milestones, today and days_until()."""
    today = rollout.today(now)

    def days_until(milestone: str) -> int:
        if milestone not in rollout.milestones:
            raise jinja2.UndefinedError(f"no milestone named {milestone!r}")
        return (rollout.milestones[milestone] - today).days

    return {
        "rollout": {
            "name": rollout.name,
            "organisation": rollout.organisation,
            "timezone": rollout.timezone,
        },
        "links": dict(rollout.links),
        "milestones": dict(rollout.milestones),
        "today": today,
        "days_until": days_until,
    }


_UNDEFINED_NAME = re.compile(r"'([^']+)' is undefined|has no attribute '([^']+)'|named '([^']+)'")


def template_error(exc: Exception, *, path: Path, body: str, first_line: int) -> ContentError:
    """Turn a Jinja2 error into a ContentError at the template line that caused it."""
    if isinstance(exc, jinja2.TemplateSyntaxError):
        return ContentError(path, first_line + (exc.lineno or 1) - 1, f"template: {exc.message}")
    reason = str(exc)
    match = _UNDEFINED_NAME.search(reason)
    line = first_line
    if match:
        name = next(group for group in match.groups() if group)
        for number, text in enumerate(body.splitlines()):
            if name in text:
                line = first_line + number
                break
    return ContentError(path, line, f"template: {reason}")
