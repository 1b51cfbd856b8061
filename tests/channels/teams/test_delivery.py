"""Announcements and surveys on Microsoft Teams end to end: the real Service (Teams only, or
Slack and Teams together) over HTTP, against the loopback Bot Connector, identity and Graph.

The scheduler's tick and the outbox workers are driven step by step, so every test is
deterministic; FakeTeams records what Teams would have received."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import inspect, text, update
from sqlmodel import Session, col

from bot.core.announcements import sends
from bot.core.announcements.audience import resolve
from bot.core.outbox import resolve_unknown
from bot.core.surveys.report import results_message
from bot.core.surveys.runs import CLOSED_TEXT
from bot.service import Service
from bot.store.models import Delivery
from tests.auxil.db import committed
from tests.auxil.outbox import deliveries
from tests.auxil.running import bot_settings
from tests.auxil.surveys import QUICK, write
from tests.channels.teams.conftest import button, card_text, teams_settings
from tests.slack.fake_slack import FakeSlack
from tests.teams.fake_connector import FakeTeams, StoredActivity


class Bot:
    """The running Service and the fake Teams around it."""

    def __init__(self, service: Service, teams: FakeTeams, base: str) -> None:
        self.service = service
        self.teams = teams
        self.base = base

    def send(self, activity: dict[str, Any]) -> Any:
        return self.teams.send_activity(f"{self.base}/api/messages", activity)

    def id(self, key: str) -> str:
        return self.teams.user(key).id

    def installed(self, *keys: str) -> None:
        """Each person installs the app (Teams tells the bot); the team has it too."""
        for key in keys:
            self.teams.install(key)
            assert self.send(self.teams.installation_update_activity(user=key)).status == 200
        assert self.send(self.teams.installation_update_activity(team="fernhill")).status == 200
        self.service.teams.pool.submit(lambda: None).result()  # type: ignore[union-attr]
        self.teams.wait_for("SendToConversation", count=len(keys) + 1)  # the welcomes

    def deliver(self) -> None:
        """What the scheduler and the outbox workers do, one step at a time, until idle."""
        announcer = self.service.announcer
        for _ in range(20):
            announcer.tick()
            self.service.surveys.tick()
            if announcer.outbox.drain_once(batch=100) == 0:
                break
        announcer.tick()

    def deliver_until(self, done: Callable[[], object], seconds: float = 10) -> None:
        """`deliver()` until `done()` holds: a tick running elsewhere in the process (the
        service's own scheduler) makes ours return without doing anything."""
        deadline = time.monotonic() + seconds
        self.deliver()
        while not done() and time.monotonic() < deadline:
            time.sleep(0.1)
            self.deliver()

    def announce(self, template: str, *audience: str, by: str = "") -> int:
        send_id = committed(
            self.service.db,
            sends.create_adhoc,
            template=template,
            audience=list(audience),
            at=datetime.now(UTC),
            by=by or self.id("chika"),
            ack=self.service.announcer.content.templates[template].ack,
        )
        self.deliver_until(
            lambda: (
                (rows := deliveries(self.service.db, send_id))
                and all(row.state != "pending" for row in rows)
            )
        )
        return send_id

    def chat_of(self, key: str) -> list[StoredActivity]:
        """The bot's cards in someone's 1:1 chat, oldest first."""
        user = self.teams.user(key)
        conversation = self.teams.directory.personal_conversation_id(user)
        return [a for a in self.teams.activities(conversation) if a.cards]

    def last_card(self, key: str, text: str) -> StoredActivity:
        found = [a for a in self.chat_of(key) if text in card_text(a)]
        assert found, (
            f"no card with {text!r} for {key}: {[card_text(a)[:60] for a in self.chat_of(key)]}"
        )
        return found[-1]

    def click(self, key: str, card: StoredActivity, title: str) -> dict[str, Any]:
        action = button(card, title)
        response = self.send(
            self.teams.card_action_activity(
                key, action["verb"], action.get("data"), reply_to=card.id
            )
        )
        assert response.status == 200
        return dict(response.body or {})


@contextmanager
def running(settings: Any, teams: FakeTeams) -> Iterator[Bot]:
    service = Service(settings)
    server = service.http_server(port=0, host="127.0.0.1")
    server.start()
    service.ready.set()
    try:
        yield Bot(service, teams, f"http://127.0.0.1:{server.port}")
    finally:
        server.stop()
        service.stop()


@pytest.fixture
def bot(teams: FakeTeams, database_url: str, content_dir: Path) -> Iterator[Bot]:
    write(content_dir, "messages/surveys/quick.yaml", QUICK)
    settings = teams_settings(
        teams,
        database_url=database_url,
        content_dir=content_dir,
        TEAMS_SEND_RATE=50,
        MOBILIZE_ADMINS=teams.user("chika").id,
    )
    with running(settings, teams) as started:
        started.installed("alice", "chika")
        yield started


def rows_by_recipient(bot: Bot, send_id: int) -> dict[str, Delivery]:
    return {row.recipient: row for row in deliveries(bot.service.db, send_id)}


# ------------------------------------------------------------------------------ announcements


def test_everyone_with_the_app_gets_one_card_and_the_rest_are_left_out_with_reasons(
    bot: Bot,
) -> None:
    send_id = bot.announce("go-live-day", "everyone")

    rows = rows_by_recipient(bot, send_id)
    assert sorted(rows) == sorted([bot.id("alice"), bot.id("chika")])
    for key in ("alice", "chika"):
        (card,) = [a for a in bot.chat_of(key) if "Compass is live" in card_text(a)]
        row = rows[bot.id(key)]
        assert (row.state, row.platform, row.ts) == ("sent", "teams", card.id)
    status = bot.service.announcer.status(send_id)
    assert (status["state"], status["sent"], status["total"]) == ("done", 2, 2)
    audience = resolve(  # what `announce plan --sizes` shows
        ["everyone"], bot.service.announcer.directory, content_dir=bot.service.settings.content_dir
    )
    summary = audience.summary()
    assert "2 people" in summary
    assert "1 without the Teams app" in summary  # bob
    assert "1 guest" in summary and "1 deactivated" in summary  # dana, erin
    # The owner (chika, a person on Teams) gets the delivery report in her 1:1 chat.
    assert "Delivery report" in card_text(bot.chat_of("chika")[-1])


def test_a_channel_post_goes_to_the_channel_once(bot: Bot) -> None:
    team = bot.teams.directory.team("fernhill")
    general = team.thread_id
    send_id = bot.announce("go-live-day", f"channel:{general}")
    (row,) = deliveries(bot.service.db, send_id)
    assert (row.state, row.target) == ("sent", "channel")
    posts = [a for a in bot.teams.activities(general) if "Compass is live" in card_text(a)]
    assert len(posts) == 1 and posts[0].id == row.ts


def test_acknowledging_updates_the_card_and_the_count(bot: Bot) -> None:
    send_id = bot.announce("peopledesk-read-only", f"users:{bot.id('alice')}")
    card = bot.chat_of("alice")[-1]
    ack = next(a["title"] for a in _actions(card) if a.get("verb") == "announce.ack")
    answer = bot.click("alice", card, ack)
    assert answer["type"] == "application/vnd.microsoft.card.adaptive"  # replaces the card
    assert ack not in str(answer["value"])  # the button is gone: acknowledged
    (row,) = deliveries(bot.service.db, send_id)
    assert row.acked_at is not None
    assert bot.service.announcer.status(send_id)["acknowledged"] == 1


def test_blocked_and_throttled_rows_end_with_their_reason_or_retry(bot: Bot) -> None:
    bot.teams.block("chika")
    bot.teams.rate_limit("SendToConversation", retry_after=1)
    send_id = bot.announce("go-live-day", f"users:{bot.id('alice')},{bot.id('chika')}")
    deadline = time.monotonic() + 15
    while True:  # the 429 paused every worker for its Retry-After; then they go on
        rows = rows_by_recipient(bot, send_id)
        alice, chika = rows[bot.id("alice")], rows[bot.id("chika")]
        if alice.state not in ("pending", "sending") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
        bot.deliver()
    assert alice.state == "sent"
    assert (chika.state, chika.error) == ("failed", "ConversationBlockedByUser")
    assert bot.service.announcer.status(send_id)["failures"] == {"ConversationBlockedByUser": 1}


def test_a_post_in_doubt_becomes_unknown_and_waits_for_an_operator(bot: Bot) -> None:
    # Teams stores the message, then the connection drops before the answer: the bot cannot
    # read its own messages back, so it does not resend on its own.
    bot.teams.drop("SendToConversation")
    send_id = committed(
        bot.service.db,
        sends.create_adhoc,
        template="go-live-day",
        audience=[f"users:{bot.id('alice')}"],
        at=datetime.now(UTC),
        by=bot.id("chika"),
        ack=False,
    )
    outbox = bot.service.announcer.outbox
    outbox.lease = outbox.lease.__class__(seconds=0)  # the lease runs out at once
    bot.deliver_until(lambda: deliveries(bot.service.db, send_id))
    (row,) = deliveries(bot.service.db, send_id)
    assert (row.state, row.error) == ("unknown", "in_doubt")
    copies = [a for a in bot.chat_of("alice") if "Compass is live" in card_text(a)]
    assert len(copies) == 1  # delivered once, and not again
    with Session(bot.service.db) as session:
        assert resolve_unknown(
            session=session, delivery_ids=[int(row.id or 0)], resend=False, now=datetime.now(UTC)
        )
        session.commit()
    (row,) = deliveries(bot.service.db, send_id)
    assert row.state == "sent"


# ------------------------------------------------------------------------------ surveys


def test_a_survey_run_on_teams_from_invitation_to_results(bot: Bot) -> None:
    surveys = bot.service.surveys
    audience = f"users:{bot.id('alice')},{bot.id('chika')}"
    run_id = surveys.start_adhoc(survey_id="quick", audience=[audience], by=bot.id("chika"))
    bot.deliver_until(
        lambda: all(
            any("Quick pulse" in card_text(a) for a in bot.chat_of(key))
            for key in ("alice", "chika")
        )
    )

    for key, score, nps, helped in (("alice", "4", "9", ["Guides"]), ("chika", "2", "6", [])):
        card = bot.last_card(key, "Quick pulse")
        text = card_text(card)
        assert "I feel ready for Compass." in text and "What helped?" in text  # one card
        answer = bot.click(key, card, score)
        assert answer["type"] == "application/vnd.microsoft.card.adaptive"
        # The drop-down and the checkboxes: the value(s) picked, sent with the Save button.
        for question, picked in (("recommend", nps), ("helped", helped)):
            save = _save_button(answer["value"], question)
            options = save["data"]["options"]
            chosen = (
                ",".join(
                    str(i) for i, option in enumerate(options) if option.split("|")[2] in picked
                )
                if isinstance(picked, list)
                else str(next(i for i, o in enumerate(options) if o.endswith(f"|{picked}")))
            )
            data = {**save["data"], save["data"]["input"]: chosen}
            answer = dict(
                bot.send(
                    bot.teams.card_action_activity(key, save["verb"], data, reply_to=card.id)
                ).body
            )
        assert answer["type"] == "application/vnd.microsoft.card.adaptive"

    # A comment through the dialog; saving it updates the survey card in alice's chat.
    card = bot.last_card("alice", "Quick pulse")
    write_button = button(card, "Write a comment")
    assert write_button["type"] == "Action.Submit"
    assert write_button["data"]["msteams"] == {"type": "task/fetch"}
    opened = bot.send(
        bot.teams.task_fetch_activity("alice", write_button["data"], reply_to=card.id)
    )
    dialog = opened.body["task"]
    assert dialog["type"] == "continue"
    form = dialog["value"]["card"]["content"]
    save = form["actions"][0]
    submitted = bot.send(
        bot.teams.task_submit_activity(
            "alice", {**save["data"], "comment": "More drop-in sessions, please"}, reply_to=card.id
        )
    )
    assert submitted.body == {"task": {"type": "message", "value": "Saved. Thank you!"}}
    bot.teams.wait_for("UpdateActivity", where=lambda call: True)

    assert surveys.close(run_id)
    survey = surveys.surveys["quick"]
    results = results_message(db=bot.service.db, survey=survey, run_id=run_id).plain
    assert "2 of 2 answered" in results
    assert "mean *3.00* / 5" in results  # 4 and 2
    assert "eNPS *+0*" in results  # a promoter (9) and a detractor (6)

    # A late click is refused politely, in the person's chat.
    card = bot.last_card("alice", "Quick pulse")
    before = len(bot.chat_of("alice"))
    bot.click("alice", card, "5 Strongly agree")
    bot.teams.wait_for("SendToConversation", where=lambda _: len(bot.chat_of("alice")) > before)
    assert "closed" in card_text(bot.chat_of("alice")[-1]).lower()


def test_one_person_on_slack_and_teams_gets_each_message_once(
    teams: FakeTeams, database_url: str, content_dir: Path
) -> None:
    alice = teams.user("alice")
    with FakeSlack() as slack:
        slack.add_user("U1", name="alice", real_name="Alice Archer", email=alice.mail)
        slack.add_user("U2", name="sam", real_name="Sam Slack", email="sam@example.com")
        teams_only = teams_settings(teams, database_url=database_url, content_dir=content_dir)
        settings = bot_settings(
            database_url=database_url,
            content_dir=content_dir,
            slack=slack,
            MOBILIZE_SEND_RATE=1000,
            **{
                name: value
                for name, value in teams_only.model_dump(by_alias=True).items()
                if name.startswith("TEAMS_")
                and name not in ("TEAMS_INSTALL_FOR_USERS", "TEAMS_CATALOG_APP_ID")
                and value
            },
        )
        with running(settings, teams) as started:
            started.installed("alice", "chika")
            send_id = started.announce("go-live-day", "everyone", by="U2")
            rows = rows_by_recipient(started, send_id)
            # Alice is on both (same email): Slack comes first, so Teams leaves her out.
            assert "U1" in rows and alice.id not in rows
            assert rows[started.id("chika")].platform == "teams"
            assert {row.state for row in rows.values()} == {"sent"}
            assert not [a for a in started.chat_of("alice") if "Compass is live" in card_text(a)]
            slack_copies = [
                c
                for c in slack.calls_to("chat.postMessage")
                if c.ok and c.params["channel"] == "U1"
            ]
            assert len(slack_copies) == 1


def _actions(card: StoredActivity | dict[str, Any]) -> list[dict[str, Any]]:
    from tests.channels.teams.conftest import actions

    return actions(card)


def _save_button(card: dict[str, Any], question: str) -> dict[str, Any]:
    for action in _actions(card):
        options = (action.get("data") or {}).get("options") or []
        if action.get("title") == "Save" and options and f"|{question}|" in options[0]:
            return action
    raise AssertionError(f"no Save button for {question}")


def test_a_teams_answer_tells_the_database_holder_nothing_of_who(bot: Bot) -> None:
    """The attacker of tests/core/surveys/test_attacks.py, on Teams: they snapshot every table
    before and after one person answers through a card, and read the chat after the close."""
    surveys = bot.service.surveys
    alice, chika = bot.id("alice"), bot.id("chika")
    run_id = surveys.start_adhoc(survey_id="quick", audience=[f"users:{alice},{chika}"], by=chika)
    bot.deliver_until(lambda: any("Quick pulse" in card_text(a) for a in bot.chat_of("alice")))
    card = bot.last_card("alice", "Quick pulse")

    def snapshot() -> dict[str, list[tuple[str, ...]]]:
        found = {}
        with bot.service.db.connect() as connection:
            for table in inspect(bot.service.db).get_table_names():
                rows = connection.execute(text(f'SELECT * FROM "{table}"')).all()
                found[table] = sorted(tuple(str(v) for v in row) for row in rows)
        return found

    before = snapshot()
    answer = bot.click("alice", card, "4")
    assert answer["type"] == "application/vnd.microsoft.card.adaptive"  # she sees her answer
    after = snapshot()
    changed = {table for table in before if before[table] != after[table]}
    # Only the sealed answer row: no ledger entry of the click, no delivery touched, and
    # nothing in the new row that names alice, her chat, or even the question.
    assert changed == {"survey_response"}
    (row,) = set(after["survey_response"]) - set(before["survey_response"])
    conversation = bot.teams.directory.personal_conversation_id(bot.teams.user("alice"))
    assert not any(alice in v or conversation in v or "ready" in v for v in row)

    # After the close, the card in alice's chat no longer shows what she answered.
    assert surveys.close(run_id)
    with Session(bot.service.db) as session:  # the minute's grace for late clicks passes
        session.execute(
            update(Delivery)
            .where(col(Delivery.op) == "update")
            .values(op_not_before=datetime.now(UTC))
        )
        session.commit()
    bot.deliver_until(lambda: CLOSED_TEXT in card_text(bot.last_card("alice", "Quick pulse")))
    shown = card_text(bot.last_card("alice", "Quick pulse"))
    assert CLOSED_TEXT in shown
    assert "✓" not in shown
