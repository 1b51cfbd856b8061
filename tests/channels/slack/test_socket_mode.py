"""Socket Mode end to end: the real Service over a loopback Socket Mode endpoint (WebSocket,
hello, envelopes, acks, disconnects), Web API calls out to the loopback Slack."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websocket
from sqlmodel import Session, select
from typer.testing import CliRunner

from bot.channels.slack.socket_mode import SocketMode
from bot.cli import app as cli_app
from bot.config import Settings, get_settings
from bot.service import Service
from bot.store.models import Feedback
from tests.auxil.running import block_text, bot_settings, button
from tests.slack.fake_slack import APP_TOKEN, BOT_TOKEN, Call, FakeSlack
from tests.slack.rules import encode_text
from tests.slack.signing import SIGNING_SECRET, block_action
from tests.slack.socket_mode import Ack, Envelope, SocketModeSlack

ANSWERABLE = "How do I reset my Compass password?"
# Slack's deadline is 3 s; the issue asks for every ack within 1 s, after reconnects too.
ACK_BOUND = 1.0
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def sm(slack: FakeSlack) -> Iterator[SocketModeSlack]:
    with SocketModeSlack(slack) as endpoint:
        yield endpoint


@dataclass
class SocketBot:
    service: Service
    link: SocketMode
    slack: FakeSlack
    sm: SocketModeSlack

    def dm(self, text: str, *, user: str = "U1", event_id: str | None = None) -> Envelope:
        return self.sm.send_event(
            {
                "type": "message",
                "channel": f"D{user}",
                "channel_type": "im",
                "user": user,
                "text": encode_text(text),
                "ts": f"{time.time():.6f}",
            },
            event_id=event_id,
        )

    def command(self, text: str, *, user: str = "U1", channel: str = "C1") -> Envelope:
        return self.sm.send_command(encode_text(text), user=user, channel=channel)

    def click(self, label: str, answer: Call, *, user: str = "U1") -> Envelope:
        channel, ts = answer.response["channel"], answer.response["ts"]
        pressed = button(answer.params["blocks"], label)
        return self.sm.send_interactive(
            block_action(
                action_id=pressed["action_id"],
                value=pressed.get("value", ""),
                user_id=user,
                channel_id=channel,
                message_ts=ts,
                trigger_id=self.slack.new_trigger_id(),
                response_url=self.slack.new_response_url(channel=channel, user=user, message_ts=ts),
            )
        )

    def acked(self, envelope: Envelope) -> Ack:
        """The envelope's ack, which must come within ACK_BOUND."""
        ack = self.sm.wait_ack(envelope, timeout=5)
        assert ack.latency < ACK_BOUND, (
            f"{envelope.type} acked after {ack.latency:.3f}s (retry {envelope.retry_attempt})"
        )
        return ack


@contextmanager
def socket_bot(settings: Settings, slack: FakeSlack, sm: SocketModeSlack) -> Iterator[SocketBot]:
    service = Service(settings)
    link = SocketMode(service.app, app_token=settings.slack_app_token, client=service.client)
    try:
        link.connect()
        service.ready.set()
        yield SocketBot(service=service, link=link, slack=slack, sm=sm)
    finally:
        link.close()
        service.stop()


@pytest.fixture
def bot(
    database_url: str, content_dir: Path, slack: FakeSlack, sm: SocketModeSlack
) -> Iterator[SocketBot]:
    settings = bot_settings(
        database_url=database_url,
        content_dir=content_dir,
        slack=slack,
        SLACK_APP_TOKEN=APP_TOKEN,
        SLACK_SIGNING_SECRET="",  # Socket Mode needs no signing secret
    )
    with socket_bot(settings, slack, sm) as running:
        yield running


def posts(slack: FakeSlack, channel: str, count: int = 1) -> list[Call]:
    return slack.wait_for(
        "chat.postMessage",
        count=count,
        timeout=10,
        where=lambda c: c.params.get("channel") == channel and c.ok,
    )


def answers(slack: FakeSlack, channel: str, count: int = 1) -> list[Call]:
    """Posted answers (messages with a Helpful button) in ``channel``."""
    return slack.wait_for(
        "chat.postMessage",
        count=count,
        timeout=10,
        where=lambda c: (
            c.params.get("channel") == channel
            and c.ok
            and "Helpful" in json.dumps(c.params.get("blocks"))
        ),
    )


