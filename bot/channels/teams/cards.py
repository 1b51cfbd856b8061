"""Adaptive Cards (schema 1.5, what Teams renders) for a core `Message`.

Trusted Markdown from content files is parsed with markdown-it and written again in the subset
Teams renders in a TextBlock: bold, italic, lists and links (no headings, code, tables, images
or quotes: those become bold lines or plain text). A paragraph break is `\\n\\n`, list items are
joined by `\\n` ("Format cards in Teams"). Slack-isms the core still writes (`*bold*`,
`<url|label>`) are read as they are meant. User text is escaped, so nobody can make the bot show
a link or a mention they did not make; the links and mentions they did make (spans) are kept.
A person is mentioned with `<at>Name</at>` plus an entry in the card's `msteams.entities`.

Buttons are `Action.Execute` (invoke `adaptiveCard/action`, `verb` = the core's action id,
`data` = `{"value": …}`), link buttons `Action.OpenUrl`. Form rows: a Select is a compact
`Input.ChoiceSet`, Checkboxes an expanded multi-select one, each with a *Save* action whose data
names the input and lists the option values (choices carry indexes, so values may hold commas).
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from markdown_it import MarkdownIt
from markdown_it.token import Token

from bot.core.messages import Button, Checkboxes, Link, Mention, Message, Row, Select, Span, Text
from bot.core.surveys.runs import SURVEY_COMMENT

CARD_TYPE = "application/vnd.microsoft.card.adaptive"
# Buttons that open a dialog to write in (Slack opens a modal): a survey's free-text answer.
DIALOGS = frozenset({SURVEY_COMMENT})
COMMENT_CHARS = 3000
VERSION = "1.5"
# The Bot Connector refuses an activity over about 100 KB (413); leave room for the envelope.
MAX_ACTIVITY_BYTES = 90_000
BLOCK_CHARS = 4_000  # text per TextBlock: long text is split into several
TITLE_CHARS = 80  # action titles and choice labels
SUMMARY_CHARS = 300

# Who a person id is: (the id to mention them by, their display name); None when unknown.
People = Callable[[str], tuple[str, str] | None]

_MD = MarkdownIt("commonmark")
_SAFE_URL = re.compile(r"^(?:https?|mailto|msteams):[^\s<>]*$", re.IGNORECASE)
_SLACK_LINK = re.compile(r"<((?:https?|mailto):[^<>|\s]+)(?:\|([^<>]*))?>")
_SLACK_MENTION = re.compile(r"<[@#!]([^<>|]+)(?:\|([^<>]*))?>")
# Ids of people as the core writes them into trusted text (`mention()` of a Teams user):
# the pairwise Bot Connector id, or an Entra object id (a GUID).
_PERSON_ID = re.compile(
    r"(?<![\w-])(29:[A-Za-z0-9_\-]+|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"(?![\w-])",
    re.IGNORECASE,
)
_MARK = "\ue000{}\ue001"  # a mention placeholder that markdown parsing leaves alone
_MARKED = re.compile("\ue000(\\d+)\ue001")
_MARKUP = re.compile(r"([\\*_\[\]])")
_AT_TAG = re.compile(r"<(/?at\b)", re.IGNORECASE)
_LINE_START = re.compile(r"^(\s*)([-+]|\d+[.)])(\s)", re.MULTILINE)


@dataclass
class _Mentions:
    """The mentions a card makes, in `msteams.entities` form."""

    people: People | None
    entities: list[dict[str, Any]] = field(default_factory=list)

    def tag(self, person_id: str, name: str) -> str:
        name = " ".join(name.replace("<", "").replace(">", "").split()) or "someone"
        text = f"<at>{name}</at>"
        entity = {"type": "mention", "text": text, "mentioned": {"id": person_id, "name": name}}
        if entity not in self.entities:
            self.entities.append(entity)
        return text

    def person(self, raw_id: str) -> str | None:
        """`<at>Name</at>` for a person id the core wrote, or None for an unknown one."""
        known = self.people(raw_id) if self.people is not None else None
        if known is not None:
            return self.tag(*known)
        if raw_id.startswith("29:"):
            return "someone"  # a Teams id we have no name for: never show the raw id
        return None


def escape(text: str) -> str:
    """User text for a TextBlock: Markdown markup characters escaped, `<at>` tags broken, list
    markers at the start of a line escaped; line breaks kept as Teams shows them."""
    text = _MARKUP.sub(r"\\\1", text)
    text = _AT_TAG.sub("<\u200b\\1", text)
    text = _LINE_START.sub(lambda m: f"{m.group(1)}{_escape_marker(m.group(2))}{m.group(3)}", text)
    return _breaks(text)


def _escape_marker(marker: str) -> str:
    return "\\" + marker if not marker[0].isdigit() else marker[:-1] + "\\" + marker[-1]


def _breaks(text: str) -> str:
    """Single line breaks as Teams shows them in a TextBlock (a blank line)."""
    return re.sub(r"\n+", "\n\n", text.strip("\n"))


# ---------------------------------------------------------------------- trusted Markdown


def markdown_to_teams(text: str, mentions: _Mentions) -> str:
    """Trusted Markdown → the Markdown subset Teams renders in a TextBlock."""
    marks: list[str] = []

    def mark(value: str) -> str:
        marks.append(value)
        return _MARK.format(len(marks) - 1)

    text = text.replace("\ue000", "").replace("\ue001", "")
    text = _SLACK_LINK.sub(lambda m: f"[{m.group(2) or m.group(1)}]({m.group(1)})", text)

    def slack_mention(match: re.Match[str]) -> str:
        target, label = match.group(1), match.group(2)
        person = mentions.person(target)
        return mark(person) if person else f"@{label or target}"

    text = _SLACK_MENTION.sub(slack_mention, text)

    def person(match: re.Match[str]) -> str:
        tag = mentions.person(match.group(1))
        return mark(tag) if tag else match.group(0)

    text = _PERSON_ID.sub(person, text)
    rendered = _render_blocks(_MD.parse(text))
    return _MARKED.sub(lambda m: marks[int(m.group(1))], rendered)


def _render_blocks(tokens: list[Token]) -> str:
    blocks: list[str] = []
    items: list[str] = []
    lists: list[tuple[str, int]] = []  # (kind, next number) per open list
    heading = False
    for token in tokens:
        kind = token.type
        if kind in ("bullet_list_open", "ordered_list_open"):
            start = int(token.attrGet("start") or 1)
            lists.append(("ol" if kind.startswith("ordered") else "ul", start))
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
            if not lists and items:
                blocks.append("\n".join(items))
                items = []
        elif kind == "heading_open":
            heading = True
        elif kind == "heading_close":
            heading = False
        elif kind == "inline":
            inline = _render_inline(token.children or [], in_list=bool(lists))
            if not inline.strip():
                continue
            if lists:
                list_kind, number = lists[-1]
                indent = "  " * (len(lists) - 1)
                if list_kind == "ol":
                    items.append(f"{indent}{number}. {inline}")
                    lists[-1] = (list_kind, number + 1)
                else:
                    items.append(f"{indent}- {inline}")
            elif heading:
                blocks.append(f"**{inline}**")
            else:
                blocks.append(inline)
        elif kind in ("fence", "code_block", "html_block"):
            lines = [escape(line) for line in token.content.rstrip("\n").split("\n")]
            blocks.append("\n\n".join(line for line in lines if line))
        elif kind == "hr":
            blocks.append("———")
    if items:
        blocks.append("\n".join(items))
    return "\n\n".join(block for block in blocks if block)


def _render_inline(children: list[Token], *, in_list: bool) -> str:
    out: list[str] = []
    links: list[str | None] = []
    for child in children:
        kind = child.type
        if kind == "text":
            out.append(_escape_inline(child.content))
        elif kind in ("softbreak", "hardbreak"):
            out.append(" " if in_list else "\n\n")
        elif kind == "code_inline":
            out.append(_escape_inline(child.content))
        elif kind in ("strong_open", "strong_close"):
            out.append("**")
        elif kind in ("em_open", "em_close"):
            # `*x*` is how the core (and Slack) write bold; `_x_` stays italic.
            out.append("**" if child.markup == "*" else "_")
        elif kind == "link_open":
            href = str(child.attrGet("href") or "")
            safe = href if _SAFE_URL.match(href) else None
            links.append(safe)
            if safe:
                out.append("[")
        elif kind == "link_close":
            target = links.pop() if links else None
            if target:
                out.append(f"]({_url(target)})")
        elif kind in ("image", "html_inline"):
            out.append(_escape_inline(child.content))
    return "".join(out).strip()


def _escape_inline(text: str) -> str:
    text = _MARKUP.sub(r"\\\1", text)
    return _AT_TAG.sub("<\u200b\\1", text)


def _url(url: str) -> str:
    """A link target that cannot end the Markdown link early."""
    return url.replace(" ", "%20").replace("(", "%28").replace(")", "%29")


# ---------------------------------------------------------------------- user text


def spans_to_teams(spans: tuple[Span, ...], mentions: _Mentions) -> str:
    """What a person wrote: plain text escaped, their links and mentions kept."""
    out: list[str] = []
    for span in spans:
        if isinstance(span, Link):
            label = span.label or span.url
            if _SAFE_URL.match(span.url):
                out.append(f"[{_escape_inline(label)}]({_url(span.url)})")
            else:
                out.append(escape(label))
        elif isinstance(span, Mention):
            tag = _mention_of(span, mentions)
            out.append(tag)
        else:
            out.append(escape_keep_edges(span))
    return "".join(out).strip()


def _mention_of(span: Mention, mentions: _Mentions) -> str:
    if _PERSON_ID.fullmatch(span.id):
        known = mentions.people(span.id) if mentions.people is not None else None
        if known is not None:
            return mentions.tag(*known)
        if span.label:
            return mentions.tag(span.id, span.label)
    return escape_keep_edges(f"@{span.label or span.id}")


def escape_keep_edges(text: str) -> str:
    """`escape` for a piece of a line: the spaces around it stay where they are."""
    text = _MARKUP.sub(r"\\\1", text)
    text = _AT_TAG.sub("<\u200b\\1", text)
    text = _LINE_START.sub(lambda m: f"{m.group(1)}{_escape_marker(m.group(2))}{m.group(3)}", text)
    return re.sub(r"\n+", "\n\n", text)


# ---------------------------------------------------------------------- the card


def _split(text: str, limit: int = BLOCK_CHARS) -> list[str]:
    """Text in pieces of at most `limit` characters, cut at paragraph, line or word ends,
    never inside a link or a mention tag."""
    pieces: list[str] = []
    while len(text) > limit:
        cut = max(text.rfind("\n\n", 0, limit), text.rfind(" ", 0, limit))
        if cut <= limit // 2:
            cut = limit
        for token in re.finditer(r"\[[^\]\n]*\]\([^)\s]*\)|<at>.*?</at>", text):
            if token.start() < cut < token.end():
                cut = token.start() if token.start() > 0 else token.end()
                break
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        pieces.append(text)
    return pieces


def _text_block(text: str, **extra: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **extra}


def _title(label: str) -> str:
    label = " ".join(label.split())
    return label if len(label) <= TITLE_CHARS else label[: TITLE_CHARS - 1] + "…"


def _action(button: Button) -> dict[str, Any] | None:
    if button.url:
        if not _SAFE_URL.match(button.url):
            return None
        return {"type": "Action.OpenUrl", "title": _title(button.label), "url": button.url}
    if button.action_id in DIALOGS:  # opens a dialog (task module) to write in
        return {
            "type": "Action.Submit",
            "title": _title(button.label),
            "data": {
                "msteams": {"type": "task/fetch"},
                "verb": button.action_id,
                "value": button.value,
            },
        }
    action: dict[str, Any] = {
        "type": "Action.Execute",
        "title": _title(button.label),
        "verb": button.action_id,
        "data": {"value": button.value},
    }
    if button.style == "primary":
        action["style"] = "positive"
    elif button.style == "danger":
        action["style"] = "destructive"
    return action


def _row(row: Row, number: int, mentions: _Mentions) -> dict[str, Any]:
    items: list[dict[str, Any]] = []
    if row.text:
        items.append(_text_block(markdown_to_teams(row.text, mentions) or " "))
    buttons: list[dict[str, Any]] = []
    for index, control in enumerate(row.controls):
        if isinstance(control, Button):
            action = _action(control)
            if action is not None:
                buttons.append(action)
            continue
        input_id = f"{control.action_id}.{number}.{index}"
        choices = [
            {"title": _title(choice.label), "value": str(position)}
            for position, choice in enumerate(control.options)
        ]
        values = [choice.value for choice in control.options]
        element: dict[str, Any] = {"type": "Input.ChoiceSet", "id": input_id, "choices": choices}
        if isinstance(control, Select):
            element["style"] = "compact"
            element["placeholder"] = _title(control.placeholder)
            if control.selected in values:
                element["value"] = str(values.index(control.selected))
        elif isinstance(control, Checkboxes):
            element["style"] = "expanded"
            element["isMultiSelect"] = True
            chosen = [str(values.index(v)) for v in control.selected if v in values]
            if chosen:
                element["value"] = ",".join(chosen)
        items.append(element)
        buttons.append(
            {
                "type": "Action.Execute",
                "title": "Save",
                "verb": control.action_id,
                "data": {
                    "input": input_id,
                    "options": values,
                    **({"multi": True} if isinstance(control, Checkboxes) else {}),
                },
            }
        )
    if buttons:
        items.append({"type": "ActionSet", "actions": buttons})
    return {"type": "Container", "items": items or [_text_block(" ")], "spacing": "Medium"}


@dataclass(frozen=True)
class Rendered:
    """A message as Teams shows it: the card and the activity that carries it."""

    card: dict[str, Any]
    summary: str

    def activity(self) -> dict[str, Any]:
        """A `message` activity with the card as its one attachment."""
        return {
            "type": "message",
            "summary": self.summary,
            "attachments": [{"contentType": CARD_TYPE, "content": self.card}],
        }


def to_card(message: Message, *, people: People | None = None) -> Rendered:
    """The Adaptive Card for a message: every part, row, small print and button, within the
    Bot Connector's size limit (text beyond it is cut with a note)."""
    mentions = _Mentions(people)
    text_blocks: list[dict[str, Any]] = []
    for part in message.parts:
        shown = _part(part, mentions)
        for piece in _split(shown):
            text_blocks.append(_text_block(piece))
    rows = [_row(row, number, mentions) for number, row in enumerate(message.rows)]
    context = [
        _text_block(markdown_to_teams(line, mentions) or " ", size="Small", isSubtle=True)
        for line in message.context
        if line.strip()
    ]
    if context:
        context[0]["spacing"] = "Medium"
    actions = [a for a in (_action(button) for button in message.buttons) if a is not None]
    # Images travel inside the card (Teams shows data: URIs in a bot's cards); one that does not
    # fit the activity's size limit is left out with a note rather than cutting the text.
    images = [
        {
            "type": "Image",
            "url": "data:image/png;base64," + base64.b64encode(image.png).decode("ascii"),
            "altText": image.alt[:1000],
            "size": "Stretch",
        }
        for image in message.images
    ]

    def build(blocks: list[dict[str, Any]]) -> dict[str, Any]:
        card: dict[str, Any] = {
            "type": "AdaptiveCard",
            "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
            "version": VERSION,
            "body": [*blocks, *images, *rows, *context] or [_text_block(" ")],
            "msteams": {"width": "Full"},
        }
        if actions:
            card["actions"] = actions
        if mentions.entities:
            card["msteams"]["entities"] = list(mentions.entities)
        return card

    card = build(text_blocks)
    if images and _size(card) > MAX_ACTIVITY_BYTES:
        images = [_text_block("_(the chart is too large for a Teams card: see the console)_")]
        card = build(text_blocks)
    while _size(card) > MAX_ACTIVITY_BYTES and text_blocks:
        text_blocks = text_blocks[:-1]
        note = _text_block("_(shortened: the full text is too long for Teams)_")
        card = build([*text_blocks, note])
    summary = message.summary or message.plain
    return Rendered(card, _plain_summary(summary))


