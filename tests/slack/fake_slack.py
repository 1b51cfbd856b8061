"""A loopback stand-in for Slack's Web API, in the style of bolt-python's mock servers.

Point a real ``slack_sdk.WebClient(base_url=fake.url)`` at it (or use ``fake.client()``), run
the code under test, then assert on ``fake.calls`` / ``fake.wait_for(...)``.  The server binds
127.0.0.1 on a free port and never talks to anything else.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import json
import math
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from http.server import ThreadingHTTPServer
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

from slack_sdk import WebClient

from tests.auxil.served import QuietHandler, Served
from tests.slack import rules

__all__ = ["APP_TOKEN", "BOT_TOKEN", "ApiError", "Call", "FakeSlack"]

T = TypeVar("T")

JSON_CONTENT_TYPE = "application/json; charset=utf-8"
BOT_ID = "BBOT"
APP_ID = "A1"
TEAM_DOMAIN = "example"
_TS_BASE_SECONDS = 1_700_000_000
# Form fields that slack_sdk (and Slack's docs) send as JSON strings inside form data.
_JSON_FIELDS = frozenset(
    {"blocks", "attachments", "metadata", "view", "user_auth_blocks", "chunks", "unfurls", "files"}
)
_TRUE = frozenset({"1", "true", "True", "TRUE", "yes"})
BOT_TOKEN = "xoxb-test-token"
APP_TOKEN = "xapp-test-token"
TRIGGER_SECONDS = 3.0  # a trigger_id is good for 3 s
RESPONSE_URL_USES = 5  # a response_url is good for 5 uses ...
RESPONSE_URL_SECONDS = 30 * 60  # ... within 30 minutes
# chat.postMessage: about 1 message/s per channel with short bursts, and a workspace-wide cap.
POST_PER_CHANNEL, POST_BURST = 1.0, 4.0
POST_WORKSPACE, POST_WORKSPACE_BURST = 50.0, 50.0


@dataclass(frozen=True)
class Call:
    """One request the fake received.

    ``headers`` has lower-cased names. ``at`` is ``time.monotonic()`` on arrival. ``status`` and
    ``response`` are what the fake answered (``status`` 429 for rate-limited calls).
    """

    method: str
    params: dict[str, Any]
    headers: dict[str, str]
    at: float
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status == 200 and bool(self.response.get("ok"))


class ApiError(Exception):
    """Raised by a method handler: the answer is ``{"ok": false, "error": error, **fields}``."""

    def __init__(self, error: str, **fields: Any) -> None:
        super().__init__(error)
        self.error = error
        self.fields = fields


_ApiError = ApiError


@dataclass
class _Limit:
    per_second: float
    per_channel: bool
    burst: float
    # bucket key -> (tokens, last refill time)
    buckets: dict[str, tuple[float, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class _Answer:
    status: int
    payload: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[dict[str, Any]], dict[str, Any]]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # concurrent clients must not overflow the listen backlog
    allow_reuse_address = True

    def __init__(self, fake: FakeSlack) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _RequestHandler)


class _RequestHandler(QuietHandler):
    server: _Server

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        raw = self._read_body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, body, extra = self.server.fake._dispatch(self.path, raw, headers)
        self.send_response(status)
        self.send_header("Content-Type", JSON_CONTENT_TYPE)
        self.send_header("Content-Length", str(len(body)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


class FakeSlack(Served):
    """A Slack Web API on 127.0.0.1 for tests: records every call, answers like Slack, can be
    told to fail.

    State that tests may read or seed directly (hold no references across threads you do not
    control; the server mutates these under ``self._cond``):

    - ``users``: user id -> user object
    - ``messages``: channel id -> stored messages, oldest first
    - ``ephemeral``: every ``chat.postEphemeral`` (channel, user, text, blocks, message_ts)
    - ``channel_members``: channel id -> member ids (for ``conversations.members``)
    - ``usergroup_members``: usergroup id -> member ids (for ``usergroups.users.list``)
    - ``views``: view id -> view; ``home_views``: user id -> published Home tab view
    - ``reactions``: every reaction added (channel, ts, name)
    - ``rejected_429``: how many HTTP 429 answers the fake has sent
    - ``channels``: channel id -> name / is_private / is_archived (channels listed only in
      ``channel_members`` count as public channels named after their id)
    - ``scopes``: the bot token's scopes (by default exactly those of ``slack-manifest.yml``)

    It is as strict as Slack by default (see ``tests/slack/rules.py``): the bot token holds only
    its scopes, read methods ignore JSON bodies, posting needs the bot in the channel, rate
    tiers answer 429, Block Kit is checked, trigger_ids and response_urls expire. A test may
    switch a rule off only by naming it: ``FakeSlack(loosen={"rate_limits"})`` (say why).
    """

    name = "slack"

    def __init__(
        self,
        *,
        bot_user_id: str = "UBOT",
        team_id: str = "T1",
        scopes: Iterable[str] | None = None,
        loosen: Iterable[str] = (),
        bot_token: str = BOT_TOKEN,
        app_token: str = APP_TOKEN,
    ) -> None:
        unknown = set(loosen) - rules.RULES
        if unknown:
            raise ValueError(f"no such rule: {sorted(unknown)}; rules: {sorted(rules.RULES)}")
        self.loosened: set[str] = set(loosen)
        self.scopes: set[str] = set(rules.manifest_scopes() if scopes is None else scopes)
        self.app_scopes: set[str] = {"connections:write"}
        self.bot_token = bot_token
        self.app_token = app_token
        self.bot_user_id = bot_user_id
        self.bot_id = BOT_ID
        self.team_id = team_id
        self.channels: dict[str, dict[str, Any]] = {}
        self._triggers: dict[str, float] = {}
        self._response_urls: dict[str, dict[str, Any]] = {}
        self._method_tokens: dict[str, str] = {}
        self._method_scopes: dict[str, str | None] = {}
        self.calls: list[Call] = []
        self.users: dict[str, dict[str, Any]] = {}
        self.messages: dict[str, list[dict[str, Any]]] = {}
        self.ephemeral: list[dict[str, Any]] = []
        self.channel_members: dict[str, list[str]] = {}
        self.usergroup_members: dict[str, list[str]] = {}
        self.views: dict[str, dict[str, Any]] = {}
        self.home_views: dict[str, dict[str, Any]] = {}
        self.reactions: list[dict[str, str]] = []
        self.rejected_429 = 0
        self._cond = threading.Condition()
        self._faults: dict[str, deque[tuple[str, str | int]]] = {}
        self._limits: dict[str, list[_Limit]] = {}
        self._ts_counter = 0
        self._view_counter = 0
        self.files: dict[str, dict[str, Any]] = {}
        self._handlers: dict[str, Handler] = {
            "auth.test": self._auth_test,
            "chat.postMessage": self._chat_post_message,
            "chat.postEphemeral": self._chat_post_ephemeral,
            "chat.update": self._chat_update,
            "chat.delete": self._chat_delete,
            "chat.getPermalink": self._chat_get_permalink,
            "conversations.open": self._conversations_open,
            "conversations.history": self._conversations_history,
            "conversations.replies": self._conversations_replies,
            "conversations.members": self._conversations_members,
            "users.info": self._users_info,
            "users.list": self._users_list,
            "users.lookupByEmail": self._users_lookup_by_email,
            "usergroups.users.list": self._usergroups_users_list,
            "views.publish": self._views_publish,
            "views.open": self._views_open,
            "views.update": self._views_update,
            "reactions.add": self._reactions_add,
            "conversations.info": self._conversations_info,
            "conversations.list": self._conversations_list,
            "conversations.join": self._conversations_join,
            "files.getUploadURLExternal": self._files_get_upload_url,
            "files.completeUploadExternal": self._files_complete_upload,
        }
        self._preload_users()
        self._preload_channels()
        if "rate_limits" not in self.loosened:
            self._slack_rate_limits()

    # ------------------------------------------------------------------ lifecycle

    def _make_server(self) -> _Server:
        return _Server(self)

    @property
    def url(self) -> str:
        """Base URL for ``WebClient(base_url=...)``, e.g. ``http://127.0.0.1:PORT/api/``."""
        return f"http://127.0.0.1:{self.port}/api/"

    def client(self, *, token: str = "xoxb-test-token", **kwargs: Any) -> WebClient:
        """A real WebClient pointed at this fake that ignores HTTP(S)_PROXY env variables."""
        web_client = WebClient(token=token, base_url=self.url, **kwargs)
        web_client.proxy = None  # slack_sdk reads proxies from the environment; stay on loopback
        return web_client

    # ------------------------------------------------------------------ inspection

    def calls_to(self, method: str) -> list[Call]:
        with self._cond:
            return [c for c in self.calls if c.method == method]

    def wait_for(
        self,
        method: str,
        *,
        count: int = 1,
        timeout: float = 5.0,
        where: Callable[[Call], bool] | None = None,
    ) -> list[Call]:
        """Block until at least ``count`` calls to ``method`` (matching ``where``) arrived.

        Returns every matching call so far. Raises AssertionError listing the calls seen.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = [
                    c for c in self.calls if c.method == method and (where is None or where(c))
                ]
                if len(found) >= count:
                    return found
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(
                        self._describe_timeout(method, count, timeout, found, where is not None)
                    )
                self._cond.wait(remaining)

    def _describe_timeout(
        self, method: str, count: int, timeout: float, found: list[Call], filtered: bool
    ) -> str:
        lines = [
            f"expected {count} call(s) to {method!r}"
            f"{' matching `where`' if filtered else ''}, got {len(found)} "
            f"within {timeout}s; {len(self.calls)} call(s) seen:"
        ]
        shown = self.calls[-50:]
        if len(self.calls) > len(shown):
            lines.append(f"  ... {len(self.calls) - len(shown)} earlier call(s) omitted")
        for call in shown:
            params = {k: v for k, v in call.params.items() if k != "token"}
            text = json.dumps(params, default=str, sort_keys=True)
            if len(text) > 200:
                text = text[:197] + "..."
            result = call.response.get("error") or ("ok" if call.ok else "")
            lines.append(f"  {call.method} [{call.status} {result}] {text}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ behaviour control

    def fail(self, method: str, error: str, *, times: int = 1) -> None:
        """The next ``times`` calls to ``method`` answer ``{"ok": false, "error": error}``."""
        with self._cond:
            queue = self._faults.setdefault(method, deque())
            queue.extend(("fail", error) for _ in range(times))

    def rate_limit(self, method: str, *, retry_after: int = 1, times: int = 1) -> None:
        """The next ``times`` calls to ``method`` answer HTTP 429 with ``Retry-After``."""
        with self._cond:
            queue = self._faults.setdefault(method, deque())
            queue.extend(("429", retry_after) for _ in range(times))

    def limit(
        self,
        method: str,
        *,
        per_second: float,
        per_channel: bool = False,
        burst: float = 3.0,
    ) -> None:
        """Enforce a token-bucket rate limit on ``method``.

        Each bucket (one per ``channel`` when ``per_channel``) holds up to ``burst`` tokens and
        refills at ``per_second``; it starts full. A call with no token left is answered HTTP 429
        with ``Retry-After`` = seconds until the next token (at least 1), has no effect and adds to
        ``rejected_429``. Slack's chat.postMessage is ``limit("chat.postMessage", per_second=1,
        per_channel=True)``.
        """
        if per_second <= 0 or burst < 1:
            raise ValueError("per_second must be > 0 and burst >= 1")
        with self._cond:
            self._limits[method] = [_Limit(per_second, per_channel, float(burst))]

    def unlimit(self, method: str) -> None:
        """Lift every rate limit on ``method`` (a test says why)."""
        with self._cond:
            self._limits.pop(method, None)

    def loosen(self, *names: str) -> None:
        """Switch off the named rules of ``tests/slack/rules.py`` (a test says why)."""
        unknown = set(names) - rules.RULES
        if unknown:
            raise ValueError(f"no such rule: {sorted(unknown)}")
        with self._cond:
            self.loosened.update(names)
            if "rate_limits" in names:
                self._limits.clear()

    def _slack_rate_limits(self) -> None:
        """Slack's published limits for the methods the bot uses."""
        self._limits["chat.postMessage"] = [
            _Limit(POST_PER_CHANNEL, True, POST_BURST),
            _Limit(POST_WORKSPACE, False, POST_WORKSPACE_BURST),
        ]
        for method, per_minute in rules.METHOD_TIERS.items():
            # "20 per minute" as a bucket: a minute's worth at once, then one every 3 s.
            # Slack's docs allow "occasional bursts" without saying how large; a minute's
            # worth is the most a per-minute window can ever admit.
            self._limits[method] = [_Limit(per_minute / 60, False, float(per_minute))]

    def add_method(
        self,
        method: str,
        handler: Handler,
        *,
        scope: str | None = None,
        token: str = "bot",
    ) -> None:
        """Serve another Web API method. ``token`` is the kind it takes (``"bot"`` or
        ``"app"`` for app-level tokens); ``scope`` the scope that token must hold. The handler
        gets the parameters and returns the answer's fields, or raises ``FakeSlack.Error``."""
        with self._cond:
            self._handlers[method] = handler
            self._method_tokens[method] = token
            self._method_scopes[method] = scope

    def add_channel(
        self,
        channel_id: str,
        *,
        name: str | None = None,
        members: Iterable[str] = (),
        private: bool | None = None,
        bot: bool = True,
        archived: bool = False,
    ) -> None:
        """A channel with ``members``; the bot is in it when ``bot`` (as after ``/invite``).
        Ids starting with ``G`` are private unless ``private`` says otherwise."""
        people = [m for m in members if m != self.bot_user_id]
        if bot:
            people.append(self.bot_user_id)
        with self._cond:
            self.channels[channel_id] = {
                "name": name or channel_id.lower(),
                "is_private": channel_id.startswith("G") if private is None else private,
                "is_archived": archived,
            }
            self.channel_members[channel_id] = people

    def new_trigger_id(self) -> str:
        """A trigger_id as Slack puts in an interaction; ``views.open`` takes it within 3 s."""
        trigger = f"{int(time.time())}.{secrets.randbelow(10**9)}.{secrets.token_hex(16)}"
        with self._cond:
            self._triggers[trigger] = time.monotonic()
        return trigger

    def new_response_url(
        self, *, channel: str, user: str, message_ts: str = "", ephemeral: bool = False
    ) -> str:
        """A response_url for an interaction in ``channel`` by ``user`` on message ``message_ts``
        (an ephemeral one when ``ephemeral``): 5 uses within 30 minutes. Posts to it are
        recorded with method ``"response_url"`` and act on the fake's messages."""
        key = secrets.token_hex(12)
        with self._cond:
            self._response_urls[key] = {
                "channel": channel,
                "user": user,
                "message_ts": message_ts,
                "ephemeral": ephemeral,
                "uses": 0,
                "issued": time.monotonic(),
            }
        return f"http://127.0.0.1:{self.port}/response/{key}"

    def add_user(self, user_id: str, **fields: Any) -> dict[str, Any]:
        """Add (or replace) a user. ``fields`` override the user object's top-level keys; the
        shortcuts ``email``, ``display_name``, ``first_name``, ``last_name``, ``title`` and a
        ``profile`` dict are merged into ``profile``; ``real_name`` sets both."""
        name = str(fields.pop("name", user_id.lower()))
        real_name = str(fields.pop("real_name", name.title()))
        first, _, last = real_name.partition(" ")
        tz = str(fields.pop("tz", "Europe/London"))
        profile: dict[str, Any] = {
            "real_name": real_name,
            "real_name_normalized": real_name,
            "display_name": name,
            "display_name_normalized": name,
            "first_name": first,
            "last_name": last,
            "title": "",
            "email": f"{name}@example.com",
            "team": self.team_id,
            "status_text": "",
            "status_emoji": "",
            "image_48": f"https://avatars.example.com/{user_id}_48.png",
        }
        for key in ("email", "display_name", "first_name", "last_name", "title"):
            if key in fields:
                profile[key] = fields.pop(key)
        profile.update(fields.pop("profile", {}))
        user: dict[str, Any] = {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "real_name": real_name,
            "deleted": False,
            "color": "9f69e7",
            "tz": tz,
            "tz_label": tz,
            "tz_offset": 0,
            "profile": profile,
            "is_admin": False,
            "is_owner": False,
            "is_primary_owner": False,
            "is_restricted": False,
            "is_ultra_restricted": False,
            "is_bot": False,
            "is_app_user": False,
            "updated": _TS_BASE_SECONDS,
            "is_email_confirmed": True,
        }
        user.update(fields)
        with self._cond:
            self.users[user_id] = user
        return user

    def add_message(
        self,
        channel: str,
        text: str,
        *,
        user: str = "U1",
        ts: str | None = None,
        thread_ts: str | None = None,
        **fields: Any,
    ) -> dict[str, Any]:
        """Seed a message (e.g. one a human posted) so history/replies/update can see it."""
        with self._cond:
            message: dict[str, Any] = {
                "type": "message",
                "user": user,
                "text": text,
                "ts": ts or self._next_ts(),
                "team": self.team_id,
            }
            if thread_ts:
                message["thread_ts"] = thread_ts
            message.update(fields)
            self._store_message(channel, message)
            return message

    def _preload_users(self) -> None:
        self.add_user(
            "U1",
            name="alice",
            real_name="Alice Archer",
            tz="Europe/London",
            tz_label="Greenwich Mean Time",
            tz_offset=0,
        )
        self.add_user(
            "U2",
            name="bob",
            real_name="Bob Brown",
            tz="America/New_York",
            tz_label="Eastern Standard Time",
            tz_offset=-18000,
        )
        self.add_user(
            "U3",
            name="chika",
            real_name="Chika Sato",
            tz="Asia/Tokyo",
            tz_label="Japan Standard Time",
            tz_offset=32400,
        )
        self.add_user(
            self.bot_user_id,
            name="mobilize",
            real_name="Mobilize",
            tz="America/Los_Angeles",
            tz_label="Pacific Standard Time",
            tz_offset=-28800,
            is_bot=True,
            is_email_confirmed=False,
            profile={"email": None, "bot_id": self.bot_id, "api_app_id": APP_ID},
        )
        self.add_user(
            "U9",
            name="dana",
            real_name="Dana Gone",
            tz="Europe/Berlin",
            tz_label="Central European Time",
            tz_offset=3600,
            deleted=True,
        )

    def _preload_channels(self) -> None:
        self.add_channel("C1", name="general", members=["U1", "U2", "U3"])
        self.add_channel("CSUPPORT", name="rollout-support", members=["U3"])

    # ------------------------------------------------------------------ request dispatch

    def _dispatch(
        self, raw_path: str, raw: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        at = time.monotonic()
        parts = urlsplit(raw_path)
        path = parts.path
        if path.startswith("/api/"):
            method = path[len("/api/") :].strip("/")
        elif path.startswith("/response"):
            method = "response_url"
        else:
            method = path.strip("/") or "/"
        content_type = headers.get("content-type", "")
        form_only = method in rules.FORM_ONLY and "form_reads" not in self.loosened
        parse_error: str | None = None
        try:
            params = _parse_params(parts.query, raw, content_type, ignore_json=form_only)
        except ValueError:
            params = {"_raw": raw.decode("utf-8", "replace")}
            parse_error = "invalid_json"
        if path.startswith("/upload/v1/"):  # the upload URL files.getUploadURLExternal gave
            with self._cond:
                answer = self._upload(path.rsplit("/", 1)[-1], raw)
                self.calls.append(
                    Call(
                        method="upload",
                        params={"bytes": len(raw)},
                        headers=headers,
                        at=at,
                        status=answer.status,
                        response=answer.payload,
                    )
                )
                self._cond.notify_all()
            return answer.status, json.dumps(answer.payload).encode("utf-8"), answer.headers
        with self._cond:
            if parse_error is not None:
                answer = _Answer(200, {"ok": False, "error": parse_error})
            elif method == "response_url":
                answer = self._respond(path.rsplit("/", 1)[-1], params)
            else:
                answer = self._answer(method, params, headers, at)
            body = json.dumps(answer.payload).encode("utf-8")
            self.calls.append(
                Call(
                    method=method,
                    params=params,
                    headers=headers,
                    at=at,
                    status=answer.status,
                    response=json.loads(body),
                )
            )
            self._cond.notify_all()
        return answer.status, body, answer.headers

    def _token(self, params: dict[str, Any], headers: dict[str, str]) -> str:
        authorization = headers.get("authorization", "")
        if authorization.lower().startswith("bearer "):
            return authorization[7:].strip()
        return str(params.get("token") or "")

    def _answer(
        self, method: str, params: dict[str, Any], headers: dict[str, str], now: float
    ) -> _Answer:
        handler = self._handlers.get(method)
        if handler is None:
            return _Answer(200, {"ok": False, "error": "unknown_method"})
        token = self._token(params, headers)
        kind = self._method_tokens.get(method, "bot")
        if not token:
            return _Answer(200, {"ok": False, "error": "not_authed"})
        if token not in (self.bot_token, self.app_token):
            return _Answer(200, {"ok": False, "error": "invalid_auth"})
        granted = self.scopes if token == self.bot_token else self.app_scopes
        extra = {"x-oauth-scopes": ",".join(sorted(granted))}
        if (kind == "app") != (token == self.app_token):
            return _Answer(200, {"ok": False, "error": "not_allowed_token_type"}, extra)
        needed = (
            self._method_scopes[method]
            if method in self._method_scopes
            else rules.needed_scope(method, params)
        )
        if needed and "scopes" not in self.loosened:
            wanted = (needed,) if isinstance(needed, str) else needed
            missing = [scope for scope in wanted if scope not in granted]
            if missing:
                return _Answer(
                    200,
                    {
                        "ok": False,
                        "error": "missing_scope",
                        "needed": ",".join(missing),
                        "provided": ",".join(sorted(granted)),
                    },
                    extra,
                )
        faults = self._faults.get(method)
        if faults:
            kind_, value = faults.popleft()
            if kind_ == "fail":
                return _Answer(200, {"ok": False, "error": str(value)}, extra)
            return self._too_many(int(value))
        limits = self._limits.get(method)
        if limits:
            wait = self._take_tokens(limits, params, now)
            if wait is not None:
                return self._too_many(max(1, math.ceil(wait)))
        try:
            result = handler(params)
        except _ApiError as e:
            return _Answer(200, {"ok": False, "error": e.error, **e.fields}, extra)
        return _Answer(200, {"ok": True, **result}, extra)

    def _too_many(self, retry_after: int) -> _Answer:
        self.rejected_429 += 1
        return _Answer(
            429, {"ok": False, "error": "ratelimited"}, {"Retry-After": str(retry_after)}
        )

    def _take_tokens(
        self, limits: list[_Limit], params: dict[str, Any], now: float
    ) -> float | None:
        """Take a token from every bucket; None on success, else the seconds until all have
        one (and nothing is taken)."""
        levels = []
        for limit in limits:
            key = _dm_channel(str(params.get("channel") or "")) if limit.per_channel else ""
            tokens, last = limit.buckets.get(key, (limit.burst, now))
            tokens = min(limit.burst, tokens + (now - last) * limit.per_second)
            levels.append((limit, key, tokens))
        waits = [(1.0 - t) / limit.per_second for limit, _key, t in levels if t < 1.0]
        for limit, key, tokens in levels:
            limit.buckets[key] = (tokens if waits else tokens - 1.0, now)
        return max(waits) if waits else None

    # ------------------------------------------------------------------ helpers

    def _next_ts(self) -> str:
        self._ts_counter += 1
        micros = self._ts_counter * 100
        return f"{_TS_BASE_SECONDS + micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _user(self, user_id: str) -> dict[str, Any]:
        user = self.users.get(user_id)
        if user is None:
            raise _ApiError("user_not_found")
        return user

    def _find_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        for message in self.messages.get(channel, []):
            if message["ts"] == ts:
                return message
        return None

    def _store_message(self, channel: str, message: dict[str, Any]) -> None:
        stored = self.messages.setdefault(channel, [])
        key = _ts_key(message["ts"])
        index = len(stored)
        while index > 0 and _ts_key(stored[index - 1]["ts"]) > key:
            index -= 1
        stored.insert(index, message)
        thread_ts = message.get("thread_ts")
        if thread_ts and thread_ts != message["ts"]:
            parent = self._find_message(channel, thread_ts)
            if parent is not None:
                message.setdefault("parent_user_id", parent.get("user"))
                self._refresh_thread(channel, parent)

    def _refresh_thread(self, channel: str, parent: dict[str, Any]) -> None:
        replies = [
            m
            for m in self.messages.get(channel, [])
            if m.get("thread_ts") == parent["ts"] and m["ts"] != parent["ts"]
        ]
        if not replies:
            for key in ("reply_count", "reply_users", "reply_users_count", "latest_reply"):
                parent.pop(key, None)
            return
        parent["thread_ts"] = parent["ts"]
        parent["reply_count"] = len(replies)
        reply_users = list(dict.fromkeys(str(m.get("user")) for m in replies))
        parent["reply_users"] = reply_users
        parent["reply_users_count"] = len(reply_users)
        parent["latest_reply"] = replies[-1]["ts"]

    def _channel_info(self, channel: str) -> dict[str, Any] | None:
        """Name and privacy of a known channel; channels only in ``channel_members`` count
        as public ones named after their id. None for DMs and unknown ids."""
        if channel in self.channels:
            return self.channels[channel]
        if channel in self.channel_members and channel[:1] in ("C", "G"):
            return {
                "name": channel.lower(),
                "is_private": channel.startswith("G"),
                "is_archived": False,
            }
        return None

    def _bot_in(self, channel: str) -> bool:
        return self.bot_user_id in self.channel_members.get(channel, [])

    def _check_channel(self, channel: str, *, post: bool = False) -> None:
        """What Slack checks before the bot posts to or reads a channel (not a DM)."""
        if channel[:1] == "D":
            user = self.users.get(channel[1:])
            if user is None:
                raise _ApiError("channel_not_found")
            return
        info = self._channel_info(channel)
        if info is None:
            raise _ApiError("channel_not_found")
        if "membership" in self.loosened or self._bot_in(channel):
            if post and info.get("is_archived"):
                raise _ApiError("is_archived")
            return
        if info.get("is_private"):
            raise _ApiError("channel_not_found")  # private channels are invisible from outside
        if post and "chat:write.public" in self.scopes:
            return
        raise _ApiError("not_in_channel")

    def _post_channel(self, params: dict[str, Any]) -> str:
        channel = str(params.get("channel") or "")
        if not channel:
            raise _ApiError("channel_not_found")
        if channel[0] in "UW":
            user = self.users.get(channel)
            if user is None or user.get("deleted"):
                raise _ApiError("channel_not_found")
            if user.get("is_bot"):
                raise _ApiError("cannot_dm_bot")
        channel = _dm_channel(channel)
        self._check_channel(channel, post=True)
        return channel

    def _check_message(self, params: dict[str, Any], *, require: bool = True) -> None:
        """Slack's checks of a message's text and blocks."""
        has_content = params.get("text") or params.get("blocks") or params.get("attachments")
        if require and not has_content:
            raise _ApiError("no_text")
        if "block_kit" in self.loosened:
            return
        if len(str(params.get("text") or "")) > rules.MAX_TEXT:
            raise _ApiError("msg_too_long")
        if params.get("blocks") is not None:
            try:
                rules.check_blocks(params["blocks"])
            except rules.BlockError as e:
                raise _ApiError("invalid_blocks", errors=[str(e)]) from e

    def _with_block_ids(self, blocks: Any) -> Any:
        """Slack gives every block without one a random block_id."""
        if not isinstance(blocks, list):
            return blocks
        out = copy.deepcopy(blocks)
        for block in out:
            if isinstance(block, dict) and not block.get("block_id"):
                block["block_id"] = secrets.token_urlsafe(4)
        return out

    def _page(
        self, items: Sequence[T], params: dict[str, Any], default_limit: int | None
    ) -> tuple[list[T], str]:
        limit = _int(params.get("limit"), 0) or default_limit or len(items) or 1
        start = _decode_cursor(str(params.get("cursor") or ""))
        end = start + limit
        next_cursor = _encode_cursor(end) if end < len(items) else ""
        return list(items[start:end]), next_cursor

    def _new_view(self, view: Any, view_id: str | None = None) -> dict[str, Any]:
        if not isinstance(view, dict) or "type" not in view:
            raise _ApiError("invalid_arguments")
        self._view_counter += 1
        if view_id is None:
            view_id = f"V{self._view_counter:08d}"
        stored = copy.deepcopy(view)
        stored.update(
            {
                "id": view_id,
                "team_id": self.team_id,
                "blocks": stored.get("blocks", []),
                "private_metadata": stored.get("private_metadata", ""),
                "callback_id": stored.get("callback_id", ""),
                "external_id": stored.get("external_id", ""),
                "state": {"values": {}},
                "hash": f"{_TS_BASE_SECONDS}.{self._view_counter:08x}",
                "root_view_id": view_id,
                "previous_view_id": None,
                "app_id": APP_ID,
                "app_installed_team_id": self.team_id,
                "bot_id": self.bot_id,
            }
        )
        self.views[view_id] = stored
        return stored

    # ------------------------------------------------------------------ methods

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "url": f"https://{TEAM_DOMAIN}.slack.com/",
            "team": "Example Org",
            "user": self.users.get(self.bot_user_id, {}).get("name", "mobilize"),
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = self._post_channel(params)
        self._check_message(params)
        message: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": APP_ID,
            "team": self.team_id,
            "text": str(params.get("text") or ""),
            "ts": self._next_ts(),
        }
        for key in ("blocks", "attachments", "metadata"):
            if params.get(key) is not None:
                message[key] = copy.deepcopy(params[key])
        if "blocks" in message:
            message["blocks"] = self._with_block_ids(message["blocks"])
        thread_ts = params.get("thread_ts")
        if thread_ts:
            message["thread_ts"] = str(thread_ts)
            if _truthy(params.get("reply_broadcast")):
                message["subtype"] = "thread_broadcast"
        self._store_message(channel, message)
        return {"channel": channel, "ts": message["ts"], "message": copy.deepcopy(message)}

    def _chat_post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = _dm_channel(str(params.get("channel") or ""))
        if not channel:
            raise _ApiError("channel_not_found")
        user = str(params.get("user") or "")
        self._user(user)
        self._check_channel(channel, post=True)
        if channel[:1] != "D" and user not in self.channel_members.get(channel, []):
            raise _ApiError("user_not_in_channel")
        self._check_message(params)
        ts = self._next_ts()
        self.ephemeral.append(
            {
                "channel": channel,
                "user": user,
                "text": params.get("text") or "",
                "blocks": copy.deepcopy(params.get("blocks")),
                "thread_ts": params.get("thread_ts"),
                "message_ts": ts,
            }
        )
        return {"message_ts": ts}

    def _own_message(
        self, params: dict[str, Any], ts_key: str, denied: str
    ) -> tuple[str, dict[str, Any]]:
        channel = str(params.get("channel") or "")
        if not channel:
            raise _ApiError("channel_not_found")
        message = self._find_message(channel, str(params.get(ts_key) or ""))
        if message is None:
            raise _ApiError("message_not_found")
        if message.get("bot_id") != self.bot_id:
            raise _ApiError(denied)
        return channel, message

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        self._check_message(params, require=False)
        channel, message = self._own_message(params, "ts", "cant_update_message")
        if "text" in params:
            message["text"] = str(params.get("text") or "")
        for key in ("blocks", "attachments", "metadata"):
            if key in params:
                if params[key] is None:
                    message.pop(key, None)
                else:
                    message[key] = copy.deepcopy(params[key])
        if "blocks" in message:
            message["blocks"] = self._with_block_ids(message["blocks"])
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        return {
            "channel": channel,
            "ts": message["ts"],
            "text": message["text"],
            "message": copy.deepcopy(message),
        }

    def _chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, message = self._own_message(params, "ts", "cant_delete_message")
        self.messages[channel].remove(message)
        thread_ts = message.get("thread_ts")
        if thread_ts and thread_ts != message["ts"]:
            parent = self._find_message(channel, thread_ts)
            if parent is not None:
                self._refresh_thread(channel, parent)
        return {"channel": channel, "ts": message["ts"]}

    def _chat_get_permalink(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        ts = str(params.get("message_ts") or "")
        if not channel:
            raise _ApiError("channel_not_found")
        if not ts:
            raise _ApiError("message_not_found")
        link = f"https://{TEAM_DOMAIN}.slack.com/archives/{channel}/p{ts.replace('.', '')}"
        message = self._find_message(channel, ts)
        if message is not None and message.get("thread_ts") not in (None, ts):
            link += f"?thread_ts={message['thread_ts']}&cid={channel}"
        return {"channel": channel, "permalink": link}

    def _files_get_upload_url(self, params: dict[str, Any]) -> dict[str, Any]:
        filename = str(params.get("filename") or "")
        try:
            length = int(params.get("length") or 0)
        except ValueError:
            length = 0
        if not filename or length <= 0:
            raise _ApiError("invalid_arguments")
        file_id = f"F{len(self.files) + 1:08d}"
        self.files[file_id] = {
            "id": file_id,
            "name": filename,
            "length": length,
            "alt_txt": str(params.get("alt_txt") or ""),
            "data": None,
            "channel": None,
        }
        return {
            "upload_url": f"http://127.0.0.1:{self.port}/upload/v1/{file_id}",
            "file_id": file_id,
        }

    def _upload(self, file_id: str, raw: bytes) -> _Answer:
        found = self.files.get(file_id)
        if found is None or found["channel"] is not None:
            return _Answer(404, {"ok": False, "error": "file_not_found"})
        found["data"] = bytes(raw)
        return _Answer(200, {"ok": True})

    def _files_complete_upload(self, params: dict[str, Any]) -> dict[str, Any]:
        """Share uploaded files: each must have been uploaded and not shared yet; a channel
        must be one the bot may post in."""
        items = params.get("files")
        if not isinstance(items, list) or not items:
            raise _ApiError("invalid_arguments")
        channel = str(params.get("channel_id") or "")
        if channel:
            self._check_channel(_dm_channel(channel), post=True)
        shared: list[dict[str, Any]] = []
        for item in items:
            found = self.files.get(str((item or {}).get("id") or ""))
            if found is None or found["data"] is None or found["channel"] is not None:
                raise _ApiError("file_not_found")
            found["title"] = str(item.get("title") or found["name"])
            found["channel"] = _dm_channel(channel) if channel else ""
            shared.append({"id": found["id"], "name": found["name"], "title": found["title"]})
        if channel:
            message: dict[str, Any] = {
                "type": "message",
                "user": self.bot_user_id,
                "bot_id": self.bot_id,
                "text": str(params.get("initial_comment") or ""),
                "files": copy.deepcopy(shared),
                "ts": self._next_ts(),
            }
            if params.get("thread_ts"):
                message["thread_ts"] = str(params["thread_ts"])
            self._store_message(_dm_channel(channel), message)
        return {"files": shared}

    def _conversations_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if params.get("channel"):
            return {"channel": {"id": str(params["channel"])}, "no_op": True, "already_open": True}
        raw_users = params.get("users") or ""
        user_ids = (
            [str(u) for u in raw_users]
            if isinstance(raw_users, list)
            else [u.strip() for u in str(raw_users).split(",") if u.strip()]
        )
        if not user_ids:
            raise _ApiError("users_list_not_supplied")
        for user_id in user_ids:
            if self._user(user_id).get("deleted"):
                raise _ApiError("user_disabled")
        if len(user_ids) == 1:
            channel_id = _dm_channel(user_ids[0])
        else:
            channel_id = "G" + "".join(sorted(user_ids))
        return {"channel": {"id": channel_id}, "no_op": False, "already_open": False}

    def _visible(self, message: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
        out = copy.deepcopy(message)
        if not _truthy(params.get("include_all_metadata")):
            out.pop("metadata", None)
        return out

    def _ts_window(
        self, messages: list[dict[str, Any]], params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        inclusive = _truthy(params.get("inclusive"))
        bounds: dict[str, Decimal | None] = {}
        for name in ("oldest", "latest"):
            try:
                bounds[name] = _ts_key(str(params[name])) if params.get(name) else None
            except InvalidOperation as e:
                raise _ApiError(f"invalid_ts_{name}") from e
        oldest, latest = bounds["oldest"], bounds["latest"]
        kept = []
        for message in messages:
            key = _ts_key(message["ts"])
            if oldest is not None and (key < oldest or (key == oldest and not inclusive)):
                continue
            if latest is not None and (key > latest or (key == latest and not inclusive)):
                continue
            kept.append(message)
        return kept

    def _conversations_history(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if not channel:
            raise _ApiError("channel_not_found")
        self._check_channel(channel)
        top_level = [
            m
            for m in self.messages.get(channel, [])
            if m.get("thread_ts") in (None, m["ts"]) or m.get("subtype") == "thread_broadcast"
        ]
        newest_first = list(reversed(self._ts_window(top_level, params)))
        page, next_cursor = self._page(newest_first, params, 100)
        return {
            "messages": [self._visible(m, params) for m in page],
            "has_more": bool(next_cursor),
            "pin_count": 0,
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if not channel:
            raise _ApiError("channel_not_found")
        self._check_channel(channel)
        message = self._find_message(channel, str(params.get("ts") or ""))
        if message is None:
            raise _ApiError("thread_not_found")
        root_ts = message.get("thread_ts") or message["ts"]
        root = self._find_message(channel, root_ts) or message
        replies = [
            m
            for m in self.messages.get(channel, [])
            if m.get("thread_ts") == root_ts and m["ts"] != root["ts"]
        ]
        thread = [root, *self._ts_window(replies, params)]
        page, next_cursor = self._page(thread, params, 1000)
        return {
            "messages": [self._visible(m, params) for m in page],
            "has_more": bool(next_cursor),
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _conversations_members(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        info = self._channel_info(channel)
        if info is None or (
            info.get("is_private")
            and not self._bot_in(channel)
            and "membership" not in self.loosened
        ):
            raise _ApiError("channel_not_found")
        page, next_cursor = self._page(self.channel_members[channel], params, 100)
        return {"members": page, "response_metadata": {"next_cursor": next_cursor}}

    def _as_seen(self, user: dict[str, Any]) -> dict[str, Any]:
        """A user object as the bot token sees it: no email without users:read.email."""
        out = copy.deepcopy(user)
        if "users:read.email" not in self.scopes and "scopes" not in self.loosened:
            out.get("profile", {}).pop("email", None)
        return out

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user = self._as_seen(self._user(str(params.get("user") or "")))
        if _truthy(params.get("include_locale")):
            user["locale"] = "en-US"
        return {"user": user}

    def _users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        page, next_cursor = self._page(list(self.users.values()), params, None)
        return {
            "members": [self._as_seen(user) for user in page],
            "cache_ts": int(time.time()),
            "response_metadata": {"next_cursor": next_cursor},
        }

    def _users_lookup_by_email(self, params: dict[str, Any]) -> dict[str, Any]:
        email = str(params.get("email") or "").strip().lower()
        for user in self.users.values():
            if email and str(user.get("profile", {}).get("email") or "").lower() == email:
                return {"user": self._as_seen(user)}
        raise _ApiError("users_not_found")

    def _usergroups_users_list(self, params: dict[str, Any]) -> dict[str, Any]:
        usergroup = str(params.get("usergroup") or "")
        if usergroup not in self.usergroup_members:
            raise _ApiError("no_such_subteam")
        return {"users": list(self.usergroup_members[usergroup])}

    def _check_hash(self, params: dict[str, Any], current: dict[str, Any] | None) -> None:
        expected = params.get("hash")
        if expected and current is not None and current.get("hash") != expected:
            raise _ApiError("hash_conflict")

    def _views_publish(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = str(params.get("user_id") or "")
        self._user(user_id)
        current = self.home_views.get(user_id)
        self._check_hash(params, current)
        view = self._new_view(params.get("view"), current["id"] if current else None)
        self.home_views[user_id] = view
        return {"view": copy.deepcopy(view)}

    def _views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        trigger = str(params.get("trigger_id") or params.get("interactivity_pointer") or "")
        if not trigger:
            raise _ApiError("invalid_arguments")
        if "trigger_ids" not in self.loosened:
            issued = self._triggers.get(trigger)
            if issued is None:
                raise _ApiError("invalid_trigger_id")
            if math.isnan(issued):  # Slack: "already exchanged in a previous call"
                raise _ApiError("exchanged_trigger_id")
            if time.monotonic() - issued > TRIGGER_SECONDS:
                raise _ApiError("expired_trigger_id")
            self._triggers[trigger] = math.nan  # exchanged: a trigger_id opens one view
        view = params.get("view")
        if isinstance(view, dict) and "block_kit" not in self.loosened:
            try:
                rules.check_blocks(view.get("blocks") or [], limit=rules.MAX_VIEW_BLOCKS)
            except rules.BlockError as e:
                raise _ApiError("invalid_arguments", errors=[str(e)]) from e
        return {"view": copy.deepcopy(self._new_view(params.get("view")))}

    def _views_update(self, params: dict[str, Any]) -> dict[str, Any]:
        view_id = params.get("view_id")
        current: dict[str, Any] | None = None
        if view_id:
            current = self.views.get(str(view_id))
        elif params.get("external_id"):
            current = next(
                (v for v in self.views.values() if v.get("external_id") == params["external_id"]),
                None,
            )
        if current is None:
            raise _ApiError("not_found")
        self._check_hash(params, current)
        view = self._new_view(params.get("view"), current["id"])
        for user_id, home in list(self.home_views.items()):
            if home["id"] == view["id"]:
                self.home_views[user_id] = view
        return {"view": copy.deepcopy(view)}

    def _reactions_add(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        ts = str(params.get("timestamp") or "")
        name = str(params.get("name") or "")
        if not channel:
            raise _ApiError("channel_not_found")
        if not name:
            raise _ApiError("invalid_name")
        reaction = {"channel": channel, "ts": ts, "name": name}
        if reaction in self.reactions:
            raise _ApiError("already_reacted")
        self.reactions.append(reaction)
        message = self._find_message(channel, ts)
        if message is not None:
            message.setdefault("reactions", []).append(
                {"name": name, "users": [self.bot_user_id], "count": 1}
            )
        return {}

    def _conversation_object(self, channel: str) -> dict[str, Any]:
        info = self._channel_info(channel) or {}
        return {
            "id": channel,
            "name": info.get("name", channel.lower()),
            "is_channel": not info.get("is_private", False),
            "is_group": bool(info.get("is_private")),
            "is_im": False,
            "is_private": bool(info.get("is_private")),
            "is_archived": bool(info.get("is_archived")),
            "is_member": self._bot_in(channel),
            "num_members": len(self.channel_members.get(channel, [])),
        }

    def _conversations_info(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        if channel[:1] == "D":
            if channel[1:] not in self.users:
                raise _ApiError("channel_not_found")
            return {"channel": {"id": channel, "is_im": True, "user": channel[1:]}}
        info = self._channel_info(channel)
        if info is None or (
            info.get("is_private")
            and not self._bot_in(channel)
            and "membership" not in self.loosened
        ):
            raise _ApiError("channel_not_found")
        return {"channel": self._conversation_object(channel)}

    def _conversations_list(self, params: dict[str, Any]) -> dict[str, Any]:
        types = {t.strip() for t in str(params.get("types") or "public_channel").split(",")}
        ids = sorted(set(self.channels) | {c for c in self.channel_members if c[:1] in "CG"})
        shown = []
        for channel in ids:
            info = self._channel_info(channel) or {}
            private = bool(info.get("is_private"))
            if private and ("private_channel" not in types or not self._bot_in(channel)):
                continue
            if not private and "public_channel" not in types:
                continue
            if info.get("is_archived") and _truthy(params.get("exclude_archived")):
                continue
            shown.append(self._conversation_object(channel))
        page, next_cursor = self._page(shown, params, 100)
        return {"channels": page, "response_metadata": {"next_cursor": next_cursor}}

    def _conversations_join(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = str(params.get("channel") or "")
        info = self._channel_info(channel)
        if info is None or info.get("is_private"):
            raise _ApiError("channel_not_found")
        if info.get("is_archived"):
            raise _ApiError("is_archived")
        if not self._bot_in(channel):
            self.channel_members.setdefault(channel, []).append(self.bot_user_id)
        return {"channel": self._conversation_object(channel)}

    def _respond(self, key: str, params: dict[str, Any]) -> _Answer:
        """A post to a response_url: a new message, or the original replaced or deleted."""
        issued = self._response_urls.get(key)
        if issued is None:
            return _Answer(404, {"ok": False, "error": "invalid_url"})
        if "response_urls" not in self.loosened:
            if time.monotonic() - issued["issued"] > RESPONSE_URL_SECONDS:
                return _Answer(404, {"ok": False, "error": "expired_url"})
            if issued["uses"] >= RESPONSE_URL_USES:
                return _Answer(404, {"ok": False, "error": "used_url"})
        issued["uses"] += 1
        try:
            self._check_message(params, require=not _truthy(params.get("delete_original")))
        except _ApiError as e:
            return _Answer(400, {"ok": False, "error": e.error, **e.fields})
        channel, ts = issued["channel"], issued["message_ts"]
        original = self._find_message(channel, ts) if ts else None
        if _truthy(params.get("delete_original")):
            if original is not None:
                self.messages[channel].remove(original)
            return _Answer(200, {"ok": True})
        if _truthy(params.get("replace_original")) and not issued["ephemeral"]:
            if original is None:
                return _Answer(404, {"ok": False, "error": "message_not_found"})
            original["text"] = str(params.get("text") or "")
            if params.get("blocks") is not None:
                original["blocks"] = self._with_block_ids(params["blocks"])
            else:
                original.pop("blocks", None)
            original["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
            return _Answer(200, {"ok": True})
        if _truthy(params.get("replace_original")) or params.get("response_type") != "in_channel":
            self.ephemeral.append(
                {
                    "channel": channel,
                    "user": issued["user"],
                    "text": params.get("text") or "",
                    "blocks": copy.deepcopy(params.get("blocks")),
                    "thread_ts": params.get("thread_ts"),
                    "message_ts": self._next_ts(),
                    "replaces": ts if _truthy(params.get("replace_original")) else None,
                }
            )
            return _Answer(200, {"ok": True})
        message: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "text": str(params.get("text") or ""),
            "ts": self._next_ts(),
        }
        if params.get("blocks") is not None:
            message["blocks"] = self._with_block_ids(params["blocks"])
        self._store_message(channel, message)
        return _Answer(200, {"ok": True})


# ---------------------------------------------------------------------- module helpers


def _dm_channel(channel: str) -> str:
    """Posting to a user id lands in that user's DM, which the fake calls ``"D" + user id``."""
    return f"D{channel}" if channel[:1] in ("U", "W") else channel


def _ts_key(ts: str) -> Decimal:
    return Decimal(ts)


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value in _TRUE
    return bool(value)


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _encode_cursor(offset: int) -> str:
    return base64.b64encode(f"offset:{offset}".encode()).decode()


def _decode_cursor(cursor: str) -> int:
    if not cursor:
        return 0
    try:
        kind, _, offset = base64.b64decode(cursor, validate=True).decode().partition(":")
        if kind != "offset":
            raise ValueError(cursor)
        return int(offset)
    except (ValueError, binascii.Error) as e:
        raise _ApiError("invalid_cursor") from e


def _parse_params(
    query: str, raw: bytes, content_type: str, *, ignore_json: bool = False
) -> dict[str, Any]:
    """Query string + JSON or form body; JSON-encoded form fields (blocks, view...) decoded.
    With ``ignore_json`` a JSON body is dropped, as Slack's read methods do."""
    params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
    media_type = content_type.split(";")[0].strip().lower()
    if raw:
        if media_type == "application/json" and ignore_json:
            pass
        elif media_type == "application/json":
            data = json.loads(raw.decode("utf-8"))
            if not isinstance(data, dict):
                raise ValueError("JSON body is not an object")
            params.update(data)
        else:
            params.update(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
    for key in _JSON_FIELDS:
        value = params.get(key)
        if isinstance(value, str) and value[:1] in ("[", "{"):
            with contextlib.suppress(ValueError):
                params[key] = json.loads(value)
    return params
