"""Text as Teams sends it, decoded once into the core's spans.

A message's `text` holds `<at>Name</at>` for each mention (the `mention` entities say who) and,
in channels, Teams' HTML (`<p>`, `<div>`, `<br>`, `<a href>`, `<b>`…) with entities
(`&amp;`, `&nbsp;`). `parse` keeps links as `Link`s and mentions of people as `Mention`s, drops
the bot's own mention, turns block tags into line breaks and everything else into plain text.
The renderer escapes the plain parts again on the way out, so nothing a person typed becomes a
link or a mention they did not make.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html.parser import HTMLParser

from bot.core.messages import Link, Mention, Span

_BLOCK = frozenset({"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote"})
_SAFE_LINK = re.compile(r"^(?:https?|mailto):", re.IGNORECASE)
_BARE_URL = re.compile(r"https?://[^\s<>\"']+[^\s<>\"'.,;:!?)\]]")


@dataclass(frozen=True)
class MentionEntity:
    """A `mention` entity of an activity: the `<at>…</at>` text and who it is."""

    text: str
    id: str
    name: str = ""


class _Reader(HTMLParser):
    def __init__(self, mentions: Sequence[MentionEntity], bot_id: str) -> None:
        super().__init__(convert_charrefs=True)
        self.spans: list[Span] = []
        self._mentions = list(mentions)
        self._bot_id = bot_id
        self._at: list[str] | None = None
        self._href: str | None = None
        self._label: list[str] = []

    def _add(self, span: Span) -> None:
        if isinstance(span, str):
            if not span:
                return
            if self.spans and isinstance(self.spans[-1], str):
                self.spans[-1] += span
                return
        self.spans.append(span)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "at":
            self._at = []
        elif tag == "a":
            self._href = dict(attrs).get("href") or ""
            self._label = []
        elif tag in _BLOCK and tag != "li":
            if tag == "br" or self.spans:
                self._text("\n")
        elif tag == "li":
            self._text("\n- ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self._text("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "at" and self._at is not None:
            label = "".join(self._at)
            self._at = None
            self._mention(label)
        elif tag == "a" and self._href is not None:
            href, label = self._href, "".join(self._label)
            self._href = None
            if _SAFE_LINK.match(href):
                self._add(Link(href, "" if label in ("", href) else label))
            else:
                self._add(label)
        elif tag in ("p", "div") and self.spans:
            self._text("\n")

    def handle_data(self, data: str) -> None:
        self._text(data)

    def _text(self, data: str) -> None:
        if self._at is not None:
            self._at.append(data)
        elif self._href is not None:
            self._label.append(data)
        else:
            self._add(data.replace("\xa0", " "))

    def _mention(self, label: str) -> None:
        # Teams writes one entity per <at>…</at>, in order; match on the tag's text.
        tag = f"<at>{label}</at>"
        for index, entity in enumerate(self._mentions):
            if entity.text == tag or (entity.text == "" and entity.name == label):
                del self._mentions[index]
                if entity.id == self._bot_id:
                    return  # the bot's own mention is how people address it, not content
                if entity.id.startswith(("19:", "28:")):  # a channel, team, tag or bot
                    self._add(f"@{label}")
                else:
                    self._add(Mention(entity.id, entity.name or label))
                return
        self._add(f"@{label}")  # an <at> with no entity pings nobody


def parse(
    text: str, mentions: Iterable[MentionEntity] = (), *, bot_id: str = ""
) -> tuple[Span, ...]:
    """Teams message text (plain with `<at>` tags, or HTML) → spans, adjacent strings merged,
    surrounding whitespace trimmed."""
    reader = _Reader(tuple(mentions), bot_id)
    reader.feed(text or "")
    reader.close()
    spans = [_links(span) if isinstance(span, str) else (span,) for span in reader.spans]
    flat: list[Span] = [piece for group in spans for piece in group]
    return _trim(_merge(flat))


def _links(text: str) -> tuple[Span, ...]:
    """Bare web addresses in plain text become links (Teams shows them as links too)."""
    out: list[Span] = []
    position = 0
    for match in _BARE_URL.finditer(text):
        out.append(text[position : match.start()])
        out.append(Link(match.group(0)))
        position = match.end()
    out.append(text[position:])
    return tuple(span for span in out if span != "")


def _merge(spans: list[Span]) -> list[Span]:
    merged: list[Span] = []
    for span in spans:
        if isinstance(span, str) and merged and isinstance(merged[-1], str):
            merged[-1] += span
        elif span != "":
            merged.append(span)
    return merged


def _trim(spans: list[Span]) -> tuple[Span, ...]:
    out = [re.sub(r"[ \t]*\n[ \t]*", "\n", s) if isinstance(s, str) else s for s in spans]
    out = [re.sub(r"\n{3,}", "\n\n", s) if isinstance(s, str) else s for s in out]
    if out and isinstance(out[0], str):
        out[0] = out[0].lstrip()
    if out and isinstance(out[-1], str):
        out[-1] = out[-1].rstrip()
    return tuple(span for span in out if span != "")
