"""Audiences: every kind, the union, who is left out and why, CSV lists, batching and errors."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bot.core.announcements.audience import (
    LOOKUP_LIMIT,
    NOT_IN_CHANNEL,
    Audience,
    AudienceError,
    Directory,
    DirectoryError,
    Excluded,
    Person,
    read_emails,
    resolve,
)


def person(user_id: str, **fields: object) -> Person:
    name = str(fields.pop("name", user_id.lower()))
    values: dict[str, object] = {
        "id": user_id,
        "name": name,
        "first_name": name.title(),
        "tz": "Europe/London",
        "email": f"{name}@example.com",
    }
    values.update(fields)
    return Person(**values)  # type: ignore[arg-type]


@dataclass
class FakeDirectory:
    """An in-memory directory that records every call and can be told to fail."""

    people: list[Person]
    channels: dict[str, list[str]] = field(default_factory=dict)
    groups: dict[str, list[str]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    outside: set[str] = field(default_factory=set)  # channels the bot is not in

    def _record(self, method: str) -> None:
        self.calls.append(method)
        if method in self.failures:
            raise DirectoryError(self.failures[method], f"fake {method} failed")

    def everyone(self) -> Iterator[Person]:
        self._record("everyone")
        yield from self.people

    def channel_members(self, channel: str) -> list[str]:
        self._record("channel_members")
        if channel not in self.channels:
            raise DirectoryError("channel_not_found")
        return list(self.channels[channel])

    def group_members(self, group: str) -> list[str]:
        self._record("group_members")
        if group not in self.groups:
            raise DirectoryError("no_such_subteam")
        return list(self.groups[group])

    def person(self, user_id: str) -> Person | None:
        self._record("person")
        return next((p for p in self.people if p.id == user_id), None)

    def by_email(self, email: str) -> Person | None:
        self._record("by_email")
        return next((p for p in self.people if p.email == email), None)

    def can_post(self, channel: str) -> bool:
        self._record("can_post")
        return channel not in self.outside

    def count(self, method: str) -> int:
        return Counter(self.calls)[method]


ALICE = person("U1", name="alice")
BOB = person("U2", name="bob")
CHIKA = person("U3", name="chika", tz=None)
GUEST = person("U4", name="gil", guest=True)
BOT = person("UBOT", name="mobilize", is_bot=True, email=None)
SLACKBOT = person("USLACKBOT", name="slackbot", is_bot=True, email=None)
GONE = person("U9", name="dana", deleted=True)
PEOPLE = [ALICE, BOB, CHIKA, GUEST, BOT, SLACKBOT, GONE]


@pytest.fixture
def directory() -> FakeDirectory:
    return FakeDirectory(
        people=list(PEOPLE),
        channels={"C1": ["U2", "U1", "UBOT", "U4"], "C2": ["U3", "U2"]},
        groups={"S1": ["U3", "U9", "U4"]},
    )


def ids(audience: Audience) -> list[str]:
    return [p.id for p in audience.people]


def run(parts: list[str], directory: Directory, tmp_path: Path, **kwargs: bool) -> Audience:
    return resolve(parts, directory, content_dir=tmp_path, **kwargs)


# ---------------------------------------------------------------------------- each kind


def test_everyone_is_every_active_human(directory: FakeDirectory, tmp_path: Path) -> None:
    audience = run(["everyone"], directory, tmp_path)
    assert ids(audience) == ["U1", "U2", "U3"]
    assert audience.channels == ()
    assert set(audience.excluded) == {
        Excluded("U4", "guest"),
        Excluded("UBOT", "bot"),
        Excluded("USLACKBOT", "bot"),
        Excluded("U9", "deactivated"),
    }
    assert audience.size == 3
    assert directory.calls == ["everyone"]


def test_everyone_plus_guests_keeps_guests(directory: FakeDirectory, tmp_path: Path) -> None:
    audience = run(["everyone + guests"], directory, tmp_path)
    assert ids(audience) == ["U1", "U2", "U3", "U4"]
    assert Excluded("U4", "guest") not in audience.excluded


def test_include_guests_keeps_guests_of_everyone(directory: FakeDirectory, tmp_path: Path) -> None:
    assert ids(run(["everyone"], directory, tmp_path, include_guests=True)) == [
        "U1",
        "U2",
        "U3",
        "U4",
    ]


def test_channel_is_posted_in_once_without_member_lookups(
    directory: FakeDirectory, tmp_path: Path
) -> None:
    audience = run(["channel:C1", "channel:C2", "channel:C1"], directory, tmp_path)
    assert audience.channels == ("C1", "C2")
    assert audience.people == ()
    assert audience.size == 2
    assert directory.calls == ["can_post", "can_post"]  # membership only, once per channel


def test_members_of_a_channel_leave_out_bots_and_guests(
    directory: FakeDirectory, tmp_path: Path
) -> None:
    audience = run(["members:C1"], directory, tmp_path)
    assert ids(audience) == ["U1", "U2"]
    assert audience.excluded == (Excluded("U4", "guest"), Excluded("UBOT", "bot"))
    assert directory.count("channel_members") == 1
    assert directory.count("person") == 4
    assert directory.count("everyone") == 0


def test_members_with_include_guests(directory: FakeDirectory, tmp_path: Path) -> None:
    assert ids(run(["members:C1"], directory, tmp_path, include_guests=True)) == [
        "U1",
        "U2",
        "U4",
    ]


def test_group_members_leave_out_deactivated(directory: FakeDirectory, tmp_path: Path) -> None:
    audience = run(["group:S1"], directory, tmp_path)
    assert ids(audience) == ["U3"]
    assert audience.excluded == (Excluded("U4", "guest"), Excluded("U9", "deactivated"))


def test_users_named_explicitly_include_guests(directory: FakeDirectory, tmp_path: Path) -> None:
    audience = run(["users:U4,U1,UBOT,U9,UNOPE,U1"], directory, tmp_path)
    assert ids(audience) == ["U1", "U4"]
    assert audience.excluded == (
        Excluded("U9", "deactivated"),
        Excluded("UBOT", "bot"),
        Excluded("UNOPE", "not found"),
    )
    assert directory.count("person") == 5  # U1 once


def test_person_fields_come_through(directory: FakeDirectory, tmp_path: Path) -> None:
    (chika,) = run(["users:U3"], directory, tmp_path).people
    assert chika == CHIKA
    assert chika.tz is None


# ---------------------------------------------------------------------------- union


def test_union_messages_each_person_once(directory: FakeDirectory, tmp_path: Path) -> None:
    audience = run(["members:C1", "members:C2", "group:S1", "channel:C7"], directory, tmp_path)
    assert ids(audience) == ["U1", "U2", "U3"]
    assert audience.channels == ("C7",)
    assert audience.size == 4
    # U2 is in both channels but looked up once.
    assert directory.count("person") == len({"U2", "U1", "UBOT", "U4", "U3", "U9"})


def test_a_guest_left_out_by_one_part_is_in_when_another_names_them(
    directory: FakeDirectory, tmp_path: Path
) -> None:
    audience = run(["members:C1", "users:U4"], directory, tmp_path)
    assert ids(audience) == ["U1", "U2", "U4"]
    assert audience.excluded == (Excluded("UBOT", "bot"),)


def test_everyone_answers_every_other_lookup(directory: FakeDirectory, tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("alice@example.com\nnobody@example.com\n")
    audience = run(
        ["everyone", "members:C1", "users:U1,UNOPE", "emails:list.csv"], directory, tmp_path
    )
    assert ids(audience) == ["U1", "U2", "U3"]
    assert Excluded("UNOPE", "not found") in audience.excluded
    assert Excluded("nobody@example.com", "not found") in audience.excluded
    assert directory.count("everyone") == 1
    assert directory.count("person") == directory.count("by_email") == 0


def test_many_lookups_list_everyone_once_instead(tmp_path: Path) -> None:
    people = [person(f"U{n:05d}") for n in range(LOOKUP_LIMIT * 3)]
    directory = FakeDirectory(people=people, channels={"CBIG": [p.id for p in people]})
    audience = run(["members:CBIG", "users:UGHOST"], directory, tmp_path)
    assert len(audience.people) == LOOKUP_LIMIT * 3
    assert audience.excluded == (Excluded("UGHOST", "not found"),)
    assert directory.calls == ["channel_members", "everyone"]


def test_up_to_the_limit_people_are_looked_up_one_by_one(tmp_path: Path) -> None:
    people = [person(f"U{n:05d}") for n in range(LOOKUP_LIMIT)]
    directory = FakeDirectory(people=people, channels={"C1": [p.id for p in people]})
    assert run(["members:C1"], directory, tmp_path).size == LOOKUP_LIMIT
    assert directory.count("person") == LOOKUP_LIMIT
    assert directory.count("everyone") == 0


# ---------------------------------------------------------------------------- emails


def test_emails_with_a_header_row(directory: FakeDirectory, tmp_path: Path) -> None:
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "pilot.csv").write_text(
        "Name,Email,Team\n"
        "Alice, ALICE@Example.com ,Ops\n"
        "Gil,gil@example.com,Ops\n"
        ",,\n"
        "Mobilize,mobilize@example.com,\n"
        "Dup,alice@example.com,Ops\n"
        "Typo,alice-at-example.com,Ops\n"
        "Ghost,ghost@example.com,Ops\n"
        "Short\n",
        encoding="utf-8",
    )
    audience = run(["emails:lists/pilot.csv"], directory, tmp_path)
    assert ids(audience) == ["U1", "U4"]  # a guest named on a list is included
    assert audience.excluded == (
        Excluded("alice-at-example.com", "invalid email"),
        Excluded("ghost@example.com", "not found"),
        Excluded("mobilize@example.com", "not found"),
    )
    assert directory.count("by_email") == 4  # alice once


def test_emails_single_column_without_header(directory: FakeDirectory, tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text(
        "\ufeffbob@example.com\n\n  chika@example.com\r\nnot an email\n"
    )
    audience = run(["emails:list.csv"], directory, tmp_path)
    assert ids(audience) == ["U2", "U3"]
    assert audience.excluded == (Excluded("not an email", "invalid email"),)


def test_emails_semicolon_separated(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("name;email\nBob;bob@example.com\n")
    assert read_emails(tmp_path, "list.csv") == (["bob@example.com"], [])


def test_emails_of_a_deactivated_person(directory: FakeDirectory, tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("email\ndana@example.com\n")
    audience = run(["emails:list.csv"], directory, tmp_path)
    assert audience.people == ()
    assert audience.excluded == (Excluded("U9", "deactivated"),)


def test_emails_file_with_several_columns_and_no_email_header(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text("alice,alice@example.com\n")
    with pytest.raises(AudienceError, match="email column") as caught:
        run(["emails:list.csv"], FakeDirectory(people=[]), tmp_path)
    assert caught.value.code == "no_email_column"
    assert caught.value.part == "emails:list.csv"


def test_emails_file_missing(tmp_path: Path) -> None:
    directory = FakeDirectory(people=[])
    with pytest.raises(AudienceError, match=r"^emails:nope\.csv: no such file") as caught:
        run(["everyone", "emails:nope.csv"], directory, tmp_path)
    assert caught.value.code == "file_not_found"
    assert directory.calls == []  # files are read before anyone is asked


def test_emails_file_outside_the_content_folder(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (tmp_path / "secret.csv").write_text("a@example.com\n")
    (content / "link.csv").symlink_to(tmp_path / "secret.csv")
    with pytest.raises(AudienceError) as caught:
        resolve(["emails:link.csv"], FakeDirectory(people=[]), content_dir=content)
    assert caught.value.code == "invalid_path"


def test_an_empty_emails_file_is_nobody(tmp_path: Path) -> None:
    (tmp_path / "empty.csv").write_text("email\n")
    assert run(["emails:empty.csv"], FakeDirectory(people=[]), tmp_path) == Audience()


# ---------------------------------------------------------------------------- summary


def test_summary_counts_people_channels_and_reasons() -> None:
    audience = Audience(
        channels=("C1",),
        people=tuple(person(f"U{n:05d}") for n in range(9812)),
        excluded=(
            *(Excluded(f"B{n}", "bot") for n in range(120)),
            *(Excluded(f"D{n}", "deactivated") for n in range(61)),
            *(Excluded(f"G{n}", "guest") for n in range(7)),
            *(Excluded(f"N{n}", "not found") for n in range(2)),
        ),
    )
    assert audience.summary() == (
        "9,812 people, 1 channel; left out: 120 bots, 61 deactivated, 7 guests, 2 not found"
    )


def test_summary_singular_and_empty_forms() -> None:
    one = Audience(
        people=(ALICE,),
        excluded=(Excluded("U4", "guest"), Excluded("x", "invalid email")),
    )
    assert one.summary() == "1 person; left out: 1 guest, 1 invalid email"
    assert Audience(channels=("C1", "C2")).summary() == "2 channels"
    assert Audience().summary() == "0 people"


def test_summary_of_a_resolved_audience(directory: FakeDirectory, tmp_path: Path) -> None:
    audience = run(["everyone", "channel:C1", "users:UNOPE"], directory, tmp_path)
    assert audience.summary() == (
        "3 people, 1 channel; left out: 2 bots, 1 deactivated, 1 guest, 1 not found"
    )


# ---------------------------------------------------------------------------- errors


def test_unknown_channel_names_the_part(directory: FakeDirectory, tmp_path: Path) -> None:
    with pytest.raises(DirectoryError) as caught:
        run(["everyone", "members:C404"], directory, tmp_path)
    assert caught.value.code == "channel_not_found"
    assert caught.value.part == "members:C404"
    assert str(caught.value) == (
        "members:C404: listing the channel's members failed: channel_not_found"
    )


def test_unknown_group_names_the_part(directory: FakeDirectory, tmp_path: Path) -> None:
    with pytest.raises(DirectoryError, match=r"^group:S404: .*no_such_subteam") as caught:
        run(["group:S404"], directory, tmp_path)
    assert caught.value.code == "no_such_subteam"


def test_listing_failure_names_the_part(directory: FakeDirectory, tmp_path: Path) -> None:
    directory.failures["everyone"] = "ratelimited"
    with pytest.raises(DirectoryError, match=r"^everyone\+guests: .*ratelimited") as caught:
        run(["everyone+guests"], directory, tmp_path)
    assert caught.value.code == "ratelimited"


def test_lookup_failure_names_the_part_and_who(directory: FakeDirectory, tmp_path: Path) -> None:
    directory.failures["person"] = "missing_scope"
    with pytest.raises(DirectoryError, match=r"^users:U2: looking up U2 failed: missing_scope"):
        run(["users:U2"], directory, tmp_path)
    directory.failures["by_email"] = "missing_scope"
    (tmp_path / "list.csv").write_text("bob@example.com\n")
    with pytest.raises(DirectoryError, match=r"^emails:list\.csv: looking up bob@example"):
        run(["emails:list.csv"], directory, tmp_path)


def test_invalid_audience_text(directory: FakeDirectory, tmp_path: Path) -> None:
    with pytest.raises(AudienceError, match="channel id") as caught:
        run(["members:#general"], directory, tmp_path)
    assert caught.value.code == "invalid_audience"
    assert not isinstance(caught.value, DirectoryError)


def test_a_channel_the_bot_is_not_in_is_left_out_with_the_fix(tmp_path: Path) -> None:
    directory = FakeDirectory(people=[], outside={"C9"})
    audience = resolve(["channel:C1", "channel:C9"], directory, content_dir=tmp_path)
    assert audience.channels == ("C1",)
    assert audience.excluded == (Excluded("C9", NOT_IN_CHANNEL),)
    assert audience.summary() == "1 channel; left out: 1 channel the bot is not in"
