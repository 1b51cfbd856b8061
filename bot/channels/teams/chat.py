"""The `Chat` port on the Bot Connector, through the Teams SDK's REST client.

The SDK's client is async; the bot's threads are not. One asyncio loop runs in a background
thread (`AsyncLoop`) and every call is submitted to it and waited for, so all HTTP traffic
shares one connection pool per service URL. Addresses are Teams' own ids: a conversation id
(`a:…` for a 1:1 chat, `19:…@thread.tacv2` for a channel), a thread root for a channel reply
(sent to `<channel>;messageid=<root>`), or a person (Entra object id or `29:…`), whose 1:1 chat
is looked up or created. Teams errors are logged with their own code (`BotNotInConversation
Roster`, `Throttled`…) and counted; they are never raised into the core: `post` returns None.
429, 412, 502 and 504 are retried with backoff (Retry-After honoured); a dropped connection is
not, since the message may have arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import threading
import time
import warnings
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import httpx
from prometheus_client import Counter

from bot.channels.teams.auth import BotTokens, TokenError
from bot.channels.teams.cards import Rendered, to_card
from bot.channels.teams.refs import Person, References, base_conversation
from bot.core.messages import Address, Message, Posted

with warnings.catch_warnings():  # the SDK warns about its preview features on import
    warnings.simplefilter("ignore")
    from microsoft_teams.api import ApiClient
    from microsoft_teams.api.activities.message import MessageActivityInput
    from microsoft_teams.api.clients.conversation import CreateConversationParams
    from microsoft_teams.api.models import Account
    from microsoft_teams.common import ClientOptions

log = logging.getLogger(__name__)
T = TypeVar("T")

TEAMS_ERRORS = Counter(
    "mobilize_teams_errors_total", "Bot Connector errors, by operation and code", ["op", "code"]
)
DEFAULT_SERVICE_URL = "https://smba.trafficmanager.net/teams/"
RETRIED = frozenset({412, 429, 502, 504})
MAX_WAIT = 5.0  # an interactive post waits at most this long for a Retry-After
_PERSON = re.compile(
    r"^(?:29:[A-Za-z0-9_\-]+|[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12})$"
)


def threadable(conversation_id: str) -> bool:
    """Channel conversations have reply threads; 1:1 and group chats do not."""
    base = base_conversation(conversation_id)
    return base.startswith("19:") and base.endswith(("@thread.tacv2", "@thread.skype"))


class AsyncLoop:
    """One asyncio event loop in a daemon thread; `run` waits for a coroutine on it."""

    def __init__(self, name: str = "teams-io") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise RuntimeError("AsyncLoop.run called from its own loop thread")
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=5)


@dataclass(frozen=True)
class TeamsFailure:
    """A Bot Connector error: HTTP status and Teams' own code (or `transport` / `token`)."""

    status: int
    code: str
    message: str = ""
    retry_after: float | None = None


