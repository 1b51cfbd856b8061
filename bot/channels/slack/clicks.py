"""What a click changes is shown in the clicked message through its `response_url`, not by one
Tier-3 `chat.update` per click.

Slack sends a `response_url` with every interaction: up to 5 posts within 30 minutes, outside
the Web API's rate tiers; `replace_original: true` replaces the clicked message. A survey sent
to everyone at 10:00 brings a burst of clicks, and confirming each with chat.update (Tier 3,
about 50 a minute) would put the last ✓ many minutes behind the click.

`Confirmations` shows the newest state of each clicked message on a small pool of its own
threads, so storing never waits behind Slack. Confirmations of one message are coalesced: while
one is on its way, later ones wait and only the newest is shown. When no response_url of the
message's clicks has a use left (5 used, 30 minutes passed, Slack refused it, or the request had
none, as a modal's submission has), it falls back to `chat.update` charged to the shared edit
budget (`SlackChat.update`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter
from slack_sdk.errors import SlackClientError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler
from slack_sdk.webhook import WebhookClient

from bot.channels.slack.chat import SlackChat
from bot.channels.slack.render import to_payload
from bot.core.messages import Address, Message, Posted
from bot.metrics import SLACK_ERRORS

log = logging.getLogger(__name__)

RESPONSE_URL_USES = 5  # Slack: a response_url takes 5 posts ...
RESPONSE_URL_SECONDS = 30 * 60  # ... within 30 minutes of the interaction
RESPONSE_URL_TIMEOUT = 10.0
CONFIRMATIONS = Counter(
    "mobilize_click_confirmations_total",
    "Clicks shown in Slack, by way: response_url, or the Web API as a fallback",
    ["via"],
)


def respond(url: str, body: dict[str, Any], *, timeout: float = RESPONSE_URL_TIMEOUT) -> bool:
    """Post `body` to a response_url; True when Slack took it. Failures are logged and counted
    with Slack's reason (`used_url`, `expired_url`…), never raised."""
    try:
        response = WebhookClient(
            url,
            timeout=int(max(1, timeout)),
            retry_handlers=[ConnectionErrorRetryHandler(max_retry_count=1)],
        ).send_dict(body)
    except (SlackClientError, OSError) as exc:
        SLACK_ERRORS.labels(method="response_url", error=type(exc).__name__).inc()
        log.warning("slack response_url failed: %s", type(exc).__name__)
        return False
    error = _response_error(response.status_code, response.body or "")
    if error:
        SLACK_ERRORS.labels(method="response_url", error=error).inc()
        log.warning("slack response_url failed: %s", error)
        return False
    return True


