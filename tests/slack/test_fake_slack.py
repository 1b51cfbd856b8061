"""Tests of FakeSlack and the signing helpers, driven through a real slack_sdk WebClient."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from slack_bolt import Ack, App, Say
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier

from tests.slack import fake_slack, rules
from tests.slack.fake_slack import APP_TOKEN, FakeSlack
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

MANIFEST = rules.manifest_scopes()
MODAL = {"type": "modal", "title": {"type": "plain_text", "text": "Ask"}, "blocks": []}
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


def _refused(call: Callable[[], object]) -> Any:
    """The SlackResponse of a call that must fail."""
    with pytest.raises(SlackApiError) as excinfo:
        call()
    return excinfo.value.response


def _granted(headers: dict[str, Any]) -> set[str]:
    return set(str(headers["x-oauth-scopes"]).split(","))


def _without_block_ids(blocks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in block.items() if k != "block_id"} for block in blocks]


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
    assert _without_block_ids(plain["messages"][1]["blocks"]) == BLOCKS  # Slack adds block_ids
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


def test_history_pagination(fake: FakeSlack, client: WebClient) -> None:
    fake.add_channel("C2", members=["U1"])
    for i in range(5):  # seeded: five posts in a row would meet chat.postMessage's 1/s
        fake.add_message("C2", f"m{i}", user="U1")
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
    client.chat_postMessage(channel="CSUPPORT", text="other channel has its own bucket")
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
    # users.list is Tier 2 (about 3 calls at once); this test is about pagination, not rates.
    fake.loosen("rate_limits")
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
    opened = client.views_open(trigger_id=fake.new_trigger_id(), view=modal)["view"]
    updated = client.views_update(view_id=opened["id"], view={**modal, "blocks": BLOCKS})["view"]
    assert updated["id"] == opened["id"]
    assert fake.calls_to("views.update")[0].params["view"]["blocks"] == BLOCKS
    with pytest.raises(SlackApiError) as excinfo:
        client.views_update(view_id="VNOPE", view=modal)
    assert _error(excinfo) == "not_found"

    with pytest.raises(SlackApiError) as unscoped:
        client.reactions_add(channel="C1", timestamp="1700000000.000100", name="tada")
    assert unscoped.value.response["needed"] == "reactions:write"  # not in the manifest
    fake.scopes.add("reactions:write")  # a token that has it, to exercise reactions.add
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
    url = fake.new_response_url(channel="C1", user="U1")
    body = json.dumps({"text": "thanks"})
    status, text = post(url, body, {"Content-Type": "application/json"}, retry_num=2)
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


# ---------------------------------------------------------------------- scopes


def test_default_scopes_are_the_manifests(fake: FakeSlack, client: WebClient) -> None:
    assert "chat:write" in MANIFEST
    assert fake.scopes == set(MANIFEST)
    assert _granted(client.auth_test().headers) == MANIFEST


def test_a_method_without_its_scope_answers_missing_scope() -> None:
    with FakeSlack(scopes={"chat:write"}) as fake:
        client = fake.client()
        refused = _refused(lambda: client.users_list())
        assert refused.data == {
            "ok": False,
            "error": "missing_scope",
            "needed": "users:read",
            "provided": "chat:write",
        }
        assert refused.headers["x-oauth-scopes"] == "chat:write"
        assert _refused(lambda: client.usergroups_users_list(usergroup="S1"))["needed"] == (
            "usergroups:read"
        )
        assert _refused(lambda: client.conversations_open(users="U1"))["needed"] == "im:write"
        assert client.chat_postMessage(channel="C1", text="chat:write is enough")["ok"]


@pytest.mark.parametrize(
    ("channel", "scope"),
    [("C1", "channels:history"), ("GLEADS", "groups:history"), ("DU1", "im:history")],
)
def test_history_needs_the_history_scope_of_the_conversation_type(channel: str, scope: str) -> None:
    with FakeSlack(scopes=MANIFEST - {scope}) as fake:
        fake.add_channel("GLEADS", members=["U1"])
        client = fake.client()
        refused = _refused(lambda: client.conversations_history(channel=channel))
        assert refused["error"] == "missing_scope"
        assert refused["needed"] == scope
        assert set(refused["provided"].split(",")) == MANIFEST - {scope}
        fake.scopes.add(scope)
        assert client.conversations_history(channel=channel)["messages"] == []


def test_no_email_without_users_read_email() -> None:
    with FakeSlack(scopes=MANIFEST - {"users:read.email"}) as fake:
        client = fake.client()
        alice = client.users_info(user="U1")["user"]
        assert alice["profile"]["real_name"] == "Alice Archer"
        assert "email" not in alice["profile"]
        members = client.users_list()["members"]
        assert len(members) == len(fake.users)
        assert all("email" not in m["profile"] for m in members)
        # users.lookupByEmail needs users:read.email itself
        refused = _refused(lambda: client.users_lookupByEmail(email="alice@example.com"))
        assert (refused["error"], refused["needed"]) == ("missing_scope", "users:read.email")
        assert fake.users["U1"]["profile"]["email"] == "alice@example.com"  # only hidden

    with FakeSlack() as fake:  # the manifest asks for users:read.email
        client = fake.client()
        assert client.users_info(user="U1")["user"]["profile"]["email"] == "alice@example.com"
        listed = {m["id"]: m["profile"].get("email") for m in client.users_list()["members"]}
        assert listed["U2"] == "bob@example.com"
        found = client.users_lookupByEmail(email="chika@example.com")["user"]
        assert (found["id"], found["profile"]["email"]) == ("U3", "chika@example.com")


def test_every_answer_carries_the_granted_scopes(fake: FakeSlack, client: WebClient) -> None:
    assert _granted(client.users_info(user="U1").headers) == MANIFEST
    not_found = _refused(lambda: client.users_info(user="UNOBODY"))
    assert not_found["error"] == "user_not_found"
    assert _granted(not_found.headers) == MANIFEST
    unscoped = _refused(
        lambda: client.reactions_add(channel="C1", timestamp="1700000000.000100", name="tada")
    )
    assert (unscoped["error"], unscoped["needed"]) == ("missing_scope", "reactions:write")
    assert _granted(unscoped.headers) == MANIFEST
    fake.scopes.add("reactions:write")
    assert "reactions:write" in _granted(client.auth_test().headers)


def test_a_wrong_or_missing_token(fake: FakeSlack) -> None:
    wrong = fake.client(token="xoxb-not-this-workspace")
    assert _refused(wrong.auth_test).data == {"ok": False, "error": "invalid_auth"}
    anonymous = fake.client(token="")  # slack_sdk sends no Authorization header
    assert _refused(anonymous.auth_test).data == {"ok": False, "error": "not_authed"}
    assert "authorization" not in fake.calls[-1].headers
    status, text = post(fake.url + "auth.test", "", {"Content-Type": FORM_CONTENT_TYPE})
    assert (status, json.loads(text)) == (200, {"ok": False, "error": "not_authed"})
    # a token in the form body is accepted
    status, text = post(
        fake.url + "auth.test", "token=xoxb-test-token", {"Content-Type": FORM_CONTENT_TYPE}
    )
    assert json.loads(text)["user_id"] == "UBOT"
    assert not fake.messages


def test_an_app_level_method_refuses_the_bot_token(fake: FakeSlack, client: WebClient) -> None:
    fake.add_method(
        "apps.connections.open",
        lambda params: {"url": "wss://127.0.0.1/link/?ticket=1"},
        token="app",
        scope="connections:write",
    )
    refused = _refused(lambda: client.api_call("apps.connections.open"))
    assert refused.data == {"ok": False, "error": "not_allowed_token_type"}
    opened = client.apps_connections_open(app_token=APP_TOKEN)
    assert opened["url"].startswith("wss://")
    assert opened.headers["x-oauth-scopes"] == "connections:write"
    # and an app-level token is no bot token
    app = fake.client(token=APP_TOKEN)
    assert _refused(lambda: app.chat_postMessage(channel="C1", text="hi"))["error"] == (
        "not_allowed_token_type"
    )
    fake.app_scopes.clear()
    refused = _refused(lambda: client.apps_connections_open(app_token=APP_TOKEN))
    assert (refused["error"], refused["needed"]) == ("missing_scope", "connections:write")


# ---------------------------------------------------------------------- form reads


def test_read_methods_ignore_a_json_body(fake: FakeSlack, client: WebClient) -> None:
    fake.usergroup_members["S1"] = ["U1", "U3"]
    as_json = _refused(lambda: client.api_call("usergroups.users.list", json={"usergroup": "S1"}))
    assert as_json.data == {"ok": False, "error": "no_such_subteam"}
    (ignored,) = fake.calls_to("usergroups.users.list")
    assert "usergroup" not in ignored.params  # answered as if no argument was given
    as_form = client.api_call("usergroups.users.list", data={"usergroup": "S1"})
    assert as_form["users"] == ["U1", "U3"]
    assert client.usergroups_users_list(usergroup="S1")["users"] == ["U1", "U3"]  # a GET

    no_argument = _refused(lambda: client.api_call("users.info"))
    assert _refused(lambda: client.api_call("users.info", json={"user": "U1"})).data == (
        no_argument.data
    )
    assert no_argument.data == {"ok": False, "error": "user_not_found"}


def test_read_methods_take_the_query_string_and_form_body_write_methods_json(
    fake: FakeSlack,
) -> None:
    bearer = {"Authorization": "Bearer xoxb-test-token"}
    as_json = {**bearer, "Content-Type": "application/json; charset=utf-8"}
    status, text = post(fake.url + "users.info?user=U2", json.dumps({"user": "U1"}), as_json)
    assert (status, json.loads(text)["user"]["id"]) == (200, "U2")  # the body is not read
    status, text = post(
        fake.url + "users.info", "user=U3", {**bearer, "Content-Type": FORM_CONTENT_TYPE}
    )
    assert json.loads(text)["user"]["id"] == "U3"
    status, text = post(
        fake.url + "chat.postMessage", json.dumps({"channel": "C1", "text": "hi"}), as_json
    )
    assert json.loads(text)["channel"] == "C1"
    assert fake.messages["C1"][0]["text"] == "hi"


# ---------------------------------------------------------------------- membership


def _channels(fake: FakeSlack) -> None:
    fake.add_channel("CPUB", name="announcements", members=["U1"], bot=False)
    fake.add_channel("GPRIV", name="leads", members=["U1"], bot=False)
    fake.add_channel("GMINE", name="ops", members=["U2"])
    fake.add_channel("COLD", name="old", members=["U1"], archived=True)


def test_the_bot_posts_and_reads_only_where_it_is_a_member(
    fake: FakeSlack, client: WebClient
) -> None:
    _channels(fake)
    not_in = {"ok": False, "error": "not_in_channel"}
    hidden = {"ok": False, "error": "channel_not_found"}
    assert _refused(lambda: client.chat_postMessage(channel="CPUB", text="hi")).data == not_in
    assert _refused(lambda: client.chat_postMessage(channel="GPRIV", text="hi")).data == hidden
    assert _refused(lambda: client.chat_postMessage(channel="CNONE", text="hi")).data == hidden
    assert _refused(lambda: client.conversations_history(channel="CPUB")).data == not_in
    assert _refused(lambda: client.conversations_history(channel="GPRIV")).data == hidden
    assert _refused(lambda: client.chat_postMessage(channel="COLD", text="hi")).data == {
        "ok": False,
        "error": "is_archived",
    }
    assert client.chat_postMessage(channel="GMINE", text="hi")["channel"] == "GMINE"
    assert set(fake.messages) == {"GMINE"}
    # the manifest has no channels:join: the bot waits for /invite
    refused = _refused(lambda: client.conversations_join(channel="CPUB"))
    assert (refused["error"], refused["needed"]) == ("missing_scope", "channels:join")


def test_chat_write_public_posts_to_public_channels_only() -> None:
    with FakeSlack(scopes=MANIFEST | {"chat:write.public"}) as fake:
        _channels(fake)
        client = fake.client()
        assert client.chat_postMessage(channel="CPUB", text="hi")["channel"] == "CPUB"
        assert _refused(lambda: client.chat_postMessage(channel="GPRIV", text="hi"))["error"] == (
            "channel_not_found"
        )
        # reading still needs membership
        assert _refused(lambda: client.conversations_history(channel="CPUB"))["error"] == (
            "not_in_channel"
        )


def test_conversations_join() -> None:
    with FakeSlack(scopes=MANIFEST | {"channels:join"}) as fake:
        _channels(fake)
        client = fake.client()
        joined = client.conversations_join(channel="CPUB")["channel"]
        assert (joined["id"], joined["is_member"]) == ("CPUB", True)
        assert fake.channel_members["CPUB"] == ["U1", "UBOT"]
        assert client.conversations_history(channel="CPUB")["messages"] == []
        assert client.chat_postMessage(channel="CPUB", text="hello")["ok"]
        assert _refused(lambda: client.conversations_join(channel="GPRIV"))["error"] == (
            "channel_not_found"
        )
        assert _refused(lambda: client.conversations_join(channel="COLD"))["error"] == (
            "is_archived"
        )


def test_conversations_info_and_list(fake: FakeSlack, client: WebClient) -> None:
    _channels(fake)
    general = client.conversations_info(channel="C1")["channel"]
    assert (general["name"], general["is_member"], general["is_private"]) == (
        "general",
        True,
        False,
    )
    outside = client.conversations_info(channel="CPUB")["channel"]
    assert (outside["name"], outside["is_member"]) == ("announcements", False)
    ops = client.conversations_info(channel="GMINE")["channel"]
    assert (ops["is_private"], ops["is_member"]) == (True, True)
    assert client.conversations_info(channel="COLD")["channel"]["is_archived"] is True
    assert _refused(lambda: client.conversations_info(channel="GPRIV"))["error"] == (
        "channel_not_found"
    )

    def ids(**kwargs: Any) -> list[str]:
        return [c["id"] for c in client.conversations_list(**kwargs)["channels"]]

    assert ids() == ["C1", "COLD", "CPUB", "CSUPPORT"]  # public channels by default
    assert ids(types="public_channel,private_channel") == [
        "C1",
        "COLD",
        "CPUB",
        "CSUPPORT",
        "GMINE",  # private channels only where the bot is a member
    ]
    assert ids(exclude_archived=True) == ["C1", "CPUB", "CSUPPORT"]
    refused = _refused(lambda: client.conversations_list(types="im"))
    assert (refused["error"], refused["needed"]) == ("missing_scope", "im:read")


# ---------------------------------------------------------------------- encoding


def test_encode_text_as_slack_sends_it() -> None:
    text = "a & b <c> <@U1> <https://x.example/?a=1&b=2|label & more> <!here>"
    assert rules.encode_text(text) == (
        "a &amp; b &lt;c&gt; <@U1> <https://x.example/?a=1&amp;b=2|label &amp; more> <!here>"
    )
    assert rules.encode_text("<#C1|general> <mailto:a@x.example|mail> 1 > 0") == (
        "<#C1|general> <mailto:a@x.example|mail> 1 &gt; 0"
    )


# ---------------------------------------------------------------------- rate limits


def test_chat_post_message_one_per_second_per_channel(fake: FakeSlack) -> None:
    client = fake.client(retry_handlers=[])
    burst = int(fake_slack.POST_BURST)
    assert fake_slack.POST_PER_CHANNEL == 1.0 and 1 <= burst <= 5  # a small burst
    for i in range(burst):
        client.chat_postMessage(channel="C1", text=f"m{i}")
    refused = _refused(lambda: client.chat_postMessage(channel="C1", text="one too many"))
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert refused.data == {"ok": False, "error": "ratelimited"}
    assert client.chat_postMessage(channel="CSUPPORT", text="its own bucket")["ok"]
    assert len(fake.messages["C1"]) == burst
    assert fake.rejected_429 == 1


def test_chat_post_message_workspace_cap(fake: FakeSlack) -> None:
    client = fake.client(retry_handlers=[])
    channels = [f"CW{i:03d}" for i in range(150)]
    for channel in channels:
        fake.add_channel(channel)
    posted = 0
    refused: Any = None
    started = time.monotonic()
    for channel in channels:
        try:
            client.chat_postMessage(channel=channel, text="hi")
        except SlackApiError as e:
            refused = e.response
            break
        posted += 1
    elapsed = time.monotonic() - started
    assert refused is not None, f"{posted} posts in {elapsed:.2f}s never met the cap"
    # every channel was fresh, so the workspace budget refused it
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    burst, rate = fake_slack.POST_WORKSPACE_BURST, fake_slack.POST_WORKSPACE
    assert burst <= posted <= burst + rate * elapsed + 1


def test_tier_3_chat_update_answers_429_after_its_burst(fake: FakeSlack) -> None:
    client = fake.client(retry_handlers=[])
    ts = client.chat_postMessage(channel="C1", text="v0")["ts"]
    updates = 0
    with pytest.raises(SlackApiError) as excinfo:
        for i in range(1, 80):
            client.chat_update(channel="C1", ts=ts, text=f"v{i}")
            updates += 1
    refused = excinfo.value.response
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    assert rules.METHOD_TIERS["chat.update"] == rules.TIER_3 == 50
    assert 50 <= updates <= 52  # a minute's worth at once, then one every 1.2 s
    assert fake.messages["C1"][0]["text"] == f"v{updates}"  # the refused one had no effect

    fake.loosen("rate_limits")  # lifts every limit
    for i in range(20):
        client.chat_update(channel="C1", ts=ts, text=f"w{i}")
        client.chat_postMessage(channel="C1", text=f"p{i}")
    assert fake.rejected_429 == 1


def test_loosen_only_by_the_name_of_a_rule(fake: FakeSlack) -> None:
    with pytest.raises(ValueError, match="nonsense"):
        fake.loosen("nonsense")
    with pytest.raises(ValueError, match="nonsense"):
        FakeSlack(loosen={"nonsense"})
    assert fake.loosened == set()
    fake.loosen("block_kit", "trigger_ids")
    assert fake.loosened == {"block_kit", "trigger_ids"}


# ---------------------------------------------------------------------- Block Kit


def _section(text: str, **fields: Any) -> dict[str, Any]:
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}, **fields}


def _button(label: str, action_id: str = "go") -> dict[str, Any]:
    text = {"type": "plain_text", "text": label}
    return {"type": "button", "text": text, "action_id": action_id, "value": "1"}


def _actions(*elements: dict[str, Any]) -> dict[str, Any]:
    return {"type": "actions", "elements": list(elements)}


@pytest.mark.parametrize(
    ("blocks", "pointer"),
    [
        pytest.param([_section("x")] * 51, "/blocks", id="51-blocks"),
        pytest.param([_section("x" * 3001)], "/blocks/0/text/text", id="section-text-3001"),
        pytest.param(
            [_actions(_button("x" * 76))], "/blocks/0/elements/0/text/text", id="button-76"
        ),
        pytest.param(
            [_actions(_button("Yes", "vote"), _button("No", "vote"))],
            "/blocks/0/elements/1/action_id",
            id="duplicate-action_id",
        ),
        pytest.param(
            [_section("a", block_id="b"), _section("b", block_id="b")],
            "/blocks/1/block_id",
            id="duplicate-block_id",
        ),
    ],
)
def test_invalid_blocks(
    fake: FakeSlack, client: WebClient, blocks: list[dict[str, Any]], pointer: str
) -> None:
    refused = _refused(lambda: client.chat_postMessage(channel="C1", text="hi", blocks=blocks))
    assert refused["error"] == "invalid_blocks"
    (error,) = refused["errors"]
    assert error.endswith(f"[json-pointer:{pointer}]")
    assert fake.messages == {}


def test_block_kit_limits_are_inclusive(fake: FakeSlack, client: WebClient) -> None:
    accepted = {
        "C1": [_section("x")] * 50,
        "CSUPPORT": [_section("x" * 3000)],
        "U1": [_actions(_button("x" * 75))],
        # an action_id is unique within its block; another block may reuse it
        "U2": [_actions(_button("Yes", "vote")), _actions(_button("No", "vote"))],
    }
    for channel, blocks in accepted.items():
        assert client.chat_postMessage(channel=channel, text="hi", blocks=blocks)["ok"]


def test_text_over_40000_characters_is_msg_too_long(fake: FakeSlack, client: WebClient) -> None:
    refused = _refused(lambda: client.chat_postMessage(channel="C1", text="x" * 40_001))
    assert refused.data == {"ok": False, "error": "msg_too_long"}
    assert fake.messages == {}
    assert client.chat_postMessage(channel="C1", text="x" * 40_000)["ok"]


def test_block_ids_are_generated_when_missing_and_kept_when_given(
    fake: FakeSlack, client: WebClient
) -> None:
    blocks = [_section("one"), _section("two", block_id="mine"), _section("three")]
    message = client.chat_postMessage(channel="C1", text="t", blocks=blocks)["message"]
    ids = [block["block_id"] for block in message["blocks"]]
    assert ids[1] == "mine"
    assert all(isinstance(i, str) and i for i in ids)
    assert len(set(ids)) == 3
    assert _without_block_ids(message["blocks"]) == _without_block_ids(blocks)
    (stored,) = client.conversations_history(channel="C1")["messages"]
    assert stored["blocks"] == message["blocks"]  # the same block_ids on every read


# ---------------------------------------------------------------------- trigger_id


def test_views_open_takes_a_fresh_trigger_id_once(fake: FakeSlack, client: WebClient) -> None:
    trigger = fake.new_trigger_id()
    assert client.views_open(trigger_id=trigger, view=MODAL)["view"]["type"] == "modal"
    again = _refused(lambda: client.views_open(trigger_id=trigger, view=MODAL))
    assert again.data == {"ok": False, "error": "exchanged_trigger_id"}
    unknown = _refused(lambda: client.views_open(trigger_id="12345.98765.abcdef", view=MODAL))
    assert unknown.data == {"ok": False, "error": "invalid_trigger_id"}
    assert len(fake.views) == 1


def test_an_expired_trigger_id(
    fake: FakeSlack, client: WebClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake_slack, "TRIGGER_SECONDS", 0.01)  # instead of waiting 3 s
    trigger = fake.new_trigger_id()
    time.sleep(0.05)
    expired = _refused(lambda: client.views_open(trigger_id=trigger, view=MODAL))
    assert expired.data == {"ok": False, "error": "expired_trigger_id"}
    assert fake.views == {}


# ---------------------------------------------------------------------- response_url


def _respond(url: str, **payload: Any) -> tuple[int, dict[str, Any]]:
    status, text = post(url, json.dumps(payload), {"Content-Type": "application/json"})
    return status, json.loads(text)


def test_a_response_url_is_good_for_five_uses(fake: FakeSlack, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="C1", text="Vote", blocks=BLOCKS)
    url = fake.new_response_url(channel="C1", user="U1", message_ts=posted["ts"])
    for i in range(1, 6):
        assert _respond(url, replace_original=True, text=f"edit {i}") == (200, {"ok": True})
    assert _respond(url, replace_original=True, text="edit 6") == (
        404,
        {"ok": False, "error": "used_url"},
    )
    (message,) = fake.messages["C1"]
    assert (message["ts"], message["text"]) == (posted["ts"], "edit 5")
    assert [c.status for c in fake.calls_to("response_url")] == [200] * 5 + [404]


def test_response_url_replace_delete_and_ephemeral(fake: FakeSlack, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="C1", text="Vote", blocks=BLOCKS)
    url = fake.new_response_url(channel="C1", user="U1", message_ts=posted["ts"])
    thanks = [_section("*Thanks*")]
    assert _respond(url, replace_original=True, text="Thanks", blocks=thanks) == (
        200,
        {"ok": True},
    )
    (message,) = fake.messages["C1"]
    assert (message["ts"], message["text"]) == (posted["ts"], "Thanks")
    assert _without_block_ids(message["blocks"]) == thanks
    assert message["blocks"][0]["block_id"]
    assert message["edited"]["user"] == "UBOT"
    assert fake.ephemeral == []

    assert _respond(url, delete_original=True) == (200, {"ok": True})
    assert fake.messages["C1"] == []

    only_you = fake.new_response_url(channel="C1", user="U2", ephemeral=True)
    assert _respond(only_you, text="only you") == (200, {"ok": True})
    (seen,) = fake.ephemeral
    assert (seen["channel"], seen["user"], seen["text"]) == ("C1", "U2", "only you")
    assert fake.messages["C1"] == []

    everyone = fake.new_response_url(channel="C1", user="U2")
    assert _respond(everyone, response_type="in_channel", text="for all") == (200, {"ok": True})
    assert [m["text"] for m in fake.messages["C1"]] == ["for all"]
    assert _respond(fake.new_response_url(channel="C1", user="U2"), text="") == (
        400,
        {"ok": False, "error": "no_text"},
    )
