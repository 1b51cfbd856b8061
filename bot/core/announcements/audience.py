"""Audiences: turn an announcement's `to:` (see `plan.parse_audience`) into channels and people.

`resolve()` takes the audience parts and a `Directory` (the port a chat platform implements,
e.g. `bot.channels.slack.directory.SlackDirectory`) and returns an `Audience`: the channels to
post in once, the people to message directly (each once, sorted by id) and who was left out
and why::

    audience = resolve(["everyone", "channel:C0123ABCD"], directory, content_dir=Path("."))
    audience.summary()  # "9,812 people, 1 channel; left out: 120 bots, 61 deactivated, 7 guests"

Who is in:

- `everyone`: every active human in the workspace; bots (Slackbot too), deactivated accounts
  and guests are left out. `everyone+guests` keeps the guests.
- `channel:C…`: the channel itself, posted in once (its members are not looked up).
- `members:C…` and `group:S…`: each active human member; guests are left out like for
  `everyone` unless `include_guests=True`.
- `users:U…,U…` and `emails:path.csv`: the people named. Guests named this way are included:
  naming someone is a deliberate choice. Bots and deactivated accounts are still left out.

The audience is the union of its parts: someone in two parts is messaged once, and someone
left out by one part but included by another (a guest in `members:C…` and in `users:…`) is in.

Lookups are batched: when `everyone` is a part, its listing answers every other lookup; when
more than `LOOKUP_LIMIT` people would be looked up one by one, the workspace is listed once
instead. Once listed, the listing is authoritative: an id or email not in it is "not found"
(people from other organisations in a shared channel are not in a workspace's listing).

`emails:` files are CSV, relative to the content folder: a header row with an `email` column
(any case; other columns are ignored), or a single column without a header. Addresses are
trimmed and lower-cased; blank rows are skipped; a malformed address is left out as
"invalid email". Commas separate columns; a file whose first line has no comma but a `;` or a
tab uses that instead.

Errors: `AudienceError` when a part is not a valid audience or its CSV cannot be used;
`DirectoryError` (a subclass) when the directory fails, with the platform's error `code`
(`channel_not_found`, `no_such_subteam`, `ratelimited`…) and a message naming the part.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

from bot.core.announcements.plan import parse_audience
from bot.core.platforms import PLATFORMS, platform_of

# More individual lookups than this and the whole workspace is listed once instead: a listing
# page holds up to 1,000 people, one lookup holds one.
LOOKUP_LIMIT = 50
T = TypeVar("T")

BOT = "bot"
DEACTIVATED = "deactivated"
GUEST = "guest"
NOT_FOUND = "not found"
INVALID_EMAIL = "invalid email"
NOT_IN_CHANNEL = "bot not in channel"
NO_APP = "app not installed"  # Teams: the person has not installed the app (and the
# deployment does not install it for them: TEAMS_INSTALL_FOR_USERS)
ELSEWHERE = "on another platform"  # reached on the platform they are on first (by email)
# What to do about a channel the bot cannot post in.
INVITE_HINT = "type /invite @Mobilize in each channel the bot is not in"
# The order reasons appear in `Audience.summary()`, with their singular and plural forms.
REASONS: dict[str, tuple[str, str]] = {
    BOT: ("bot", "bots"),
    DEACTIVATED: ("deactivated", "deactivated"),
    GUEST: ("guest", "guests"),
    NOT_FOUND: ("not found", "not found"),
    INVALID_EMAIL: ("invalid email", "invalid emails"),
    NOT_IN_CHANNEL: ("channel the bot is not in", "channels the bot is not in"),
    NO_APP: ("without the Teams app", "without the Teams app"),
    ELSEWHERE: ("reached on another platform", "reached on another platform"),
}

_EMAIL_HEADERS = frozenset({"email", "e-mail", "email address", "e-mail address"})
_EMAIL = re.compile(r"[^@\s,;<>\"']+@[^@\s,;<>\"']+\.[^@\s,;<>\"'.][^@\s,;<>\"']*")


@dataclass(frozen=True)
class Person:
    """Someone in the workspace, as the directory describes them."""

    id: str
    name: str
    first_name: str
    tz: str | None
    email: str | None
    is_bot: bool = False
    deleted: bool = False
    guest: bool = False
    no_app: bool = False  # Teams: cannot be messaged until the app is installed for them

    @property
    def platform(self) -> str:
        return platform_of(self.id)


class Directory(Protocol):
    """Who is in the workspace: the port a chat platform implements for `resolve()`.

    Every method raises `DirectoryError` when the platform fails.
    """

    def everyone(self) -> Iterable[Person]:
        """Every member of the workspace, bots, guests and deactivated accounts included."""
        ...

    def channel_members(self, channel: str) -> list[str]:
        """The user ids of a channel's members."""
        ...

    def group_members(self, group: str) -> list[str]:
        """The user ids of a user group's members."""
        ...

    def person(self, user_id: str) -> Person | None:
        """One person by id; None when there is no such user."""
        ...

    def by_email(self, email: str) -> Person | None:
        """One person by email address; None when no user has it."""
        ...

    def can_post(self, channel: str) -> bool:
        """Whether the bot may post in the channel (it is a member of it)."""
        ...