def command_answer(slack: FakeSlack, ack: Ack) -> dict[str, Any]:
    """The /ask answer: in the ack's payload, or posted to the command's response_url."""
    if ack.payload and (ack.payload.get("blocks") or ack.payload.get("text")):
        return ack.payload
    return dict(slack.wait_for("response_url", timeout=10)[-1].params)


def feedback_kinds(service: Service, count: int) -> list[str]:
    deadline = time.monotonic() + 5
    while True:
        with Session(service.db) as session:
            kinds = [f.kind for f in session.exec(select(Feedback))]
        if len(kinds) >= count or time.monotonic() > deadline:
            return kinds
        time.sleep(0.05)


# ---------------------------------------------------------------------- the flows


def test_connects_with_the_app_token_and_gets_hello(bot: SocketBot, slack: FakeSlack) -> None:
    opened = slack.calls_to("apps.connections.open")
    assert len(opened) == 1 and opened[0].ok
    assert opened[0].headers["authorization"] == f"Bearer {APP_TOKEN}"
    conn = bot.sm.wait_connected()
    assert conn.hello_at is not None and bot.link.connected


def test_dm_question_gets_an_answer(bot: SocketBot, slack: FakeSlack) -> None:
    bot.acked(bot.dm(ANSWERABLE))
    call = posts(slack, "DU1")[0]
    text = block_text(call.params["blocks"])
    assert "From the FAQ: _How do I reset my Compass password?_" in text
    assert "thread_ts" not in call.params


def test_mention_is_answered_in_its_thread(bot: SocketBot, slack: FakeSlack) -> None:
    envelope = bot.sm.send_event(
        {
            "type": "app_mention",
            "channel": "C1",
            "user": "U2",
            "text": encode_text(f"<@UBOT> {ANSWERABLE}"),
            "ts": "1700000200.000100",
        }
    )
    bot.acked(envelope)
    call = posts(slack, "C1")[0]
    assert call.params["thread_ts"] == "1700000200.000100"
    assert "password" in block_text(call.params["blocks"]).lower()


def test_ask_command_is_answered_to_the_asker_only(bot: SocketBot, slack: FakeSlack) -> None:
    envelope = bot.command(ANSWERABLE)
    assert envelope.accepts_response_payload
    answer = command_answer(slack, bot.acked(envelope))
    assert answer.get("response_type", "ephemeral") == "ephemeral"
    assert "password" in block_text(answer.get("blocks") or []).lower()
    assert [c for c in slack.calls_to("chat.postMessage") if c.ok] == []


def test_button_click_is_handled(bot: SocketBot, slack: FakeSlack) -> None:
    bot.acked(bot.dm(ANSWERABLE))
    answer = posts(slack, "DU1")[0]
    bot.acked(bot.click("Helpful", answer))
    assert feedback_kinds(bot.service, 1) == ["helpful"]


def test_retried_envelope_is_answered_once(bot: SocketBot, slack: FakeSlack) -> None:
    first = bot.dm(ANSWERABLE, event_id="EvSocketRetry")
    bot.acked(first)
    retried = bot.sm.retry(first)  # as Slack re-sends an envelope it saw no ack for
    assert (retried.retry_attempt, retried.retry_reason) == (1, "timeout")
    assert retried.payload["event_id"] == "EvSocketRetry"
    bot.acked(retried)
    posts(slack, "DU1")
    bot.acked(bot.dm("When does Compass go live?", user="U2"))  # a marker: seen after both
    posts(slack, "DU2")
    assert len([c for c in slack.calls_to("chat.postMessage") if c.params["channel"] == "DU1"]) == 1


