"""Platform-free messages and interactions. Renderers turn a `Message` into Block Kit or text.

Text is either *trusted* Markdown written by the rollout team (content files), or *user* text
that renderers escape so nobody can make the bot post `@channel` or a fake link.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from bot.core.platforms import platform_of

# Action ids: "<area>.<verb>"; listeners route on them, the core handles them.
FAQ_HELPFUL = "faq.helpful"
FAQ_NOT_HELPFUL = "faq.not_helpful"
FAQ_HUMAN = "faq.human"
FAQ_PICK = "faq.pick"
FAQ_NONE = "faq.none"
FAQ_RELATED = "faq.related"
FAQ_APPROVE = "faq.approve"
ANNOUNCE_ACK = "announce.ack"
CONSOLE_OPEN = "console.open"  # an admin asks for a one-time console link
ANNOUNCE_LINK = "announce.link"  # link buttons: Slack still reports the click
SUPPORT_CLAIM = "support.claim"
SUPPORT_RESOLVE = "support.resolve"
SUPPORT_SAVE = "support.save_faq"

USER_ID = re.compile(r"^[UW][A-Z0-9]{1,20}$")


@dataclass(frozen=True)
class Link:
    """A link someone wrote in chat: shown as a link, its label as plain text."""

    url: str
    label: str = ""


@dataclass(frozen=True)
class Mention:
    """A mention of a person (`U…`) or a channel (`C…`/`G…`) someone wrote in chat."""

    id: str
    label: str = ""


# Chat text as the platform sent it, decoded: plain strings, links and mentions. Broadcasts
# (@here, @channel, @everyone) arrive as plain strings, so they can never ping anyone.
Span = str | Link | Mention


@dataclass(frozen=True)
class Text:
    """A paragraph: trusted Markdown from content files, or user text to be escaped. User
    text from chat keeps its links and mentions in `spans` (`body` is its plain form)."""

    body: str
    trusted: bool = True
    spans: tuple[Span, ...] = ()


@dataclass(frozen=True)
class Button:
    label: str
    action_id: str
    value: str = ""
    url: str | None = None
    style: Literal["primary", "danger"] | None = None


@dataclass(frozen=True)
class Choice:
    label: str
    value: str


@dataclass(frozen=True)
class Select:
    """A drop-down: pick one of many."""

    placeholder: str
    action_id: str
    options: tuple[Choice, ...]
    selected: str | None = None


@dataclass(frozen=True)
class Checkboxes:
    """Pick any of a few (at most 10)."""

    action_id: str
    options: tuple[Choice, ...]
    selected: tuple[str, ...] = ()


Control = Button | Select | Checkboxes


@dataclass(frozen=True)
class Row:
    """A line of a form: a text (trusted Markdown) and the controls that answer it."""

    text: str
    controls: tuple[Control, ...] = ()


@dataclass(frozen=True)
class Image:
    """A picture that goes with a message (a PNG): a chart in a results DM, say. Platforms
    show it as they can (Slack: a file shared in the same conversation; Teams: in the card)."""

    png: bytes
    alt: str  # what it shows, for screen readers and where images are off
    name: str = "chart.png"


@dataclass(frozen=True)
class Message:
    """What the bot says: paragraphs, form rows, small print, buttons, images, and a one-line
    notification text."""

    parts: tuple[Text, ...]
    context: tuple[str, ...] = ()
    buttons: tuple[Button, ...] = ()
    summary: str = ""
    rows: tuple[Row, ...] = ()
    images: tuple[Image, ...] = ()

    @property
    def plain(self) -> str:
        """Every paragraph as plain text (the terminal and notification fallback)."""
        return "\n\n".join(part.body for part in self.parts)


def say(
    *parts: str | Text,
    context: tuple[str, ...] = (),
    buttons: tuple[Button, ...] = (),
    summary: str = "",
    rows: tuple[Row, ...] = (),
) -> Message:
    """Build a Message; plain strings are trusted Markdown."""
    texts = tuple(part if isinstance(part, Text) else Text(part) for part in parts)
    first = next((text.body for text in texts if text.trusted), "")
    return Message(
        texts, context=context, buttons=buttons, summary=summary or first[:150], rows=rows
    )


def user_text(body: str | tuple[Span, ...]) -> Text:
    """Text a person wrote: shown exactly as written (escaped), links and mentions kept."""
    if isinstance(body, str):
        return Text(body, trusted=False)
    return Text(plain_text(body), trusted=False, spans=body)


def plain_text(spans: tuple[Span, ...]) -> str:
    """Chat text as plain text: links by their label (or address), mentions as `@label`."""
    out: list[str] = []
    for span in spans:
        if isinstance(span, Link):
            out.append(span.label or span.url)
        elif isinstance(span, Mention):
            out.append(f"@{span.label or span.id}")
        else:
            out.append(span)
    return "".join(out)


def markdown_of(spans: tuple[Span, ...]) -> str:
    """Chat text as content-file Markdown (a draft FAQ answer keeps its links)."""
    out: list[str] = []
    for span in spans:
        if isinstance(span, Link):
            out.append(f"[{span.label or span.url}]({span.url})" if span.label else span.url)
        elif isinstance(span, Mention):
            out.append(f"<@{span.id}>" if USER_ID.match(span.id) else f"#{span.label or span.id}")
        else:
            out.append(span)
    return "".join(out)


@dataclass(frozen=True)
class Address:
    """Where a message goes: a conversation, maybe a thread, maybe seen by one user only."""

    channel: str
    thread_ts: str | None = None
    only_for: str | None = None  # a user id: an ephemeral message


@dataclass(frozen=True)
class Posted:
    channel: str
    ts: str


@dataclass(frozen=True)
class Interaction:
    """A button click or similar, translated from the platform."""

    action_id: str
    value: str
    user_id: str
    channel_id: str = ""
    message_ts: str = ""
    thread_ts: str = ""
    extra: dict[str, str] = field(default_factory=dict)


class Chat(Protocol):
    """The port the core talks to; each platform (Slack, the terminal) implements it."""

    def post(self, address: Address, message: Message) -> Posted | None: ...

    def update(self, posted: Posted, message: Message) -> None: ...

    def permalink(self, channel: str, ts: str) -> str | None: ...


class Chats:
    """Several platforms' `Chat`s as one: each address goes to its platform's (a deployment on
    Slack and Teams posts reports, notices and relays where each person is)."""

    def __init__(self, chats: Mapping[str, Chat]) -> None:
        self.chats = dict(chats)

    def of(self, identifier: str) -> Chat | None:
        return self.chats.get(platform_of(identifier))

    def post(self, address: Address, message: Message) -> Posted | None:
        chat = self.of(address.channel)
        return chat.post(address, message) if chat is not None else None

    def update(self, posted: Posted, message: Message) -> None:
        chat = self.of(posted.channel)
        if chat is not None:
            chat.update(posted, message)

    def permalink(self, channel: str, ts: str) -> str | None:
        chat = self.of(channel)
        return chat.permalink(channel, ts) if chat is not None else None