class Directories:
    """Several platforms' directories as one (a deployment on Slack and Teams): each id goes to
    its platform's directory (`bot.core.platforms.platform_of`), `everyone` is everyone on
    each, and an email address is looked up on each platform in `PLATFORMS` order."""

    def __init__(self, directories: Mapping[str, Directory]) -> None:
        self.directories = {name: directories[name] for name in PLATFORMS if name in directories}

    def _of(self, identifier: str) -> Directory:
        platform = platform_of(identifier)
        directory = self.directories.get(platform)
        if directory is None:
            raise DirectoryError(
                "platform_not_connected", f"{identifier}: {platform} is not connected"
            )
        return directory

    def everyone(self) -> Iterable[Person]:
        for directory in self.directories.values():
            yield from directory.everyone()

    def channel_members(self, channel: str) -> list[str]:
        return self._of(channel).channel_members(channel)

    def group_members(self, group: str) -> list[str]:
        return self._of(group).group_members(group)

    def person(self, user_id: str) -> Person | None:
        return self._of(user_id).person(user_id)

    def by_email(self, email: str) -> Person | None:
        for directory in self.directories.values():
            found = directory.by_email(email)
            if found is not None:
                return found
        return None

    def can_post(self, channel: str) -> bool:
        return self._of(channel).can_post(channel)


class AudienceError(Exception):
    """An audience that cannot be resolved; `code` says why in one word, the message in full."""

    def __init__(self, code: str, message: str = "", *, part: str | None = None) -> None:
        super().__init__(message or code)
        self.code = code
        self.part = part


class DirectoryError(AudienceError):
    """The directory (Slack…) failed; `code` is the platform's own error code."""


@dataclass(frozen=True)
class Excluded:
    """Someone an audience part named but who is left out: `who` is a user id (or the email
    address when no user has it), `reason` one of bot, deactivated, guest, not found,
    invalid email."""

    who: str
    reason: str


@dataclass(frozen=True)
class Audience:
    """Where an announcement goes: each channel once, then each person by direct message."""

    channels: tuple[str, ...] = ()
    people: tuple[Person, ...] = ()
    excluded: tuple[Excluded, ...] = ()

    @property
    def size(self) -> int:
        """How many messages one send takes."""
        return len(self.channels) + len(self.people)

    def summary(self) -> str:
        """One line for a preview or report, e.g.
        "9,812 people, 1 channel; left out: 120 bots, 61 deactivated, 7 guests, 2 not found"."""
        reached: list[str] = []
        if self.people or not self.channels:
            reached.append(_count(len(self.people), "person", "people"))
        if self.channels:
            reached.append(_count(len(self.channels), "channel", "channels"))
        text = ", ".join(reached)
        counts = {reason: 0 for reason in REASONS}
        for excluded in self.excluded:
            counts[excluded.reason] = counts.get(excluded.reason, 0) + 1
        left_out = [
            _count(n, *REASONS.get(reason, (reason, reason))) for reason, n in counts.items() if n
        ]
        return f"{text}; left out: {', '.join(left_out)}" if left_out else text


def _count(n: int, singular: str, plural: str) -> str:
    return f"{n:,} {singular if n == 1 else plural}"


# ---------------------------------------------------------------------------- resolving