def test_every_envelope_is_acked_within_a_second_after_reconnects(
    bot: SocketBot, slack: FakeSlack
) -> None:
    latencies: list[float] = []
    for round_ in range(3):
        told = bot.sm.refresh()
        bot.sm.wait_connected(newer_than=told)
        dm = bot.dm(ANSWERABLE, user="U2")
        latencies.append(bot.acked(dm).latency)
        latencies.append(bot.acked(bot.command(ANSWERABLE)).latency)
        answer = answers(slack, "DU2", count=round_ + 1)[-1]
        latencies.append(bot.acked(bot.click("Helpful", answer, user="U2")).latency)
    assert max(latencies) < ACK_BOUND, latencies
    # One new connection per refresh: no spare tickets, no connection left unread.
    assert len(slack.calls_to("apps.connections.open")) == 4
    assert feedback_kinds(bot.service, 3) == ["helpful"] * 3


def test_an_envelope_in_flight_during_a_refresh_is_acked(bot: SocketBot, slack: FakeSlack) -> None:
    for _ in range(3):
        envelope = bot.dm(ANSWERABLE)
        told = bot.sm.refresh()  # before the bot has answered the envelope
        bot.acked(envelope)
        bot.sm.wait_connected(newer_than=told)
    posts(slack, "DU1", count=3)


def test_back_to_back_refreshes(bot: SocketBot, slack: FakeSlack) -> None:
    """A disconnect that comes while the bot is still opening the previous replacement."""
    for _ in range(5):
        told = bot.sm.refresh()
        bot.sm.wait_connected(newer_than=told, timeout=3)
    bot.acked(bot.dm(ANSWERABLE))
    posts(slack, "DU1")


def test_old_connection_closed_by_slack_and_dropped_connection_are_replaced(
    slack: FakeSlack, database_url: str, content_dir: Path
) -> None:
    with SocketModeSlack(slack, linger=0.2) as sm:
        settings = bot_settings(
            database_url=database_url,
            content_dir=content_dir,
            slack=slack,
            SLACK_APP_TOKEN=APP_TOKEN,
        )
        with socket_bot(settings, slack, sm) as bot:
            first = sm.wait_connected()
            told = sm.refresh()
            second = sm.wait_connected(newer_than=told)
            sm.wait_closed(first)
            assert first.closed_by == "slack"
            bot.acked(bot.dm(ANSWERABLE))
            sm.drop(second)  # no disconnect message: the bot notices and reconnects
            sm.wait_connected(newer_than=second.id)
            bot.acked(bot.dm(ANSWERABLE, user="U2"))
            posts(slack, "DU2")
            assert len(slack.calls_to("apps.connections.open")) == 3


# ---------------------------------------------------------------------- the endpoint itself


def _connect(url: str) -> websocket.WebSocket:
    ws = websocket.WebSocket()
    ws.connect(url, timeout=5)
    return ws


def test_endpoint_tickets_are_single_use_and_connections_limited(slack: FakeSlack) -> None:
    with SocketModeSlack(slack, max_connections=2):
        client = slack.client(token=APP_TOKEN)
        url = client.apps_connections_open(app_token=APP_TOKEN)["url"]
        ws = _connect(url)
        try:
            hello = json.loads(ws.recv())
            assert hello["type"] == "hello" and hello["num_connections"] == 1
            with pytest.raises(websocket.WebSocketBadStatusException):
                _connect(url)  # the ticket is used up
            ws2 = _connect(client.apps_connections_open(app_token=APP_TOKEN)["url"])
            assert json.loads(ws2.recv())["num_connections"] == 2
            ws3 = _connect(client.apps_connections_open(app_token=APP_TOKEN)["url"])
            assert json.loads(ws3.recv()) == {
                "type": "disconnect",
                "reason": "too_many_websockets",
                "debug_info": {"host": "applink-fake-3"},
            }
            for other in (ws2, ws3):
                other.close()
        finally:
            ws.close()
        with pytest.raises(Exception, match="not_allowed_token_type"):
            slack.client().apps_connections_open(app_token=BOT_TOKEN)


def test_endpoint_retries_an_unacked_event(slack: FakeSlack) -> None:
    with SocketModeSlack(slack, retry_seconds=0.2, max_retries=2) as sm:
        url = slack.client(token=APP_TOKEN).apps_connections_open(app_token=APP_TOKEN)["url"]
        ws = _connect(url)
        try:
            ws.recv()  # hello
            sent = sm.send_event({"type": "app_home_opened", "user": "U1"}, event_id="EvR")
            first, second, third = (json.loads(ws.recv()) for _ in range(3))
            assert [m["retry_attempt"] for m in (first, second, third)] == [0, 1, 2]
            assert [m["retry_reason"] for m in (second, third)] == ["timeout", "timeout"]
            assert len({m["envelope_id"] for m in (first, second, third)}) == 3
            assert first["envelope_id"] == sent.envelope_id
            ws.send(json.dumps({"envelope_id": third["envelope_id"]}))
            assert sm.wait_ack(sm.attempts("EvR")[2]).payload is None
        finally:
            ws.close()


