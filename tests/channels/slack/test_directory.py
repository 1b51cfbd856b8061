"""SlackDirectory against the loopback Slack: paging, lookups, field mapping and errors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bot.channels.slack.directory import SlackDirectory, to_person
from bot.core.announcements.audience import DirectoryError, Excluded, Person, resolve
from tests.slack.fake_slack import FakeSlack

WORKSPACE = 2500
PAGE = 300


def _kind(n: int) -> dict[str, Any]:
    if n % 50 == 0:
        return {"is_bot": True}
    if n % 40 == 0:
        return {"deleted": True}
    if n % 25 == 0:
        return {"is_restricted": True}
    if n % 35 == 0:
        return {"is_ultra_restricted": True}
    return {}


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    # Loosened: these tests page a small workspace in 300-user pages to count the calls;
    # at Slack's Tier 2 (20 users.list calls a minute) each would wait for minutes.
    # test_tier_2_users_list_is_paced_by_retries keeps the limit on.
    with FakeSlack(loosen={"rate_limits"}) as fake:
        for n in range(WORKSPACE):
            fake.add_user(f"U{n:05d}", name=f"user{n}", real_name=f"User {n}", **_kind(n))
        # Slack lists Slackbot as a user with is_bot false.
        fake.add_user("USLACKBOT", name="slackbot", real_name="Slackbot", profile={"email": None})
        fake.channel_members["CALL"] = [f"U{n:05d}" for n in range(WORKSPACE)]
        fake.channel_members["CSMALL"] = ["U1", "U2", "UBOT", "U00025"]
        fake.usergroup_members["S1"] = ["U3", "U9", "U00035", "UNOPE"]
        yield fake


@pytest.fixture
def directory(slack: FakeSlack) -> SlackDirectory:
    return SlackDirectory(slack.client(), page_size=PAGE)


def active_humans(slack: FakeSlack, *, guests: bool = False) -> set[str]:
    return {
        user["id"]
        for user in slack.users.values()
        if not user["deleted"]
        and not user["is_bot"]
        and user["id"] != "USLACKBOT"
        and (guests or not (user["is_restricted"] or user["is_ultra_restricted"]))
    }


def test_everyone_pages_through_users_list(slack: FakeSlack, directory: SlackDirectory) -> None:
    people = list(directory.everyone())
    assert len(people) == len({p.id for p in people}) == len(slack.users) == WORKSPACE + 6
    calls = slack.calls_to("users.list")
    assert len(calls) == math.ceil(len(slack.users) / PAGE)
    assert {int(call.params["limit"]) for call in calls} == {PAGE}
    assert "cursor" not in calls[0].params
    assert all(call.params.get("cursor") for call in calls[1:])


def test_resolve_everyone(slack: FakeSlack, directory: SlackDirectory, tmp_path: Path) -> None:
    audience = resolve(["everyone"], directory, content_dir=tmp_path)
    expected = active_humans(slack)
    assert [p.id for p in audience.people] == sorted(expected)
    reasons = {e.who: e.reason for e in audience.excluded}
    assert reasons["USLACKBOT"] == reasons["UBOT"] == reasons["U00050"] == "bot"
    assert reasons["U9"] == reasons["U00040"] == "deactivated"
    assert reasons["U00025"] == reasons["U00035"] == "guest"
    assert len(audience.people) + len(audience.excluded) == len(slack.users)
    assert audience.summary().startswith(f"{len(expected):,} people; left out: ")
    with_guests = resolve(["everyone+guests"], directory, content_dir=tmp_path)
    assert {p.id for p in with_guests.people} == active_humans(slack, guests=True)


def test_members_of_a_big_channel_list_the_workspace_once(
    slack: FakeSlack, directory: SlackDirectory, tmp_path: Path
) -> None:
    audience = resolve(["members:CALL"], directory, content_dir=tmp_path)
    assert {p.id for p in audience.people} == active_humans(slack) & set(
        slack.channel_members["CALL"]
    )
    members_calls = slack.calls_to("conversations.members")
    assert len(members_calls) == math.ceil(WORKSPACE / 1000)
    assert {int(call.params["limit"]) for call in members_calls} == {1000}
    assert len(slack.calls_to("users.list")) == math.ceil(len(slack.users) / PAGE)
    assert slack.calls_to("users.info") == []


def test_members_of_a_small_channel_are_looked_up_one_by_one(
    slack: FakeSlack, directory: SlackDirectory, tmp_path: Path
) -> None:
    audience = resolve(["members:CSMALL"], directory, content_dir=tmp_path)
    assert [p.id for p in audience.people] == ["U1", "U2"]
    assert audience.excluded == (Excluded("U00025", "guest"), Excluded("UBOT", "bot"))
    assert len(slack.calls_to("users.info")) == 4
    assert slack.calls_to("users.list") == []


def test_group_members(slack: FakeSlack, directory: SlackDirectory, tmp_path: Path) -> None:
    audience = resolve(["group:S1"], directory, content_dir=tmp_path)
    assert [p.id for p in audience.people] == ["U3"]
    assert audience.excluded == (
        Excluded("U00035", "guest"),
        Excluded("U9", "deactivated"),
        Excluded("UNOPE", "not found"),
    )
    assert [c.params["usergroup"] for c in slack.calls_to("usergroups.users.list")] == ["S1"]


def test_emails(slack: FakeSlack, directory: SlackDirectory, tmp_path: Path) -> None:
    (tmp_path / "pilot.csv").write_text(
        "name,email\nAlice,Alice@Example.com\nGuest,user25@example.com\nGhost,ghost@example.com\n"
    )
    audience = resolve(["emails:pilot.csv"], directory, content_dir=tmp_path)
    assert [p.id for p in audience.people] == ["U00025", "U1"]
    assert audience.excluded == (Excluded("ghost@example.com", "not found"),)
    looked_up = [c.params["email"] for c in slack.calls_to("users.lookupByEmail")]
    assert looked_up == ["alice@example.com", "user25@example.com", "ghost@example.com"]


def test_unknown_channel(directory: SlackDirectory, tmp_path: Path) -> None:
    with pytest.raises(DirectoryError) as caught:
        directory.channel_members("C404")
    assert caught.value.code == "channel_not_found"
    with pytest.raises(DirectoryError, match=r"^members:C404: .*channel_not_found") as caught:
        resolve(["members:C404"], directory, content_dir=tmp_path)
    assert caught.value.code == "channel_not_found"
    assert caught.value.part == "members:C404"


def test_unknown_group(directory: SlackDirectory) -> None:
    with pytest.raises(DirectoryError) as caught:
        directory.group_members("S404")
    assert caught.value.code == "no_such_subteam"


def test_unknown_person_and_email_are_none(directory: SlackDirectory) -> None:
    assert directory.person("UNOPE") is None
    assert directory.by_email("nobody@example.com") is None
    found = directory.by_email("bob@example.com")
    assert found is not None and found.id == "U2"


def test_other_slack_errors_raise_with_slacks_code(
    slack: FakeSlack, directory: SlackDirectory
) -> None:
    slack.fail("users.info", "missing_scope")
    with pytest.raises(DirectoryError) as caught:
        directory.person("U1")
    assert caught.value.code == "missing_scope"
    slack.fail("users.lookupByEmail", "missing_scope")
    with pytest.raises(DirectoryError):
        directory.by_email("bob@example.com")


def test_rate_limit_left_over_after_retries_is_ratelimited(
    slack: FakeSlack, directory: SlackDirectory
) -> None:
    # The directory's client has no 429 retry handler, so the first 429 surfaces.
    slack.rate_limit("users.list")
    with pytest.raises(DirectoryError) as caught:
        list(directory.everyone())
    assert caught.value.code == "ratelimited"


def test_a_failure_on_a_later_page_raises(slack: FakeSlack, directory: SlackDirectory) -> None:
    people = directory.everyone()
    for _ in range(PAGE):
        next(people)
    slack.fail("users.list", "internal_error")
    with pytest.raises(DirectoryError) as caught:
        list(people)
    assert caught.value.code == "internal_error"


def test_person_fields(slack: FakeSlack, directory: SlackDirectory) -> None:
    assert directory.person("U1") == Person(
        id="U1",
        name="alice",
        first_name="Alice",
        tz="Europe/London",
        email="alice@example.com",
    )
    bot = directory.person("UBOT")
    assert bot is not None and bot.is_bot and bot.email is None
    slackbot = directory.person("USLACKBOT")
    assert slackbot is not None and slackbot.is_bot
    gone = directory.person("U9")
    assert gone is not None and gone.deleted
    guest = directory.person("U00035")
    assert guest is not None and guest.guest


def test_to_person_fallbacks() -> None:
    bare = to_person(
        {
            "id": "U7",
            "name": "jdoe",
            "real_name": "Jo Doe",
            "profile": {"display_name": "", "first_name": "", "real_name": "Jo Doe"},
        }
    )
    assert (bare.name, bare.first_name, bare.tz, bare.email) == ("Jo Doe", "Jo", None, None)
    nameless = to_person({"id": "U8", "name": "x9", "profile": {}})
    assert (nameless.name, nameless.first_name) == ("x9", "x9")


def test_tier_2_users_list_is_paced_by_retries(tmp_path: Path) -> None:
    """With Slack's real tiers on, the bot's client (which honours Retry-After) lists a
    workspace of many pages completely."""
    from bot.channels.slack.chat import make_client

    with FakeSlack() as fake:
        for n in range(250):
            fake.add_user(f"U{n:05d}", name=f"user{n}")
        client = make_client(token="xoxb-test-token", base_url=fake.url, max_retries=3)
        client.proxy = None
        people = list(SlackDirectory(client, page_size=12).everyone())
    assert len({p.id for p in people}) == len(fake.users)
    assert fake.rejected_429 >= 1  # the tier was hit and waited out, not ignored