def resolve(
    parts: Sequence[str],
    directory: Directory,
    *,
    content_dir: Path,
    include_guests: bool = False,
) -> Audience:
    """The union of `parts` (audience texts, as in `to:`), resolved through `directory`.

    `include_guests` keeps guests found through `everyone`, `members:` and `group:` too.
    Raises AudienceError for a bad part or CSV, DirectoryError when a lookup fails.
    """
    sources = [_source(part, content_dir) for part in parts]
    book = _Book(directory)

    for source in sources:
        if source.kind == "members":
            source.ids = _ask(
                source.part, "listing the channel's members", directory.channel_members, source.arg
            )
        elif source.kind == "group":
            source.ids = _ask(
                source.part, "listing the user group's members", directory.group_members, source.arg
            )

    listing_parts = [s.part for s in sources if s.kind == "everyone"]
    if listing_parts:
        book.list_everyone(", ".join(listing_parts), "listing the workspace's members")
    ids = _first_part(sources, lambda s: s.ids)
    emails = _first_part(sources, lambda s: s.emails)
    if not book.listed:
        wanted = len(ids) + len(emails)
        if wanted > LOOKUP_LIMIT:
            why = ", ".join(dict.fromkeys(ids.values()) | dict.fromkeys(emails.values()))
            book.list_everyone(
                why, f"listing the workspace's members (to look up {wanted:,} people)"
            )
        else:
            for user_id, part in ids.items():
                book.look_up_id(user_id, part)
            for email, part in emails.items():
                book.look_up_email(email, part)

    chosen: dict[str, Person] = {}
    excluded: dict[str, str] = {}

    def consider(person: Person, guests_welcome: bool) -> None:
        reason = _reason(person, guests_welcome)
        if reason is None:
            chosen[person.id] = person
        else:
            excluded.setdefault(person.id, reason)

    channels: list[str] = []
    for source in sources:
        guests_welcome = include_guests or source.guests_welcome
        if source.kind == "channel":
            if source.arg in channels or source.arg in excluded:
                continue
            if _ask(source.part, "looking up the channel", directory.can_post, source.arg):
                channels.append(source.arg)
            else:
                excluded[source.arg] = NOT_IN_CHANNEL
        elif source.kind == "everyone":
            for person in book.everyone:
                consider(person, guests_welcome)
        for user_id in source.ids:
            found = book.by_id.get(user_id)
            if found is None:
                excluded.setdefault(user_id, NOT_FOUND)
            else:
                consider(found, guests_welcome)
        for email in source.emails:
            found = book.by_email.get(email)
            if found is None:
                excluded.setdefault(email, NOT_FOUND)
            else:
                consider(found, guests_welcome)
        for text in source.invalid:
            excluded.setdefault(text, INVALID_EMAIL)

    for duplicate in _reached_elsewhere(chosen.values()):
        del chosen[duplicate]
        excluded[duplicate] = ELSEWHERE
    return Audience(
        channels=tuple(channels),
        people=tuple(chosen[key] for key in sorted(chosen)),
        excluded=tuple(
            Excluded(who, reason) for who, reason in sorted(excluded.items()) if who not in chosen
        ),
    )


def _reached_elsewhere(people: Iterable[Person]) -> list[str]:
    """The ids of people who are in the audience on two platforms (the same email address):
    each is reached once, on the platform that comes first in `PLATFORMS`."""
    by_email: dict[str, list[Person]] = {}
    for person in people:
        if person.email:
            by_email.setdefault(person.email.strip().lower(), []).append(person)
    drop: list[str] = []
    for same in by_email.values():
        if len({person.platform for person in same}) < 2:
            continue  # two accounts on one platform are two accounts
        first = min(same, key=lambda person: (PLATFORMS.index(person.platform), person.id))
        drop += [person.id for person in same if person.platform != first.platform]
    return drop


def _reason(person: Person, guests_welcome: bool) -> str | None:
    if person.deleted:
        return DEACTIVATED
    if person.is_bot:
        return BOT
    if person.guest and not guests_welcome:
        return GUEST
    if person.no_app:
        return NO_APP
    return None


@dataclass
class _Source:
    """One audience part, with what it names once read."""

    part: str
    kind: str
    arg: str = ""
    guests_welcome: bool = False
    ids: list[str] = field(default_factory=list)
    emails: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)