# ---------------------------------------------------------------------- `mobilize run`


def _run_env(slack: FakeSlack, tmp_path: Path, content_dir: Path, **values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLACK_", "MOBILIZE_"))}
    env.update(
        {
            "SLACK_API_URL": slack.url,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'run.db'}",
            "MOBILIZE_CONTENT_DIR": str(content_dir),
            "MOBILIZE_EMBEDDING_MODEL": "none",
            "MOBILIZE_SURVEY_SECRET": "test-survey-secret",
            "MOBILIZE_SUPPORT_CHANNEL": "CSUPPORT",
            "MOBILIZE_TICK_SECONDS": "3600",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONPATH": str(ROOT),
            "PYTHONUNBUFFERED": "1",
            "MOBILIZE_LOG_LEVEL": "WARNING",
            **values,
        }
    )
    return env


@pytest.mark.parametrize(
    ("values", "args", "expected"),
    [
        (
            {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": "xapp-revoked"},
            [],
            "SLACK_APP_TOKEN was refused by Slack (invalid_auth)",
        ),
        (
            {"SLACK_BOT_TOKEN": BOT_TOKEN, "SLACK_APP_TOKEN": BOT_TOKEN},
            [],
            "SLACK_APP_TOKEN was refused by Slack (not_allowed_token_type)",
        ),
        (
            {"SLACK_BOT_TOKEN": "xoxb-wrong", "SLACK_APP_TOKEN": APP_TOKEN},
            [],
            "SLACK_BOT_TOKEN was refused by Slack (invalid_auth)",
        ),
        (
            {"SLACK_BOT_TOKEN": "xoxb-wrong", "SLACK_SIGNING_SECRET": SIGNING_SECRET},
            ["--http", "--port", "0", "--host", "127.0.0.1"],
            "SLACK_BOT_TOKEN was refused by Slack (invalid_auth)",
        ),
    ],
    ids=["app-token-invalid", "app-token-is-bot-token", "bot-token-socket", "bot-token-http"],
)
def test_run_with_a_refused_token_names_the_setting(
    slack: FakeSlack,
    sm: SocketModeSlack,
    tmp_path: Path,
    content_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    values: dict[str, str],
    args: list[str],
    expected: str,
) -> None:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name in os.environ:
        if name.startswith(("SLACK_", "MOBILIZE_")):
            monkeypatch.delenv(name)
    for name, value in _run_env(slack, tmp_path, content_dir, **values).items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(cli_app, ["run", *args])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a message, no traceback
    assert expected in " ".join(result.output.split()), result.output
    assert "Traceback" not in result.output
    assert slack.calls_to("chat.postMessage") == []


def test_run_in_socket_mode_answers_a_dm(
    slack: FakeSlack, sm: SocketModeSlack, tmp_path: Path, content_dir: Path
) -> None:
    env = _run_env(
        slack, tmp_path, content_dir, SLACK_BOT_TOKEN=BOT_TOKEN, SLACK_APP_TOKEN=APP_TOKEN
    )
    log = tmp_path / "run.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot", "run"], env=env, cwd=tmp_path, stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 30
        while "Mobilize is running in Socket Mode" not in log.read_text():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        sm.wait_connected()
        envelope = sm.send_event(
            {
                "type": "message",
                "channel": "DU1",
                "channel_type": "im",
                "user": "U1",
                "text": encode_text(ANSWERABLE),
                "ts": "1700000100.000100",
            }
        )
        assert sm.wait_ack(envelope, timeout=5).latency < ACK_BOUND
        posts(slack, "DU1")
    finally:
        process.send_signal(signal.SIGINT)  # Ctrl-C
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    output = log.read_text()
    assert process.returncode == 130, output
    assert "Traceback" not in output, output
