"""Block Kit for a core `Message`, built with slack_sdk's models so Slack's limits are checked.

Trusted Markdown from content files becomes mrkdwn; user text is escaped (`&`, `<`, `>`), so
nobody can make the bot post `@channel`, `<!here>` or a disguised link.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

from slack_sdk.models.blocks import (
    ActionsBlock,
    Block,
    ButtonElement,
    CheckboxesElement,
    ContextBlock,
    InteractiveElement,
    MarkdownTextObject,
    Option,
    SectionBlock,
    StaticSelectElement,
)

from bot.core.messages import Button, Control, Link, Mention, Message, Select, Span, Text

SECTION_LIMIT = 3000  # characters of text in one section block
CONTEXT_LIMIT = 10  # elements in one context block
ACTIONS_LIMIT = 25  # elements in one actions block
BLOCKS_LIMIT = 50  # blocks in one message
BUTTON_TEXT = 75
OPTION_TEXT = 75  # characters of an option's or placeholder's text
TEXT_LIMIT = 3000  # of the notification/fallback text we send

# Slack tokens we allow in trusted text: user and channel mentions and links. Never <!…>.
_SLACK_TOKEN = re.compile(
    r"<(?:@[UW][A-Z0-9]+|#[CG][A-Z0-9]+(?:\|[^<>]*)?|(?:https?|mailto):[^<>|\s]+(?:\|[^<>]*)?)>"
)
_MD_LINK = re.compile(r"\[([^\]\n]+)\]\(((?:https?|mailto):[^)\s]+)\)")
_MD_BOLD = re.compile(r"\*\*(.+?)\*\*|__(.+?)__")
_MD_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*$", re.MULTILINE)
_MD_BULLET = re.compile(r"^(\s*)[-*+]\s+", re.MULTILINE)


def escape(text: str) -> str:
    """Escape user text for mrkdwn: `&`, `<` and `>` only (not HTML entities for quotes)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def markdown_to_mrkdwn(text: str) -> str:
    """Trusted Markdown → Slack mrkdwn, keeping only safe Slack tokens (mentions, links)."""
    kept: list[str] = []
    text = text.replace("\x00", "")  # the placeholder marker below must not occur in the input

    def keep(token: str) -> str:
        kept.append(token)
        return f"\x00{len(kept) - 1}\x00"

    text = _SLACK_TOKEN.sub(lambda m: keep(m.group(0)), text)
    text = _MD_LINK.sub(
        lambda m: keep(f"<{m.group(2)}|{escape(m.group(1)).replace('|', '¦')}>"), text
    )
    text = escape(text)
    text = _MD_BOLD.sub(lambda m: f"*{m.group(1) or m.group(2)}*", text)
    text = _MD_HEADING.sub(lambda m: f"*{m.group(1)}*", text)
    text = _MD_BULLET.sub(lambda m: f"{m.group(1)}• ", text)
    return re.sub("\x00(\\d+)\x00", lambda m: kept[int(m.group(1))], text)


# What a cut must not fall inside: an entity (`&amp;`) or a Slack token (`<url|label>`).
_UNSPLITTABLE = re.compile(r"&(?:amp|lt|gt);|<[^<>\n]*>")


def split_text(text: str, limit: int = SECTION_LIMIT) -> list[str]:
    """Cut text into pieces of at most `limit` characters, at paragraph, line or word ends,
    never inside an entity or a Slack token."""
    pieces: list[str] = []
    while len(text) > limit:
        cut = max(
            text.rfind("\n\n", 0, limit), text.rfind("\n", 0, limit), text.rfind(" ", 0, limit)
        )
        if cut <= limit // 2:
            cut = limit
        for token in _UNSPLITTABLE.finditer(text, max(0, cut - limit), cut + 1):
            if token.start() < cut < token.end() and token.start() > 0:
                cut = token.start()
                break
        pieces.append(text[:cut].rstrip())
        text = text[cut:].lstrip()
    if text:
        pieces.append(text)
    return pieces