class TeamsChat:
    """Posts and updates Adaptive Cards on the Bot Connector. Thread-safe."""

    def __init__(
        self,
        *,
        tokens: BotTokens,
        refs: References,
        tenant_id: str,
        default_service_url: str = DEFAULT_SERVICE_URL,
        timeout: float = 15.0,
        max_retries: int = 2,
        loop: AsyncLoop | None = None,
    ) -> None:
        self.tokens = tokens
        self.refs = refs
        self.tenant_id = tenant_id
        self.default_service_url = default_service_url
        self.timeout = timeout
        self.max_retries = max_retries
        self.io = loop or AsyncLoop()
        self._clients: dict[str, ApiClient] = {}
        self._lock = threading.Lock()
        self._captured = threading.local()

    # ---------------------------------------------------------------- the Chat port

    def post(self, address: Address, message: Message) -> Posted | None:
        """Post a card; where it landed, or None when Teams refused (logged with its code)."""
        rendered = self.render(message)
        target = address.only_for or address.channel
        try:
            if _PERSON.match(target):
                return self._post_to_person(target, rendered)
            conversation = target
            if address.thread_ts and not address.only_for and threadable(target):
                conversation = f"{base_conversation(target)};messageid={address.thread_ts}"
            service_url = self._service_url(target)
            activity_id = self._call(
                "send", lambda: self._send(service_url, conversation, rendered)
            )
            return Posted(target if conversation == target else conversation, activity_id)
        except _Failed:
            return None

    def update(self, posted: Posted, message: Message) -> None:
        """Replace a posted card in place (for everyone in the conversation)."""
        rendered = self.render(message)
        captured = getattr(self._captured, "updates", None)
        if captured is not None:
            captured[posted.ts] = rendered
        try:
            service_url = self._service_url(posted.channel)
            self._call(
                "update", lambda: self._update(service_url, posted.channel, posted.ts, rendered)
            )
        except _Failed:
            return

    def permalink(self, channel: str, ts: str) -> str | None:
        """A deep link to a channel message (Teams has none for a 1:1 chat with a bot)."""
        if not threadable(channel) or not ts:
            return None
        base = base_conversation(channel)
        query = {"tenantId": self.tenant_id, "parentMessageId": ts}
        place = self.refs.place(base)
        if place is not None and place.team_group_id:
            query["groupId"] = place.team_group_id
        channel_path = quote(base, safe="")
        return f"https://teams.microsoft.com/l/message/{channel_path}/{ts}?{urlencode(query)}"

    # ---------------------------------------------------------------- helpers for the app

    def render(self, message: Message) -> Rendered:
        return to_card(message, people=self.refs.mention)

    @contextlib.contextmanager
    def capture(self) -> Iterator[dict[str, Rendered]]:
        """Collect the cards this thread updates while in the block (activity id → card), so
        a click's answer can show the clicker the card everyone else now sees."""
        self._captured.updates = {}
        try:
            yield self._captured.updates
        finally:
            self._captured.updates = None

    def close(self) -> None:
        self.io.close()

    # ---------------------------------------------------------------- 1:1 chats

    def _post_to_person(self, key: str, rendered: Rendered) -> Posted | None:
        person = self.refs.person(key)
        for attempt in (1, 2):
            person, conversation, url = self._personal_chat(key, person)
            try:
                activity_id = self._send_to(url, conversation, rendered)
                return Posted(conversation, activity_id)
            except _Failed as failure:
                if failure.failure.status == 404 and attempt == 1 and person is not None:
                    person = self.refs.set_conversation(person, "", person.service_url)
                    continue  # a gone 1:1 chat: open it again once
                raise
        return None

    def _send_to(self, service_url: str, conversation: str, rendered: Rendered) -> str:
        return self._call("send", lambda: self._send(service_url, conversation, rendered))

    def _personal_chat(self, key: str, person: Person | None) -> tuple[Person | None, str, str]:
        if person is not None and person.conversation_id:
            url = person.service_url or self._service_url("")
            return person, person.conversation_id, url
        service_url = (person.service_url if person else "") or self._service_url("")
        member = person.teams_id if person is not None else key
        tenant = (person.tenant_id if person else "") or self.tenant_id
        conversation = self._call("create", lambda: self._create(service_url, member, tenant))
        if person is not None:
            person = self.refs.set_conversation(person, conversation, service_url)
        return person, conversation, service_url

    # ---------------------------------------------------------------- async calls

    def _client(self, service_url: str) -> ApiClient:
        with self._lock:
            client = self._clients.get(service_url)
            if client is None:
                options = ClientOptions(token=self._token, timeout=self.timeout)
                with warnings.catch_warnings():  # its deprecated bot client, built regardless
                    warnings.simplefilter("ignore", DeprecationWarning)
                    client = self._clients[service_url] = ApiClient(service_url, options)
            return client

    async def _token(self) -> str:
        cached = self.tokens.cached()
        return cached if cached is not None else await asyncio.to_thread(self.tokens)

    async def _send(self, service_url: str, conversation: str, rendered: Rendered) -> str:
        activity = MessageActivityInput.model_validate(rendered.activity())
        sent = await self._client(service_url).conversations.create_activity(conversation, activity)
        return str(sent.id)

    async def _update(
        self, service_url: str, conversation: str, activity_id: str, rendered: Rendered
    ) -> str:
        activity = MessageActivityInput.model_validate(rendered.activity())
        sent = await self._client(service_url).conversations.update_activity(
            conversation, activity_id, activity
        )
        return str(sent.id)

    async def _create(self, service_url: str, member: str, tenant_id: str) -> str:
        params = CreateConversationParams(
            members=[Account(id=member)],
            tenant_id=tenant_id,
            channel_data={"tenant": {"id": tenant_id}},
        )
        created = await self._client(service_url).conversations.create(params)
        return str(created.id)

    def _call(self, op: str, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """Run a Bot Connector call, retrying throttling and gateway errors; raise _Failed."""
        for attempt in range(self.max_retries + 1):
            try:
                return self.io.run(call(), timeout=self.timeout * 2)
            except Exception as exc:  # every failure is translated, logged and counted here
                failure = _failure(exc)
                retry = failure.status in RETRIED and attempt < self.max_retries
                TEAMS_ERRORS.labels(op=op, code=failure.code).inc()
                log.warning(
                    "teams: %s failed: %s %s%s%s",
                    op,
                    failure.status or "-",
                    failure.code,
                    f" ({failure.message})" if failure.message else "",
                    "; retrying" if retry else "",
                )
                if not retry:
                    raise _Failed(failure) from None
                time.sleep(_backoff(attempt, failure.retry_after))
        raise AssertionError("unreachable")

    def _service_url(self, conversation: str) -> str:
        return self.refs.service_url(conversation) or self.default_service_url


class _Failed(Exception):
    def __init__(self, failure: TeamsFailure) -> None:
        super().__init__(failure.code)
        self.failure = failure


def _failure(exc: BaseException) -> TeamsFailure:
    if isinstance(exc, httpx.HTTPStatusError):
        response = exc.response
        code, message = f"HTTP{response.status_code}", ""
        try:
            error = response.json().get("error") or {}
            code = str(error.get("code") or code)
            message = str(error.get("message") or "")[:200]
        except (ValueError, AttributeError):
            pass
        retry_after: float | None = None
        header = response.headers.get("Retry-After")
        if header:
            with contextlib.suppress(ValueError):
                retry_after = float(header)
        return TeamsFailure(response.status_code, code, message, retry_after)
    if isinstance(exc, TokenError):
        return TeamsFailure(0, "token", str(exc))
    if isinstance(exc, httpx.TransportError | TimeoutError):
        return TeamsFailure(0, "transport", type(exc).__name__)
    log.exception("teams: unexpected error talking to the Bot Connector", exc_info=exc)
    return TeamsFailure(0, "error", type(exc).__name__)


def _backoff(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(MAX_WAIT, max(0.0, retry_after))
    return min(MAX_WAIT, 0.25 * 2**attempt) * (0.5 + random.random() / 2)
