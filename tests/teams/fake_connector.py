"""A loopback Microsoft Teams for tests: the Bot Connector REST API v3, the side that posts signed
activities to the bot, and (owned by it) the identity and Graph doubles.

    with FakeTeams() as teams:                    # starts identity, Graph and the connector
        settings = teams.settings()               # TEAMS_* values pointing at the doubles
        status = teams.send_activity(bot_url, teams.message_activity("alice", "when do we go live"))
        (reply,) = teams.wait_for("SendToConversation")
        assert "go-live" in teams.sent[-1].text

Addresses: ``teams.url`` is the ``serviceUrl`` put on every activity
(``http://127.0.0.1:PORT/teams/``, with a path like the real ``…/amer/``: append ``v3/…`` to it,
do not build URLs from the host). ``teams.identity`` (``tests/teams/identity.py``),
``teams.graph`` (``tests/teams/fake_graph.py``), ``teams.directory``
(``tests/teams/directory.py``: users ``alice``, ``bob``…, team ``fernhill``).

Served (operation names as in the Bot Connector REST reference; ``{cid}`` is a conversation id,
either form for a 1:1 chat, ``<channel id>;messageid=<root>`` for a channel thread):

- ``POST v3/conversations`` CreateConversation: a 1:1 chat (``members: [{"id": "29:…"}]`` or
  the user's Entra object id, ``tenantId`` or ``channelData.tenant.id``) → 201 ``{"id": "a:…"}``;
  or a channel post (``isGroup: true``, ``channelData.channel.id``, ``activity``) → 201
  ``{"id": "<channel>;messageid=<id>", "activityId": id}``.
- ``POST v3/conversations/{cid}/activities`` SendToConversation (``replyToId`` in the body
  threads it in a channel), ``POST …/activities/{aid}`` ReplyToActivity → 201 ``{"id": …}``.
- ``PUT …/activities/{aid}`` UpdateActivity → 200 ``{"id": aid}``; ``DELETE …/activities/{aid}``
  DeleteActivity → 200; ``GET …/activities/{aid}/members`` GetActivityMembers.
- ``GET …/members`` GetConversationMembers, ``GET …/members/{id}`` GetConversationMember,
  ``GET …/pagedmembers?pageSize=&continuationToken=`` GetConversationPagedMembers (path
  case-insensitive: the SDK writes ``pagedMembers``) → ``{"members": […], "continuationToken"}``.
- ``GET v3/teams/{team id}`` GetTeamDetails, ``GET v3/teams/{team id}/conversations``
  GetTeamChannels (the General channel has no name, as in Teams).

Strict by default (rule names in ``tests/teams/rules.py``; loosen one only by name:
``FakeTeams(loosen={"rate_limits"})`` or ``teams.loosen("rate_limits")``, and say why):

- ``auth``: ``Authorization: Bearer`` with a token from the identity's token endpoint for
  ``https://api.botframework.com/.default`` and this app, not expired → else 401
  ``{"message": "Authorization has been denied for this request."}``.
- ``activity_schema``: a known ``type``; a message needs text or attachments; ``textFormat``,
  ``attachmentLayout`` from the allowed values → else 400 ``BadArgument``.
- ``adaptive_cards``: ``application/vnd.microsoft.card.adaptive`` with ``version`` ≤ 1.5 and
  known elements/actions with their required fields (see ``rules.check_card``) → 400.
- ``message_size``: a body over 100 KB → 413 ``MessageSizeTooBig``.
- ``rate_limits``: per bot per conversation, writes (create, send, reply, update, delete) 7/1 s,
  8/2 s, 60/30 s, 1,800/hour; reads 14/1 s, 16/2 s, 120/30 s, 3,600/hour → 429 ``Throttled``
  with ``Retry-After`` (seconds). ``tenant_rate``: every request of the app counts against
  ``tenant_per_second`` (default 50) → 429.
- ``roster``: a 1:1 chat needs the app installed for the user (``user.app_installed``; Graph's
  installedApps POST sets it) and the user not to have blocked the bot → 403
  ``BotNotInConversationRoster`` / ``ConversationBlockedByUser``; a channel needs the app in the
  team; ``directory.app_disabled`` → 403 ``BotDisabledByAdmin``.
- always: 404 ``ConversationNotFound`` / ``ActivityNotFoundInConversation`` for unknown ids,
  400 ``BadArgument`` for an unknown member id (Teams: "Failed to decrypt pairwise id"), the bot
  may update or delete only its own activities.

Errors have the Bot Framework shape ``{"error": {"code": …, "message": …}}``. Queue failures by
operation: ``fail("SendToConversation", 502, apply=True)`` (posted, then 502: an in-doubt
delivery), ``fail(op, 412)``, ``rate_limit(op, retry_after=None)`` (429 without Retry-After),
``drop(op)`` (carried out, then the connection closes without an answer); ``error_body(code)``
builds a Bot Framework error body.

State (read under no lock from the test thread only between requests): ``conversations``
(canonical id → ``Conversation``), ``sent`` (every ``StoredActivity`` the bot posted, oldest
first, updated in place; deleted ones leave it and go to ``deleted``), ``activities(cid)``,
``activity(aid)``, ``calls`` / ``calls_to(op)`` / ``wait_for(op, count=, timeout=, where=)``.

Driving the bot: ``send_activity(bot_url, activity, *, token=None) -> BotResponse`` posts JSON
with a signed ``Authorization: Bearer`` (default: a valid token for ``teams.url``; pass
``token=teams.identity.sign_activity_token(..., expired=True)`` or ``token=""`` for none).
Builders (each returns a new activity dict; ``user`` is a key, object id or Teams id):
``message_activity(user, text)`` (1:1 chat), ``channel_message_activity(user, text, team=,
channel=, thread=None, mention=True)`` (``<at>Mobilize</at> …`` plus a ``mention`` entity),
``submit_activity(user, value, reply_to=aid)`` (Action.Submit: a message with ``value``),
``card_action_activity(user, verb, data, reply_to=aid)`` (invoke ``adaptiveCard/action``),
``task_fetch_activity(user, data, reply_to=None)`` / ``task_submit_activity(…)`` (invoke
``task/fetch`` / ``task/submit``), ``conversation_update_activity(user=… | team=…,
members_added=None, members_removed=None)``, ``installation_update_activity(user=… | team=…,
action="add")``. Sending an install/uninstall activity changes ``directory`` accordingly;
sending a 1:1 message marks the user as having the app. Directory shortcuts: ``user(key)``,
``install(user)``, ``uninstall(user)``, ``block(user)``.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.error import HTTPError
from urllib.parse import unquote
from urllib.request import ProxyHandler, build_opener
from urllib.request import Request as UrlRequest

from tests.teams import rules
from tests.teams.directory import Directory, Team, User
from tests.teams.fake_graph import FakeGraph
from tests.teams.identity import APP_ID, APP_PASSWORD, TENANT_ID, FakeIdentity, InvalidToken
from tests.teams.server import (
    Answer,
    ApiFailure,
    LoopbackServer,
    Request,
    SlidingWindows,
    retry_after,
)

__all__ = [
    "APP_ID",
    "APP_PASSWORD",
    "TENANT_ID",
    "BotResponse",
    "Conversation",
    "FakeTeams",
    "StoredActivity",
    "error_body",
]

_OPENER = build_opener(ProxyHandler({}))  # test traffic stays on loopback, whatever the env says
_ID_BASE = 1_700_000_000_000  # Teams message ids are epoch milliseconds
SERVICE_PATH = "/teams/"


def error_body(code: str, message: str | None = None) -> dict[str, Any]:
    """A Bot Framework error body: ``{"error": {"code": code, "message": …}}``."""
    return {"error": {"code": code, "message": message or rules.ERRORS.get(code, (0, code))[1]}}


def _fail(
    code: str, message: str | None = None, headers: dict[str, str] | None = None
) -> ApiFailure:
    status = rules.ERRORS[code][0]
    return ApiFailure(status, error_body(code, message), headers)


@dataclass
class StoredActivity:
    """An activity in a conversation: posted by the bot (``sender == "bot"``) or sent to the
    bot by a user through ``send_activity``. ``thread_id`` is the root message id of a channel
    thread (None in a 1:1 chat)."""

    id: str
    conversation_id: str
    sender: str
    activity: dict[str, Any]
    thread_id: str | None = None
    updates: int = 0

    @property
    def text(self) -> str:
        return str(self.activity.get("text") or "")

    @property
    def attachments(self) -> list[dict[str, Any]]:
        return list(self.activity.get("attachments") or [])

    @property
    def cards(self) -> list[dict[str, Any]]:
        """The contents of its Adaptive Card attachments."""
        return [
            a.get("content") or {}
            for a in self.attachments
            if a.get("contentType") == rules.ADAPTIVE_CARD
        ]

    @property
    def reply_to_id(self) -> str | None:
        value = self.activity.get("replyToId")
        return str(value) if value else None


@dataclass
class Conversation:
    """A 1:1 chat (``kind == "personal"``, ``user`` an object id) or a channel (``"channel"``,
    ``team`` a group id, ``channel`` its id). ``id`` is the canonical connector id."""

    id: str
    kind: str
    user: str | None = None
    team: str | None = None
    channel: str | None = None
    activities: list[StoredActivity] = field(default_factory=list)


@dataclass(frozen=True)
class BotResponse:
    """What the bot answered to ``send_activity``: status, JSON body (None when empty; the raw
    text when not JSON) and headers (lower-cased names)."""

    status: int
    body: Any
    headers: dict[str, str]


Handler = Callable[[Request, dict[str, str]], Answer]


class FakeTeams(LoopbackServer):
    """The Bot Connector on 127.0.0.1 and the owner of the identity and Graph doubles. See the
    module docstring for what it serves and enforces."""

    name = "connector"

    def __init__(
        self,
        *,
        app_id: str = APP_ID,
        app_password: str = APP_PASSWORD,
        tenant_id: str = TENANT_ID,
        app_name: str = "Mobilize",
        loosen: Iterable[str] = (),
        tenant_per_second: int = rules.TENANT_PER_SECOND,
        graph_permissions: Iterable[str] | None = None,
        directory: Directory | None = None,
        preload: bool = True,
    ) -> None:
        super().__init__()
        self.loosened: set[str] = rules.check_rule_names(loosen)
        self.app_id = app_id
        self.tenant_id = tenant_id
        self.app_name = app_name
        self.identity = FakeIdentity(
            app_id=app_id,
            app_password=app_password,
            tenant_id=tenant_id,
            graph_permissions=graph_permissions,
            lock=self._cond,
        )
        self.directory = directory or Directory(
            tenant_id=tenant_id, app_id=app_id, app_name=app_name, preload=preload
        )
        self.graph = FakeGraph(
            identity=self.identity,
            directory=self.directory,
            loosened=self.loosened,
            lock=self._cond,
        )
        self.conversations: dict[str, Conversation] = {}
        self.sent: list[StoredActivity] = []
        self.deleted: list[StoredActivity] = []
        self.tenant_per_second = tenant_per_second
        self._send_windows = SlidingWindows(rules.SEND_WINDOWS)
        self._read_windows = SlidingWindows(rules.READ_WINDOWS)
        self._tenant_window = SlidingWindows(((1.0, tenant_per_second),))
        self._next_id = _ID_BASE
        self.rejected_429 = 0

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.identity.start()
        self.graph.start()
        super().start()

    def stop(self) -> None:
        super().stop()
        self.graph.stop()
        self.identity.stop()

    @property
    def url(self) -> str:
        """The ``serviceUrl``: ``http://127.0.0.1:PORT/teams/``."""
        return self.base_url + SERVICE_PATH

    @property
    def bot_id(self) -> str:
        return f"28:{self.app_id}"

    def settings(self) -> dict[str, str]:
        """The bot's settings pointing at these doubles (env-style names)."""
        return {
            "TEAMS_APP_ID": self.app_id,
            "TEAMS_APP_PASSWORD": self.identity.app_password,
            "TEAMS_TENANT_ID": self.tenant_id,
            "TEAMS_OPENID_METADATA_URL": self.identity.openid_metadata_url,
            "TEAMS_TOKEN_URL": self.identity.token_url,
            "TEAMS_GRAPH_URL": self.graph.url,
        }

    def _default_error(self, status: int) -> Any:
        """An injected failure carries the Bot Framework code Teams uses for its status
        (429 ``Throttled``, 412 ``PreconditionFailed``, 502 ``BadGateway``…)."""
        code = next((code for code, (known, _) in rules.ERRORS.items() if known == status), None)
        return error_body(code) if code is not None else super()._default_error(status)

    # ------------------------------------------------------------------ rules

    def loosen(self, *names: str) -> None:
        """Switch off the named rules of ``tests/teams/rules.py`` (here and in Graph)."""
        chosen = rules.check_rule_names(names)
        with self._cond:
            self.loosened.update(chosen)

    # ------------------------------------------------------------------ directory shortcuts

    def user(self, key: str | User) -> User:
        return key if isinstance(key, User) else self.directory.user(key)

    def install(self, user: str | User) -> None:
        """The app is now installed for the user (as after Graph's POST installedApps)."""
        with self._cond:
            self.user(user).app_installed = True

    def uninstall(self, user: str | User) -> None:
        with self._cond:
            self.user(user).app_installed = False

    def block(self, user: str | User, blocked: bool = True) -> None:
        """The user blocked (or unblocked) the bot in their 1:1 chat."""
        with self._cond:
            self.user(user).blocked_bot = blocked

    # ------------------------------------------------------------------ inspection

    def activities(self, conversation_id: str) -> list[StoredActivity]:
        """Activities of a conversation (any form of its id; a ``;messageid=`` id gives that
        thread only), oldest first."""
        with self._cond:
            conversation = self._conversation(conversation_id)
            if conversation is None:
                return []
            thread = _thread_of(conversation_id)
            return [a for a in conversation.activities if thread is None or a.thread_id == thread]

    def activity(self, activity_id: str) -> StoredActivity:
        with self._cond:
            for conversation in self.conversations.values():
                for stored in conversation.activities:
                    if stored.id == activity_id:
                        return stored
        raise KeyError(f"no activity {activity_id!r}")

    # ------------------------------------------------------------------ conversations

    def _conversation(self, conversation_id: str, *, create: bool = True) -> Conversation | None:
        base = conversation_id.split(";", 1)[0]
        if base in self.conversations:
            return self.conversations[base]
        user = self.directory.user_of_chat(base)
        if user is not None:
            canonical = self.directory.personal_conversation_id(user)
            if canonical not in self.conversations and create:
                self.conversations[canonical] = Conversation(canonical, "personal", user=user.id)
            return self.conversations.get(canonical)
        found = self.directory.team_of_channel(base)
        if found is not None and create:
            team, channel = found
            self.conversations[base] = Conversation(
                base, "channel", team=team.id, channel=channel.id
            )
            return self.conversations[base]
        return None

    def _new_id(self) -> str:
        """A message id as Teams makes them: epoch milliseconds, increasing."""
        self._next_id = max(self._next_id + 1, int(time.time() * 1000))
        return str(self._next_id)

    def _check_roster(self, conversation: Conversation) -> None:
        if "roster" in self.loosened:
            return
        if self.directory.app_disabled:
            raise _fail("BotDisabledByAdmin")
        if conversation.kind == "personal":
            user = self.directory.users[str(conversation.user)]
            if user.blocked_bot:
                raise _fail("ConversationBlockedByUser")
            if not user.app_installed:
                raise _fail("BotNotInConversationRoster")
        else:
            team = self.directory.teams[str(conversation.team)]
            if not team.app_installed:
                raise _fail("BotNotInConversationRoster")

    # ------------------------------------------------------------------ routing

    def _route(self, request: Request) -> tuple[str, dict[str, str], Handler]:
        path = request.path
        if not path.startswith(SERVICE_PATH + "v3/"):
            return "Unknown", {}, lambda r, p: Answer(404, error_body("NotFound", "Not found."))
        parts = [unquote(p) for p in path[len(SERVICE_PATH) + 3 :].split("/") if p]
        lower = [p.lower() for p in parts]
        method = request.method
        routes: list[tuple[str, str, Handler]] = []
        params: dict[str, str] = {}
        if lower[:1] == ["conversations"]:
            if len(parts) == 1 and method == "POST":
                routes.append(("CreateConversation", "send", self._create_conversation))
            elif len(parts) >= 2:
                params["conversation_id"] = parts[1]
                rest = lower[2:]
                if rest == ["activities"] and method == "POST":
                    routes.append(("SendToConversation", "send", self._send))
                elif len(rest) == 2 and rest[0] == "activities":
                    params["activity_id"] = parts[3]
                    table: dict[str, tuple[str, Handler]] = {
                        "POST": ("ReplyToActivity", self._send),
                        "PUT": ("UpdateActivity", self._update),
                        "DELETE": ("DeleteActivity", self._delete),
                    }
                    if method in table:
                        operation, handler = table[method]
                        routes.append((operation, "send", handler))
                elif len(rest) == 3 and rest[0] == "activities" and rest[2] == "members":
                    params["activity_id"] = parts[3]
                    if method == "GET":
                        routes.append(("GetActivityMembers", "read", self._members))
                elif rest == ["members"] and method == "GET":
                    routes.append(("GetConversationMembers", "read", self._members))
                elif len(rest) == 2 and rest[0] == "members" and method == "GET":
                    params["member_id"] = parts[3]
                    routes.append(("GetConversationMember", "read", self._member))
                elif rest == ["pagedmembers"] and method == "GET":
                    routes.append(("GetConversationPagedMembers", "read", self._paged_members))
        elif lower[:1] == ["teams"] and len(parts) >= 2 and method == "GET":
            params["team_id"] = parts[1]
            if len(parts) == 2:
                routes.append(("GetTeamDetails", "read", self._team_details))
            elif lower[2:] == ["conversations"]:
                routes.append(("GetTeamChannels", "read", self._team_channels))
        if not routes:
            return (
                "Unknown",
                params,
                lambda r, p: Answer(404, error_body("NotFound", f"No route for {method} {path}")),
            )
        operation, kind, handler = routes[0]
        return operation, params, self._guarded(operation, kind, handler)

    def _guarded(self, operation: str, kind: str, handler: Handler) -> Handler:
        def run(request: Request, params: dict[str, str]) -> Answer:
            if "auth" not in self.loosened:
                self._authenticate(request)
            if "tenant_rate" not in self.loosened:
                wait = self._tenant_window.take("tenant", request.at)
                if wait is not None:
                    return self._throttled(wait)
            if "rate_limits" not in self.loosened:
                key = self._rate_key(request, params)
                windows = self._send_windows if kind == "send" else self._read_windows
                wait = windows.take(key, request.at)
                if wait is not None:
                    return self._throttled(wait)
            return handler(request, params)

        return run

    def _rate_key(self, request: Request, params: dict[str, str]) -> str:
        """What a per-conversation limit counts against: the conversation (any form of its
        id), the team, or for CreateConversation (limited on its own) the chat it opens."""
        if "conversation_id" in params:
            base = params["conversation_id"].split(";", 1)[0]
            user = self.directory.user_of_chat(base)
            canonical = self.directory.personal_conversation_id(user) if user else base
            return f"conversation:{canonical}"
        if "team_id" in params:
            return f"team:{params['team_id']}"
        body = request.body if isinstance(request.body, dict) else {}
        members = body.get("members") or []
        if members and isinstance(members[0], dict):
            user = self.directory.user_or_none(str(members[0].get("id") or ""))
            if user is not None:
                return f"create:{self.directory.personal_conversation_id(user)}"
        channel = ((body.get("channelData") or {}).get("channel") or {}).get("id") or ""
        return f"create:{channel}"

    def _throttled(self, wait: float) -> Answer:
        self.rejected_429 += 1
        return Answer(429, error_body("Throttled"), {"Retry-After": retry_after(wait)})

    def _authenticate(self, request: Request) -> None:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise ApiFailure(401, dict(rules.UNAUTHORIZED_BODY))
        try:
            self.identity.verify_access_token(header[7:].strip(), rules.BOT_FRAMEWORK_AUDIENCE)
        except InvalidToken as e:
            raise ApiFailure(
                401,
                dict(rules.UNAUTHORIZED_BODY),
                {"WWW-Authenticate": f'Bearer error="{e}"'[:200]},
            ) from e

    # ------------------------------------------------------------------ checks

    def _check_activity(self, request: Request, *, update: bool = False) -> dict[str, Any]:
        if "message_size" not in self.loosened and len(request.raw) > rules.MAX_MESSAGE_BYTES:
            raise _fail("MessageSizeTooBig")
        activity = request.body
        if not isinstance(activity, dict):
            raise _fail("BadSyntax", "The request body is not a JSON activity.")
        if "activity_schema" not in self.loosened:
            kind = activity.get("type")
            if kind not in rules.ACTIVITY_TYPES or kind in ("invoke", "invokeResponse"):
                raise _fail("BadArgument", f"Invalid activity type {kind!r}.")
            if update and kind != "message":
                raise _fail("BadArgument", "Only message activities can be updated.")
            if kind == "message":
                text = activity.get("text")
                if text is not None and not isinstance(text, str):
                    raise _fail("BadArgument", "Activity text must be a string.")
                if not (text or "").strip() and not activity.get("attachments"):
                    raise _fail("BadArgument", "Activity text and attachments are both empty.")
            text_format = activity.get("textFormat")
            if text_format is not None and text_format not in rules.TEXT_FORMATS:
                raise _fail("BadArgument", f"Unknown textFormat {text_format!r}.")
            layout = activity.get("attachmentLayout")
            if layout is not None and layout not in rules.ATTACHMENT_LAYOUTS:
                raise _fail("BadArgument", f"Unknown attachmentLayout {layout!r}.")
        attachments = activity.get("attachments")
        if attachments is not None and "adaptive_cards" not in self.loosened:
            try:
                rules.check_attachments(attachments)
            except rules.CardError as e:
                raise _fail("BadArgument", f"Invalid attachment: {e}") from e
        return activity

    # ------------------------------------------------------------------ handlers

    def _create_conversation(self, request: Request, params: dict[str, str]) -> Answer:
        body = request.body
        if not isinstance(body, dict):
            raise _fail("BadSyntax", "The request body is not a JSON object.")
        channel_data = body.get("channelData") or {}
        tenant = body.get("tenantId") or (channel_data.get("tenant") or {}).get("id")
        if tenant != self.tenant_id:
            raise _fail(
                "BadArgument", "A valid tenant id is required (tenantId or channelData.tenant.id)."
            )
        channel_id = (channel_data.get("channel") or {}).get("id")
        if body.get("isGroup") and channel_id:
            conversation = self._conversation(str(channel_id))
            if conversation is None or conversation.kind != "channel":
                raise _fail("ConversationNotFound")
            self._check_roster(conversation)
            activity = body.get("activity")
            if not isinstance(activity, dict):
                raise _fail("BadArgument", "Creating a channel conversation needs an activity.")
            checked = self._check_activity(_with_body(request, activity))
            stored = self._store(conversation, checked, thread=None)
            return Answer(
                201,
                {"id": f"{conversation.id};messageid={stored.id}", "activityId": stored.id},
            )
        members = body.get("members")
        if not isinstance(members, list) or len(members) != 1 or not isinstance(members[0], dict):
            raise _fail("BadArgument", "A 1:1 conversation needs exactly one member.")
        member_id = str(members[0].get("id") or "")
        user = self.directory.user_or_none(member_id)
        if user is None or member_id in (user.key, user.user_principal_name):
            raise _fail("BadArgument", "Failed to decrypt pairwise id")
        conversation = self._conversation(self.directory.personal_conversation_id(user))
        assert conversation is not None
        self._check_roster(conversation)
        answer: dict[str, Any] = {"id": conversation.id}
        if isinstance(body.get("activity"), dict):
            checked = self._check_activity(_with_body(request, body["activity"]))
            answer["activityId"] = self._store(conversation, checked, thread=None).id
        return Answer(201, answer)

    def _send(self, request: Request, params: dict[str, str]) -> Answer:
        conversation = self._conversation(params["conversation_id"])
        if conversation is None:
            raise _fail("ConversationNotFound")
        activity = self._check_activity(request)
        self._check_roster(conversation)
        reply_to = params.get("activity_id") or activity.get("replyToId")
        thread = _thread_of(params["conversation_id"])
        if reply_to:
            target = _find(conversation, str(reply_to))
            if target is None and params.get("activity_id"):
                raise _fail("ActivityNotFoundInConversation")
            if conversation.kind == "channel" and target is not None and thread is None:
                thread = target.thread_id
        if conversation.kind == "channel" and thread and _find(conversation, thread) is None:
            raise _fail("ConversationNotFound")
        stored_activity = dict(activity)
        if params.get("activity_id"):
            stored_activity["replyToId"] = params["activity_id"]
        stored = self._store(conversation, stored_activity, thread=thread)
        return Answer(201, {"id": stored.id})

    def _store(
        self, conversation: Conversation, activity: dict[str, Any], *, thread: str | None
    ) -> StoredActivity:
        activity_id = self._new_id()
        record = copy.deepcopy(activity)
        record["id"] = activity_id
        record["timestamp"] = _now()
        conversation_id = conversation.id
        if conversation.kind == "channel":
            thread = thread or activity_id
            conversation_id = f"{conversation.id};messageid={thread}"
        record["conversation"] = {"id": conversation_id}
        record.setdefault("from", {"id": self.bot_id, "name": self.app_name})
        stored = StoredActivity(
            activity_id,
            conversation.id,
            "bot",
            record,
            thread_id=thread if conversation.kind == "channel" else None,
        )
        conversation.activities.append(stored)
        self.sent.append(stored)
        return stored

    def _own_activity(self, params: dict[str, str]) -> tuple[Conversation, StoredActivity]:
        conversation = self._conversation(params["conversation_id"])
        if conversation is None:
            raise _fail("ConversationNotFound")
        stored = _find(conversation, params["activity_id"])
        if stored is None:
            raise _fail("ActivityNotFoundInConversation")
        if stored.sender != "bot":
            raise _fail("BadArgument", "The bot can only change activities it sent.")
        return conversation, stored

    def _update(self, request: Request, params: dict[str, str]) -> Answer:
        activity = self._check_activity(request, update=True)
        conversation, stored = self._own_activity(params)
        self._check_roster(conversation)
        record = copy.deepcopy(activity)
        for key in ("id", "timestamp", "conversation", "from"):
            record[key] = stored.activity.get(key)
        if "replyToId" in stored.activity and "replyToId" not in record:
            record["replyToId"] = stored.activity["replyToId"]
        stored.activity = {k: v for k, v in record.items() if v is not None}
        stored.updates += 1
        return Answer(200, {"id": stored.id})

    def _delete(self, request: Request, params: dict[str, str]) -> Answer:
        conversation, stored = self._own_activity(params)
        self._check_roster(conversation)
        conversation.activities.remove(stored)
        if stored in self.sent:
            self.sent.remove(stored)
        self.deleted.append(stored)
        return Answer(200, None)

    def _roster(self, conversation: Conversation) -> list[User]:
        if conversation.kind == "personal":
            return [self.directory.users[str(conversation.user)]]
        team = self.directory.teams[str(conversation.team)]
        return [self.directory.users[m] for m in team.members if m in self.directory.users]

    def _readable(self, params: dict[str, str]) -> Conversation:
        conversation = self._conversation(params["conversation_id"])
        if conversation is None:
            raise _fail("ConversationNotFound")
        self._check_roster(conversation)
        if "activity_id" in params and _find(conversation, params["activity_id"]) is None:
            raise _fail("ActivityNotFoundInConversation")
        return conversation

    def _members(self, request: Request, params: dict[str, str]) -> Answer:
        conversation = self._readable(params)
        return Answer(200, [u.account(self.tenant_id) for u in self._roster(conversation)])

    def _member(self, request: Request, params: dict[str, str]) -> Answer:
        conversation = self._readable(params)
        wanted = params["member_id"]
        for user in self._roster(conversation):
            if wanted in (user.teams_id, user.id):
                return Answer(200, user.account(self.tenant_id))
        raise ApiFailure(
            404,
            error_body(
                "MemberNotFoundInConversation", "The member is not found in the conversation."
            ),
        )

    def _paged_members(self, request: Request, params: dict[str, str]) -> Answer:
        conversation = self._readable(params)
        try:
            size = int(request.query.get("pageSize") or 500)
        except ValueError as e:
            raise _fail("BadArgument", "pageSize must be a number.") from e
        size = max(1, min(size, 500))
        token = request.query.get("continuationToken") or ""
        start = 0
        if token:
            try:
                kind, _, offset = base64.b64decode(token, validate=True).decode().partition(":")
                start = int(offset)
                if kind != "offset":
                    raise ValueError(token)
            except (ValueError, binascii.Error) as e:
                raise _fail("BadArgument", "Invalid continuation token.") from e
        roster = self._roster(conversation)
        page = roster[start : start + size]
        body: dict[str, Any] = {"members": [u.account(self.tenant_id) for u in page]}
        if start + size < len(roster):
            body["continuationToken"] = base64.b64encode(f"offset:{start + size}".encode()).decode()
        return Answer(200, body)

    def _team(self, params: dict[str, str]) -> Team:
        try:
            team = self.directory.team(params["team_id"])
        except KeyError as e:
            raise _fail("NotFound", "Team not found.") from e
        if "roster" not in self.loosened and not team.app_installed:
            raise _fail("BotNotInConversationRoster")
        return team

    def _team_details(self, request: Request, params: dict[str, str]) -> Answer:
        team = self._team(params)
        return Answer(
            200,
            {
                "id": team.thread_id,
                "name": team.name,
                "aadGroupId": team.id,
                "type": "standard",
                "channelCount": len(team.channels),
                "memberCount": len(team.members),
            },
        )

    def _team_channels(self, request: Request, params: dict[str, str]) -> Answer:
        team = self._team(params)
        channels = []
        for channel in team.channels:
            entry = {"id": channel.id}
            if channel.id != team.thread_id:  # the General channel comes without a name
                entry["name"] = channel.name
            channels.append(entry)
        return Answer(200, {"conversations": channels})

    # ------------------------------------------------------------------ driving the bot

    def send_activity(
        self,
        bot_url: str,
        activity: dict[str, Any],
        *,
        token: str | None = None,
        timeout: float = 10.0,
    ) -> BotResponse:
        """POST ``activity`` to the bot as the Bot Framework does; the bot's answer.

        ``token=None`` signs a valid token for ``self.url``; ``token=""`` sends no
        Authorization header; any other string is sent as the Bearer token."""
        with self._cond:
            self._remember_incoming(activity)
        if token is None:
            token = self.identity.sign_activity_token(str(activity.get("serviceUrl") or self.url))
        headers = {"Content-Type": "application/json; charset=utf-8"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = json.dumps(activity).encode("utf-8")
        request = UrlRequest(bot_url, data=data, headers=headers, method="POST")
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                status, raw, head = response.status, response.read(), dict(response.headers)
        except HTTPError as e:
            status, raw, head = e.code, e.read(), dict(e.headers or {})
        text = raw.decode("utf-8", "replace")
        body: Any = None
        if text:
            try:
                body = json.loads(text)
            except ValueError:
                body = text
        return BotResponse(status, body, {k.lower(): v for k, v in head.items()})

    def _remember_incoming(self, activity: dict[str, Any]) -> None:
        """What Teams does around an activity it sends: store user messages, track installs."""
        kind = activity.get("type")
        conversation_id = str((activity.get("conversation") or {}).get("id") or "")
        conversation = self._conversation(conversation_id) if conversation_id else None
        sender = self.directory.user_or_none(str((activity.get("from") or {}).get("id") or ""))
        if conversation is not None and conversation.kind == "personal" and kind == "message":
            self.directory.users[str(conversation.user)].app_installed = True
        activity_id = str(activity.get("id") or "")
        known = conversation is not None and _find(conversation, activity_id) is not None
        if kind == "message" and conversation is not None and activity_id and not known:
            thread = _thread_of(conversation_id) if conversation.kind == "channel" else None
            conversation.activities.append(
                StoredActivity(
                    activity_id, conversation.id, "user", copy.deepcopy(activity), thread_id=thread
                )
            )
        added = {m.get("id") for m in activity.get("membersAdded") or []}
        removed = {m.get("id") for m in activity.get("membersRemoved") or []}
        action = str(activity.get("action") or "")
        installed = (kind == "conversationUpdate" and self.bot_id in added) or (
            kind == "installationUpdate" and action.startswith("add")
        )
        uninstalled = (kind == "conversationUpdate" and self.bot_id in removed) or (
            kind == "installationUpdate" and action.startswith("remove")
        )
        if installed or uninstalled:
            if conversation is not None and conversation.kind == "personal":
                self.directory.users[str(conversation.user)].app_installed = installed
            elif conversation is not None:
                self.directory.teams[str(conversation.team)].app_installed = installed
            elif sender is not None:
                sender.app_installed = installed

    # ------------------------------------------------------------------ activity builders

    def _base(
        self, user: User, conversation: dict[str, Any], channel_data: dict[str, Any]
    ) -> dict[str, Any]:
        with self._cond:
            activity_id = self._new_id()
        return {
            "type": "message",
            "id": activity_id,
            "timestamp": _now(),
            "localTimestamp": _now(),
            "localTimezone": "Europe/London",
            "serviceUrl": self.url,
            "channelId": "msteams",
            "from": {"id": user.teams_id, "name": user.display_name, "aadObjectId": user.id},
            "conversation": conversation,
            "recipient": {"id": self.bot_id, "name": self.app_name},
            "locale": "en-GB",
            "channelData": channel_data,
            "entities": [
                {
                    "type": "clientInfo",
                    "locale": "en-GB",
                    "country": "GB",
                    "platform": "Web",
                    "timezone": "Europe/London",
                }
            ],
        }

    def _personal(self, user: User) -> tuple[dict[str, Any], dict[str, Any]]:
        conversation = {
            "id": self.directory.personal_conversation_id(user),
            "conversationType": "personal",
            "tenantId": self.tenant_id,
        }
        return conversation, {"tenant": {"id": self.tenant_id}}

    def _channel(
        self, team_key: str, channel_key: str, thread: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        team = self.directory.team(team_key)
        channel = self.directory.channel(team, channel_key)
        conversation = {
            "id": f"{channel.id};messageid={thread}",
            "isGroup": True,
            "conversationType": "channel",
            "tenantId": self.tenant_id,
        }
        channel_data = {
            "teamsTeamId": team.thread_id,
            "teamsChannelId": channel.id,
            "team": {"id": team.thread_id, "name": team.name, "aadGroupId": team.id},
            "channel": {"id": channel.id, "name": channel.name},
            "tenant": {"id": self.tenant_id},
        }
        return conversation, channel_data

    def _where(self, user: User, reply_to: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
        """Conversation and channelData for an activity about ``reply_to`` (a stored activity:
        its conversation and thread), else the user's 1:1 chat."""
        if reply_to:
            stored = self.activity(reply_to)
            with self._cond:
                conversation = self.conversations[stored.conversation_id]
            if conversation.kind == "channel":
                team = self.directory.teams[str(conversation.team)]
                return self._channel(team.key, str(conversation.channel), str(stored.thread_id))
        return self._personal(user)

    def message_activity(
        self, user: str | User, text: str, *, value: Any = None, reply_to: str | None = None
    ) -> dict[str, Any]:
        """A message from ``user`` in their 1:1 chat with the bot."""
        person = self.user(user)
        conversation, channel_data = self._personal(person)
        activity = self._base(person, conversation, channel_data)
        activity["text"] = text
        activity["textFormat"] = "plain"
        if value is not None:
            activity["value"] = value
        if reply_to:
            activity["replyToId"] = reply_to
        return activity

    def channel_message_activity(
        self,
        user: str | User,
        text: str,
        *,
        team: str = "fernhill",
        channel: str = "General",
        thread: str | None = None,
        mention: bool = True,
    ) -> dict[str, Any]:
        """A channel message from ``user``: a new post, or a reply in ``thread`` (a root message
        id). With ``mention`` the text starts with ``<at>Mobilize</at>`` and carries a
        ``mention`` entity, which is when Teams delivers channel messages to a bot (without
        it, only to a bot with the ChannelMessage.Read.Group RSC permission)."""
        person = self.user(user)
        with self._cond:
            placeholder = self._new_id()
        conversation, channel_data = self._channel(team, channel, thread or placeholder)
        activity = self._base(person, conversation, channel_data)
        if thread is None:  # a new post is the root of its own thread
            activity["id"] = placeholder
        else:
            activity["replyToId"] = thread
        activity["textFormat"] = "plain"
        if mention:
            tag = f"<at>{self.app_name}</at>"
            activity["text"] = f"{tag} {text}"
            activity["entities"].append(
                {
                    "type": "mention",
                    "text": tag,
                    "mentioned": {"id": self.bot_id, "name": self.app_name},
                }
            )
        else:
            activity["text"] = text
        return activity

    def submit_activity(
        self, user: str | User, value: dict[str, Any], *, reply_to: str
    ) -> dict[str, Any]:
        """What Teams sends when ``user`` clicks an ``Action.Submit`` on the bot's card
        ``reply_to``: a message with ``value`` (the action's data merged with the inputs)."""
        person = self.user(user)
        conversation, channel_data = self._where(person, reply_to)
        activity = self._base(person, conversation, channel_data)
        activity["replyToId"] = reply_to
        activity["value"] = value
        activity["channelData"]["source"] = {"name": "message"}
        activity["channelData"]["legacy"] = {"replyToId": reply_to}
        return activity

    def _invoke(self, person: User, name: str, value: Any, reply_to: str | None) -> dict[str, Any]:
        conversation, channel_data = self._where(person, reply_to)
        activity = self._base(person, conversation, channel_data)
        activity["type"] = "invoke"
        activity["name"] = name
        activity["value"] = value
        if reply_to:
            activity["replyToId"] = reply_to
        activity["channelData"]["source"] = {"name": "message"}
        return activity

    def card_action_activity(
        self, user: str | User, verb: str, data: dict[str, Any] | None = None, *, reply_to: str
    ) -> dict[str, Any]:
        """The invoke ``adaptiveCard/action`` for an ``Action.Execute`` clicked on card
        ``reply_to``; the bot answers synchronously (``{"statusCode": 200, "type":
        "application/vnd.microsoft.card.adaptive", "value": <card>}`` replaces the card)."""
        value = {
            "action": {"type": "Action.Execute", "verb": verb, "data": dict(data or {})},
            "trigger": "manual",
        }
        return self._invoke(self.user(user), "adaptiveCard/action", value, reply_to)

    def task_fetch_activity(
        self, user: str | User, data: dict[str, Any] | None = None, *, reply_to: str | None = None
    ) -> dict[str, Any]:
        """The invoke ``task/fetch`` (open a dialog); the bot answers ``{"task": {...}}``."""
        value = {"type": "task/fetch", "data": dict(data or {}), "context": {"theme": "default"}}
        return self._invoke(self.user(user), "task/fetch", value, reply_to)

    def task_submit_activity(
        self, user: str | User, data: dict[str, Any], *, reply_to: str | None = None
    ) -> dict[str, Any]:
        """The invoke ``task/submit`` (a dialog's form sent); ``data`` has the inputs."""
        value = {"type": "task/submit", "data": dict(data), "context": {"theme": "default"}}
        return self._invoke(self.user(user), "task/submit", value, reply_to)

    def conversation_update_activity(
        self,
        *,
        user: str | User | None = None,
        team: str | None = None,
        members_added: list[str] | None = None,
        members_removed: list[str] | None = None,
        by: str | User | None = None,
    ) -> dict[str, Any]:
        """``conversationUpdate`` in ``user``'s 1:1 chat or ``team``'s General channel.
        ``members_added`` / ``members_removed`` are Teams ids or user keys; by default the bot
        itself was added (the app was installed). ``by`` is who did it."""
        actor = self.user(by or user or "alice")
        if team is not None:
            the_team = self.directory.team(team)
            conversation, channel_data = self._channel(the_team.key, the_team.thread_id, "")
            conversation["id"] = the_team.thread_id
            channel_data["eventType"] = (
                "teamMemberAdded" if members_removed is None else "teamMemberRemoved"
            )
        else:
            conversation, channel_data = self._personal(self.user(user or actor))
        activity = self._base(actor, conversation, channel_data)
        activity["type"] = "conversationUpdate"
        for name, ids in (("membersAdded", members_added), ("membersRemoved", members_removed)):
            if ids is None and name == "membersAdded" and members_removed is None:
                ids = [self.bot_id]
            if ids is not None:
                activity[name] = [{"id": self._member_id(i)} for i in ids]
        return activity

    def installation_update_activity(
        self, *, user: str | User | None = None, team: str | None = None, action: str = "add"
    ) -> dict[str, Any]:
        """``installationUpdate`` (``action`` ``add``, ``remove``, ``add-upgrade``…) for the
        app in ``user``'s personal scope or in ``team``."""
        activity = self.conversation_update_activity(user=user, team=team)
        activity["type"] = "installationUpdate"
        activity["action"] = action
        activity.pop("membersAdded", None)
        activity["channelData"].pop("eventType", None)
        return activity

    def _member_id(self, key: str) -> str:
        if key.startswith("28:") or key.startswith("29:"):
            return key
        return self.directory.user(key).teams_id


# ---------------------------------------------------------------------- helpers


def _thread_of(conversation_id: str) -> str | None:
    _, _, rest = conversation_id.partition(";messageid=")
    return rest or None


def _find(conversation: Conversation, activity_id: str) -> Any:
    for stored in conversation.activities:
        if stored.id == activity_id:
            return stored
    return None


def _with_body(request: Request, body: dict[str, Any]) -> Request:
    return Request(
        request.method,
        request.path,
        request.query,
        json.dumps(body).encode("utf-8"),
        body,
        request.headers,
        request.at,
    )


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