def _plain(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def spans_to_mrkdwn(spans: tuple[Span, ...]) -> str:
    """Chat text with its links and mentions; everything else escaped."""
    out: list[str] = []
    for span in spans:
        if isinstance(span, Link):
            url = span.url.replace("&", "&amp;")
            if _SAFE_URL.match(span.url) and not any(c in span.url for c in "<>| \n"):
                label = escape(span.label).replace("|", "¦")
                out.append(f"<{url}|{label}>" if span.label else f"<{url}>")
            else:
                out.append(escape(span.label or span.url))
        elif isinstance(span, Mention):
            if re.fullmatch(r"[UW][A-Z0-9]+", span.id):
                out.append(f"<@{span.id}>")
            elif re.fullmatch(r"[CG][A-Z0-9]+", span.id):
                out.append(f"<#{span.id}>")
            else:
                out.append(escape(f"@{span.label or span.id}"))
        else:
            out.append(escape(span))
    return "".join(out)


_SAFE_URL = re.compile(r"^(?:https?|mailto):", re.IGNORECASE)


def _mrkdwn(part: Text) -> str:
    if part.trusted:
        return markdown_to_mrkdwn(part.body)
    return spans_to_mrkdwn(part.spans) if part.spans else escape(part.body)


def to_blocks(message: Message) -> list[Block]:
    """Block Kit blocks for a message, every limit respected (long text split, extras dropped)."""
    blocks: list[Block] = []
    for part in message.parts:
        # verbatim: Slack links nothing in what a person wrote that they did not link.
        for piece in split_text(_mrkdwn(part)):
            shown = MarkdownTextObject(text=piece, verbatim=None if part.trusted else True)
            blocks.append(SectionBlock(text=shown))
    for number, row in enumerate(message.rows):
        if row.text:
            text = _plain(markdown_to_mrkdwn(row.text), SECTION_LIMIT)
            blocks.append(SectionBlock(text=MarkdownTextObject(text=text)))
        controls = [
            _control(control, f"{number}.{index}")
            for index, control in enumerate(row.controls[:ACTIONS_LIMIT])
        ]
        if controls:
            blocks.append(ActionsBlock(elements=controls))
    if message.context:
        small_print = [
            MarkdownTextObject(text=_plain(markdown_to_mrkdwn(line), SECTION_LIMIT))
            for line in message.context[:CONTEXT_LIMIT]
        ]
        blocks.append(ContextBlock(elements=small_print))
    if message.buttons:
        buttons = [
            _control(button, str(index))
            for index, button in enumerate(message.buttons[:ACTIONS_LIMIT])
        ]
        blocks.append(ActionsBlock(elements=buttons))
    if len(blocks) > BLOCKS_LIMIT:
        blocks = [
            *blocks[: BLOCKS_LIMIT - 2],
            SectionBlock(text=MarkdownTextObject(text="…")),
            blocks[-1],
        ]
    for block in blocks:
        block.validate_json()
    return blocks


def _control(control: Control, suffix: str) -> InteractiveElement:
    """A Block Kit element; the suffix keeps action ids unique within one message."""
    action_id = f"{control.action_id}:{suffix}"
    if isinstance(control, Button):
        return ButtonElement(
            text=_plain(control.label, BUTTON_TEXT),
            action_id=action_id,
            value=control.value[:2000] if not control.url else None,
            url=control.url,
            style=control.style,
        )
    options = [
        Option(text=_plain(c.label, OPTION_TEXT), value=c.value[:150]) for c in control.options
    ]
    if isinstance(control, Select):
        chosen = [
            o for o, c in zip(options, control.options, strict=True) if c.value == control.selected
        ]
        return StaticSelectElement(
            placeholder=_plain(control.placeholder, OPTION_TEXT),
            action_id=action_id,
            options=options[:100],
            initial_option=chosen[0] if chosen else None,
        )
    chosen = [
        o for o, c in zip(options, control.options, strict=True) if c.value in control.selected
    ]
    return CheckboxesElement(
        action_id=action_id, options=options[:10], initial_options=chosen or None
    )


def to_payload(message: Message) -> dict[str, Any]:
    """`text` and `blocks` arguments for chat.postMessage / chat.update."""
    text = markdown_to_mrkdwn(message.summary) if message.summary else escape(message.plain)
    return {
        "text": _plain(text or " ", TEXT_LIMIT),
        "blocks": [block.to_dict() for block in to_blocks(message)],
    }


def action_id_of(raw: str) -> str:
    """The core's action id from a Block Kit one (`faq.pick:2` → `faq.pick`)."""
    return raw.split(":", 1)[0]


def preview_blocks_url(payload_blocks: list[dict[str, Any]]) -> str:
    """A link that opens `blocks` (as in `to_payload(message)["blocks"]`) in Block Kit Builder."""
    data = json.dumps({"blocks": payload_blocks}, separators=(",", ":"), ensure_ascii=False)
    return "https://app.slack.com/block-kit-builder/#" + urllib.parse.quote(data)
