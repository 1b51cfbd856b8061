"""Announcement templates: one Markdown file per message in `messages/announcements/`.

A template is YAML front matter and a Markdown body; title, body and button URLs are Jinja2 in
the rollout's sandboxed environment::

    ---
    title: Compass training is open       # required: the notification text and bold heading
    owner: Compass Programme              # required: who is accountable (shown in small print)
    buttons:                              # optional
      - label: Start the course           # a link button; url is rendered like the body
        url: "{{ links.training }}"
      - ack: I've read this               # the acknowledgement button (at most one): its label
    ---
    Hi {{ user.first_name }}, training is open until {{ milestones.training_deadline | longdate }}.

Templates see the rollout's variables (`rollout`, `links`, `milestones`, `today`,
`days_until('m')`) plus `user` (`id`, `name`, `first_name`, `tz`), `weeks_until('m')` and
`days_since('m')`; "today" is the recipient's own date when their time zone is known.

Use `load_templates()` to read and check the files (each is rendered for `SAMPLE_USER`, so a
typo fails `mobilize check` with `file:line`) and `render()` to build one recipient's `Message`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
import jinja2.meta
import yaml

from bot.core.content import (
    ENVIRONMENT,
    ContentError,
    Rollout,
    key_lines,
    parse_yaml,
    template_error,
    template_variables,
)
from bot.core.faq.kb import split_front_matter
from bot.core.messages import ANNOUNCE_ACK, ANNOUNCE_LINK, Button, Message, Text

ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9_-]*$")  # the same rule as template names in the plan
KNOWN_KEYS = ("title", "owner", "buttons")
BUTTON_KEYS = ("label", "url", "ack")
LABEL_LIMIT = 75  # Slack's limit for button text
URL_LIMIT = 3000  # Slack's limit for a button's url
BUTTONS_LIMIT = 25  # elements in one actions block
ACKNOWLEDGED = "✓ You acknowledged this"

Report = Callable[[int, str], None]  # records an error at a line of the file


@dataclass(frozen=True)
class Recipient:
    """Who a template is rendered for; `name` and `first_name` come from Slack (user data)."""

    id: str
    name: str
    first_name: str
    tz: str | None = None  # Slack's IANA zone name, e.g. "America/Chicago"


SAMPLE_USER = Recipient("U0SAMPLE", "Sam Sample", "Sam", "Europe/London")
CHANNEL_AUDIENCE = Recipient("", "everyone", "everyone", None)  # for a post in a channel


@dataclass(frozen=True)
class LinkButton:
    """A button that opens a link; `url` is a Jinja2 template string."""

    label: str
    url: str


@dataclass(frozen=True)
class Template:
    """One announcement template, checked; render it with `render()`."""

    id: str
    title: str  # Jinja2 source
    owner: str
    body: str  # Jinja2 source
    links: tuple[LinkButton, ...]
    ack_label: str | None
    path: Path
    body_line: int
    title_template: jinja2.Template | None = field(default=None, compare=False, repr=False)
    body_template: jinja2.Template | None = field(default=None, compare=False, repr=False)
    url_templates: tuple[jinja2.Template, ...] = field(default=(), compare=False, repr=False)

    @property
    def ack(self) -> bool:
        """Whether the message carries an acknowledgement button."""
        return self.ack_label is not None


class TemplateRenderError(Exception):
    """A template that loaded (it rendered for the sample user) failed for a real recipient."""

    def __init__(self, template_id: str, reason: str) -> None:
        super().__init__(f"announcement template {template_id!r} did not render: {reason}")
        self.template_id = template_id
        self.reason = reason


# --- variables ---------------------------------------------------------------------------

# Slack's own mrkdwn escaping (&lt;) cannot be used here: the renderer escapes `&` in trusted
# text again and people would see "&lt;". Look-alike characters keep names readable while
# leaving nothing the renderer or Slack would treat as a token, a link or a mention.
_DEFANG = str.maketrans({"<": "‹", ">": "›", "[": "(", "]": ")", "@": "＠"})
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def defang(value: str) -> str:
    """A value from Slack (a display name) made safe to place inside trusted Markdown.

    `<`, `>` (Slack tokens such as `<!channel>`), `[`, `]` (Markdown links) and `@` become
    look-alikes; control characters and line breaks become a space.
    """
    return " ".join(_CONTROL.sub(" ", value).translate(_DEFANG).split())


def _zone_name(tz: str | None) -> str | None:
    if not tz:
        return None
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # Slack data: never trust a name
        return None
    return tz


def template_context(rollout: Rollout, *, user: Recipient, now: datetime) -> dict[str, Any]:
    """Everything a template can use when rendered for `user` at `now` (an aware datetime).

    `today` and the day-counting helpers use the recipient's zone when it is a known zone,
    the rollout's otherwise.
    """
    variables = template_variables(rollout, now=now)
    zone = _zone_name(user.tz)
    if zone and zone != rollout.timezone:
        # The same helpers as every other template, only counted from the recipient's date.
        local = template_variables(dataclasses.replace(rollout, timezone=zone), now=now)
        variables["today"] = local["today"]
        variables["days_until"] = local["days_until"]
    days_until = variables["days_until"]

    def weeks_until(milestone: str) -> int:
        return int(days_until(milestone)) // 7

    def days_since(milestone: str) -> int:
        return -int(days_until(milestone))

    name = defang(user.name)
    first_name = defang(user.first_name)
    variables["user"] = {
        "id": defang(user.id),
        "name": name or first_name or "there",
        "first_name": first_name or "there",
        "tz": defang(user.tz) if user.tz else None,
    }
    variables["weeks_until"] = weeks_until
    variables["days_since"] = days_since
    return variables


# --- loading -----------------------------------------------------------------------------


def announcements_dir(content_dir: Path) -> Path:
    return content_dir / "messages" / "announcements"


def load_templates(
    content_dir: Path, rollout: Rollout, *, now: datetime
) -> tuple[dict[str, Template], list[ContentError]]:
    """Load and check every `messages/announcements/*.md`; the id is the file name's stem.

    Returns the templates without errors, by id, and every error found.
    """
    folder = announcements_dir(content_dir)
    templates: dict[str, Template] = {}
    errors: list[ContentError] = []
    for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(ContentError(path, 1, f"cannot read: {exc}"))
            continue
        template, problems = parse_template(path, text, rollout, now=now)
        errors.extend(problems)
        if template is not None:
            templates[template.id] = template
    return templates, errors


def parse_template(
    path: Path, text: str, rollout: Rollout, *, now: datetime
) -> tuple[Template | None, list[ContentError]]:
    """Parse and check one template file; the template is None when it has errors."""
    errors: list[ContentError] = []
    template_id = path.stem
    if not ID_PATTERN.match(template_id):
        errors.append(
            ContentError(
                path,
                1,
                f"file name {path.name!r}: use lower-case letters, digits, '-' and '_' "
                "(the template's id is the name without .md)",
            )
        )
    parts = split_front_matter(text)
    if parts is None:
        errors.append(
            ContentError(
                path, 1, "missing front matter: start the file with --- and close it with ---"
            )
        )
        return None, errors
    front, body, body_line = parts
    data, yaml_errors = parse_yaml(front, path, offset=1)
    if yaml_errors:
        return None, errors + [_with_quote_hint(error, front) for error in yaml_errors]
    if data is None:
        data = {}
    if not isinstance(data, dict):
        return None, [*errors, ContentError(path, 2, "front matter must be a mapping of keys")]
    lines = key_lines(front, offset=1)

    def error(line: int, reason: str) -> None:
        errors.append(ContentError(path, line, reason))

    for key in data:
        if key not in KNOWN_KEYS:
            error(lines.get(str(key), 2), f"unknown key {key!r} (known: {', '.join(KNOWN_KEYS)})")
    title = _text(data, "title", lines, error, "missing title: the notification and heading")
    owner = _text(data, "owner", lines, error, "missing owner: who is accountable for it")
    links, ack_label = _buttons(data.get("buttons"), front, lines, error)
    if not body.strip():
        error(body_line, "empty body: write the announcement below the front matter")

    # Render everything once for the sample user so a typo is caught now, not at send time.
    context = template_context(rollout, user=SAMPLE_USER, now=now)
    title_line = lines.get("title", 2)
    title_template = _check(path, title, title_line, context, errors) if title else None
    if title_template is not None and not _one_line(title_template.render(context)):
        error(title_line, "title renders empty")
    body_template = _check(path, body, body_line, context, errors)
    url_templates = []
    for button, url_line in links:
        compiled = _check(path, button.url, url_line, context, errors)
        if compiled is not None:
            problem = _url_problem(compiled.render(context).strip())
            if problem:
                error(url_line, f"button {button.label!r}: {problem}")
            url_templates.append(compiled)
    if errors:
        return None, errors
    assert title_template is not None and body_template is not None  # no errors: compiled
    return (
        Template(
            id=template_id,
            title=title,
            owner=owner,
            body=body.strip(),
            links=tuple(button for button, _line in links),
            ack_label=ack_label,
            path=path,
            body_line=body_line,
            title_template=title_template,
            body_template=body_template,
            url_templates=tuple(url_templates),
        ),
        [],
    )


def _with_quote_hint(error: ContentError, front: str) -> ContentError:
    # `url: {{ links.x }}` is a YAML flow mapping, not a string: say what to do about it.
    source = front.splitlines()
    index = error.line - 2
    if 0 <= index < len(source) and "{{" in source[index] and "{{" not in error.reason:
        hint = ' (a value that starts with {{ must be quoted: url: "{{ links.training }}")'
        return ContentError(error.path, error.line, error.reason + hint)
    return error


def _text(
    data: dict[Any, Any], key: str, lines: dict[str, int], error: Report, missing: str
) -> str:
    value = data.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        error(lines.get(key, 2), missing)
        return ""
    if not isinstance(value, str):
        error(lines.get(key, 2), f"{key} must be text (quote a value that starts with {{{{)")
        return ""
    return value.strip()


def _buttons(
    value: Any, front: str, lines: dict[str, int], error: Report
) -> tuple[list[tuple[LinkButton, int]], str | None]:
    """Link buttons with the line of their url, and the ack label, reporting every mistake."""
    if value is None:
        return [], None
    buttons_line = lines.get("buttons", 2)
    if not isinstance(value, list):
        error(buttons_line, "buttons must be a list of {label, url} or {ack: label}")
        return [], None
    if len(value) > BUTTONS_LIMIT:
        error(buttons_line, f"{len(value)} buttons: Slack shows at most {BUTTONS_LIMIT}")
    item_lines = _item_lines(front, offset=1)
    links: list[tuple[LinkButton, int]] = []
    ack_label: str | None = None
    for index, item in enumerate(value):
        where = item_lines[index] if index < len(item_lines) else {}
        line = where.get("", buttons_line)
        if not isinstance(item, dict):
            error(line, "a button is a mapping: label and url, or ack")
            continue
        for key in item:
            if key not in BUTTON_KEYS:
                error(
                    where.get(str(key), line),
                    f"unknown button key {key!r} (known: {', '.join(BUTTON_KEYS)})",
                )
        has_url, has_ack = "url" in item, "ack" in item
        if has_url and has_ack:
            error(line, "a button is a link (label and url) or an acknowledgement (ack), not both")
        elif has_ack:
            ack_line = where.get("ack", line)
            label = item["ack"]
            if "label" in item:
                error(where.get("label", line), "an ack button takes its label from ack:")
            if not isinstance(label, str) or not label.strip():
                error(ack_line, "ack: give the button's label, e.g. ack: I've read this")
            elif ack_label is not None:
                error(ack_line, "only one ack button per announcement")
            elif len(label.strip()) > LABEL_LIMIT:
                error(ack_line, f"ack label is over {LABEL_LIMIT} characters")
            else:
                ack_label = label.strip()
        elif has_url:
            label = item.get("label")
            url = item["url"]
            if not isinstance(label, str) or not label.strip():
                error(where.get("label", line), "a link button needs a label")
            elif len(label.strip()) > LABEL_LIMIT:
                error(where.get("label", line), f"button label is over {LABEL_LIMIT} characters")
            if not isinstance(url, str) or not url.strip():
                error(where.get("url", line), 'url must be text, e.g. url: "{{ links.training }}"')
            elif isinstance(label, str) and label.strip():
                links.append((LinkButton(label.strip(), url.strip()), where.get("url", line)))
        else:
            error(line, "a button needs a url (a link) or ack (an acknowledgement)")
    return links, ack_label


def _item_lines(front: str, *, offset: int) -> list[dict[str, int]]:
    """For each item under `buttons:`, its line ("") and the line of each of its keys."""
    try:
        node = yaml.compose(front)
    except yaml.YAMLError:
        return []
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if key.value == "buttons" and isinstance(value, yaml.SequenceNode):
            found = []
            for item in value.value:
                where = {"": item.start_mark.line + 1 + offset}
                if isinstance(item, yaml.MappingNode):
                    where.update(
                        (str(k.value), k.start_mark.line + 1 + offset)
                        for k, _v in item.value
                        if isinstance(k, yaml.ScalarNode)
                    )
                found.append(where)
            return found
    return []


def _check(
    path: Path, source: str, line: int, context: dict[str, Any], errors: list[ContentError]
) -> jinja2.Template | None:
    """Compile and render `source` for the sample user; an error goes in `errors` at its line."""
    try:
        compiled = ENVIRONMENT.from_string(source)
        compiled.render(context)
    except Exception as exc:  # any template failure is a content error, never a crash
        errors.append(template_error(exc, path=path, body=source, first_line=line))
        return None
    # A name used only in a branch the sample did not take would fail for someone later.
    known = set(context) | set(ENVIRONMENT.globals)
    unknown = sorted(jinja2.meta.find_undeclared_variables(ENVIRONMENT.parse(source)) - known)
    for name in unknown:
        missing = jinja2.UndefinedError(f"'{name}' is undefined")
        errors.append(template_error(missing, path=path, body=source, first_line=line))
    return None if unknown else compiled


def _url_problem(url: str) -> str | None:
    if not url.startswith(("https://", "http://")):
        return f"url must start with https:// or http://, not {url[:60]!r}"
    if len(url) > URL_LIMIT:
        return f"url is {len(url)} characters; Slack allows {URL_LIMIT}"
    return None


def _one_line(text: str) -> str:
    return " ".join(text.split())


# --- rendering ---------------------------------------------------------------------------


def render(
    template: Template,
    rollout: Rollout,
    *,
    user: Recipient,
    now: datetime,
    ack_value: str = "",
    acknowledged: bool = False,
) -> Message:
    """The message for one recipient (or `CHANNEL_AUDIENCE`) at `now`.

    `ack_value` goes in the ack button's value (say, the delivery id); once the recipient has
    `acknowledged`, the button gives way to a "✓ You acknowledged this" line. Raises
    TemplateRenderError when the template fails for this recipient.
    """
    context = template_context(rollout, user=user, now=now)
    title = _one_line(_render(template, "title", template.title_template, template.title, context))
    if not title:
        raise TemplateRenderError(template.id, "the title renders empty")
    body = _render(template, "body", template.body_template, template.body, context).strip()
    buttons = []
    for index, link in enumerate(template.links):
        compiled = template.url_templates[index] if index < len(template.url_templates) else None
        url = _render(template, f"url of {link.label!r}", compiled, link.url, context).strip()
        problem = _url_problem(url)
        if problem:
            raise TemplateRenderError(template.id, f"button {link.label!r}: {problem}")
        buttons.append(Button(link.label, ANNOUNCE_LINK, url=url))
    context_lines = [f"From {template.owner}"]
    if template.ack_label is not None:
        if acknowledged:
            context_lines.append(ACKNOWLEDGED)
        else:
            buttons.append(
                Button(template.ack_label, ANNOUNCE_ACK, value=ack_value, style="primary")
            )
    parts = [Text(f"*{title}*")]
    if body:
        parts.append(Text(body))
    return Message(
        tuple(parts), context=tuple(context_lines), buttons=tuple(buttons), summary=title
    )


def _render(
    template: Template,
    what: str,
    compiled: jinja2.Template | None,
    source: str,
    context: dict[str, Any],
) -> str:
    try:
        return (compiled or ENVIRONMENT.from_string(source)).render(context)
    except Exception as exc:  # Jinja2, a filter or the sandbox: all mean "cannot send this"
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        raise TemplateRenderError(template.id, f"{what}: {message}") from exc
