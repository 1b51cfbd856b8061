"""Clicks, /ask and interactive posts under Slack's real limits, end to end: the real Service
over signed HTTP, the strict loopback Slack (chat.update Tier 3; a response_url good for 5
uses in 30 minutes).

- A survey answer or an acknowledgement is shown through the click's response_url
  (`replace_original`), not by one Tier-3 chat.update per click; a used-up response_url falls
  back to chat.update; storing never waits behind Slack.
- /ask is acked at once and answered through its response_url when the answer is slow.
- Interactive posts take from the outbox's shared budget and a 429 on them pauses it; a 429 on
  reconcile's conversations.history pauses only the searches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update
from sqlmodel import Session, col

from bot.channels.slack import app as slack_app
from bot.core.announcements import sends
from bot.core.announcements.templates import ACKNOWLEDGED
from bot.core.faq.desk import Asker, Reply
from bot.store.models import Delivery, RateBudget
from tests.auxil.db import committed
from tests.auxil.outbox import deliveries, delivery
from tests.auxil.running import (
    RunningBot,
    block_text,
    bot_settings,
    button,
    buttons,
    running_bot,
)
from tests.auxil.surveys import write
from tests.slack.fake_slack import Call, FakeSlack
from tests.slack.signing import FORM_CONTENT_TYPE, action_body, block_action, post, signed_headers

PULSE = """\
title: Quick pulse
intro: One click.
anonymity: anonymous
min_group: 2
questions:
  - id: ready
    kind: likert
    text: I feel ready for Compass.
