"""An Adaptive Card (the JSON the Teams sender posts) drawn as HTML in Teams' look, for the
console's previews.

It takes the real card (`TeamsChat.render(message).card`) and draws what Teams would show:
text blocks (Teams' Markdown subset: bold, italic, lists, links; `<at>` mentions), containers,
fact sets, choice sets and the action buttons. Everything is escaped; only http(s), mailto and
msteams links become links. Nothing here imports the Teams packages.
"""

from __future__ import annotations

import html
import json
import re
from typing import Any

from markdown_it import MarkdownIt
from markupsafe import Markup

_SAFE_URL = re.compile(r"^(?:https?|mailto|msteams):[^\s<>\"]*$", re.IGNORECASE)
_MENTION = re.compile(r"&lt;at&gt;(.*?)&lt;/at&gt;", re.IGNORECASE)
_MD = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False}).disable(
    ["image", "code", "fence", "html_block", "html_inline", "heading", "lheading", "table"],
    ignoreInvalid=True,
)


def _link_open(self: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
    href = str(tokens[idx].attrGet("href") or "")
    if not _SAFE_URL.match(href):
        tokens[idx].meta["unsafe"] = True
        return '<span class="tm-link">'
    return (
        f'<a class="tm-link" href="{html.escape(href)}" rel="noopener noreferrer" target="_blank">'
    )


def _link_close(self: Any, tokens: list[Any], idx: int, options: Any, env: Any) -> str:
    # the matching opener is the nearest link_open before this one at the same level
    level = tokens[idx].level
    for before in range(idx - 1, -1, -1):
        token = tokens[before]
        if token.type == "link_open" and token.level == level:
            return "</span>" if token.meta.get("unsafe") else "</a>"
    return "</a>"


_MD.add_render_rule("link_open", _link_open)
_MD.add_render_rule("link_close", _link_close)


def text_html(text: str) -> Markup:
    """A TextBlock's text (Teams' Markdown) as safe HTML."""
    rendered = _MD.render(text, {})
    rendered = _MENTION.sub(r'<span class="tm-mention">\1</span>', rendered)
    return Markup(rendered)  # markdown-it escapes all text; raw HTML is off


def _classes(element: dict[str, Any], base: str) -> str:
    names = [base]
    if element.get("size"):
        names.append(f"tm-size-{str(element['size']).lower()}")
    if element.get("weight"):
        names.append(f"tm-weight-{str(element['weight']).lower()}")
    if element.get("isSubtle"):
        names.append("tm-subtle")
    if element.get("spacing"):
        names.append(f"tm-spacing-{str(element['spacing']).lower()}")
    return " ".join(html.escape(name) for name in names)


def _action(action: dict[str, Any]) -> str:
    title = html.escape(str(action.get("title") or ""))
    style = str(action.get("style") or "")
    kind = f" tm-button-{html.escape(style)}" if style in {"positive", "destructive"} else ""
    url = str(action.get("url") or "")
    if action.get("type") == "Action.OpenUrl" and _SAFE_URL.match(url):
        return (
            f'<a class="tm-button{kind}" href="{html.escape(url)}" rel="noopener noreferrer" '
            f'target="_blank">{title}</a>'
        )
    return f'<span class="tm-button{kind}" aria-disabled="true">{title}</span>'


def _actions(actions: list[Any]) -> str:
    items = "".join(_action(a) for a in actions if isinstance(a, dict))
    return f'<div class="tm-actions">{items}</div>' if items else ""


def _choices(element: dict[str, Any]) -> str:
    choices = [c for c in element.get("choices") or [] if isinstance(c, dict)]
    chosen = set(str(element.get("value") or "").split(","))
    if element.get("style") == "expanded" or element.get("isMultiSelect"):
        mark = "☑" if element.get("isMultiSelect") else "◉"
        empty = "☐" if element.get("isMultiSelect") else "○"
        items = "".join(
            f"<li>{mark if str(c.get('value')) in chosen else empty} "
            f"{html.escape(str(c.get('title') or ''))}</li>"
            for c in choices
        )
        return f'<ul class="tm-choices">{items}</ul>'
    picked = next((c for c in choices if str(c.get("value")) in chosen), None)
    shown = picked.get("title") if picked else element.get("placeholder") or "Select"
    return f'<span class="tm-select" aria-disabled="true">{html.escape(str(shown))} ▾</span>'


def _elements(elements: list[Any]) -> str:
    out: list[str] = []
    for element in elements:
        if not isinstance(element, dict):
            continue
        kind = element.get("type")
        if kind == "TextBlock":
            text = str(element.get("text") or "")
            out.append(f'<div class="{_classes(element, "tm-text")}">{text_html(text)}</div>')
        elif kind == "RichTextBlock":
            runs = "".join(
                html.escape(str(r.get("text") if isinstance(r, dict) else r))
                for r in element.get("inlines") or []
            )
            out.append(f'<div class="{_classes(element, "tm-text")}"><p>{runs}</p></div>')
        elif kind == "FactSet":
            facts = "".join(
                f"<dt>{text_html(str(f.get('title') or ''))}</dt>"
                f"<dd>{text_html(str(f.get('value') or ''))}</dd>"
                for f in element.get("facts") or []
                if isinstance(f, dict)
            )
            out.append(f'<dl class="tm-facts">{facts}</dl>')
        elif kind == "Container":
            inner = _elements(element.get("items") or [])
            out.append(f'<div class="{_classes(element, "tm-container")}">{inner}</div>')
        elif kind == "ColumnSet":
            columns = "".join(
                f'<div class="tm-column">{_elements(c.get("items") or [])}</div>'
                for c in element.get("columns") or []
                if isinstance(c, dict)
            )
            out.append(f'<div class="tm-columns">{columns}</div>')
        elif kind == "ActionSet":
            out.append(_actions(element.get("actions") or []))
        elif kind == "Input.ChoiceSet":
            out.append(_choices(element))
        elif kind == "Image":
            alt = html.escape(str(element.get("altText") or "image"))
            out.append(f'<p class="tm-subtle">[{alt}]</p>')
    return "".join(out)


def card_html(card: dict[str, Any]) -> Markup:
    """The card's body and actions as HTML in Teams' look."""
    body = _elements(card.get("body") or [])
    return Markup(body + _actions(card.get("actions") or []))  # built from escaped pieces


def card_json(card: dict[str, Any]) -> str:
    """The card as the JSON the sender posts, indented for reading."""
    return json.dumps(card, indent=2, ensure_ascii=False)
