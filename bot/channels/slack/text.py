"""Text as Slack sends it, decoded once.

Slack entity-encodes `&`, `<`, `>` in message text and writes links, mentions and broadcasts
as `<…>` tokens ("Formatting text for app surfaces"). `parse` turns that into the core's
spans: plain text with entities decoded, `Link`s and `Mention`s; broadcasts (`<!here>`,
`<!channel>`, `<!everyone>`) and user-group mentions become plain text, so relaying what
someone wrote can never ping a crowd. The renderer escapes the plain parts again on the way out.
"""

from __future__ import annotations

import re

from bot.core.messages import Link, Mention, Span, plain_text

_TOKEN = re.compile(r"<([^<>]*)>")
_USER = re.compile(r"^@([UW][A-Z0-9]+)(?:\|(.*))?$")
_CHANNEL = re.compile(r"^#([CG][A-Z0-9]+)(?:\|(.*))?$")
_SAFE_LINK = re.compile(r"^(?:https?|mailto):", re.IGNORECASE)


def decode_entities(text: str) -> str:
    """`&lt;`, `&gt;` and `&amp;` back to characters (`&amp;` last: decoded exactly once)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def parse(text: str) -> tuple[Span, ...]:
    """Slack's encoded text → spans (plain strings, links, mentions), adjacent strings merged."""
    spans: list[Span] = []

    def add(span: Span) -> None:
        if isinstance(span, str):
            if not span:
                return
            if spans and isinstance(spans[-1], str):
                spans[-1] += span
                return
        spans.append(span)

    position = 0
    for match in _TOKEN.finditer(text):
        add(decode_entities(text[position : match.start()]))
        add(_token(match.group(1)))
        position = match.end()
    add(decode_entities(text[position:]))
    return tuple(spans)


def _token(inner: str) -> Span:
    user = _USER.match(inner)
    if user:
        return Mention(user.group(1), decode_entities(user.group(2) or ""))
    channel = _CHANNEL.match(inner)
    if channel:
        return Mention(channel.group(1), decode_entities(channel.group(2) or ""))
    target, _, label = inner.partition("|")
    label = decode_entities(label)
    if inner.startswith("!"):
        # <!here>, <!channel>, <!everyone>, <!subteam^S…|@group>, <!date^…|fallback>
        special = target[1:].split("^", 1)[0]
        if label:
            return label if label.startswith("@") or special == "date" else f"@{label}"
        return f"@{special}"
    url = decode_entities(target)
    if _SAFE_LINK.match(url):
        return Link(url, label)
    return label or url


def question(text: str, *, bot_user_id: str = "") -> str:
    """What someone asked, as plain text for matching: the bot's own mention left out."""
    spans = tuple(
        span for span in parse(text) if not (isinstance(span, Mention) and span.id == bot_user_id)
    )
    return " ".join(plain_text(spans).split())
