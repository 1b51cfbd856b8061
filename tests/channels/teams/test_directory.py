"""The Teams directory against the loopback Graph (tests/teams): the tenant's people page by
page, guests, disabled accounts and who has the app, group and team members, lookups by id and
email, and Graph's errors and throttling."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import Engine

from bot.channels.teams.auth import BotTokens
from bot.channels.teams.directory import GRAPH_PERMISSIONS, TeamsDirectory
from bot.channels.teams.graph import GraphClient
from bot.channels.teams.refs import References
from bot.core.announcements.audience import DirectoryError, resolve
from tests.teams.fake_connector import FakeTeams
from tests.teams.rules import GRAPH_DEFAULT_PERMISSIONS

Factory = Callable[..., TeamsDirectory]


@pytest.fixture
def slept() -> list[float]:
    return []


@pytest.fixture
def make_directory(teams: FakeTeams, db: Engine, slept: list[float]) -> Iterator[Factory]:
    made: list[GraphClient] = []

    def make(*, install_for_users: bool = False) -> TeamsDirectory:
        tokens = BotTokens(
            app_id=teams.app_id,
            app_password=teams.identity.app_password,
            token_url=teams.identity.token_url,
        )
        graph = GraphClient(tokens=tokens, base_url=teams.graph.url, sleep=slept.append)
        made.append(graph)
        return TeamsDirectory(graph=graph, refs=References(db), install_for_users=install_for_users)

    yield make
    for graph in made:
        graph.close()


def test_everyone_is_listed_page_by_page_with_guests_disabled_accounts_and_the_app(
    teams: FakeTeams, make_directory: Factory
) -> None:
    for number in range(1000):
        teams.directory.add_user(f"crew{number:04d}", f"Crew Member{number:04d}")
    directory = make_directory()
    directory.refs.observe(teams.message_activity("alice", "hi"))  # alice has the app
    people = {person.id: person for person in directory.everyone()}

    assert len(people) == 1005
    pages = teams.graph.calls_to("ListUsers")
    assert len(pages) == 2 and pages[0].query["$top"] == "999" and "$skiptoken" in pages[1].query
    alice, dana, erin, chika = (
        people[teams.user(k).id] for k in ("alice", "dana", "erin", "chika")
    )
    assert (alice.name, alice.first_name, alice.email, alice.tz) == (
        "Alice Archer",
        "Alice",
        "alice@fernhill.example",
        None,
    )
    assert not alice.no_app and not alice.guest and not alice.deleted
    assert dana.guest and dana.email == "dana@partner.example"
    assert erin.deleted
    # chika has the app in Teams, but the bot has never heard from her: it cannot tell.
    assert chika.no_app
    assert all(
        person.id == person.id.lower() and person.platform == "teams" for person in people.values()
    )


def test_nobody_lacks_the_app_when_the_bot_installs_it(
    teams: FakeTeams, make_directory: Factory
) -> None:
    people = make_directory(install_for_users=True).everyone()
    assert not any(person.no_app for person in people)


def test_an_audience_leaves_out_people_without_the_app_guests_and_disabled_accounts(
    teams: FakeTeams, make_directory: Factory, content_dir: object
) -> None:
    directory = make_directory()
    directory.refs.observe(teams.message_activity("alice", "hi"))
    audience = resolve(["everyone"], directory, content_dir=content_dir)  # type: ignore[arg-type]
    assert [person.id for person in audience.people] == [teams.user("alice").id]
    assert audience.summary().endswith(
        "left out: 1 deactivated, 1 guest, 2 without the Teams app"
    ), audience.summary()


def test_group_members_include_nested_groups(teams: FakeTeams, make_directory: Factory) -> None:
    pilots = teams.directory.group_or_none("pilots")
    assert pilots is not None
    members = make_directory().group_members(pilots.id.upper())
    assert sorted(members) == sorted([teams.user("alice").id, teams.user("chika").id])
    (call,) = teams.graph.calls_to("ListTransitiveMembers")
    assert call.path.endswith("/transitiveMembers/microsoft.graph.user")


def test_channel_members_are_its_teams_members(teams: FakeTeams, make_directory: Factory) -> None:
    directory = make_directory()
    team = teams.directory.team("fernhill")
    channel = teams.directory.channel(team, "rollout-support").id
    with pytest.raises(DirectoryError) as unknown:
        directory.channel_members(channel)
    assert unknown.value.code == "channel_not_found"
    assert not directory.can_post(channel)

    directory.refs.observe(teams.channel_message_activity("bob", "hi", channel="rollout-support"))
    assert sorted(directory.channel_members(channel)) == sorted(team.members)
    assert directory.can_post(channel)
    assert not directory.can_post("19:unknown@thread.tacv2")


def test_one_person_by_id_and_an_unknown_id_is_none(
    teams: FakeTeams, make_directory: Factory
) -> None:
    directory = make_directory()
    bob = directory.person(teams.user("bob").id)
    assert bob is not None and (bob.name, bob.email, bob.no_app) == (
        "Bob Brown",
        "bob@fernhill.example",
        True,
    )
    assert directory.person("00000000-0000-0000-0000-000000000000") is None
    assert directory.person("U0123ABCD") is None
    directory.refs.observe(teams.message_activity("chika", "hi"))
    chika = directory.person(teams.user("chika").teams_id)  # a 29: id the bot has seen
    assert chika is not None and chika.id == teams.user("chika").id and not chika.no_app


def test_by_email_finds_mail_then_user_principal_name(
    teams: FakeTeams, make_directory: Factory
) -> None:
    teams.directory.add_user("faye", "Faye Nomail", mail=None)
    directory = make_directory()
    alice = directory.by_email("Alice@Fernhill.example")
    assert alice is not None and alice.id == teams.user("alice").id
    faye = directory.by_email("faye@fernhill.example")
    assert faye is not None and faye.id == teams.user("faye").id
    assert faye.email == "faye@fernhill.example"  # no mail: the UPN
    assert directory.by_email("nobody@fernhill.example") is None
    assert directory.by_email("o'brien@fernhill.example") is None  # quoted, not an error


def test_a_graph_refusal_is_a_directory_error_with_graphs_code(
    teams: FakeTeams, make_directory: Factory
) -> None:
    teams.identity.revoke("User.Read.All")
    with pytest.raises(DirectoryError) as refused:
        make_directory().everyone()
    assert refused.value.code == "Authorization_RequestDenied"


def test_graph_throttling_is_waited_out_as_graph_asks(
    teams: FakeTeams, make_directory: Factory, slept: list[float]
) -> None:
    teams.graph.rate_limit("ListUsers", retry_after=2)
    teams.graph.fail("ListUsers", 503)
    people = make_directory().everyone()
    assert len(people) == 5
    assert slept[0] == 2.0 and len(slept) == 2
    assert [c.status for c in teams.graph.calls_to("ListUsers")] == [429, 503, 200]


def test_graph_throttling_that_goes_on_is_an_error_in_the_end(
    teams: FakeTeams, make_directory: Factory, slept: list[float]
) -> None:
    teams.graph.rate_limit("ListUsers", retry_after=1, times=10)
    with pytest.raises(DirectoryError) as throttled:
        make_directory().everyone()
    assert throttled.value.code == "TooManyRequests"
    assert len(slept) == 3


def test_the_permissions_it_needs_are_granted_by_default_in_the_fake() -> None:
    assert GRAPH_PERMISSIONS <= GRAPH_DEFAULT_PERMISSIONS
