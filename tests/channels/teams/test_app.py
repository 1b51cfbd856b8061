"""Teams end to end: signed activities into POST /api/messages, cards out to a loopback Bot
Connector as strict as Microsoft's (tests/teams)."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from sqlmodel import Session, select

from bot.store.models import Escalation, Feedback, QuestionLog, TeamsPerson
from tests.channels.teams.conftest import (
    ANSWERABLE,
    UNKNOWN,
    TeamsBot,
    button,
    card_text,
    entities,
    titles,
)
from tests.teams.fake_connector import FakeTeams, StoredActivity


def test_a_question_in_a_1to1_chat_gets_an_answer_card(bot: TeamsBot, teams: FakeTeams) -> None:
    card = bot.ask("alice", ANSWERABLE)
    alice = teams.user("alice")
    assert card.conversation_id == teams.directory.personal_conversation_id(alice)
    text = card_text(card)
    assert "password" in text.lower()
    assert "From the FAQ: _How do I reset my Compass password?_ · IT Service Desk" in text
    assert "Review due 31 Mar 2027" in text
    assert titles(card)[:3] == ["Helpful", "Not helpful", "Ask a person"]
    assert button(card, "Helpful")["type"] == "Action.Execute"
    assert card.activity["summary"] == "How do I reset my Compass password?"
    with Session(bot.db) as session:
        (question,) = session.exec(select(QuestionLog)).all()
        person = session.get(TeamsPerson, alice.id)
    assert (question.user_id, question.decision) == (alice.id, "answer")
    # The conversation reference proactive messages will need later.
    assert person is not None and person.teams_id == alice.teams_id
    assert person.conversation_id == card.conversation_id and person.service_url == teams.url


def test_a_channel_mention_is_answered_in_its_thread(bot: TeamsBot, teams: FakeTeams) -> None:
    mention = teams.channel_message_activity("bob", ANSWERABLE, channel="General")
    before = len(teams.sent)
    assert bot.send(mention).status == 200
    answer = bot.next_card(before)
    assert answer.thread_id == mention["id"]  # a reply in the mention's thread
    assert "password" in card_text(answer).lower()
    # A channel message that does not mention the bot is not a question.
    quiet = teams.channel_message_activity("bob", "lunch anyone?", mention=False)
    assert bot.send(quiet).status == 200
    bot.ask("alice", ANSWERABLE)  # handled after the quiet one: nothing was sent for it
    assert len([s for s in teams.sent if s.thread_id == quiet["id"]]) == 0


def test_did_you_mean_offers_entries_and_a_pick_answers_and_is_stored(
    bot: TeamsBot, teams: FakeTeams
) -> None:
    offer = bot.ask("alice", "holiday")
    assert "Did you mean" in card_text(offer)
    assert titles(offer)[-1] == "None of these"
    picked = titles(offer)[0]
    before = len(teams.sent)
    answer = bot.click("alice", offer, picked)
    assert answer.status == 200 and answer.body["statusCode"] == 200
    card = bot.next_card(before)
    assert titles(card)[:3] == ["Helpful", "Not helpful", "Ask a person"]
    with Session(bot.db) as session:
        (pick,) = session.exec(select(Feedback)).all()
    assert pick.kind == "pick" and pick.user_id == teams.user("alice").id


def test_helpful_is_stored_and_thanked(bot: TeamsBot, teams: FakeTeams) -> None:
    card = bot.ask("chika", ANSWERABLE)
    before = len(teams.sent)
    assert bot.click("chika", card, "Helpful").status == 200
    thanks = bot.next_card(before)
    assert "glad that helped" in card_text(thanks)
    with Session(bot.db) as session:
        (vote,) = session.exec(select(Feedback)).all()
    assert (vote.kind, vote.entry_id, vote.user_id) == (
        "helpful",
        "reset-password",
        teams.user("chika").id,
    )


def _in_support(bot: TeamsBot) -> Any:
    return lambda stored: stored.conversation_id == bot.support_channel


def test_escalation_round_trip(bot: TeamsBot, teams: FakeTeams) -> None:
    alice, chika = teams.user("alice"), teams.user("chika")
    offer = bot.ask("alice", UNKNOWN)
    assert titles(offer) == ["Ask a person"]
    before = len(teams.sent)
    assert bot.click("alice", offer, "Ask a person").status == 200
    ticket = bot.next_card(before, _in_support(bot))
    assert ticket.thread_id == ticket.id  # a new post: the root of its own thread
    assert titles(ticket) == ["Claim", "Resolve", "Save as FAQ"]
    text = card_text(ticket)
    assert UNKNOWN in text and "Asked by <at>Alice Archer</at>" in text
    assert {"id": alice.teams_id, "name": "Alice Archer"} in [
        e["mentioned"] for e in entities(ticket)
    ]
    notice = bot.next_card(before, lambda s: s.conversation_id == offer.conversation_id)
    assert "passed your question to the support team" in card_text(notice)

    # Claim: the ticket is updated in place, for everyone and in the clicker's response.
    claim = bot.click("chika", ticket, "Claim")
    assert claim.status == 200 and claim.body["type"] == "application/vnd.microsoft.card.adaptive"
    assert "Claimed by <at>Chika Sato</at>" in card_text(claim.body["value"])
    teams.wait_for("UpdateActivity", where=lambda call: call.params["activity_id"] == ticket.id)
    assert teams.activity(ticket.id).updates == 1
    assert titles(teams.activity(ticket.id)) == ["Resolve", "Save as FAQ"]

    # A supporter's reply in the ticket's thread reaches the asker, links and mentions intact.
    reply = teams.channel_message_activity(
        "chika",
        'Try <a href="https://compass.example/reset?a=1&amp;b=2">the reset page</a>, '
        "or ask <at>Bob Brown</at> *now*.",
        channel="rollout-support",
        thread=ticket.id,
        mention=False,  # the app's RSC permission delivers thread replies without a mention
    )
    bob = teams.user("bob")
    reply["entities"].append(
        {
            "type": "mention",
            "text": "<at>Bob Brown</at>",
            "mentioned": {"id": bob.teams_id, "name": "Bob Brown"},
        }
    )
    before = len(teams.sent)
    assert bot.send(reply).status == 200
    relayed = bot.next_card(before, lambda s: s.conversation_id == offer.conversation_id)
    text = card_text(relayed)
    assert "<at>Chika Sato</at> from the support team replied:" in text
    assert "[the reset page](https://compass.example/reset?a=1&b=2)" in text
    assert "<at>Bob Brown</at>" in text and "\\*now\\*" in text  # her asterisks shown, not bold
    mentioned = [e["mentioned"] for e in entities(relayed)]
    assert {"id": bob.teams_id, "name": "Bob Brown"} in mentioned
    assert {"id": chika.teams_id, "name": "Chika Sato"} in mentioned

    # Resolve: the asker hears it; the ticket shows it.
    before = len(teams.sent)
    resolve = bot.click("chika", teams.activity(ticket.id), "Resolve")
    assert "Resolved by <at>Chika Sato</at>" in card_text(resolve.body["value"])
    resolved = bot.next_card(before, lambda s: s.conversation_id == offer.conversation_id)
    assert "marked your question as resolved" in card_text(resolved)
    with Session(bot.db) as session:
        (escalation,) = session.exec(select(Escalation)).all()
    assert escalation.state == "resolved" and escalation.resolved_by == chika.id
    assert escalation.asker_channel == offer.conversation_id
    assert escalation.support_channel == bot.support_channel

    # Save as FAQ: the draft notice goes to the supporter privately (their 1:1 chat).
    before = len(teams.sent)
    saved = bot.click("chika", teams.activity(ticket.id), "Save as FAQ")
    assert "1:1 chat" in saved.body["value"]
    private = bot.next_card(
        before,
        lambda s: s.conversation_id == teams.directory.personal_conversation_id(chika),
    )
    assert "draft FAQ entry" in card_text(private)


def test_a_channel_question_escalated_keeps_its_thread(bot: TeamsBot, teams: FakeTeams) -> None:
    mention = teams.channel_message_activity("bob", UNKNOWN, channel="General")
    before = len(teams.sent)
    bot.send(mention)
    offer = bot.next_card(before)
    before = len(teams.sent)
    bot.click("bob", offer, "Ask a person")
    ticket = bot.next_card(before, _in_support(bot))
    link = next(a for a in button_links(ticket))
    assert link.startswith("https://teams.microsoft.com/l/message/") and mention["id"] in link
    reply = teams.channel_message_activity(
        "chika", "Fixed now.", channel="rollout-support", thread=ticket.id
    )
    before = len(teams.sent)
    bot.send(reply)
    relayed = bot.next_card(before, lambda s: s.thread_id == mention["id"])
    assert "Fixed now." in card_text(relayed)


def button_links(card: StoredActivity) -> list[str]:
    import re

    return re.findall(r"\]\((https://teams\.microsoft\.com/[^)]+)\)", card_text(card))


@pytest.mark.parametrize(
    "why",
    ["forged", "expired", "audience", "serviceurl", "unendorsed", "none"],
)
def test_bad_tokens_are_refused_and_nothing_is_handled(
    bot: TeamsBot, teams: FakeTeams, why: str
) -> None:
    identity, url = teams.identity, teams.url
    token = {
        "forged": identity.sign_activity_token(url, key="untrusted"),
        "expired": identity.sign_activity_token(url, expired=True),
        "audience": identity.sign_activity_token(
            url, audience="00000000-0000-4000-8000-000000000bad"
        ),
        "serviceurl": identity.sign_activity_token("https://smba.example/evil/"),
        "unendorsed": identity.sign_activity_token(url, key="unendorsed"),
        "none": "",
    }[why]
    answer = bot.send(teams.message_activity("alice", ANSWERABLE), token=token)
    assert answer.status == 401
    bot.ask("chika", ANSWERABLE)  # the bot is fine, and alice's message was never handled
    with Session(bot.db) as session:
        users = [q.user_id for q in session.exec(select(QuestionLog)).all()]
    assert users == [teams.user("chika").id]


def test_a_throttled_post_is_retried_and_a_refused_one_logged_with_its_code(
    bot: TeamsBot, teams: FakeTeams, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="bot.channels.teams")
    teams.rate_limit("SendToConversation", retry_after=1)
    card = bot.ask("alice", ANSWERABLE)
    assert titles(card)[:1] == ["Helpful"]
    assert "429 Throttled" in caplog.text and "retrying" in caplog.text

    teams.block("chika")  # she blocked the bot: Teams answers 403 ConversationBlockedByUser
    assert bot.send(teams.message_activity("chika", ANSWERABLE)).status == 200
    teams.wait_for("SendToConversation", where=lambda call: call.status == 403)
    bot.ask("alice", ANSWERABLE)  # and the bot carries on
    deadline = time.monotonic() + 5  # the 403 is logged on the thread that got it
    while "403 ConversationBlockedByUser" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    assert "403 ConversationBlockedByUser" in caplog.text
    assert "Traceback" not in caplog.text


def test_install_greets_once_and_remembers_the_chat(bot: TeamsBot, teams: FakeTeams) -> None:
    bob = teams.user("bob")
    before = len(teams.sent)
    assert bot.send(teams.conversation_update_activity(user="bob")).status == 200
    assert bot.send(teams.installation_update_activity(user="bob")).status == 200
    hello = bot.next_card(before)
    assert "I'm **Mobilize**" in card_text(hello) and "Bob" in card_text(hello)
    bot.ask("alice", ANSWERABLE)  # later activities are handled; no second greeting
    assert len([s for s in teams.sent[before:] if "I'm **Mobilize**" in card_text(s)]) == 1
    with Session(bot.db) as session:
        person = session.get(TeamsPerson, bob.id)
    assert person is not None and person.installed
    assert person.conversation_id == teams.directory.personal_conversation_id(bob)
    bot.send(teams.installation_update_activity(user="bob", action="remove"))
    bot.ask("alice", ANSWERABLE)
    with Session(bot.db) as session:
        person = session.get(TeamsPerson, bob.id)
    assert person is not None and not person.installed


def test_a_failing_handler_apologises_without_a_traceback(
    bot: TeamsBot, teams: FakeTeams, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("database on fire")

    monkeypatch.setattr(bot.endpoint.conversation, "said", broken)
    before = len(teams.sent)
    bot.send(teams.message_activity("alice", ANSWERABLE))
    sorry = bot.next_card(before)
    assert "Sorry, something went wrong on my side" in card_text(sorry)
    assert "database on fire" not in card_text(sorry)


def test_a_redelivered_message_is_answered_once(bot: TeamsBot, teams: FakeTeams) -> None:
    # The Bot Framework may deliver an activity again (same id): one answer, one question logged.
    activity = teams.message_activity("alice", ANSWERABLE)
    bot.ask_with(activity)
    assert bot.send(activity).status == 200  # acknowledged, and dropped
    bot.endpoint.pool.submit(lambda: None).result()
    with Session(bot.db) as session:
        assert len(session.exec(select(QuestionLog)).all()) == 1
    answers = [a for a in teams.sent if "password" in card_text(a).lower()]
    assert len(answers) == 1
