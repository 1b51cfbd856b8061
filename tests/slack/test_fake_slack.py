"""Tests of FakeSlack and the signing helpers, driven through a real slack_sdk WebClient."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from slack_bolt import Ack, App, Say
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from tests.slack.fake_slack import FakeSlack
from tests.slack.signing import (
    FORM_CONTENT_TYPE,
    SIGNING_SECRET,
    action_body,
    block_action,
    bolt_server,
    command_body,
    event_body,
    post,
    signed_headers,
)

METADATA = {"event_type": "announcement_posted", "event_payload": {"announcement_id": 7}}
BLOCKS = [{"type": "section", "text": {"type": "mrkdwn", "text": "*Go-live* is Monday"}}]


@pytest.fixture
def fake() -> Iterator[FakeSlack]:
    with FakeSlack() as server:
        yield server


@pytest.fixture
def client(fake: FakeSlack) -> WebClient:
    return fake.client()


def _error(excinfo: pytest.ExceptionInfo[SlackApiError]) -> str:
    return str(excinfo.value.response["error"])


def test_auth_test_and_headers(fake: FakeSlack, client: WebClient) -> None:
    resp = client.auth_test()
    assert resp["user_id"] == "UBOT"
    assert resp["bot_id"] == "BBOT"
    assert resp["team_id"] == "T1"
    assert resp.headers["Content-Type"].startswith("application/json")
    (call,) = fake.calls_to("auth.test")
    assert call.headers["authorization"] == "Bearer xoxb-test-token"
    assert call.ok


def test_post_and_history_round_trip_with_metadata(fake: FakeSlack, client: WebClient) -> None:
    first = client.chat_postMessage(channel="C1", text="Go-live", blocks=BLOCKS, metadata=METADATA)
    assert first["channel"] == "C1"
    assert first["ts"] == "1700000000.000100"
    assert first["message"]["metadata"] == METADATA
    # The form-encoded path: slack_sdk/Slack send blocks and metadata as JSON strings.
    second = client.api_call(
        "chat.postMessage",
        params={"channel": "C1", "text": "second", "metadata": json.dumps(METADATA)},
    )
    assert float(second["ts"]) > float(first["ts"])
    call = fake.calls_to("chat.postMessage")[1]
    assert call.params["metadata"] == METADATA

    reply = client.chat_postMessage(channel="C1", text="in thread", thread_ts=first["ts"])

    plain = client.conversations_history(channel="C1")
    assert [m["text"] for m in plain["messages"]] == ["second", "Go-live"]  # newest first
    assert all("metadata" not in m for m in plain["messages"])
    assert plain["messages"][1]["blocks"] == BLOCKS
    assert plain["messages"][1]["reply_count"] == 1

    full = client.conversations_history(channel="C1", include_all_metadata=True)
    assert full["messages"][1]["metadata"] == METADATA
    newer = client.conversations_history(channel="C1", oldest=first["ts"])
    assert [m["text"] for m in newer["messages"]] == ["second"]

    thread = client.conversations_replies(channel="C1", ts=first["ts"], include_all_metadata=True)
    assert [m["ts"] for m in thread["messages"]] == [first["ts"], reply["ts"]]
    assert thread["messages"][0]["metadata"] == METADATA

    dm = client.chat_postMessage(channel="U2", text="hello Bob")
    assert dm["channel"] == "DU2"
    assert client.conversations_open(users="U2")["channel"]["id"] == "DU2"
    assert [m["text"] for m in client.conversations_history(channel="DU2")["messages"]] == [
        "hello Bob"
    ]


def test_history_pagination(client: WebClient) -> None:
    for i in range(5):
        client.chat_postMessage(channel="C2", text=f"m{i}")
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = client.conversations_history(channel="C2", limit=2, cursor=cursor)
        pages += 1
        seen += [m["text"] for m in page["messages"]]
        cursor = page["response_metadata"]["next_cursor"]
        assert page["has_more"] is bool(cursor)
        if not cursor:
            break
    assert pages == 3
    assert seen == ["m4", "m3", "m2", "m1", "m0"]


def test_update_and_delete(fake: FakeSlack, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="U1", text="Vote now", blocks=BLOCKS)
    channel, ts = posted["channel"], posted["ts"]
    updated = client.chat_update(channel=channel, ts=ts, text="Thanks for voting", blocks=[])
    assert updated["ts"] == ts
    assert updated["message"]["text"] == "Thanks for voting"
    (stored,) = client.conversations_history(channel=channel)["messages"]
    assert stored["text"] == "Thanks for voting"
    assert stored["blocks"] == []
    assert "edited" in stored

    fake.add_message("C1", "a human said this", user="U3", ts="1699999999.000001")
    with pytest.raises(SlackApiError) as denied:
        client.chat_update(channel="C1", ts="1699999999.000001", text="nope")
    assert _error(denied) == "cant_update_message"

    assert client.chat_delete(channel=channel, ts=ts)["ts"] == ts
    assert client.conversations_history(channel=channel)["messages"] == []
    with pytest.raises(SlackApiError) as missing:
        client.chat_update(channel=channel, ts=ts, text="again")
    assert _error(missing) == "message_not_found"
    with pytest.raises(SlackApiError) as gone:
        client.chat_delete(channel=channel, ts=ts)
    assert _error(gone) == "message_not_found"


def test_rate_limit_is_surfaced_as_429(fake: FakeSlack) -> None:
    client = fake.client(retry_handlers=[])
    fake.rate_limit("chat.postMessage", retry_after=7)
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C1", text="hi")
    response = excinfo.value.response
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"
    assert response["error"] == "ratelimited"
    assert fake.rejected_429 == 1
    assert fake.messages == {}  # the rejected call had no effect

    assert client.chat_postMessage(channel="C1", text="hi")["ok"]
    statuses = [c.status for c in fake.calls_to("chat.postMessage")]
    assert statuses == [429, 200]


def test_fail_answers_errors_then_recovers(fake: FakeSlack, client: WebClient) -> None:
    fake.fail("users.info", "internal_error", times=2)
    for _ in range(2):
        with pytest.raises(SlackApiError) as excinfo:
            client.users_info(user="U1")
        assert _error(excinfo) == "internal_error"
    assert client.users_info(user="U1")["user"]["id"] == "U1"
    assert [c.ok for c in fake.calls_to("users.info")] == [False, False, True]


def test_token_bucket_limit(fake: FakeSlack) -> None:
    client = fake.client(retry_handlers=[])
    fake.limit("chat.postMessage", per_second=1, per_channel=True, burst=2)
    client.chat_postMessage(channel="C1", text="1")
    client.chat_postMessage(channel="C1", text="2")
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C1", text="3")
    assert excinfo.value.response.status_code == 429
    assert excinfo.value.response.headers["Retry-After"] == "1"
    client.chat_postMessage(channel="C2", text="other channel has its own bucket")
    assert fake.rejected_429 == 1
    assert [m["text"] for m in fake.messages["C1"]] == ["1", "2"]


def test_users(fake: FakeSlack, client: WebClient) -> None:
    alice = client.users_info(user="U1")["user"]
    assert alice["tz"] == "Europe/London"
    assert client.users_info(user="U2")["user"]["tz"] == "America/New_York"
    assert client.users_info(user="U3")["user"]["tz"] == "Asia/Tokyo"
    assert client.users_info(user="UBOT")["user"]["is_bot"] is True
    assert any(u["deleted"] for u in fake.users.values())
    with pytest.raises(SlackApiError) as excinfo:
        client.users_info(user="UNOBODY")
    assert _error(excinfo) == "user_not_found"

    fake.add_user("U7", real_name="Grace Hopper", email="grace@example.com", is_restricted=True)
    found = client.users_lookupByEmail(email="Grace@Example.com")["user"]
    assert found["id"] == "U7"
    assert found["profile"]["first_name"] == "Grace"
    assert found["is_restricted"] is True
    with pytest.raises(SlackApiError) as missing:
        client.users_lookupByEmail(email="nobody@example.com")
    assert _error(missing) == "users_not_found"


def test_users_list_pagination(fake: FakeSlack, client: WebClient) -> None:
    for i in range(10, 17):
        fake.add_user(f"U{i}")
    ids: list[str] = []
    pages = 0
    for page in client.users_list(limit=3):  # SlackResponse follows next_cursor
        pages += 1
        ids += [m["id"] for m in page["members"]]
    assert ids == list(fake.users)
    assert pages == (len(fake.users) + 2) // 3
    with pytest.raises(SlackApiError) as excinfo:
        client.users_list(cursor="not-a-cursor")
    assert _error(excinfo) == "invalid_cursor"


def test_conversations_members_pagination(fake: FakeSlack, client: WebClient) -> None:
    fake.channel_members["C9"] = [f"U{i}" for i in range(1, 6)]
    first = client.conversations_members(channel="C9", limit=2)
    assert first["members"] == ["U1", "U2"]
    members = [
        m for page in client.conversations_members(channel="C9", limit=2) for m in page["members"]
    ]
    assert members == fake.channel_members["C9"]
    with pytest.raises(SlackApiError) as excinfo:
        client.conversations_members(channel="CNOPE")
    assert _error(excinfo) == "channel_not_found"

    fake.usergroup_members["S1"] = ["U1", "U3"]
    assert client.usergroups_users_list(usergroup="S1")["users"] == ["U1", "U3"]


def test_views_reactions_ephemeral_permalink(fake: FakeSlack, client: WebClient) -> None:
    home = {"type": "home", "blocks": BLOCKS}
    published = client.views_publish(user_id="U1", view=home)["view"]
    again = client.views_publish(user_id="U1", view=home, hash=published["hash"])["view"]
    assert again["id"] == published["id"]
    assert fake.home_views["U1"]["blocks"] == BLOCKS

    modal = {"type": "modal", "title": {"type": "plain_text", "text": "Ask"}, "blocks": []}
    opened = client.views_open(trigger_id="111.222", view=modal)["view"]
    updated = client.views_update(view_id=opened["id"], view={**modal, "blocks": BLOCKS})["view"]
    assert updated["id"] == opened["id"]
    assert fake.calls_to("views.update")[0].params["view"]["blocks"] == BLOCKS
    with pytest.raises(SlackApiError) as excinfo:
        client.views_update(view_id="VNOPE", view=modal)
    assert _error(excinfo) == "not_found"

    posted = client.chat_postMessage(channel="C1", text="react to me")
    client.reactions_add(channel="C1", timestamp=posted["ts"], name="tada")
    assert fake.messages["C1"][0]["reactions"][0]["name"] == "tada"
    eph = client.chat_postEphemeral(channel="C1", user="U2", text="only you")
    assert fake.ephemeral[0]["message_ts"] == eph["message_ts"]
    link = client.chat_getPermalink(channel="C1", message_ts=posted["ts"])["permalink"]
    assert link == f"https://example.slack.com/archives/C1/p{posted['ts'].replace('.', '')}"


def test_unknown_method_is_recorded(fake: FakeSlack, client: WebClient) -> None:
    with pytest.raises(SlackApiError) as excinfo:
        client.api_call("admin.nonsense", params={"x": "1"})
    assert _error(excinfo) == "unknown_method"
    assert fake.calls_to("admin.nonsense")[0].params == {"x": "1"}


def test_wait_for(fake: FakeSlack, client: WebClient) -> None:
    def later() -> None:
        time.sleep(0.05)
        client.chat_postMessage(channel="C1", text="late")

    worker = threading.Thread(target=later)
    worker.start()
    (call,) = fake.wait_for(
        "chat.postMessage", timeout=2, where=lambda c: c.params["text"] == "late"
    )
    worker.join()
    assert call.params["channel"] == "C1"

    with pytest.raises(AssertionError) as excinfo:
        fake.wait_for("views.publish", timeout=0.05)
    assert "chat.postMessage" in str(excinfo.value)
    assert "'views.publish'" in str(excinfo.value)


def test_signed_headers_are_accepted_by_slack_sdk() -> None:
    verifier = SignatureVerifier(SIGNING_SECRET)
    body = event_body({"type": "app_mention", "user": "U1", "text": "hi", "channel": "C1"})
    assert json.loads(body)["type"] == "event_callback"
    assert verifier.is_valid_request(body, signed_headers(body))

    form = command_body("/mobilize", "status")
    assert verifier.is_valid_request(form, signed_headers(form, content_type=FORM_CONTENT_TYPE))

    stale = signed_headers(body, timestamp=int(time.time()) - 600)
    assert not verifier.is_valid_request(body, stale)
    assert not verifier.is_valid_request(body + " ", signed_headers(body))
    assert not verifier.is_valid_request(body, signed_headers(body, secret="other-secret"))


def test_post_adds_retry_headers_and_stays_on_loopback(fake: FakeSlack) -> None:
    status, text = post(fake.response_url, "{}", {"Content-Type": "application/json"}, retry_num=2)
    assert status == 200
    assert json.loads(text)["ok"] is True
    (call,) = fake.calls_to("response_url")
    assert call.headers["x-slack-retry-num"] == "2"
    assert call.headers["x-slack-retry-reason"] == "http_timeout"
    with pytest.raises(ValueError):
        post("https://slack.com/api/auth.test", "", {})


def test_drives_a_bolt_app_end_to_end(fake: FakeSlack) -> None:
    app = App(client=fake.client(), signing_secret=SIGNING_SECRET)

    @app.event("app_mention")
    def mention(event: dict[str, Any], say: Say) -> None:
        say(text=f"hello <@{event['user']}>")

    @app.command("/mobilize")
    def command(ack: Ack, command: dict[str, Any], client: WebClient) -> None:
        ack()
        client.chat_postMessage(channel=command["user_id"], text=f"status: {command['text']}")

    @app.action("vote")
    def vote(ack: Ack, body: dict[str, Any], client: WebClient) -> None:
        ack()
        client.chat_update(channel=body["channel"]["id"], ts=body["message"]["ts"], text="voted")

    assert fake.calls_to("auth.test")  # Bolt verified the token at start-up

    with bolt_server(app) as url:
        body = event_body(
            {"type": "app_mention", "user": "U2", "text": "<@UBOT> hi", "channel": "C1"}
        )
        assert post(url, body, signed_headers(body))[0] == 200
        (said,) = fake.wait_for("chat.postMessage", where=lambda c: c.params["channel"] == "C1")
        assert said.params["text"] == "hello <@U2>"

        form = command_body("/mobilize", "now")
        assert post(url, form, signed_headers(form, content_type=FORM_CONTENT_TYPE))[0] == 200
        (dm,) = fake.wait_for("chat.postMessage", where=lambda c: c.params["channel"] == "U1")
        assert dm.response["channel"] == "DU1"

        clicked = action_body(
            block_action(action_id="vote", value="yes", message_ts=dm.response["ts"])
        )
        assert post(url, clicked, signed_headers(clicked, content_type=FORM_CONTENT_TYPE))[0] == 200
        fake.wait_for("chat.update")
        assert fake.messages["DU1"][0]["text"] == "voted"

        stale = signed_headers(body, timestamp=int(time.time()) - 600)
        assert post(url, body, stale)[0] == 401