"""


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def bot(database_url: str, content_dir: Path, slack: FakeSlack) -> Iterator[RunningBot]:
    write(content_dir, "messages/surveys/pulse.yaml", PULSE)
    settings = bot_settings(
        database_url=database_url,
        content_dir=content_dir,
        slack=slack,
        MOBILIZE_SEND_RATE=1000,
    )
    with running_bot(settings, slack) as running:
        yield running


def start_survey(bot: RunningBot, audience: str = "users:U1,U2") -> int:
    run_id = bot.service.surveys.start_adhoc(survey_id="pulse", audience=[audience], by="U3")
    bot.service.surveys.tick()
    while bot.service.announcer.outbox.drain_once(batch=50):
        pass
    return run_id


def invitation(slack: FakeSlack, user: str = "U1") -> dict[str, Any]:
    (message,) = [m for m in slack.messages.get(f"D{user}", []) if "Quick pulse" in m["text"]]
    return message


def likert(message: dict[str, Any], label: str) -> dict[str, Any]:
    (found,) = [b for b in buttons(message["blocks"]) if b["text"]["text"].startswith(label)]
    return found


def click_with_url(
    bot: RunningBot, element: dict[str, Any], response_url: str, *, user: str, ts: str
) -> None:
    """A click carrying a response_url of the test's choosing (Slack issues a new one per
    click; this reuses one to use it up)."""
    payload = block_action(
        action_id=element["action_id"],
        value=element.get("value", ""),
        user_id=user,
        channel_id=f"D{user}",
        message_ts=ts,
        response_url=response_url,
        trigger_id=bot.slack.new_trigger_id(),
    )
    body = action_body(payload)
    status, _ = post(bot.events_url, body, signed_headers(body, content_type=FORM_CONTENT_TYPE))
    assert status == 200


def replaced(slack: FakeSlack, count: int = 1) -> list[Call]:
    return slack.wait_for(
        "response_url", count=count, where=lambda c: bool(c.params.get("replace_original"))
    )


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


# --- survey answers ------------------------------------------------------------------------------


def test_a_survey_answer_is_shown_through_the_response_url_not_chat_update(
    bot: RunningBot, slack: FakeSlack
) -> None:
    run_id = start_survey(bot)
    message = invitation(slack)

    status, _ = bot.click(likert(message, "4"), user="U1", channel="DU1", message_ts=message["ts"])
    assert status == 200
    (shown,) = replaced(slack)
    assert shown.status == 200
    assert "✓ _4 – Agree_" in block_text(shown.params["blocks"])
    assert "✓ _4 – Agree_" in block_text(invitation(slack)["blocks"])  # the DM itself changed
    assert bot.service.surveys.desk.answers(run_id, "U1") == {"ready": 4}
    assert slack.calls_to("chat.update") == []


def test_six_clicks_on_one_message_are_all_shown(bot: RunningBot, slack: FakeSlack) -> None:
    run_id = start_survey(bot)
    message = invitation(slack)
    for n, label in enumerate(["1", "2", "3", "4", "5", "2"], start=1):
        bot.click(likert(message, label), user="U1", channel="DU1", message_ts=message["ts"])
        replaced(slack, n)
    assert "✓ _2 – Disagree_" in block_text(invitation(slack)["blocks"])
    assert bot.service.surveys.desk.answers(run_id, "U1") == {"ready": 2}
    assert slack.calls_to("chat.update") == []


def test_a_used_up_response_url_falls_back_to_chat_update(
    bot: RunningBot, slack: FakeSlack
) -> None:
    run_id = start_survey(bot)
    message = invitation(slack)
    url = slack.new_response_url(channel="DU1", user="U1", message_ts=message["ts"])
    for n, label in enumerate(["1", "2", "3", "4", "5"], start=1):
        click_with_url(bot, likert(message, label), url, user="U1", ts=message["ts"])
        replaced(slack, n)

    click_with_url(bot, likert(message, "3"), url, user="U1", ts=message["ts"])  # a 6th use
    (update,) = slack.wait_for("chat.update")
    assert update.ok and update.params["ts"] == message["ts"]
    assert "✓ _3 – Neutral_" in block_text(invitation(slack)["blocks"])
    assert len(slack.calls_to("response_url")) == 5  # the used-up url was not tried again
    assert bot.service.surveys.desk.answers(run_id, "U1") == {"ready": 3}


def test_a_refused_response_url_falls_back_to_chat_update(
    bot: RunningBot, slack: FakeSlack
) -> None:
    start_survey(bot)
    message = invitation(slack)
    url = slack.new_response_url(channel="DU1", user="U1", message_ts=message["ts"])
    for _ in range(5):  # used up elsewhere (another process) before this click
        post(url, '{"text": "x"}', {"Content-Type": "application/json"})
    click_with_url(bot, likert(message, "5"), url, user="U1", ts=message["ts"])
    (update,) = slack.wait_for("chat.update")
    assert update.ok
    assert "✓ _5 – Strongly agree_" in block_text(invitation(slack)["blocks"])


def test_storing_answers_does_not_wait_behind_slack(bot: RunningBot, slack: FakeSlack) -> None:
    run_id = start_survey(bot, "users:U1,U2,U3")
    # No response_url works and chat.update answers 429 for a while: the ✓s are late, the
    # answers are not.
    slack.rate_limit("chat.update", retry_after=1, times=2)
    dead = "http://127.0.0.1:9/response"
    started = time.monotonic()
    for user in ("U1", "U2", "U3"):
        message = invitation(slack, user)
        click_with_url(bot, likert(message, "4"), dead, user=user, ts=message["ts"])
    desk = bot.service.surveys.desk
    wait_until(lambda: all(desk.answers(run_id, u) == {"ready": 4} for u in ("U1", "U2", "U3")))
    assert time.monotonic() - started < 1.5
    updates = slack.wait_for("chat.update", count=3, where=lambda c: c.ok, timeout=20)
    assert sorted(c.params["channel"] for c in updates) == ["DU1", "DU2", "DU3"]


def test_after_the_close_the_notice_comes_through_the_response_url(
    bot: RunningBot, slack: FakeSlack
) -> None:
    run_id = start_survey(bot)
    message = invitation(slack)
    assert bot.service.surveys.close(run_id)
    bot.click(likert(message, "5"), user="U1", channel="DU1", message_ts=message["ts"])
    (notice,) = slack.wait_for("response_url")
    assert notice.params["response_type"] == "ephemeral"
    assert not notice.params.get("replace_original")
    assert "This survey closed on" in notice.params["text"]
    assert slack.calls_to("chat.postEphemeral") == []


# --- acknowledgements ----------------------------------------------------------------------------


def test_an_acknowledgement_is_shown_through_the_response_url(
    bot: RunningBot, slack: FakeSlack
) -> None:
    announcer = bot.service.announcer
    send_id = committed(
        bot.service.db,
        sends.create_adhoc,
        template="peopledesk-read-only",
        audience=["users:U1"],
        at=datetime.now(UTC),
        by="U3",
        ack=True,
    )
    for _ in range(5):
        announcer.tick()
        announcer.outbox.drain_once(batch=10)
    (copy,) = [m for m in slack.messages["DU1"] if m.get("metadata")]
    ack = button(copy["blocks"], "I've read this")

    assert bot.click(ack, user="U1", channel="DU1", message_ts=copy["ts"])[0] == 200
    replaced(slack)
    (now,) = [m for m in slack.messages["DU1"] if m["ts"] == copy["ts"]]
    assert [b["text"]["text"] for b in buttons(now["blocks"])] == ["Save your old documents"]
    assert ACKNOWLEDGED in block_text(now["blocks"])
    assert announcer.status(send_id)["acknowledged"] == 1
    assert [c for c in slack.calls_to("chat.update") if c.params.get("ts") == copy["ts"]] == []


# --- /ask ----------------------------------------------------------------------------------------


def test_a_slow_ask_is_acked_at_once_and_answered_through_the_response_url(
    bot: RunningBot, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    desk = bot.service.desk
    real_ask = desk.ask

    def slow_ask(text: str, asker: Asker) -> Reply:
        time.sleep(0.6)
        return real_ask(text, asker)

    monkeypatch.setattr(slack_app, "ASK_BUDGET", 0.1)
    monkeypatch.setattr(desk, "ask", slow_ask)
    started = time.monotonic()
    assert bot.command("how do I reset my password") == {}  # an empty ack
    assert time.monotonic() - started < 0.5
    (answer,) = slack.wait_for("response_url")
    assert answer.status == 200 and answer.params["response_type"] == "ephemeral"
    assert "password" in block_text(answer.params["blocks"]).lower()
    (shown,) = slack.ephemeral
    assert shown["user"] == "U1" and shown["channel"] == "C1"
    assert slack.calls_to("chat.postMessage") == []


def test_a_quick_ask_is_answered_in_the_ack(bot: RunningBot, slack: FakeSlack) -> None:
    answer = bot.command("how do I reset my password")
    assert answer["response_type"] == "ephemeral"
    assert "password" in block_text(answer["blocks"]).lower()
    assert slack.calls_to("response_url") == []


# --- the shared budget ---------------------------------------------------------------------------


def paused_until(bot: RunningBot, name: str) -> float:
    with Session(bot.service.db) as session:
        row = session.get(RateBudget, name)
        return row.paused_until if row else 0.0


def test_a_429_on_an_answer_pauses_the_outbox_and_the_answer_follows(
    bot: RunningBot, slack: FakeSlack
) -> None:
    slack.rate_limit("chat.postMessage", retry_after=2)
    bot.dm("how do I reset my password")
    wait_until(lambda: paused_until(bot, "posts") > time.time())
    outbox = bot.service.announcer.outbox
    limits = outbox.limits
    wait = outbox.budget.take("posts", rate=limits.posts_per_second, burst=limits.burst)
    assert 0.5 < wait <= 2.0  # every sender waits, the outbox too
    answers = slack.wait_for("chat.postMessage", where=lambda c: c.ok, timeout=10)
    assert [c.params["channel"] for c in answers] == ["DU1"]
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 200]


def test_interactive_posts_take_from_the_shared_budget(
    database_url: str, content_dir: Path, slack: FakeSlack
) -> None:
    settings = bot_settings(
        database_url=database_url, content_dir=content_dir, slack=slack, MOBILIZE_SEND_RATE=1
    )
    with running_bot(settings, slack) as bot:
        outbox = bot.service.announcer.outbox
        limits = outbox.limits
        # The outbox spent the bucket: an answer still goes at once, borrowing from the burst.
        assert outbox.budget.take("posts", rate=1, burst=limits.burst, count=2) == 0
        started = time.monotonic()
        bot.dm("how do I reset my password")
        slack.wait_for("chat.postMessage", where=lambda c: c.ok)
        assert time.monotonic() - started < 0.9
        with Session(bot.service.db) as session:
            row = session.get(RateBudget, "posts")
            assert row is not None and row.tokens < 0  # the outbox repays the loan
        assert outbox.budget.take("posts", rate=1, burst=limits.burst) > 0


def test_a_429_on_conversations_history_does_not_pause_the_sends(
    bot: RunningBot, slack: FakeSlack
) -> None:
    announcer = bot.service.announcer
    send_id = committed(
        bot.service.db,
        sends.create_adhoc,
        template="go-live-day",
        audience=["users:U1,U2"],
        at=datetime.now(UTC),
        by="U3",
        ack=False,
    )
    announcer.tick()
    u1, u2 = deliveries(bot.service.db, send_id)
    now = datetime.now(UTC)
    with Session(bot.service.db) as session:  # U1's worker died mid-send: in doubt
        session.execute(
            update(Delivery)
            .where(col(Delivery.id) == u1.id)
            .values(
                state="sending",
                attempts=1,
                claimed_at=now - timedelta(minutes=3),
                lease_until=now - timedelta(minutes=1),
            )
        )
        session.commit()
    slack.rate_limit("conversations.history", retry_after=30)

    announcer.outbox.drain_once(batch=10)
    assert paused_until(bot, "reads") > time.time() + 20
    assert paused_until(bot, "posts") < time.time()
    assert delivery(bot.service.db, int(u2.id or 0)).state == "sent"  # sending went on
    assert delivery(bot.service.db, int(u1.id or 0)).state == "sending"  # still in doubt
    # While the searches are paused, the next rounds neither search nor stop sending.
    searches = len(slack.calls_to("conversations.history"))
    with Session(bot.service.db) as session:
        session.execute(
            update(Delivery)
            .where(col(Delivery.id) == u1.id)
            .values(lease_until=now - timedelta(minutes=1))
        )
        session.commit()
    announcer.outbox.drain_once(batch=10)
    assert len(slack.calls_to("conversations.history")) == searches


def test_listeners_waiting_on_slack_do_not_hold_up_the_acks(
    bot: RunningBot, slack: FakeSlack
) -> None:
    start_survey(bot)
    message = invitation(slack)
    # Slack pauses posting: every DM answer below waits out the pause in a listener thread,
    # more of them than Bolt's default pool (5) holds.
    slack.rate_limit("chat.postMessage", retry_after=2)
    for n in range(8):
        slack.add_user(f"U1{n}")
        bot.dm("how do I reset my password", user=f"U1{n}")
    started = time.monotonic()
    status, _ = bot.click(likert(message, "4"), user="U1", channel="DU1", message_ts=message["ts"])
    assert status == 200
    assert time.monotonic() - started < 1.0
    slack.wait_for("chat.postMessage", count=8, where=lambda c: c.ok, timeout=15)