def _response_error(status: int, body: str) -> str:
    """Slack's reason for refusing a response_url post, or "" when it took it. Slack answers
    `ok` as text or `{"ok": true}`; a refusal comes as an HTTP error with a code in the body."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):
        if data.get("ok") is False:
            return str(data.get("error") or f"http_{status}")
        return "" if status == 200 else f"http_{status}"
    if status == 200:
        return ""
    return body.strip()[:40] or f"http_{status}"


class ResponseUrls:
    """The uses this process made of each response_url, so a used-up one is not tried again
    (bounded: the oldest are forgotten first; they have expired by then anyway)."""

    def __init__(
        self, *, capacity: int = 20_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = capacity
        self.clock = clock
        self._seen: OrderedDict[str, tuple[int, float]] = OrderedDict()
        self._lock = threading.Lock()

    def seen(self, url: str) -> None:
        """`url` arrived with an interaction now (its 30 minutes start about now)."""
        with self._lock:
            if url not in self._seen:
                self._remember(url, 0, self.clock())

    def take(self, url: str) -> bool:
        """Count one use of `url`; False when it has none left."""
        now = self.clock()
        with self._lock:
            uses, since = self._seen.get(url, (0, now))
            # A minute's margin: the click reached us some time after Slack issued the url.
            if uses >= RESPONSE_URL_USES or now - since > RESPONSE_URL_SECONDS - 60:
                return False
            self._remember(url, uses + 1, since)
            return True

    def spend(self, url: str) -> None:
        """Slack refused `url`: no more uses."""
        with self._lock:
            _uses, since = self._seen.get(url, (0, self.clock()))
            self._remember(url, RESPONSE_URL_USES, since)

    def _remember(self, url: str, uses: int, since: float) -> None:
        self._seen[url] = (uses, since)
        self._seen.move_to_end(url)
        while len(self._seen) > self.capacity:
            self._seen.popitem(last=False)


class AcksFirst:
    """Requests Slack is waiting on (it wants each acked within 3 s) go before the work that
    follows a click: while `threshold` or more requests are in flight, storing and showing
    clicks wait, each item at most `limit` seconds. On two cores a burst of clicks is acked
    sooner when the threads storing and confirming the earlier ones do not take the GIL from
    the acks (benchmarks/survey_clicks.py); under steady load the bound keeps them going."""

    def __init__(self, *, threshold: int = 2, limit: float = 0.25) -> None:
        self.threshold = threshold
        self.limit = limit
        self._in_flight = 0
        self._last = float("-inf")  # when the latest request came (time.monotonic)
        self._stores = 0  # clicks queued for storing and not stored yet
        self._quiet = threading.Condition()

    @contextmanager
    def request(self) -> Iterator[None]:
        """Around handling one request from Slack."""
        with self._quiet:
            self._in_flight += 1
            self._last = time.monotonic()
        try:
            yield
        finally:
            with self._quiet:
                self._in_flight -= 1
                if self._in_flight < self.threshold:
                    self._quiet.notify_all()

    def queue_store(self) -> None:
        """A click was queued for storing; `stored()` when it is (or failed)."""
        with self._quiet:
            self._stores += 1

    def stored(self) -> None:
        with self._quiet:
            self._stores = max(0, self._stores - 1)
            if self._stores == 0:
                self._quiet.notify_all()

    def wait(
        self, *, quiet: float = 0.0, limit: float | None = None, after_stores: bool = False
    ) -> None:
        """Before one item of follow-up work: let the requests in flight go first; with
        `quiet`, wait until no request came for that long (a burst is over); with
        `after_stores`, until every queued click is stored. At most `limit` seconds (the
        instance's `limit` by default)."""
        deadline = time.monotonic() + (self.limit if limit is None else limit)
        with self._quiet:
            while True:
                now = time.monotonic()
                busy = self._in_flight >= self.threshold or (after_stores and self._stores > 0)
                calm_at = self._last + quiet
                left = deadline - now
                if (not busy and now >= calm_at) or left <= 0:
                    return
                self._quiet.wait(left if busy else min(left, calm_at - now))


# Confirmations wait until no request came for CONFIRM_QUIET seconds, each at most CONFIRM_WAIT.
CONFIRM_QUIET = 0.05
CONFIRM_WAIT = 0.5
# One per process: the HTTP server (bot.channels.slack.server) counts the requests it handles.
ACKS_FIRST = AcksFirst()


@dataclass
class _Queued:
    message: Message
    urls: list[str] = field(default_factory=list)


class Confirmations:
    """Shows clicks in the clicked messages, off the threads that ack and store them."""

    def __init__(
        self,
        chat: SlackChat,
        *,
        workers: int = 8,
        post: Callable[[str, dict[str, Any]], bool] = respond,
    ) -> None:
        self.chat = chat
        self.post = post
        self.urls = ResponseUrls()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="click-confirm")
        self._lock = threading.Lock()
        self._queued: dict[tuple[str, str], _Queued] = {}
        self._busy: set[tuple[str, str]] = set()

    def show(self, posted: Posted, message: Message, response_url: str = "") -> None:
        """Make the clicked message `posted` look like `message`, soon; the newest call for one
        message wins."""
        key = (posted.channel, posted.ts)
        if response_url:
            self.urls.seen(response_url)
        with self._lock:
            queued = self._queued.get(key)
            if queued is None:
                self._queued[key] = _Queued(message, [response_url] if response_url else [])
            else:
                queued.message = message
                if response_url:
                    queued.urls.append(response_url)
            if key in self._busy:
                return  # the thread showing this message shows this one next
            self._busy.add(key)
        self._pool.submit(self._drain, key)

    def tell(self, address: Address, message: Message, response_url: str = "") -> None:
        """A notice for `address.only_for` alone (e.g. "this survey has closed"), through the
        click's response_url as an ephemeral message, else chat.postEphemeral."""
        if response_url:
            self.urls.seen(response_url)
        self._pool.submit(self._tell, address, message, response_url)

    def _tell(self, address: Address, message: Message, response_url: str) -> None:
        try:
            body = {"response_type": "ephemeral", "replace_original": False, **to_payload(message)}
            if response_url and self.urls.take(response_url) and self.post(response_url, body):
                CONFIRMATIONS.labels(via="response_url").inc()
                return
            self.chat.post(address, message)
            CONFIRMATIONS.labels(via="web_api").inc()
        except Exception:  # the pool would drop it silently
            log.exception("telling %s about a click failed", address.only_for)

    def _drain(self, key: tuple[str, str]) -> None:
        while True:
            with self._lock:
                queued = self._queued.pop(key, None)
                if queued is None:
                    self._busy.discard(key)
                    return
            try:
                # Showing a click (rendering it, posting to Slack) waits for a burst of
                # requests to end and its clicks to be stored: 8 threads doing it meanwhile
                # put the acks' p99 at ~0.6 s, and the last answer stored seconds later
                # (benchmarks/survey_clicks.py).
                ACKS_FIRST.wait(quiet=CONFIRM_QUIET, limit=CONFIRM_WAIT, after_stores=True)
                self._show(Posted(*key), queued)
            except Exception:  # keep draining: a newer state may be queued
                log.exception("showing a click in %s failed", key[0])

    def _show(self, posted: Posted, queued: _Queued) -> None:
        body = {"replace_original": True, **to_payload(queued.message)}
        for url in reversed(queued.urls[-3:]):  # the newest first: it has the most uses left
            if not self.urls.take(url):
                continue
            if self.post(url, body):
                CONFIRMATIONS.labels(via="response_url").inc()
                return
            self.urls.spend(url)
        self.chat.update(posted, queued.message)  # charged to the shared edit budget
        CONFIRMATIONS.labels(via="web_api").inc()
