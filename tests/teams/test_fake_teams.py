"""Tests of the loopback Teams doubles: each strict rule answers as Microsoft's service does, the
Teams SDK's own token validator and REST client work against them, and a round trip over httpx."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import pytest

with warnings.catch_warnings():  # the SDK warns about its preview features on import
    warnings.simplefilter("ignore")
    from microsoft_teams.api import ApiClient
    from microsoft_teams.api.activities.message.message import MessageActivityInput
    from microsoft_teams.api.auth.cloud_environment import PUBLIC, with_overrides
    from microsoft_teams.api.clients.conversation import CreateConversationParams
    from microsoft_teams.api.models import Account
    from microsoft_teams.apps.auth import TokenValidator
    from microsoft_teams.common import ClientOptions

from tests.teams import rules
from tests.teams.fake_connector import FakeTeams

BOT_SCOPE = rules.BOT_FRAMEWORK_SCOPE
GRAPH_SCOPE = rules.GRAPH_SCOPE


def card(*body: dict[str, Any], version: str = "1.5", **extra: Any) -> dict[str, Any]:
    content = {"type": "AdaptiveCard", "version": version, "body": list(body), **extra}
    return {"contentType": rules.ADAPTIVE_CARD, "content": content}


EVERY_ELEMENT = card(
    {"type": "TextBlock", "text": "Go-live is **Monday**", "wrap": True},
    {"type": "FactSet", "facts": [{"title": "Source", "value": "FAQ 12"}]},
    {
        "type": "ColumnSet",
        "columns": [{"type": "Column", "items": [{"type": "TextBlock", "text": "left"}]}],
    },
    {"type": "Container", "items": [{"type": "TextBlock", "text": "inside"}]},
    {"type": "Input.Text", "id": "comment", "isMultiline": True},
    {
        "type": "Input.ChoiceSet",
        "id": "score",
        "choices": [{"title": "Agree", "value": "4"}, {"title": "Disagree", "value": "2"}],
    },
    {
        "type": "ActionSet",
        "actions": [{"type": "Action.Execute", "verb": "faq.helpful", "data": {"entry": 12}}],
    },
    actions=[
        {"type": "Action.Submit", "title": "Send", "data": {"action": "survey.answer"}},
        {"type": "Action.OpenUrl", "title": "Open", "url": "https://compass.example/help"},
    ],
)


@pytest.fixture
def teams() -> Iterator[FakeTeams]:
    with FakeTeams() as fake:
        yield fake


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(trust_env=False, timeout=10) as client:
        yield client


def token(teams: FakeTeams, http: httpx.Client, scope: str = BOT_SCOPE) -> dict[str, str]:
    answer = http.post(
        teams.identity.token_url,
        data={
            "grant_type": "client_credentials",
            "client_id": teams.app_id,
            "client_secret": teams.identity.app_password,
            "scope": scope,
        },
    )
    assert answer.status_code == 200, answer.text
    return {"Authorization": f"Bearer {answer.json()['access_token']}"}


def open_chat(
    teams: FakeTeams, http: httpx.Client, auth: dict[str, str], user: str
) -> httpx.Response:
    return http.post(
        f"{teams.url}v3/conversations",
        json={
            "bot": {"id": teams.bot_id},
            "members": [{"id": teams.user(user).teams_id}],
            "channelData": {"tenant": {"id": teams.tenant_id}},
        },
        headers=auth,
    )


def post(
    http: httpx.Client, teams: FakeTeams, auth: dict[str, str], cid: str, activity: dict[str, Any]
) -> httpx.Response:
    return http.post(f"{teams.url}v3/conversations/{cid}/activities", json=activity, headers=auth)


# ---------------------------------------------------------------------- identity


def test_metadata_and_keys_as_the_bot_framework_publishes_them(
    teams: FakeTeams, http: httpx.Client
) -> None:
    metadata = http.get(teams.identity.openid_metadata_url).json()
    assert metadata["issuer"] == "https://api.botframework.com"
    assert metadata["id_token_signing_alg_values_supported"] == ["RS256"]
    assert metadata["jwks_uri"] == teams.identity.jwks_url
    keys = http.get(metadata["jwks_uri"]).json()["keys"]
    assert all({"kid", "n", "e", "x5c", "x5t", "endorsements"} <= set(k) for k in keys)
    assert "msteams" in keys[0]["endorsements"]
    # The SDK derives the JWKS address from the metadata address.
    assert (
        teams.identity.openid_metadata_url.removesuffix("openidconfiguration") + "keys"
        == teams.identity.jwks_url
    )


def test_the_sdk_validator_accepts_a_good_activity_token_and_refuses_every_bad_one(
    teams: FakeTeams,
) -> None:
    cloud = with_overrides(PUBLIC, openid_metadata_url=teams.identity.openid_metadata_url)
    validator = TokenValidator.for_service(teams.app_id, cloud=cloud)
    identity, url = teams.identity, teams.url

    def check(raw: str) -> dict[str, Any]:
        return asyncio.run(validator.validate_token(raw, url))

    claims = check(identity.sign_activity_token(url))
    assert claims["serviceurl"] == url and claims["aud"] == teams.app_id
    bad = {
        "expired": identity.sign_activity_token(url, expired=True),
        "audience": identity.sign_activity_token(url, audience="someone-else"),
        "issuer": identity.sign_activity_token(url, issuer="https://evil.example"),
        "unknown kid": identity.sign_activity_token(url, kid="no-such-key"),
        "other key": identity.sign_activity_token(url, key="untrusted"),
        "serviceurl": identity.sign_activity_token("https://smba.example/evil/"),
        "no serviceurl": identity.sign_activity_token(url, omit=["serviceurl"]),
    }
    for why, raw in bad.items():
        with pytest.raises(jwt.PyJWTError):
            check(raw)
            pytest.fail(f"accepted a token with a wrong {why}")
    # In the JWKS but not endorsed for msteams: the SDK does not check endorsements (a bot
    # that does should refuse it); the claim is there for that check.
    unendorsed = identity.sign_activity_token(url, key="unendorsed")
    kid = jwt.get_unverified_header(unendorsed)["kid"]
    assert (
        "msteams" not in next(k for k in identity.jwks()["keys"] if k["kid"] == kid)["endorsements"]
    )


def test_token_endpoint_answers_like_entra(teams: FakeTeams, http: httpx.Client) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": teams.app_id,
        "client_secret": teams.identity.app_password,
        "scope": BOT_SCOPE,
    }
    good = http.post(teams.identity.token_url, data=form).json()
    assert good["token_type"] == "Bearer" and good["expires_in"] == 3599
    claims = jwt.decode(good["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "https://api.botframework.com" and claims["appid"] == teams.app_id

    wrong = http.post(teams.identity.token_url, data={**form, "client_secret": "nope"})
    assert wrong.status_code == 401
    assert wrong.json()["error"] == "invalid_client" and wrong.json()["error_codes"] == [7000215]
    scope = http.post(
        teams.identity.token_url, data={**form, "scope": "https://api.botframework.com"}
    )
    assert (scope.status_code, scope.json()["error"]) == (400, "invalid_scope")
    grant = http.post(teams.identity.token_url, data={**form, "grant_type": "password"})
    assert grant.json()["error"] == "unsupported_grant_type"
    missing = http.post(
        teams.identity.token_url, data={k: v for k, v in form.items() if k != "scope"}
    )
    assert missing.json()["error_codes"] == [900144]
    tenant = http.post(f"{teams.identity.base_url}/botframework.com/oauth2/v2.0/token", data=form)
    assert (tenant.status_code, tenant.json()["error"]) == (400, "unauthorized_client")
    as_json = http.post(teams.identity.token_url, json=form)
    assert as_json.status_code == 400  # Entra reads a form body only

    graph = token(teams, http, GRAPH_SCOPE)["Authorization"][7:]
    roles = jwt.decode(graph, options={"verify_signature": False})["roles"]
    assert set(roles) == rules.GRAPH_DEFAULT_PERMISSIONS
    assert teams.identity.calls_to("Token")[-1].body["scope"] == GRAPH_SCOPE


# ---------------------------------------------------------------------- Bot Connector


def test_round_trip_over_httpx(teams: FakeTeams, http: httpx.Client) -> None:
    auth = token(teams, http)
    created = open_chat(teams, http, auth, "alice")
    assert created.status_code == 201
    cid = created.json()["id"]
    assert cid.startswith("a:")

    sent = post(
        http,
        teams,
        auth,
        cid,
        {"type": "message", "text": "Go-live is Monday", "attachments": [EVERY_ELEMENT]},
    )
    assert sent.status_code == 201, sent.text
    first = sent.json()["id"]
    reply = http.post(
        f"{teams.url}v3/conversations/{cid}/activities/{first}",
        json={"type": "message", "text": "more"},
        headers=auth,
    )
    assert reply.status_code == 201
    assert teams.activity(reply.json()["id"]).reply_to_id == first

    updated = http.put(
        f"{teams.url}v3/conversations/{cid}/activities/{first}",
        json={"type": "message", "text": "Go-live moved"},
        headers=auth,
    )
    assert (updated.status_code, updated.json()) == (200, {"id": first})
    assert teams.activity(first).text == "Go-live moved" and teams.activity(first).updates == 1

    members = http.get(f"{teams.url}v3/conversations/{cid}/members", headers=auth).json()
    assert [m["aadObjectId"] for m in members] == [teams.user("alice").id]

    deleted = http.delete(f"{teams.url}v3/conversations/{cid}/activities/{first}", headers=auth)
    assert deleted.status_code == 200
    assert [a.text for a in teams.activities(cid)] == ["more"]
    assert teams.deleted[0].id == first

    (call,) = teams.wait_for("UpdateActivity")
    assert call.params == {"conversation_id": cid, "activity_id": first}
    assert [c.operation for c in teams.calls] == [
        "CreateConversation",
        "SendToConversation",
        "ReplyToActivity",
        "UpdateActivity",
        "GetConversationMembers",
        "DeleteActivity",
    ]


@pytest.mark.filterwarnings("ignore:The bot client is deprecated:DeprecationWarning")
def test_the_sdk_rest_client_talks_to_the_connector(teams: FakeTeams, http: httpx.Client) -> None:
    raw = token(teams, http)["Authorization"][7:]
    alice = teams.user("alice")

    async def scenario() -> tuple[str, str, Any]:
        api = ApiClient(teams.url, ClientOptions(token=raw))
        conversation = await api.conversations.create(
            CreateConversationParams(
                members=[Account(id=alice.teams_id)], tenant_id=teams.tenant_id
            )
        )
        sent = await api.conversations.create_activity(
            conversation.id, MessageActivityInput(text="hello")
        )
        await api.conversations.update_activity(
            conversation.id, sent.id, MessageActivityInput(text="hello again")
        )
        page = await api.conversations.members_client.get_paged(conversation.id, page_size=1)
        return conversation.id, sent.id, page

    cid, activity_id, page = asyncio.run(scenario())
    assert teams.activity(activity_id).text == "hello again"
    assert teams.activities(cid)[0].conversation_id == cid
    assert page.members[0].aad_object_id == alice.id and page.continuation_token is None
    assert teams.calls_to("GetConversationPagedMembers")[0].path.endswith("/pagedMembers")


def test_auth_is_required_and_must_be_a_bot_framework_token(
    teams: FakeTeams, http: httpx.Client
) -> None:
    cid = teams.directory.personal_conversation_id(teams.user("alice"))
    message = {"type": "message", "text": "hi"}
    answers = [
        post(http, teams, {}, cid, message),
        post(http, teams, {"Authorization": "Bearer not-a-jwt"}, cid, message),
        post(http, teams, token(teams, http, GRAPH_SCOPE), cid, message),
        post(
            http,
            teams,
            {
                "Authorization": f"Bearer {teams.identity.issue_access_token(BOT_SCOPE, expires_in=-60)}"
            },
            cid,
            message,
        ),
        post(
            http,
            teams,
            {"Authorization": f"Bearer {teams.identity.sign_activity_token(teams.url)}"},
            cid,
            message,
        ),
    ]
    assert [a.status_code for a in answers] == [401] * 5
    assert answers[0].json() == {"message": "Authorization has been denied for this request."}
    assert teams.sent == []


def test_cards_are_checked_like_teams_renders_them(teams: FakeTeams, http: httpx.Client) -> None:
    teams.loosen("rate_limits")  # a dozen posts to one chat within a second, on purpose
    auth = token(teams, http)
    cid = open_chat(teams, http, auth, "alice").json()["id"]

    def send(attachment: dict[str, Any]) -> httpx.Response:
        return post(http, teams, auth, cid, {"type": "message", "attachments": [attachment]})

    too_new = send(card({"type": "TextBlock", "text": "hi"}, version="1.6"))
    assert too_new.status_code == 400
    assert too_new.json()["error"]["code"] == "BadArgument"
    assert "1.6" in too_new.json()["error"]["message"]
    assert send(card({"type": "Carousel", "pages": []})).status_code == 400
    assert send(card({"type": "TextBlock"})).status_code == 400  # text is required
    assert send(card({"type": "Input.Text"})).status_code == 400  # an input needs an id
    assert send(card(actions=[{"type": "Action.OpenUrl", "title": "x"}])).status_code == 400
    assert send({"contentType": "application/x-unknown", "content": {}}).status_code == 400
    empty = post(http, teams, auth, cid, {"type": "message", "text": "  "})
    assert empty.status_code == 400
    assert post(http, teams, auth, cid, {"type": "messagez", "text": "x"}).status_code == 400
    assert send(EVERY_ELEMENT).status_code == 201
    teams.loosen("adaptive_cards")  # the rule can be lifted by name only
    assert send(card({"type": "TextBlock", "text": "hi"}, version="1.6")).status_code == 201
    with pytest.raises(ValueError, match="no such rule"):
        teams.loosen("cards")


def test_a_message_over_100_kb_is_413(teams: FakeTeams, http: httpx.Client) -> None:
    auth = token(teams, http)
    cid = open_chat(teams, http, auth, "alice").json()["id"]
    big = post(http, teams, auth, cid, {"type": "message", "text": "x" * (101 * 1024)})
    assert big.status_code == 413
    assert big.json()["error"]["code"] == "MessageSizeTooBig"
    assert (
        post(http, teams, auth, cid, {"type": "message", "text": "x" * (90 * 1024)}).status_code
        == 201
    )


def test_per_conversation_rate_limit_is_429_with_retry_after(
    teams: FakeTeams, http: httpx.Client
) -> None:
    auth = token(teams, http)
    alice = open_chat(teams, http, auth, "alice").json()["id"]
    chika = open_chat(teams, http, auth, "chika").json()["id"]
    answers = [
        post(http, teams, auth, alice, {"type": "message", "text": f"m{i}"}) for i in range(8)
    ]
    assert [a.status_code for a in answers] == [201] * 7 + [429]
    assert answers[-1].json()["error"]["code"] == "Throttled"
    assert int(answers[-1].headers["Retry-After"]) >= 1
    assert len(teams.activities(alice)) == 7  # the refused one was not posted
    # Another conversation has its own budget.
    assert post(http, teams, auth, chika, {"type": "message", "text": "hi"}).status_code == 201
    assert teams.rejected_429 == 1


def test_tenant_budget_is_per_app() -> None:
    with FakeTeams(tenant_per_second=3) as teams, httpx.Client(trust_env=False) as http:
        auth = token(teams, http)
        statuses = [
            open_chat(teams, http, auth, user).status_code
            for user in ("alice", "chika", "alice", "chika")
        ]
        assert statuses == [201, 201, 201, 429]


def test_roster_blocked_not_installed_and_proactive_install_through_graph(
    teams: FakeTeams, http: httpx.Client
) -> None:
    auth = token(teams, http)
    refused = open_chat(teams, http, auth, "bob")
    assert refused.status_code == 403
    assert refused.json() == {
        "error": {
            "code": "BotNotInConversationRoster",
            "message": "The bot is not part of the conversation roster.",
        }
    }

    teams.block("chika")
    blocked = open_chat(teams, http, auth, "chika")
    assert (blocked.status_code, blocked.json()["error"]["code"]) == (
        403,
        "ConversationBlockedByUser",
    )

    unknown = http.post(
        f"{teams.url}v3/conversations",
        json={"members": [{"id": "29:1nobody"}], "tenantId": teams.tenant_id},
        headers=auth,
    )
    assert unknown.status_code == 400
    assert unknown.json()["error"]["message"] == "Failed to decrypt pairwise id"

    # Proactive installation: Graph installs the app for Bob, then the chat Graph names works.
    graph = token(teams, http, GRAPH_SCOPE)
    bob = teams.user("bob")
    apps = f"{teams.graph.url}/v1.0/users/{bob.id}/teamwork/installedApps"
    bind = {
        "teamsApp@odata.bind": f"https://graph.microsoft.com/v1.0/appCatalogs/teamsApps/{teams.directory.teams_app_id}"
    }
    assert http.post(apps, json=bind, headers=graph).status_code == 201
    again = http.post(apps, json=bind, headers=graph)
    assert (again.status_code, again.json()["error"]["code"]) == (409, "Conflict")
    listed = http.get(
        apps,
        params={
            "$expand": "teamsAppDefinition",
            "$filter": f"teamsApp/externalId eq '{teams.app_id}'",
        },
        headers=graph,
    ).json()["value"]
    assert [i["teamsAppDefinition"]["teamsAppId"] for i in listed] == [teams.directory.teams_app_id]
    chat = http.get(f"{apps}/{listed[0]['id']}/chat", headers=graph).json()["id"]
    assert chat == f"19:{bob.id}_{teams.app_id}@unq.gbl.spaces"
    assert post(http, teams, auth, chat, {"type": "message", "text": "Welcome"}).status_code == 201
    assert open_chat(teams, http, auth, "bob").json()[
        "id"
    ] == teams.directory.personal_conversation_id(bob)
    assert [a.text for a in teams.activities(teams.directory.personal_conversation_id(bob))] == [
        "Welcome"
    ]
    # Installing by the bot's app id (the manifest id) instead of the catalog id fails, as in Graph.
    wrong = {
        "teamsApp@odata.bind": f"https://graph.microsoft.com/v1.0/appCatalogs/teamsApps/{teams.app_id}"
    }
    assert http.post(apps, json=wrong, headers=graph).status_code == 404


def test_unknown_conversation_and_activity_are_404(teams: FakeTeams, http: httpx.Client) -> None:
    auth = token(teams, http)
    cid = open_chat(teams, http, auth, "alice").json()["id"]
    gone = post(http, teams, auth, "a:1doesnotexist", {"type": "message", "text": "hi"})
    assert (gone.status_code, gone.json()["error"]["code"]) == (404, "ConversationNotFound")
    missing = http.put(
        f"{teams.url}v3/conversations/{cid}/activities/123",
        json={"type": "message", "text": "x"},
        headers=auth,
    )
    assert (missing.status_code, missing.json()["error"]["code"]) == (
        404,
        "ActivityNotFoundInConversation",
    )
    assert (
        http.delete(f"{teams.url}v3/conversations/{cid}/activities/123", headers=auth).status_code
        == 404
    )


def test_channel_posts_threads_and_paged_members(teams: FakeTeams, http: httpx.Client) -> None:
    auth = token(teams, http)
    team = teams.directory.team("fernhill")
    support = teams.directory.channel(team, "rollout-support")
    created = http.post(
        f"{teams.url}v3/conversations",
        json={
            "isGroup": True,
            "channelData": {"channel": {"id": support.id}, "tenant": {"id": teams.tenant_id}},
            "activity": {"type": "message", "attachments": [EVERY_ELEMENT]},
        },
        headers=auth,
    )
    assert created.status_code == 201
    thread_id, root = created.json()["id"], created.json()["activityId"]
    assert thread_id == f"{support.id};messageid={root}"
    in_thread = post(http, teams, auth, thread_id, {"type": "message", "text": "Claimed by Chika"})
    assert teams.activity(in_thread.json()["id"]).thread_id == root
    assert [a.id for a in teams.activities(thread_id)] == [root, in_thread.json()["id"]]

    first = http.get(
        f"{teams.url}v3/conversations/{support.id}/pagedmembers",
        params={"pageSize": 2},
        headers=auth,
    ).json()
    rest = http.get(
        f"{teams.url}v3/conversations/{support.id}/pagedmembers",
        params={"pageSize": 2, "continuationToken": first["continuationToken"]},
        headers=auth,
    ).json()
    names = [m["name"] for m in first["members"] + rest["members"]]
    assert names == ["Alice Archer", "Bob Brown", "Chika Sato"] and "continuationToken" not in rest

    channels = http.get(f"{teams.url}v3/teams/{team.thread_id}/conversations", headers=auth).json()
    assert channels["conversations"][0] == {"id": team.thread_id}  # General has no name
    team.app_installed = False
    assert post(http, teams, auth, thread_id, {"type": "message", "text": "x"}).status_code == 403


def test_queued_failures_in_doubt_and_dropped(teams: FakeTeams, http: httpx.Client) -> None:
    auth = token(teams, http)
    cid = open_chat(teams, http, auth, "alice").json()["id"]
    teams.fail("SendToConversation", 502, apply=True)  # posted, then 502: in doubt
    assert post(http, teams, auth, cid, {"type": "message", "text": "one"}).status_code == 502
    teams.rate_limit("SendToConversation", retry_after=None)
    no_header = post(http, teams, auth, cid, {"type": "message", "text": "two"})
    assert no_header.status_code == 429 and "retry-after" not in no_header.headers
    teams.fail("SendToConversation", 412)
    assert post(http, teams, auth, cid, {"type": "message", "text": "three"}).status_code == 412
    teams.drop("SendToConversation")
    with pytest.raises(httpx.TransportError):
        post(http, teams, auth, cid, {"type": "message", "text": "four"})
    assert [a.text for a in teams.activities(cid)] == ["one", "four"]
    assert [c.status for c in teams.calls_to("SendToConversation")] == [502, 429, 412, 0]


# ---------------------------------------------------------------------- Microsoft Graph


def test_graph_permissions_paging_select_and_mailbox(teams: FakeTeams, http: httpx.Client) -> None:
    graph = token(teams, http, GRAPH_SCOPE)
    base = f"{teams.graph.url}/v1.0"
    first = http.get(
        f"{base}/users",
        params={"$top": 2, "$select": "id,mail,accountEnabled,userType"},
        headers=graph,
    ).json()
    assert len(first["value"]) == 2 and set(first["value"][0]) == {
        "id",
        "mail",
        "accountEnabled",
        "userType",
    }
    seen = first["value"]
    link = first.get("@odata.nextLink")
    while link:
        page = http.get(link, headers=graph).json()
        seen += page["value"]
        link = page.get("@odata.nextLink")
    assert len(seen) == len(teams.directory.users)
    plain = http.get(f"{base}/users/{teams.user('erin').id}", headers=graph).json()
    assert (
        "accountEnabled" not in plain and plain["displayName"] == "Erin Gone"
    )  # not a default property
    guests = http.get(
        f"{base}/users", params={"$filter": "userType eq 'Guest'", "$select": "id"}, headers=graph
    ).json()
    assert [u["id"] for u in guests["value"]] == [teams.user("dana").id]
    assert http.get(f"{base}/users", params={"$top": 1000}, headers=graph).status_code == 400

    pilots = teams.directory.group_or_none("pilots")
    assert pilots is not None
    members = http.get(f"{base}/groups/{pilots.id}/transitiveMembers", headers=graph).json()
    assert [m["@odata.type"] for m in members["value"]] == [
        "#microsoft.graph.user",
        "#microsoft.graph.group",
        "#microsoft.graph.user",
    ]

    mailbox = f"{base}/users/{teams.user('bob').id}/mailboxSettings"
    denied = http.get(mailbox, headers=graph)
    assert (denied.status_code, denied.json()["error"]["code"]) == (
        403,
        "Authorization_RequestDenied",
    )
    teams.identity.grant("MailboxSettings.Read")
    graph = token(teams, http, GRAPH_SCOPE)  # a new token carries the new role
    assert http.get(mailbox, headers=graph).json()["timeZone"] == "Eastern Standard Time"
    no_mailbox = http.get(f"{base}/users/{teams.user('dana').id}/mailboxSettings", headers=graph)
    assert no_mailbox.json()["error"]["code"] == "MailboxNotEnabledForRESTAPI"

    teams.identity.revoke("TeamsAppInstallation.ReadWriteSelfForUser.All")
    graph = token(teams, http, GRAPH_SCOPE)
    forbidden = http.get(
        f"{base}/users/{teams.user('bob').id}/teamwork/installedApps", headers=graph
    )
    assert forbidden.status_code == 403
    assert forbidden.json()["error"]["message"].startswith(
        "Missing role permissions on the request."
    )
    assert (
        http.get(f"{base}/users", headers=token(teams, http)).status_code == 401
    )  # a Bot Framework token


def test_graph_throttling_is_429_with_retry_after() -> None:
    with FakeTeams() as teams, httpx.Client(trust_env=False) as http:
        teams.graph._window.windows = ((10.0, 3),)  # a small budget for the test
        graph = token(teams, http, GRAPH_SCOPE)
        answers = [http.get(f"{teams.graph.url}/v1.0/users", headers=graph) for _ in range(4)]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        assert answers[-1].json()["error"]["code"] == "TooManyRequests"
        assert int(answers[-1].headers["Retry-After"]) >= 1
        teams.graph.rate_limit("GetUser")
        assert (
            http.get(
                f"{teams.graph.url}/v1.0/users/{teams.user('alice').id}", headers=graph
            ).status_code
            == 429
        )


def test_channels_and_team_members(teams: FakeTeams, http: httpx.Client) -> None:
    graph = token(teams, http, GRAPH_SCOPE)
    team = teams.directory.team("fernhill")
    channels = http.get(f"{teams.graph.url}/v1.0/teams/{team.id}/channels", headers=graph).json()[
        "value"
    ]
    assert [c["displayName"] for c in channels] == ["General", "rollout-support"]
    members = http.get(f"{teams.graph.url}/v1.0/teams/{team.id}/members", headers=graph).json()[
        "value"
    ]
    assert [m["userId"] for m in members] == team.members
    assert members[0]["roles"] == ["owner"]


# ---------------------------------------------------------------------- driving a bot


class _Bot(ThreadingHTTPServer):
    """A stand-in bot: validates the token with the SDK and answers invokes synchronously."""

    daemon_threads = True

    def __init__(self, teams: FakeTeams) -> None:
        cloud = with_overrides(PUBLIC, openid_metadata_url=teams.identity.openid_metadata_url)
        self.validator = TokenValidator.for_service(teams.app_id, cloud=cloud)
        self.received: list[dict[str, Any]] = []
        super().__init__(("127.0.0.1", 0), _BotHandler)


class _BotHandler(BaseHTTPRequestHandler):
    server: _Bot

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        activity = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        raw = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        try:
            asyncio.run(self.server.validator.validate_token(raw, activity["serviceUrl"]))
        except jwt.PyJWTError:
            self.send_response(401)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.server.received.append(activity)
        body = b""
        if activity["type"] == "invoke":
            body = json.dumps(
                {
                    "statusCode": 200,
                    "type": "application/vnd.microsoft.activity.message",
                    "value": "Thanks",
                }
            ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def bot(teams: FakeTeams) -> Iterator[tuple[str, _Bot]]:
    server = _Bot(teams)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/messages", server
    server.shutdown()
    server.server_close()


def test_send_activity_signs_and_shapes_activities_like_teams(
    teams: FakeTeams, bot: tuple[str, _Bot]
) -> None:
    url, server = bot
    message = teams.message_activity("bob", "when do we go live")
    assert teams.send_activity(url, message).status == 200
    received = server.received[-1]
    assert received["serviceUrl"] == teams.url and received["channelId"] == "msteams"
    assert received["recipient"]["id"] == f"28:{teams.app_id}"
    assert received["from"]["aadObjectId"] == teams.user("bob").id
    assert received["channelData"]["tenant"]["id"] == teams.tenant_id
    assert teams.user("bob").app_installed  # someone who writes to the bot has it

    mention = teams.channel_message_activity(
        "alice", "how do I reset my password", channel="rollout-support"
    )
    assert teams.send_activity(url, mention).status == 200
    assert mention["text"].startswith("<at>Mobilize</at> ")
    assert mention["entities"][-1]["mentioned"]["id"] == teams.bot_id
    assert mention["conversation"]["id"].endswith(f";messageid={mention['id']}")
    assert mention["channelData"]["channel"]["name"] == "rollout-support"

    # A click on a card the bot posted: the invoke comes back in the same conversation.
    auth = {"Authorization": f"Bearer {teams.identity.issue_access_token(BOT_SCOPE)}"}
    cid = message["conversation"]["id"]
    with httpx.Client(trust_env=False) as http:
        posted = post(
            http, teams, auth, cid, {"type": "message", "attachments": [EVERY_ELEMENT]}
        ).json()["id"]
    invoke = teams.card_action_activity("bob", "faq.helpful", {"entry": 12}, reply_to=posted)
    answer = teams.send_activity(url, invoke)
    assert (answer.status, answer.body["value"]) == (200, "Thanks")
    assert invoke["name"] == "adaptiveCard/action" and invoke["conversation"]["id"] == cid
    submit = teams.submit_activity(
        "bob", {"action": "survey.answer", "score": "4"}, reply_to=posted
    )
    assert submit["value"]["score"] == "4" and "text" not in submit

    assert teams.send_activity(url, message, token="").status == 401
    expired = teams.identity.sign_activity_token(teams.url, expired=True)
    assert teams.send_activity(url, message, token=expired).status == 401

    teams.send_activity(url, teams.installation_update_activity(user="alice", action="remove"))
    assert not teams.user("alice").app_installed
    teams.send_activity(url, teams.conversation_update_activity(user="alice"))
    assert teams.user("alice").app_installed
