"""A core `Message` as HTML in Slack's look, for the console's previews.

It renders the Block Kit the bot would post (`bot.channels.slack.render.to_payload`), so the
preview shows what Slack gets: mrkdwn bold, italics, links and mentions, small print, buttons.
Everything is escaped; only http(s) and mailto links become links.
"""

from __future__ import annotations

import html
import re
from typing import Any

from markupsafe import Markup

from bot.channels.slack.render import to_payload
from bot.core.messages import Message

_TOKEN = re.compile(r"<([^<>\n]*)>")
_SAFE_URL = re.compile(r"^(?:https?|mailto):", re.IGNORECASE)
_STYLES = (
    (re.compile(r"```(.+?)```", re.S), "pre"),
    (re.compile(r"`([^`\n]+)`"), "code"),
    (re.compile(r"(?<![\w*])\*(?!\s)([^*\n]+?)(?<!\s)\*(?![\w*])"), "strong"),
    (re.compile(r"(?<![\w_])_(?!\s)([^_\n]+?)(?<!\s)_(?![\w_])"), "em"),
    (re.compile(r"(?<![\w~])~(?!\s)([^~\n]+?)(?<!\s)~(?![\w~])"), "s"),
)


def _text(raw: str) -> str:
    """Plain mrkdwn text (Slack-escaped) as HTML with Slack's inline styles."""
    out = html.escape(html.unescape(raw), quote=False)
    for pattern, tag in _STYLES:
        out = pattern.sub(rf"<{tag}>\1</{tag}>", out)
    return out.replace("\n", "<br>")


def _token(inner: str, names: dict[str, str]) -> str:
    target, _bar, label = inner.partition("|")
    if target.startswith("@"):
        who = names.get(target[1:], target[1:])
        return f'<span class="sk-mention">@{html.escape(who)}</span>'
    if target.startswith("#"):
        return f'<span class="sk-mention">#{html.escape(html.unescape(label or target[1:]))}</span>'
    if target.startswith("!"):
        return html.escape(f"@{target[1:]}")
    url = html.unescape(target)
    shown = html.escape(html.unescape(label or target), quote=False)
    if not _SAFE_URL.match(url):
        return shown
    return f'<a href="{html.escape(url)}" rel="noopener noreferrer" target="_blank">{shown}</a>'


def mrkdwn_to_html(text: str, names: dict[str, str] | None = None) -> Markup:
    """Slack mrkdwn as safe HTML; `names` shows user mentions by name."""
    parts: list[str] = []
    position = 0
    for match in _TOKEN.finditer(text):
        parts.append(_text(text[position : match.start()]))
        parts.append(_token(match.group(1), names or {}))
        position = match.end()
    parts.append(_text(text[position:]))
    return Markup("".join(parts))  # every piece above is escaped


def _element(element: dict[str, Any]) -> str:
    kind = element.get("type")
    if kind == "button":
        label = html.escape(element["text"]["text"])
        style = f" sk-button-{element['style']}" if element.get("style") else ""
        url = element.get("url")
        if url and _SAFE_URL.match(url):
            return (
                f'<a class="sk-button{style}" href="{html.escape(url)}" rel="noopener '
                f'noreferrer" target="_blank">{label}</a>'
            )
        return f'<span class="sk-button{style}" aria-disabled="true">{label}</span>'
    if kind == "static_select":
        chosen = (element.get("initial_option") or {}).get("text", {}).get("text")
        shown = chosen or element.get("placeholder", {}).get("text", "")
        return f'<span class="sk-select" aria-disabled="true">{html.escape(shown)} ▾</span>'
    if kind == "checkboxes":
        picked = {o["value"] for o in element.get("initial_options") or []}
        items = "".join(
            f"<li>{'☑' if o['value'] in picked else '☐'} {html.escape(o['text']['text'])}</li>"
            for o in element.get("options", [])
        )
        return f'<ul class="sk-checkboxes">{items}</ul>'
    return ""


def blocks_to_html(blocks: list[dict[str, Any]], names: dict[str, str] | None = None) -> Markup:
    """Block Kit sections, context and actions as HTML."""
    out: list[str] = []
    for block in blocks:
        kind = block.get("type")
        if kind == "section":
            text = mrkdwn_to_html(block["text"]["text"], names)
            out.append(f'<div class="sk-section">{text}</div>')
        elif kind == "context":
            items = " ".join(
                f"<span>{mrkdwn_to_html(e.get('text', ''), names)}</span>"
                for e in block["elements"]
            )
            out.append(f'<div class="sk-context">{items}</div>')
        elif kind == "actions":
            items = "".join(_element(e) for e in block["elements"])
            out.append(f'<div class="sk-actions">{items}</div>')
    return Markup("".join(out))  # built from escaped pieces


def message_html(message: Message, names: dict[str, str] | None = None) -> Markup:
    """The message as Slack would show it (the blocks the bot would post)."""
    return blocks_to_html(to_payload(message)["blocks"], names)
