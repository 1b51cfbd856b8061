"""Acks before work, end to end over signed HTTP (the real Service, the loopback Slack):

- a DM event is answered 200 before the event ledger is written or the question answered,
  and still answered exactly once (a retry of it is dropped);
- a request with a bad or old signature is refused by Bolt, as before, and not handled;
- survey answer clicks are acked at once and one person's clicks are stored in the order they
  came; other clicks still go through Bolt;
- the parts: the form decoding, and the waits that put acks before follow-up work.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

import pytest
from sqlmodel import Session, select

from bot.channels.slack.clicks import AcksFirst
from bot.channels.slack.server import EarlyAcks, form_field
from bot.store import events
from bot.store.models import SlackEvent
from tests.auxil.running import RunningBot, bot_settings, buttons, running_bot
from tests.auxil.surveys import write
from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import (
    FORM_CONTENT_TYPE,
    SIGNING_SECRET,
    action_body,
    block_action,
    event_body,
    post,
    signed_headers,
)

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
        database_url=database_url, content_dir=content_dir, slack=slack, MOBILIZE_SEND_RATE=1000
    )
    with running_bot(settings, slack) as running:
        yield running


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def dm_event(user: str = "U1", text: str = "how do I reset my password") -> dict[str, Any]:
    return {
        "type": "message",
        "channel": f"D{user}",
        "channel_type": "im",
        "user": user,
        "text": text,
        "ts": "1700000100.000100",
    }


def answers_to(slack: FakeSlack, user: str) -> list[Any]:
    return [
        c
        for c in slack.calls_to("chat.postMessage")
        if c.ok and c.params.get("channel") == f"D{user}"
    ]


# --- events ----------------------------------------------------------------------------------


def test_a_dm_is_acked_before_it_is_claimed_or_answered(
    bot: RunningBot, slack: FakeSlack, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Claiming the event in the ledger is slow (a busy database): the ack does not wait for it.
    claimed = threading.Event()
    real_claim = events.EventLedger.claim

    def claim(self: events.EventLedger, event_id: str) -> bool:
        time.sleep(1.0)
        claimed.set()
        return real_claim(self, event_id)

    monkeypatch.setattr(events.EventLedger, "claim", claim)
    started = time.monotonic()
    status, body = bot.send_event(dm_event(), event_id="EvEARLY1")
    acked = time.monotonic() - started
    assert (status, body) == (200, "")
    assert acked < 0.5 and not claimed.is_set()
    slack.wait_for("chat.postMessage", where=lambda c: c.params.get("channel") == "DU1")
    wait_until(lambda: row_handled(bot, "EvEARLY1"))
    # Slack's retry of the same event (it never got the 200, say): dropped, no second answer.
    status, _ = bot.send_event(dm_event(), event_id="EvEARLY1", retry_num=1)
    assert status == 200
    time.sleep(1.5)
    assert len(answers_to(slack, "U1")) == 1


def row_handled(bot: RunningBot, event_id: str) -> bool:
    with Session(bot.service.db) as session:
        row = session.exec(select(SlackEvent).where(SlackEvent.event_id == event_id)).first()
        return row is not None and row.handled_at is not None


def test_a_burst_of_dms_is_answered_once_each(bot: RunningBot, slack: FakeSlack) -> None:
    users = [f"U9{n}" for n in range(5)]
    for user in users:
        slack.add_user(user)
    for round_ in range(3):
        for user in users:
            status, _ = bot.send_event(
                {**dm_event(user), "ts": f"17000001{round_:02d}.000100"},
                event_id=f"EvBURST{user}{round_}",
            )
            assert status == 200
    wait_until(lambda: all(len(answers_to(slack, u)) >= 3 for u in users), timeout=30)
    time.sleep(1.0)
    assert all(len(answers_to(slack, u)) == 3 for u in users)


@pytest.mark.parametrize("how", ["bad signature", "old timestamp"])
def test_an_unsigned_or_replayed_event_is_refused_and_not_handled(
    bot: RunningBot, slack: FakeSlack, how: str
) -> None:
    body = event_body(dm_event(), event_id="EvFORGED")
    if how == "bad signature":
        headers = signed_headers(body, secret="not-the-signing-secret")
    else:
        headers = signed_headers(body, timestamp=int(time.time()) - 600)
    status, _ = post(bot.events_url, body, headers)
    assert status == 401
    time.sleep(0.5)
    assert answers_to(slack, "U1") == []
    with Session(bot.service.db) as session:
        assert session.get(SlackEvent, "EvFORGED") is None


def test_url_verification_still_goes_through_bolt(bot: RunningBot) -> None:
    body = '{"type": "url_verification", "challenge": "abc123", "token": "x"}'
    status, answer = post(bot.events_url, body, signed_headers(body))
    assert status == 200 and "abc123" in answer


# --- survey clicks -------------------------------------------------------------------------


def start_survey(bot: RunningBot) -> int:
    run_id = bot.service.surveys.start_adhoc(survey_id="pulse", audience=["users:U1,U2"], by="U3")
    bot.service.surveys.tick()
    while bot.service.announcer.outbox.drain_once(batch=50):
        pass
    return run_id


def likert_buttons(slack: FakeSlack, user: str) -> tuple[str, list[dict[str, Any]]]:
    (message,) = [m for m in slack.messages.get(f"D{user}", []) if "Quick pulse" in m["text"]]
    found = [b for b in buttons(message["blocks"]) if b["action_id"].startswith("survey.answer")]
    return str(message["ts"]), found


def test_one_persons_quick_clicks_are_stored_in_the_order_they_came(
    bot: RunningBot, slack: FakeSlack
) -> None:
    run_id = start_survey(bot)
    ts, choices = likert_buttons(slack, "U1")
    assert len(choices) == 5
    order = [choices[n] for n in (0, 4, 2, 3, 1, 4, 0, 2)]  # the last click is "3"
    for element in order:
        payload = block_action(
            action_id=element["action_id"],
            value=element["value"],
            user_id="U1",
            channel_id="DU1",
            message_ts=ts,
            trigger_id=slack.new_trigger_id(),
            response_url=slack.new_response_url(channel="DU1", user="U1", message_ts=ts),
        )
        body = action_body(payload)
        started = time.monotonic()
        status, answer = post(
            bot.events_url, body, signed_headers(body, content_type=FORM_CONTENT_TYPE)
        )
        assert (status, answer) == (200, "")
        assert time.monotonic() - started < 0.5
    desk = bot.service.surveys.desk
    last = int(str(order[-1]["value"]).rsplit("|", 1)[1])
    wait_until(lambda: desk.answers(run_id, "U1") == {"ready": last})
    time.sleep(0.5)  # nothing stored later overwrites it
    assert desk.answers(run_id, "U1") == {"ready": last}


def test_a_survey_click_with_a_bad_signature_is_refused_and_not_stored(
    bot: RunningBot, slack: FakeSlack
) -> None:
    run_id = start_survey(bot)
    ts, choices = likert_buttons(slack, "U1")
    payload = block_action(
        action_id=choices[0]["action_id"],
        value=choices[0]["value"],
        user_id="U1",
        channel_id="DU1",
        message_ts=ts,
    )
    body = action_body(payload)
    headers = signed_headers(body, secret="forged", content_type=FORM_CONTENT_TYPE)
    status, _ = post(bot.events_url, body, headers)
    assert status == 401
    time.sleep(0.5)
    assert bot.service.surveys.desk.answers(run_id, "U1") == {}


def test_clicks_without_an_early_handler_still_reach_bolt(bot: RunningBot) -> None:
    # announce.link is acked by its Bolt listener; an unknown action gets Bolt's 404.
    for action_id, expected in (("announce.link.0", 200), ("nobody.handles.this", 404)):
        payload = block_action(action_id=action_id, value="x", user_id="U1", channel_id="DU1")
        body = action_body(payload)
        status, _ = post(bot.events_url, body, signed_headers(body, content_type=FORM_CONTENT_TYPE))
        assert status == expected


def test_early_acks_take_only_signed_events_and_registered_clicks() -> None:
    early = EarlyAcks(SIGNING_SECRET)
    taken: list[str] = []
    early.action("survey.answer", lambda payload, action: taken.append(action["action_id"]))

    def headers(body: str, content_type: str = "application/json") -> dict[str, str]:
        return {k.lower(): v for k, v in signed_headers(body, content_type=content_type).items()}

    click = action_body(block_action(action_id="survey.answer.1", value="1|q|2"))
    assert early.take(None, click, headers(click, FORM_CONTENT_TYPE))  # type: ignore[arg-type]
    other = action_body(block_action(action_id="faq.pick", value="1"))
    assert not early.take(None, other, headers(other, FORM_CONTENT_TYPE))  # type: ignore[arg-type]
    command = urlencode({"command": "/ask", "text": "hi"})
    assert not early.take(None, command, headers(command, FORM_CONTENT_TYPE))  # type: ignore[arg-type]
    unsigned = {**headers(click, FORM_CONTENT_TYPE), "x-slack-signature": "v0=00"}
    assert not early.take(None, click, unsigned)  # type: ignore[arg-type]
    assert taken == ["survey.answer.1"]
    early.close()


# --- the parts -----------------------------------------------------------------------------


def test_form_field_decodes_as_parse_qs_does() -> None:
    rng = random.Random(7)
    alphabet = "ab =+%&?\n\r\t \\\"'ä€😀{}[]:,=0A=3D%41~\x00"
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        body = urlencode({"token": "t", "payload": value})
        assert form_field(body, "payload") == (parse_qs(body).get("payload") or [""])[0]
    for raw in ("payload=a=b", "payload==41", "payload=%e2%82%ac+x", "a=1", "payload=1&payload=2"):
        assert form_field(raw, "payload") == (parse_qs(raw).get("payload") or [""])[0]


def test_follow_up_work_waits_for_a_burst_to_end_and_for_queued_stores() -> None:
    acks = AcksFirst(threshold=2, limit=2.0)
    with acks.request():
        pass  # a request just came
    started = time.monotonic()
    acks.wait(quiet=0.2)
    assert 0.15 <= time.monotonic() - started < 1.0
    started = time.monotonic()
    acks.wait()  # nothing in flight: no wait
    assert time.monotonic() - started < 0.1

    acks.queue_store()
    done = threading.Timer(0.3, acks.stored)
    done.start()
    started = time.monotonic()
    acks.wait(after_stores=True)
    assert 0.25 <= time.monotonic() - started < 1.5
    done.join()
    started = time.monotonic()
    acks.queue_store()
    acks.wait(after_stores=True, limit=0.2)  # bounded all the same
    assert time.monotonic() - started < 0.6
