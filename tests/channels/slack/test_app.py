"""The Slack edge end to end: signed HTTP requests in, Web API calls out to a loopback Slack."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from bot.store.models import Escalation, Feedback
from tests.auxil.running import (
    ADMIN,
    SUPPORT,
    RunningBot,
    block_text,
    bot_settings,
    button,
    buttons,
    running_bot,
)
from tests.slack.fake_slack import FakeSlack
from tests.slack.rules import encode_text
from tests.slack.signing import SIGNING_SECRET, event_body, post, signed_headers

ANSWERABLE = "How do I reset my Compass password?"
UNKNOWN = "zebra quantum marmalade?"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def bot(database_url: str, content_dir: Path, slack: FakeSlack) -> Iterator[RunningBot]:
    with running_bot(
        bot_settings(database_url=database_url, content_dir=content_dir, slack=slack), slack
    ) as running:
        yield running


def posts(slack: FakeSlack, channel: str, count: int = 1) -> list[Any]:
    return slack.wait_for(
        "chat.postMessage", count=count, where=lambda c: c.params.get("channel") == channel
    )


def test_dm_question_gets_an_answer_with_source_and_feedback_buttons(
    bot: RunningBot, slack: FakeSlack
) -> None:
    status, _ = bot.dm(ANSWERABLE)
    assert status == 200
    call = posts(slack, "DU1")[0]
    blocks = call.params["blocks"]
    text = block_text(blocks)
    assert "password" in text.lower()
    assert "From the FAQ: _How do I reset my Compass password?_" in text
    assert [b["text"]["text"] for b in buttons(blocks)][:3] == [
        "Helpful",
        "Not helpful",
        "Ask a person",
    ]
    assert "thread_ts" not in call.params  # a DM answer is not threaded


def test_mention_is_answered_in_its_thread(bot: RunningBot, slack: FakeSlack) -> None:
    event = {
        "type": "app_mention",
        "channel": "C1",
        "user": "U2",
        "text": f"<@UBOT> {ANSWERABLE}",
        "ts": "1700000200.000100",
    }
    assert bot.send_event(event)[0] == 200
    call = posts(slack, "C1")[0]
    assert call.params["thread_ts"] == "1700000200.000100"
    assert "password" in block_text(call.params["blocks"]).lower()


def test_slash_command_answers_only_the_asker(bot: RunningBot, slack: FakeSlack) -> None:
    answer = bot.command(ANSWERABLE)
    assert answer["response_type"] == "ephemeral"
    assert "password" in block_text(answer["blocks"]).lower()
    assert slack.calls_to("chat.postMessage") == []


def test_retried_event_is_answered_once_also_after_a_restart(
    database_url: str, content_dir: Path, slack: FakeSlack
) -> None:
    settings = bot_settings(database_url=database_url, content_dir=content_dir, slack=slack)
    with running_bot(settings, slack) as first:
        first.dm(ANSWERABLE, event_id="Ev1")
        posts(slack, "DU1")
        assert first.dm(ANSWERABLE, event_id="Ev1")[0] == 200
    with running_bot(settings, slack) as second:
        status, _ = second.send_event(
            {
                "type": "message",
                "channel": "DU1",
                "channel_type": "im",
                "user": "U1",
                "text": ANSWERABLE,
                "ts": "1700000100.000100",
            },
            event_id="Ev1",
            retry_num=1,
        )
        assert status == 200
        second.dm("When does Compass go live?", event_id="Ev2")
        posts(slack, "DU1", count=2)
    time.sleep(0.2)
    assert len(slack.calls_to("chat.postMessage")) == 2


@pytest.mark.parametrize(
    "event",
    [
        {
            "type": "message",
            "channel": "DU1",
            "channel_type": "im",
            "user": "UBOT",
            "bot_id": "BBOT",
            "text": "hi",
        },
        {
            "type": "message",
            "subtype": "bot_message",
            "channel": "DU1",
            "channel_type": "im",
            "bot_id": "BX",
            "text": "hi",
        },
        {
            "type": "message",
            "subtype": "message_changed",
            "channel": "DU1",
            "channel_type": "im",
            "message": {"user": "U1", "text": ANSWERABLE},
        },
        {"type": "message", "subtype": "message_deleted", "channel": "DU1", "channel_type": "im"},
        {
            "type": "message",
            "channel": "C1",
            "channel_type": "channel",
            "user": "U1",
            "text": ANSWERABLE,
        },
    ],
    ids=["own", "other-bot", "edit", "delete", "plain-channel-message"],
)
def test_ignored_messages_get_no_reply(
    bot: RunningBot, slack: FakeSlack, event: dict[str, Any]
) -> None:
    event.setdefault("ts", "1700000300.000100")
    assert bot.send_event(event)[0] == 200
    bot.dm(
        "When does Compass go live?", user="U2"
    )  # a marker: once it is answered, the rest was seen
    posts(slack, "DU2")
    assert [c.params["channel"] for c in slack.calls_to("chat.postMessage")] == ["DU2"]


def test_forged_and_stale_signatures_are_refused(bot: RunningBot, slack: FakeSlack) -> None:
    body = event_body(
        {"type": "message", "channel": "DU1", "channel_type": "im", "user": "U1", "text": "hi"}
    )
    assert post(bot.events_url, body, signed_headers(body, secret="not-the-secret"))[0] == 401
    stale = int(time.time()) - 60 * 10
    assert (
        post(bot.events_url, body, signed_headers(body, secret=SIGNING_SECRET, timestamp=stale))[0]
        == 401
    )
    time.sleep(0.2)
    assert slack.calls_to("chat.postMessage") == []


def test_helpful_vote_is_stored(bot: RunningBot, slack: FakeSlack) -> None:
    bot.dm(ANSWERABLE)
    blocks = posts(slack, "DU1")[0].params["blocks"]
    assert bot.click(button(blocks, "Helpful"))[0] == 200
    thanks = posts(slack, "DU1", count=2)[1]
    assert "glad" in thanks.params["text"].lower()
    with Session(bot.service.db) as session:
        kinds = [f.kind for f in session.exec(select(Feedback))]
    assert kinds == ["helpful"]


def test_escalation_round_trip(bot: RunningBot, slack: FakeSlack, content_dir: Path) -> None:
    bot.dm(f"<!channel> {UNKNOWN}")
    offer = posts(slack, "DU1")[0].params["blocks"]
    bot.click(button(offer, "Ask a person"))
    ticket = posts(slack, SUPPORT)[0]
    ticket_text = block_text(ticket.params["blocks"])
    # Slack sent a real broadcast token: it reaches the ticket as words that ping nobody.
    assert "@channel zebra" in ticket_text and "<!channel>" not in json.dumps(ticket.params)
    assert "<@U1>" in ticket_text
    ticket_ts = ticket.response["ts"]
    confirmation = posts(slack, "DU1", count=2)[1]
    assert "support team" in confirmation.params["text"]

    bot.click(
        button(ticket.params["blocks"], "Claim"), user="U2", channel=SUPPORT, message_ts=ticket_ts
    )
    claimed = slack.wait_for("chat.update", where=lambda c: c.params.get("ts") == ticket_ts)[0]
    assert "Claimed by <@U2>" in block_text(claimed.params["blocks"])

    reply = {
        "type": "message",
        "channel": SUPPORT,
        "channel_type": "channel",
        "user": "U2",
        "text": encode_text(
            "Use the kiosk in the canteen <!here> & see <https://wiki.example.com/kiosk?a=1&b=2|the kiosk page>, "
            "ask <@U3> in <#C1|general>; typed: <b>&amp;</b>"
        ),
        "ts": "1700000400.000200",
        "thread_ts": ticket_ts,
    }
    bot.send_event(reply)
    relayed = posts(slack, "DU1", count=3)[2]
    relayed_text = block_text(relayed.params["blocks"])
    assert "<@U2>" in relayed_text
    # Decoded once and re-escaped once: the link, the mentions and the `&` survive; the
    # broadcast is words; what the supporter typed literally stays literal.
    assert (
        "Use the kiosk in the canteen @here &amp; see "
        "<https://wiki.example.com/kiosk?a=1&amp;b=2|the kiosk page>, ask <@U3> in <#C1>; "
        "typed: &lt;b&gt;&amp;amp;&lt;/b&gt;"
    ) in relayed_text
    assert "<!here>" not in json.dumps(relayed.params)
    user_section = next(
        b for b in relayed.params["blocks"] if "kiosk" in b.get("text", {}).get("text", "")
    )
    assert user_section["text"]["verbatim"] is True

    bot.click(
        button(claimed.params["blocks"], "Save as FAQ"),
        user="U2",
        channel=SUPPORT,
        message_ts=ticket_ts,
    )
    slack.wait_for("chat.postEphemeral")
    drafts = list((content_dir / "messages" / "faq" / "drafts").glob("*.md"))
    assert len(drafts) == 1 and "Use the kiosk in the canteen" in drafts[0].read_text()

    bot.click(
        button(claimed.params["blocks"], "Resolve"),
        user="U2",
        channel=SUPPORT,
        message_ts=ticket_ts,
    )
    resolved = posts(slack, "DU1", count=4)[3]
    assert "resolved" in resolved.params["text"]
    with Session(bot.service.db) as session:
        escalation = session.exec(select(Escalation)).one()
    assert (escalation.state, escalation.claimed_by, escalation.resolved_by) == (
        "resolved",
        "U2",
        "U2",
    )


def test_app_home_lists_most_asked_questions(bot: RunningBot, slack: FakeSlack) -> None:
    bot.dm(ANSWERABLE)
    posts(slack, "DU1")
    bot.send_event({"type": "app_home_opened", "user": "U1", "channel": "DU1", "tab": "home"})
    view = slack.wait_for("views.publish")[0].params["view"]
    assert "How do I reset my Compass password?" in block_text(view["blocks"])


def test_admin_home_summarises_the_week_and_dms_a_console_link(
    database_url: str, content_dir: Path, slack: FakeSlack
) -> None:
    settings = bot_settings(
        database_url=database_url,
        content_dir=content_dir,
        slack=slack,
        MOBILIZE_PUBLIC_URL="http://console.test",
        MOBILIZE_CONSOLE_SECRET="console-test-secret",
    )
    with running_bot(settings, slack) as bot:
        _admin_home(bot, slack)


def _admin_home(bot: RunningBot, slack: FakeSlack) -> None:
    bot.dm(UNKNOWN, user="U7")
    posts(slack, "DU7")
    bot.send_event({"type": "app_home_opened", "user": ADMIN, "channel": f"D{ADMIN}"})
    view = slack.wait_for("views.publish")[0].params["view"]
    text = block_text(view["blocks"])
    assert "For admins: this week" in text
    assert "Next sends" in text and "Open surveys" in text
    assert "1 question the bot could not answer" in text
    console = button(view["blocks"], "Open the console")
    bot.click(console, user=ADMIN, channel="")
    link = posts(slack, ADMIN)[0]
    assert "/console/signin/" in json.dumps(link.params)

    # Someone else's home has no summary, no button; a forged click sends no link.
    bot.send_event({"type": "app_home_opened", "user": "U7", "channel": "DU7"})
    other = slack.wait_for("views.publish", count=2)[1].params["view"]
    assert "this week" not in block_text(other["blocks"])
    assert "Open the console" not in json.dumps(other["blocks"])
    bot.click(console, user="U7", channel="")
    time.sleep(0.5)
    assert not [c for c in slack.calls_to("chat.postMessage") if c.params.get("channel") == "U7"]


def test_slack_errors_are_recorded_with_their_code_and_do_not_crash(
    bot: RunningBot, slack: FakeSlack
) -> None:
    slack.fail("chat.postMessage", "channel_not_found")
    bot.dm(ANSWERABLE)
    slack.wait_for("chat.postMessage")
    bot.dm("When does Compass go live?", user="U2")
    posts(slack, "DU2")
    metrics = urllib.request.urlopen(f"{bot.base}/metrics").read().decode()
    assert (
        'mobilize_slack_errors_total{error="channel_not_found",method="chat.postMessage"}'
        in metrics
    )


def test_rate_limited_calls_are_retried_after_retry_after(
    bot: RunningBot, slack: FakeSlack
) -> None:
    slack.rate_limit("chat.postMessage", retry_after=1, times=1)
    bot.dm(ANSWERABLE)
    calls = slack.wait_for("chat.postMessage", count=2, timeout=10)
    assert [c.status for c in calls[:2]] == [429, 200]
    assert calls[1].at - calls[0].at >= 0.9


def test_health_and_metrics(bot: RunningBot) -> None:
    assert urllib.request.urlopen(f"{bot.base}/healthz").status == 200
    assert (
        "mobilize_questions_total" in urllib.request.urlopen(f"{bot.base}/metrics").read().decode()
    )


def test_bad_content_edit_keeps_serving_and_tells_admins(
    bot: RunningBot, slack: FakeSlack, content_dir: Path
) -> None:
    path = content_dir / "messages" / "faq" / "reset-password.md"
    path.write_text(path.read_text().replace("question:", "question: [broken"))
    bot.service.reload()
    report = posts(slack, ADMIN)[0]
    assert "reset-password.md:3" in block_text(report.params["blocks"])
    bot.dm(ANSWERABLE)
    assert "password" in block_text(posts(slack, "DU1")[0].params["blocks"]).lower()