def _source(text: str, content_dir: Path) -> _Source:
    try:
        part = parse_audience(text)
    except ValueError as exc:
        raise AudienceError("invalid_audience", str(exc), part=text) from exc
    if part in ("everyone", "everyone+guests"):
        return _Source(part, "everyone", guests_welcome=part == "everyone+guests")
    kind, _, arg = part.partition(":")
    source = _Source(part, kind, arg, guests_welcome=kind in ("users", "emails"))
    if kind == "users":
        source.ids = list(dict.fromkeys(arg.split(",")))
    elif kind == "emails":
        source.emails, source.invalid = read_emails(content_dir, arg, part=part)
    return source


def _first_part(sources: list[_Source], names: Callable[[_Source], list[str]]) -> dict[str, str]:
    """Each id (or email) to the first part that names it, in order."""
    found: dict[str, str] = {}
    for source in sources:
        for key in names(source):
            found.setdefault(key, source.part)
    return found


def _ask(part: str, doing: str, method: Callable[[str], T], arg: str) -> T:
    """Call a directory method, naming `part` in any DirectoryError."""
    try:
        return method(arg)
    except DirectoryError as exc:
        raise _named(exc, part, doing) from exc


def _named(exc: DirectoryError, part: str, doing: str) -> DirectoryError:
    return DirectoryError(exc.code, f"{part}: {doing} failed: {exc.code}", part=part)


class _Book:
    """The people looked up so far, by id and by lower-cased email."""

    def __init__(self, directory: Directory) -> None:
        self.directory = directory
        self.listed = False
        self.everyone: list[Person] = []
        self.by_id: dict[str, Person] = {}
        self.by_email: dict[str, Person] = {}

    def add(self, person: Person) -> None:
        self.by_id[person.id] = person
        if person.email:
            self.by_email.setdefault(person.email.strip().lower(), person)

    def list_everyone(self, part: str, doing: str) -> None:
        try:
            everyone = list(self.directory.everyone())
        except DirectoryError as exc:
            raise _named(exc, part, doing) from exc
        self.listed = True
        self.everyone = everyone
        for person in everyone:
            self.add(person)

    def look_up_id(self, user_id: str, part: str) -> None:
        if user_id in self.by_id:
            return
        try:
            person = self.directory.person(user_id)
        except DirectoryError as exc:
            raise _named(exc, part, f"looking up {user_id}") from exc
        if person is not None:
            self.add(person)
            self.by_id.setdefault(user_id, person)  # found under the id asked for, whatever it says

    def look_up_email(self, email: str, part: str) -> None:
        if email in self.by_email:
            return
        try:
            person = self.directory.by_email(email)
        except DirectoryError as exc:
            raise _named(exc, part, f"looking up {email}") from exc
        if person is not None:
            self.add(person)
            self.by_email.setdefault(email, person)


# ---------------------------------------------------------------------------- email lists


def read_emails(content_dir: Path, relative: str, *, part: str = "") -> tuple[list[str], list[str]]:
    """The addresses in an `emails:` CSV, as (valid, invalid), each unique and lower-cased,
    in file order. Raises AudienceError when the file is missing, unreadable, outside
    `content_dir`, or has several columns and none named `email`."""
    part = part or f"emails:{relative}"
    root = content_dir.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise AudienceError(
            "invalid_path", f"{part}: the file is outside the content folder", part=part
        )
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise AudienceError("file_not_found", f"{part}: no such file {path}", part=part) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AudienceError("unreadable_file", f"{part}: cannot read: {exc}", part=part) from exc

    first_line = next((line for line in text.splitlines() if line.strip()), "")
    delimiter = ","
    if "," not in first_line:
        delimiter = ";" if ";" in first_line else "\t" if "\t" in first_line else ","
    rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if any(row)]
    if not rows:
        return [], []
    header = [cell.strip().lower() for cell in rows[0]]
    named = [i for i, cell in enumerate(header) if cell in _EMAIL_HEADERS]
    if named:
        column = named[0]
        rows = rows[1:]
    elif len(header) == 1:
        column = 0
    else:
        raise AudienceError(
            "no_email_column",
            f"{part}: the first row needs an email column header, like: name,email "
            f"(or give a single column of addresses); found {','.join(rows[0])!r}",
            part=part,
        )

    valid: dict[str, None] = {}
    invalid: dict[str, None] = {}
    for row in rows:
        address = row[column].strip().lower() if column < len(row) else ""
        if not address:
            continue
        if _EMAIL.fullmatch(address):
            valid[address] = None
        else:
            invalid[address] = None
    return list(valid), list(invalid)