def _part(part: Text, mentions: _Mentions) -> str:
    if part.trusted:
        return markdown_to_teams(part.body, mentions)
    if part.spans:
        return spans_to_teams(part.spans, mentions)
    return escape(part.body)


def _plain_summary(text: str) -> str:
    """A one-line notification text: Markdown and Slack-style tokens reduced to their words."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = _SLACK_LINK.sub(lambda m: m.group(2) or m.group(1), text)
    text = re.sub(r"^\s*(?:#+|[-+]|\d+[.)])\s+", "", text, flags=re.MULTILINE)
    text = re.sub(r"[*_`]|<[^<>]*>", "", text)
    text = " ".join(text.split())
    return text if len(text) <= SUMMARY_CHARS else text[: SUMMARY_CHARS - 1] + "…"


def _size(card: dict[str, Any]) -> int:
    return len(json.dumps(card, ensure_ascii=False).encode("utf-8"))


def comment_dialog(question: str, current: str, data: dict[str, Any]) -> dict[str, Any]:
    """The dialog (a task module's `continue` answer to `task/fetch`) for a free-text survey
    answer: the question, a text box holding the current answer, Save; `data` comes back with
    the text on `task/submit`."""
    card = {
        "type": "AdaptiveCard",
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "version": VERSION,
        "body": [
            _text_block(escape(question), weight="Bolder"),
            {
                "type": "Input.Text",
                "id": "comment",
                "isMultiline": True,
                "maxLength": COMMENT_CHARS,
                "value": current[:COMMENT_CHARS],
                "label": "Your comment",
            },
        ],
        "actions": [{"type": "Action.Submit", "title": "Save", "data": data}],
    }
    return {
        "task": {
            "type": "continue",
            "value": {
                "title": "Your comment",
                "height": "medium",
                "width": "medium",
                "card": {"contentType": CARD_TYPE, "content": card},
            },
        }
    }
