"""The outbox's Teams side (`bot.core.outbox.Sender`): post an Adaptive Card to a person's 1:1
chat or as a new post in a channel, update it, delete it — through `TeamsChat`'s Bot Connector
client, on its one asyncio loop.

A recipient is a person's Entra object id (or the `29:…` id of someone the bot has heard from)
or a channel id (`19:…@thread.tacv2`). A person's 1:1 chat is the one References knows; else
it is opened with `POST /v3/conversations`, which Teams allows only when the person has the app.
When they do not (403 `BotNotInConversationRoster`) and TEAMS_INSTALL_FOR_USERS is on, the app
is installed for them through Graph (`POST /users/{id}/teamwork/installedApps`, needing only
`TeamsAppInstallation.ReadWriteSelfForUser.All`) and the chat id read from
`…/installedApps/{id}/chat`; with it off the row fails as `app_not_installed`. The chat found is
written to References, so the next message goes straight there.

Service URL: the person's or the channel's from References, else the latest one the bot has
seen, else (a bot that has never heard from Teams) the global
`https://smba.trafficmanager.net/teams/`, which Teams accepts for a first proactive message.

Nothing is retried here: every failure goes back to the outbox, which retries with backoff,
pauses every worker on a 429 and records permanent failures with a code a comms lead can read:

- 429 → `retry_after` = Teams' Retry-After, or a jittered exponential default without one;
- 412, 500, 502, 503, 504, a refused connection, a failed token → transient (the outbox
  retries; a 502 or 504 may hide a message that did arrive, as on every Bot Connector client);
- no answer after the request went out (timeout, dropped connection) → `IN_DOUBT`: the
  message may be there. Teams offers no read-back of a bot's own messages with app
  permissions, so `find()` answers `CANNOT_TELL` and the outbox marks the row `unknown` for an
  operator to resend or settle;
- 403 `ConversationBlockedByUser`, `BotDisabledByAdmin`, 400 (a card Teams refuses;
  `user_not_found` when Teams does not know the person a chat is opened with), 413
  `MessageSizeTooBig`, `app_not_installed`, a refused installation (`install:<Graph code>`)
  → permanent; an installation Teams has not caught up with yet (`install_pending`) is not;
- 404 on a 1:1 chat: the chat is opened again once (References updated) and the card posted
  again once; a second 404 is permanent (`conversation_not_found`). On an update or delete a
  404 is `GONE`.

One post (its chat lookup, installation and retried 404 included) finishes within
`POST_BOUND`, so no other worker can take the row over while it is in flight. Posts into one
channel keep to Teams' per-conversation limits (7 a second, 60 in 30 seconds) with a small
sliding window; one that would wait more than a few seconds goes back to the outbox instead.
Errors are counted in `TEAMS_ERRORS` (op, code) and logged with Teams' code.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import httpx

from bot.channels.teams.cards import Rendered
from bot.channels.teams.chat import TEAMS_ERRORS, TeamsChat, TeamsFailure, _failure
from bot.channels.teams.graph import GraphClient, GraphError
from bot.channels.teams.refs import Person, base_conversation
from bot.core.messages import Message
from bot.core.outbox import CANNOT_TELL, GONE, IN_DOUBT, POST_BOUND, SendResult
from bot.core.platforms import GUID, is_teams_channel

log = logging.getLogger(__name__)
T = TypeVar("T")

# Readable reasons a row fails with (Teams' own codes otherwise: ConversationBlockedByUser…).
APP_NOT_INSTALLED = "app_not_installed"
CONVERSATION_NOT_FOUND = "conversation_not_found"
INVALID_RECIPIENT = "invalid_recipient"
USER_NOT_FOUND = "user_not_found"
CARD_ERROR = "card_error"
# Transient codes of this sender's own.
CONNECTION_ERROR = "connection_error"  # the request never left: safe to send again
NO_RESPONSE = "no_response"  # no answer to a create, update or delete (safe to repeat)
OUT_OF_TIME = "post_deadline"  # the post's time ran out before its message was sent
CHANNEL_BUSY = "channel_busy"  # the channel's windows are full for longer than MAX_PACE_WAIT
INSTALL_PENDING = "install_pending"  # installed, but Teams does not let the bot in yet

TRANSIENT = frozenset({412, 500, 502, 503, 504})
# Teams' per-bot, per-conversation write limits (seconds, messages).
CHANNEL_WINDOWS: tuple[tuple[float, int], ...] = ((1.0, 7), (2.0, 8), (30.0, 60))
MAX_PACE_WAIT = 5.0  # longer than this and the row goes back to the outbox
MIN_CALL = 1.0  # seconds a call needs at least; with less left the post stops before it
MAX_DEFAULT_WAIT = 60.0  # a 429 without Retry-After: 2, 4, 8… seconds up to this, jittered
ROSTER = "BotNotInConversationRoster"


class _Refused(Exception):
    """A call failed: which one and how (raised between this module's helpers only)."""

    def __init__(self, op: str, failure: TeamsFailure) -> None:
        super().__init__(f"{op}: {failure.code}")
        self.op = op
        self.failure = failure


@dataclass(frozen=True)
class _Chat:
    """A person's 1:1 chat: its id, its service URL, and whether the app was installed for
    them just now (Teams may take a moment to let the bot in)."""

    id: str
    url: str
    installed_now: bool = False


class ChannelPace:
    """Sliding windows per conversation: `reserve` books the next write's time and says how
    long to wait for it, or None when that would be longer than `max_wait`. Thread-safe."""

    def __init__(
        self,
        windows: tuple[tuple[float, int], ...] = CHANNEL_WINDOWS,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.windows = windows
        self.clock = clock
        self._slots: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def reserve(self, key: str, *, max_wait: float = MAX_PACE_WAIT) -> float | None:
        with self._lock:
            now = self.clock()
            longest = max(seconds for seconds, _ in self.windows)
            slots = [t for t in self._slots.get(key, []) if t > now - longest]
            at = max([now, *slots[-1:]])  # after every write already booked
            moved = True
            while moved:
                moved = False
                for seconds, limit in self.windows:
                    inside = [t for t in slots if t > at - seconds]
                    if len(inside) >= limit:
                        at = inside[len(inside) - limit] + seconds
                        moved = True
            if at - now > max_wait:
                self._slots[key] = slots
                return None
            slots.append(at)
            self._slots[key] = slots
            return at - now


class TeamsSender:
    """Implements bot.core.outbox.Sender on the Bot Connector (and Graph, to install the app).
    Thread-safe; shares `chat`'s loop, tokens, References and connection pools."""

    reads_back = False  # no read-back of a bot's own messages: see find()

    def __init__(
        self,
        *,
        chat: TeamsChat,
        graph: GraphClient | None = None,
        install_for_users: bool = False,
        catalog_app_id: str = "",
        bound: float = POST_BOUND.total_seconds() - 2.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if install_for_users and (graph is None or not catalog_app_id):
            raise ValueError("installing the app for people needs Graph and its catalog app id")
        self.chat = chat
        self.refs = chat.refs
        self.graph = graph
        self.install_for_users = install_for_users
        self.catalog_app_id = catalog_app_id
        self.bound = bound
        self.clock = clock
        self.sleep = sleep
        self.pace = ChannelPace(clock=clock)
        self._throttled = 0  # 429s in a row (their default wait grows with it)
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- the Sender port

    def post(self, *, recipient: str, message: Message, delivery_id: int) -> SendResult:
        """A new message: in the person's 1:1 chat, or a new post in the channel."""
        deadline = self.clock() + self.bound
        rendered = self._render(message)
        if rendered is None:
            return SendResult(ok=False, error=CARD_ERROR, permanent=True)
        if GUID.fullmatch(recipient):
            recipient = recipient.lower()  # as References keeps Entra object ids
        if is_teams_channel(recipient):
            return self._post_channel(recipient, rendered, deadline)
        if GUID.fullmatch(recipient) or recipient.startswith("29:"):
            return self._post_person(recipient, rendered, deadline)
        log.warning(
            "teams outbox: delivery %s: %r is no Teams person or channel", delivery_id, recipient
        )
        return SendResult(ok=False, error=INVALID_RECIPIENT, permanent=True)

    def update(self, *, channel: str, ts: str, message: Message) -> SendResult:
        """Replace a sent card (PUT activity); a message no longer there is `GONE`."""
        deadline = self.clock() + self.bound
        rendered = self._render(message)
        if rendered is None:
            return SendResult(ok=False, error=CARD_ERROR, permanent=True)
        busy = self._pace_channel(channel)
        if busy is not None:
            return busy
        url = self.chat._service_url(channel)
        try:
            self._call("update", partial(self.chat._update, url, channel, ts, rendered), deadline)
        except _Refused as refused:
            return self._edit_result(refused)
        return SendResult(ok=True, channel=channel, ts=ts)

    def delete(self, *, channel: str, ts: str) -> SendResult:
        """Delete a sent card (DELETE activity); a message no longer there is `GONE`."""
        deadline = self.clock() + self.bound
        busy = self._pace_channel(channel)
        if busy is not None:
            return busy
        url = self.chat._service_url(channel)
        try:
            self._call("delete", partial(self._delete, url, channel, ts), deadline)
        except _Refused as refused:
            return self._edit_result(refused)
        return SendResult(ok=True, channel=channel, ts=ts)

    def find(
        self, *, recipient: str, channel: str, delivery_id: int, since: datetime
    ) -> SendResult:
        """Always `CANNOT_TELL`: with app permissions Teams offers no way to read back what the
        bot itself sent (Graph's chat messages are a protected API), so a row in doubt cannot
        be checked; the outbox marks it `unknown` for an operator (`resolve_unknown`)."""
        return SendResult(ok=False, error=CANNOT_TELL)

    # ---------------------------------------------------------------- channels

    def _post_channel(self, channel: str, rendered: Rendered, deadline: float) -> SendResult:
        busy = self._pace_channel(channel)
        if busy is not None:
            return busy
        url = self.chat._service_url(channel)
        try:
            activity_id = self._call(
                "send", partial(self.chat._send, url, channel, rendered), deadline
            )
        except _Refused as refused:
            return self._result(refused, person=False)
        self._sent()
        return SendResult(ok=True, channel=channel, ts=activity_id)

    def _pace_channel(self, conversation: str) -> SendResult | None:
        """Wait for room in a channel's windows (1:1 chats need none); a result when the
        channel is too busy to wait for."""
        base = base_conversation(conversation)
        if not is_teams_channel(base):
            return None
        wait = self.pace.reserve(base)
        if wait is None:
            TEAMS_ERRORS.labels(op="send", code=CHANNEL_BUSY).inc()
            log.info("teams outbox: %s is at Teams' per-conversation limit; later", base)
            return SendResult(ok=False, error=CHANNEL_BUSY)
        if wait > 0:
            self.sleep(wait)
        return None

    # ---------------------------------------------------------------- 1:1 chats

    def _post_person(self, key: str, rendered: Rendered, deadline: float) -> SendResult:
        try:
            chat = self._personal_chat(key, deadline)
        except _Refused as refused:
            return self._result(refused, person=True)
        for attempt in (1, 2):
            try:
                activity_id = self._call(
                    "send", partial(self.chat._send, chat.url, chat.id, rendered), deadline
                )
            except _Refused as refused:
                failure = refused.failure
                gone = failure.status == 404
                uninstalled = failure.status == 403 and failure.code == ROSTER
                if uninstalled and chat.installed_now:
                    # Teams has not caught up with the installation yet: try again later.
                    return SendResult(ok=False, error=INSTALL_PENDING)
                if uninstalled:
                    self.refs.set_installed(key, False)
                if attempt == 1 and (gone or (uninstalled and self._may_install(key))):
                    try:  # a gone chat, or the app removed: open it again, once
                        chat = self._reopen(key, deadline)
                    except _Refused as again:
                        return self._result(again, person=True)
                    continue
                return self._result(refused, person=True)
            self._sent()
            return SendResult(ok=True, channel=chat.id, ts=activity_id)
        raise AssertionError("unreachable")

    def _personal_chat(self, key: str, deadline: float) -> _Chat:
        """The person's 1:1 chat and its service URL: known, else opened."""
        person = self.refs.person(key)
        if person is not None and person.conversation_id:
            url = person.service_url or self.chat._service_url("")
            return _Chat(person.conversation_id, url)
        return self._open(key, person, deadline)

    def _reopen(self, key: str, deadline: float) -> _Chat:
        person = self.refs.person(key)
        if person is not None:
            person = self.refs.set_conversation(person, "", person.service_url)
        return self._open(key, person, deadline)

    def _open(self, key: str, person: Person | None, deadline: float) -> _Chat:
        """Open the 1:1 chat (CreateConversation); install the app first when Teams says the
        person does not have it and the deployment may install it. Remembered in References."""
        url = (person.service_url if person else "") or self.chat._service_url("")
        member = person.teams_id if person is not None else key
        tenant = (person.tenant_id if person else "") or self.chat.tenant_id
        installed_now = False
        try:
            conversation = self._call(
                "create", partial(self.chat._create, url, member, tenant), deadline
            )
        except _Refused as refused:
            if not (refused.failure.status == 403 and refused.failure.code == ROSTER):
                raise
            self.refs.set_installed(key, False)
            if not self._may_install(key):
                raise
            conversation = self._install(key, person, url, tenant, deadline)
            installed_now = True
        self._remember(key, person, conversation, url, tenant)
        return _Chat(conversation, url, installed_now)

    def _may_install(self, key: str) -> bool:
        return self.install_for_users and bool(GUID.fullmatch(self._object_id(key)))

    def _object_id(self, key: str) -> str:
        person = self.refs.person(key)
        return (person.user_id if person is not None else key).lower()

    def _install(
        self, key: str, person: Person | None, url: str, tenant: str, deadline: float
    ) -> str:
        """Install the app for the person through Graph; their 1:1 chat id."""
        assert self.graph is not None
        user_id = self._object_id(key)
        try:
            installed = self.graph.install_app(
                user_id, self.catalog_app_id, retries=0, timeout=self._left(deadline, "install")
            )
        except GraphError as error:
            raise _Refused("install", _install_failure(error)) from None
        log.info(
            "teams outbox: installed the app for %s%s",
            user_id,
            "" if installed else " (it was already)",
        )
        chat_id = ""
        try:
            installation = self.graph.installation_id(
                user_id, self.catalog_app_id, retries=0, timeout=self._left(deadline, "install")
            )
            if installation:
                chat_id = self.graph.installed_app_chat(
                    user_id, installation, retries=0, timeout=self._left(deadline, "install")
                )
        except GraphError as error:  # the chat can be opened on the Bot Connector instead
            TEAMS_ERRORS.labels(op="install", code=error.code).inc()
        if chat_id:
            return chat_id
        member = person.teams_id if person is not None else user_id
        try:
            return self._call("create", partial(self.chat._create, url, member, tenant), deadline)
        except _Refused as refused:
            if refused.failure.status == 403 and refused.failure.code == ROSTER:
                # Teams has not caught up with the installation yet: try again later.
                raise _Refused("install", TeamsFailure(0, INSTALL_PENDING)) from None
            raise

    def _remember(
        self, key: str, person: Person | None, conversation: str, url: str, tenant: str
    ) -> None:
        """Keep the chat, so the next message goes straight there and the directory knows the
        person has the app. Someone the bot never heard from is kept by object id alone."""
        if person is None:
            person = self.refs.person(key)
        if person is not None:
            updated = replace(person, conversation_id=conversation, service_url=url, installed=True)
            if updated != person:
                self.refs.store_person(updated)
        elif GUID.fullmatch(key):
            user_id = key.lower()
            self.refs.store_person(
                Person(user_id, user_id, "", tenant, conversation, url, installed=True)
            )

    # ---------------------------------------------------------------- calls

    async def _delete(self, service_url: str, conversation: str, activity_id: str) -> None:
        await self.chat._client(service_url).conversations.delete_activity(
            conversation, activity_id
        )

    def _left(self, deadline: float, op: str) -> float:
        """Seconds one call may take: what is left of the post's time, at most a call's."""
        remaining = deadline - self.clock()
        if remaining < MIN_CALL:
            TEAMS_ERRORS.labels(op=op, code=OUT_OF_TIME).inc()
            raise _Refused(op, TeamsFailure(0, OUT_OF_TIME))
        return min(self.chat.timeout, remaining)

    def _call(self, op: str, call: Callable[[], Coroutine[Any, Any, T]], deadline: float) -> T:
        """One Bot Connector call on the chat's loop, within the post's time; no retries.
        Raises _Refused with what Teams said (counted and logged)."""
        timeout = self._left(deadline, op)
        try:
            return self.chat.io.run(asyncio.wait_for(call(), timeout), timeout=timeout + 5)
        except Exception as exc:  # every failure is translated, counted and logged here
            failure = _classify(exc)
            TEAMS_ERRORS.labels(op=op, code=failure.code).inc()
            log.warning(
                "teams outbox: %s failed: %s %s%s",
                op,
                failure.status or "-",
                failure.code,
                f" ({failure.message})" if failure.message else "",
            )
            raise _Refused(op, failure) from None

    def _render(self, message: Message) -> Rendered | None:
        try:
            return self.chat.render(message)
        except Exception:  # a message the card renderer cannot take: fail this row
            log.exception("teams outbox: rendering a card failed")
            return None

    # ---------------------------------------------------------------- results

    def _result(self, refused: _Refused, *, person: bool) -> SendResult:
        """What the outbox makes of a failed post."""
        failure = refused.failure
        status, code = failure.status, failure.code
        if status == 429:
            return SendResult(ok=False, error=code, retry_after=self._retry_after(failure))
        if status == 0:
            if code == IN_DOUBT and refused.op != "send":
                code = NO_RESPONSE  # a chat opened or an app installed: nothing posted yet
            return SendResult(ok=False, error=code)
        if status in TRANSIENT or status >= 500 or status == 401:
            return SendResult(ok=False, error=code)
        if refused.op == "install":
            return SendResult(ok=False, error=code, permanent=True)
        if person and status == 403 and code == ROSTER:
            code = APP_NOT_INSTALLED
        elif refused.op == "create" and status == 400:
            code = USER_NOT_FOUND  # Teams cannot tell who the member is (no such user)
        elif status == 404:
            code = CONVERSATION_NOT_FOUND
        return SendResult(ok=False, error=code, permanent=True)

    def _edit_result(self, refused: _Refused) -> SendResult:
        """What the outbox makes of a failed update or delete."""
        if refused.failure.status == 404:
            return SendResult(ok=False, error=GONE, permanent=True)
        return self._result(refused, person=False)

    def _retry_after(self, failure: TeamsFailure) -> float:
        """Teams' Retry-After; without one 2, 4, 8… seconds (jittered) while 429s go on."""
        with self._lock:
            self._throttled += 1
            streak = self._throttled
        if failure.retry_after is not None:
            return max(0.0, failure.retry_after)
        return min(MAX_DEFAULT_WAIT, 2.0 ** min(streak, 6)) * random.uniform(0.5, 1.5)

    def _sent(self) -> None:
        if self._throttled:
            with self._lock:
                self._throttled = 0


def _classify(exc: BaseException) -> TeamsFailure:
    """A failed call as a TeamsFailure: a connection that never opened is `connection_error`
    (nothing was sent); no answer after sending (timeout, dropped connection) is `IN_DOUBT`."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return TeamsFailure(0, CONNECTION_ERROR, type(exc).__name__)
    if isinstance(exc, httpx.TransportError | TimeoutError):
        return TeamsFailure(0, IN_DOUBT, type(exc).__name__)
    return _failure(exc)


def _install_failure(error: GraphError) -> TeamsFailure:
    """A Graph installation error with a code that says it was the installation
    (`install:Forbidden` when the app may not install itself or is blocked)."""
    code = f"install:{error.code}"
    TEAMS_ERRORS.labels(op="install", code=error.code).inc()
    if error.status == 0 or error.status == 429 or error.status >= 500:
        return TeamsFailure(0, code, str(error))  # transient; nothing was posted
    return TeamsFailure(error.status, code, str(error))
