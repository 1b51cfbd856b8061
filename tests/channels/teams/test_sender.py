"""The outbox's Teams sender against the loopback Bot Connector and Graph (tests/teams): 1:1
chats known, opened and installed, channel posts, every failure mapped to what the outbox does
with it, edits, and an Outbox delivering Teams rows end to end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import Engine, update
from sqlmodel import Session

from bot.channels.teams.auth import BotTokens
from bot.channels.teams.chat import TeamsChat
from bot.channels.teams.graph import GraphClient
from bot.channels.teams.refs import References
from bot.channels.teams.sender import (
    APP_NOT_INSTALLED,
    CHANNEL_BUSY,
    CONVERSATION_NOT_FOUND,
    TeamsSender,
)
from bot.core.messages import say
from bot.core.outbox import (
    CANNOT_TELL,
    GONE,
    IN_DOUBT,
    LEASE,
    POST_BOUND,
    Budget,
    Limits,
    Outbox,
)
from bot.store.models import Delivery
from tests.auxil.outbox import FakeClock, delivery, make_send, renderer
from tests.teams.fake_connector import FakeTeams

SELF_INSTALL = "TeamsAppInstallation.ReadWriteSelfForUser.All"
Factory = Callable[..., TeamsSender]


@pytest.fixture
def make_sender(teams: FakeTeams, db: Engine) -> Iterator[Factory]:
    """TeamsSenders wired as the service wires them, on the loopback Teams."""
    made: list[TeamsSender] = []

    def make(*, install: bool = False, **kwargs: object) -> TeamsSender:
        tokens = BotTokens(
            app_id=teams.app_id,
            app_password=teams.identity.app_password,
            token_url=teams.identity.token_url,
        )
        chat = TeamsChat(
            tokens=tokens,
            refs=References(db),
            tenant_id=teams.tenant_id,
            default_service_url=teams.url,
        )
        graph = GraphClient(tokens=tokens, base_url=teams.graph.url)
        sender = TeamsSender(
            chat=chat,
            graph=graph,
            install_for_users=install,
            catalog_app_id=teams.directory.teams_app_id,
            **kwargs,  # type: ignore[arg-type]
        )
        made.append(sender)
        return sender

    yield make
    for sender in made:
        sender.chat.close()
        assert sender.graph is not None
        sender.graph.close()


def knows(sender: TeamsSender, teams: FakeTeams, user: str) -> None:
    """The bot heard from `user` in their 1:1 chat (their chat is in References)."""
    sender.refs.observe(teams.message_activity(user, "hello"))


def channel_id(teams: FakeTeams, name: str = "rollout-support") -> str:
    return teams.directory.channel(teams.directory.team("fernhill"), name).id


# --- 1:1 chats ------------------------------------------------------------------------------


def test_a_known_chat_gets_the_card_straight_away(teams: FakeTeams, make_sender: Factory) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    result = sender.post(
        recipient=teams.user("alice").id, message=say("Go-live is Monday"), delivery_id=1
    )
    chat = teams.directory.personal_conversation_id(teams.user("alice"))
    assert result.ok and result.channel == chat
    (stored,) = teams.activities(chat)[-1:]
    assert result.ts == stored.id and "Go-live is Monday" in str(stored.cards)
    assert teams.calls_to("CreateConversation") == []


def test_someone_with_the_app_but_no_stored_chat_gets_one_opened_and_kept(
    teams: FakeTeams, make_sender: Factory
) -> None:
    sender = make_sender()
    chika = teams.user("chika")
    first = sender.post(recipient=chika.id.upper(), message=say("one"), delivery_id=1)
    assert first.ok and first.channel == teams.directory.personal_conversation_id(chika)
    (create,) = teams.calls_to("CreateConversation")
    assert create.body["members"] == [{"id": chika.id}]
    assert create.body["tenantId"] == teams.tenant_id
    person = sender.refs.person(chika.id)
    assert person is not None and person.conversation_id == first.channel and person.installed
    second = sender.post(recipient=chika.id, message=say("two"), delivery_id=2)
    assert second.ok and len(teams.calls_to("CreateConversation")) == 1


def test_someone_without_the_app_fails_for_good_when_the_bot_may_not_install_it(
    teams: FakeTeams, make_sender: Factory
) -> None:
    sender = make_sender(install=False)
    result = sender.post(recipient=teams.user("bob").id, message=say("hi"), delivery_id=1)
    assert (result.ok, result.error, result.permanent) == (False, APP_NOT_INSTALLED, True)
    assert teams.graph.calls_to("InstallApp") == []
    assert teams.sent == []


def test_the_app_is_installed_with_the_self_permission_alone_and_the_card_delivered(
    make_sender: Factory, teams: FakeTeams
) -> None:
    teams.identity.revoke(*set(teams.identity.graph_permissions) - {SELF_INSTALL})
    assert teams.identity.graph_permissions == {SELF_INSTALL}
    sender = make_sender(install=True)
    bob = teams.user("bob")
    result = sender.post(recipient=bob.id, message=say("Welcome to Compass"), delivery_id=1)
    assert result.ok, result
    assert bob.app_installed
    (install,) = teams.graph.calls_to("InstallApp")
    assert install.body == {
        "teamsApp@odata.bind": f"{teams.graph.url}/v1.0/appCatalogs/teamsApps/{teams.directory.teams_app_id}"
    }
    assert teams.graph.calls_to("GetInstalledAppChat")[-1].ok
    assert result.channel == teams.directory.chat_id(bob)  # the chat id Graph gave
    assert [a.id for a in teams.activities(result.channel)] == [result.ts]
    person = sender.refs.person(bob.id)
    assert person is not None and person.conversation_id == result.channel and person.installed
    # The next message goes straight to the chat.
    assert sender.post(recipient=bob.id, message=say("again"), delivery_id=2).ok
    assert len(teams.graph.calls_to("InstallApp")) == 1


def test_someone_who_removed_the_app_gets_it_again_when_the_bot_may_install_it(
    make_sender: Factory, teams: FakeTeams
) -> None:
    sender = make_sender(install=True)
    knows(sender, teams, "alice")
    teams.uninstall("alice")
    result = sender.post(recipient=teams.user("alice").id, message=say("hi"), delivery_id=1)
    assert result.ok, result
    assert [c.status for c in teams.calls_to("SendToConversation")] == [403, 201]
    assert len(teams.graph.calls_to("InstallApp")) == 1


def test_someone_who_removed_the_app_is_known_to_lack_it(
    make_sender: Factory, teams: FakeTeams
) -> None:
    sender = make_sender(install=False)
    knows(sender, teams, "alice")
    teams.uninstall("alice")
    result = sender.post(recipient=teams.user("alice").id, message=say("hi"), delivery_id=1)
    assert (result.error, result.permanent) == (APP_NOT_INSTALLED, True)
    person = sender.refs.person(teams.user("alice").id)
    assert person is not None and not person.installed


def test_an_installation_teams_has_not_caught_up_with_is_tried_again_later(
    make_sender: Factory, teams: FakeTeams
) -> None:
    sender = make_sender(install=True)
    teams.fail("SendToConversation", 403)  # BotNotInConversationRoster, right after installing
    result = sender.post(recipient=teams.user("bob").id, message=say("hi"), delivery_id=1)
    assert (result.ok, result.error, result.permanent) == (False, "install_pending", False)
    assert sender.post(recipient=teams.user("bob").id, message=say("hi"), delivery_id=1).ok
    assert len(teams.graph.calls_to("InstallApp")) == 1


def test_someone_teams_does_not_know_fails_for_good(make_sender: Factory) -> None:
    stranger = "0f0f0f0f-0000-4000-8000-000000000000"
    result = make_sender().post(recipient=stranger, message=say("hi"), delivery_id=1)
    assert (result.error, result.permanent) == ("user_not_found", True)


def test_an_installation_graph_refuses_fails_for_good_with_graphs_code(
    make_sender: Factory, teams: FakeTeams
) -> None:
    teams.identity.revoke(SELF_INSTALL)
    sender = make_sender(install=True)
    result = sender.post(recipient=teams.user("bob").id, message=say("hi"), delivery_id=1)
    assert (result.error, result.permanent) == ("install:Forbidden", True)


def test_a_gone_chat_is_opened_again_once_and_the_card_delivered(
    teams: FakeTeams, make_sender: Factory
) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    alice = sender.refs.person(teams.user("alice").id)
    assert alice is not None
    sender.refs.set_conversation(alice, "a:1gone", teams.url)  # a chat Teams no longer has
    result = sender.post(recipient=alice.user_id, message=say("hi"), delivery_id=1)
    assert result.ok, result
    assert result.channel == teams.directory.personal_conversation_id(teams.user("alice"))
    assert [c.status for c in teams.calls_to("SendToConversation")] == [404, 201]
    assert len(teams.calls_to("CreateConversation")) == 1
    person = sender.refs.person(alice.user_id)
    assert person is not None and person.conversation_id == result.channel


def test_a_second_404_fails_the_row_for_good(teams: FakeTeams, make_sender: Factory) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    teams.fail("SendToConversation", 404, times=2)
    result = sender.post(recipient=teams.user("alice").id, message=say("hi"), delivery_id=1)
    assert (result.error, result.permanent) == (CONVERSATION_NOT_FOUND, True)
    assert len(teams.calls_to("SendToConversation")) == 2
    assert len(teams.calls_to("CreateConversation")) == 1


# --- channels -------------------------------------------------------------------------------


def test_a_channel_gets_a_new_post(teams: FakeTeams, make_sender: Factory) -> None:
    sender = make_sender()
    channel = channel_id(teams)
    result = sender.post(recipient=channel, message=say("Cut-over tonight"), delivery_id=1)
    assert result.ok and result.channel == channel
    (post,) = teams.activities(channel)
    assert post.id == result.ts and post.thread_id == post.id  # a thread of its own
    assert "Cut-over tonight" in str(post.cards)


def test_a_busy_channel_is_paced_to_teams_limits_and_then_handed_back(
    teams: FakeTeams, make_sender: Factory
) -> None:
    # The sender's windows run on a fake clock here; the fake's own windows count real time,
    # in which these posts come far faster, so they are off for this test.
    teams.loosen("rate_limits", "tenant_rate")
    now = [1000.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    sender = make_sender(clock=lambda: now[0], sleep=sleep)
    channel = channel_id(teams)
    times = []
    for number in range(60):
        assert sender.post(recipient=channel, message=say(f"#{number}"), delivery_id=number).ok
        times.append(now[0])
    assert slept[:1] == [pytest.approx(1.0)]  # the 8th in one second waited
    assert all(later - first >= 1.0 for first, later in zip(times, times[7:], strict=False))
    busy = sender.post(recipient=channel, message=say("61st"), delivery_id=61)
    assert (busy.ok, busy.error, busy.permanent) == (False, CHANNEL_BUSY, False)
    now[0] = times[0] + 30.0
    assert sender.post(recipient=channel, message=say("61st"), delivery_id=61).ok


# --- failures -------------------------------------------------------------------------------


def test_a_429_returns_teams_retry_after(teams: FakeTeams, make_sender: Factory) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    teams.rate_limit("SendToConversation", retry_after=7)
    result = sender.post(recipient=teams.user("alice").id, message=say("hi"), delivery_id=1)
    assert (result.ok, result.error, result.retry_after, result.permanent) == (
        False,
        "Throttled",
        7.0,
        False,
    )
    assert len(teams.calls_to("SendToConversation")) == 1  # not retried inside


def test_a_429_without_retry_after_gets_a_growing_jittered_wait(
    teams: FakeTeams, make_sender: Factory
) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    alice = teams.user("alice").id
    teams.rate_limit("SendToConversation", retry_after=None, times=2)
    first = sender.post(recipient=alice, message=say("hi"), delivery_id=1)
    second = sender.post(recipient=alice, message=say("hi"), delivery_id=1)
    assert first.retry_after is not None and 1.0 <= first.retry_after <= 3.0
    assert second.retry_after is not None and 2.0 <= second.retry_after <= 6.0
    assert sender.post(recipient=alice, message=say("hi"), delivery_id=1).ok


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (412, "PreconditionFailed"),
        (502, "BadGateway"),
        (504, "GatewayTimeout"),
        (503, "ServiceUnavailable"),
    ],
)
def test_gateway_and_precondition_errors_are_transient(
    teams: FakeTeams, make_sender: Factory, status: int, code: str
) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    teams.fail("SendToConversation", status)
    result = sender.post(recipient=teams.user("alice").id, message=say("hi"), delivery_id=1)
    assert (result.ok, result.error, result.permanent, result.retry_after) == (
        False,
        code,
        False,
        None,
    )
    assert len(teams.calls_to("SendToConversation")) == 1


def test_a_user_who_blocked_the_bot_fails_for_good_with_teams_code(
    teams: FakeTeams, make_sender: Factory
) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    teams.block("alice")
    result = sender.post(recipient=teams.user("alice").id, message=say("hi"), delivery_id=1)
    assert (result.error, result.permanent) == ("ConversationBlockedByUser", True)


def test_an_app_the_tenant_disabled_fails_for_good(teams: FakeTeams, make_sender: Factory) -> None:
    sender = make_sender()
    teams.directory.app_disabled = True
    result = sender.post(recipient=channel_id(teams), message=say("hi"), delivery_id=1)
    assert (result.error, result.permanent) == ("BotDisabledByAdmin", True)


@pytest.mark.parametrize(("status", "code"), [(400, "BadArgument"), (413, "MessageSizeTooBig")])
def test_a_card_teams_refuses_fails_for_good(
    teams: FakeTeams, make_sender: Factory, status: int, code: str
) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    teams.fail("SendToConversation", status)
    result = sender.post(recipient=teams.user("alice").id, message=say("hi"), delivery_id=1)
    assert (result.error, result.permanent) == (code, True)


def test_a_connection_dropped_after_the_post_was_accepted_is_in_doubt(
    teams: FakeTeams, make_sender: Factory
) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    teams.drop("SendToConversation")
    result = sender.post(recipient=teams.user("alice").id, message=say("hi"), delivery_id=1)
    assert (result.ok, result.error, result.permanent, result.retry_after) == (
        False,
        IN_DOUBT,
        False,
        None,
    )
    assert len(teams.sent) == 1  # it did arrive: resending blindly would duplicate it


def test_a_connection_that_never_opened_is_tried_again(
    teams: FakeTeams, make_sender: Factory
) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    alice = sender.refs.person(teams.user("alice").id)
    assert alice is not None
    sender.refs.set_conversation(alice, alice.conversation_id, "http://127.0.0.1:9/teams/")
    result = sender.post(recipient=alice.user_id, message=say("hi"), delivery_id=1)
    assert (result.ok, result.error, result.permanent) == (False, "connection_error", False)


def test_a_channel_of_a_team_without_the_app_fails_for_good(
    teams: FakeTeams, make_sender: Factory
) -> None:
    teams.directory.team("fernhill").app_installed = False
    result = make_sender().post(recipient=channel_id(teams), message=say("hi"), delivery_id=1)
    assert (result.error, result.permanent) == ("BotNotInConversationRoster", True)


def test_a_recipient_that_is_no_teams_id_fails_for_good(make_sender: Factory) -> None:
    result = make_sender().post(recipient="U0123ABCD", message=say("hi"), delivery_id=1)
    assert (result.error, result.permanent) == ("invalid_recipient", True)


# --- edits and read-back ----------------------------------------------------------------------


def test_update_and_delete_a_sent_card_and_a_gone_one_is_gone(
    teams: FakeTeams, make_sender: Factory
) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    posted = sender.post(recipient=teams.user("alice").id, message=say("v1"), delivery_id=1)
    updated = sender.update(channel=posted.channel, ts=posted.ts, message=say("v2"))
    assert updated.ok
    stored = teams.activity(posted.ts)
    assert stored.updates == 1 and "v2" in str(stored.cards)
    assert sender.delete(channel=posted.channel, ts=posted.ts).ok
    assert [a.id for a in teams.deleted] == [posted.ts]
    again = sender.delete(channel=posted.channel, ts=posted.ts)
    assert (again.ok, again.error, again.permanent) == (False, GONE, True)
    late = sender.update(channel=posted.channel, ts=posted.ts, message=say("v3"))
    assert (late.error, late.permanent) == (GONE, True)


def test_a_channel_post_is_updated_in_place(teams: FakeTeams, make_sender: Factory) -> None:
    sender = make_sender()
    posted = sender.post(recipient=channel_id(teams), message=say("v1"), delivery_id=1)
    assert sender.update(channel=posted.channel, ts=posted.ts, message=say("v2")).ok
    assert "v2" in str(teams.activity(posted.ts).cards)


def test_an_edit_throttled_is_retried_by_the_outbox(teams: FakeTeams, make_sender: Factory) -> None:
    sender = make_sender()
    posted = sender.post(recipient=channel_id(teams), message=say("v1"), delivery_id=1)
    teams.rate_limit("UpdateActivity", retry_after=3)
    result = sender.update(channel=posted.channel, ts=posted.ts, message=say("v2"))
    assert (result.ok, result.retry_after, result.permanent) == (False, 3.0, False)


def test_find_cannot_tell(make_sender: Factory) -> None:
    result = make_sender().find(
        recipient="x", channel="a:1", delivery_id=1, since=datetime.now(UTC)
    )
    assert (result.ok, result.error) == (False, CANNOT_TELL)


# --- an Outbox delivering Teams rows ------------------------------------------------------------


def test_an_outbox_delivers_teams_rows_and_leaves_the_doubtful_one_to_an_operator(
    teams: FakeTeams, make_sender: Factory, db: Engine
) -> None:
    sender = make_sender()
    knows(sender, teams, "alice")
    alice, bob, chika = (teams.user(key).id for key in ("alice", "bob", "chika"))
    channel = channel_id(teams)
    send_id, (to_alice, to_bob, to_chika, to_channel) = make_send(db, [alice, bob, chika, channel])
    with Session(db) as session:
        session.execute(
            update(Delivery).where(Delivery.send_id == send_id).values(platform="teams")  # type: ignore[arg-type]
        )
        session.execute(
            update(Delivery).where(Delivery.id == to_channel).values(target="channel")  # type: ignore[arg-type]
        )
        session.commit()
    clock = FakeClock()
    outbox = Outbox(
        db=db,
        senders={"teams": sender},
        renderers={"announcement": renderer(db)},
        platform_limits={"teams": Limits(posts_per_second=1000, burst=1000, edits_per_second=1000)},
        clock=clock.now,
        sleep=clock.sleep,
    )
    outbox.budget = Budget(db, clock=clock.time)

    claimed = outbox.claim()
    assert claimed == [to_alice, to_bob, to_chika, to_channel]
    assert outbox.deliver(to_alice) == "sent"
    assert outbox.deliver(to_bob) == "failed"
    teams.drop("SendToConversation")  # chika's card arrives, its answer does not
    assert outbox.deliver(to_chika) == "sending"
    assert outbox.deliver(to_channel) == "sent"

    sent = delivery(db, to_alice)
    assert sent.channel == teams.directory.personal_conversation_id(teams.user("alice"))
    assert sent.ts == teams.activities(sent.channel)[-1].id
    assert (delivery(db, to_bob).state, delivery(db, to_bob).error) == ("failed", APP_NOT_INSTALLED)
    assert delivery(db, to_channel).channel == channel

    clock.advance(LEASE.total_seconds() + 1)
    assert outbox.reconcile() == 1
    doubtful = delivery(db, to_chika)
    assert (doubtful.state, doubtful.error) == ("unknown", "in_doubt")
    assert len(teams.activities(teams.directory.personal_conversation_id(teams.user("chika")))) == 1
    assert outbox.drain_once() == 0  # nothing is resent on its own


def test_a_post_that_ran_out_of_time_before_sending_goes_back_to_the_outbox(
    teams: FakeTeams, make_sender: Factory
) -> None:
    # Every post (chat lookup and installation included) ends within the outbox's POST_BOUND.
    assert make_sender().bound < POST_BOUND.total_seconds()
    sender = make_sender(bound=0.5)
    result = sender.post(recipient=teams.user("chika").id, message=say("hi"), delivery_id=1)
    assert (result.ok, result.error, result.permanent) == (False, "post_deadline", False)
    assert teams.calls == []
