"""A small synchronous Microsoft Graph client: what the Teams directory and the app installer
need, and nothing more.

App-only tokens come from `BotTokens` with the Graph scope; requests go to
`<TEAMS_GRAPH_URL>/v1.0/…`. Lists are followed through `@odata.nextLink`. A 429 or 503 (and a
504) is waited out and retried a bounded number of times, honouring `Retry-After`; a caller
that must not wait (the outbox's sender) passes `retries=0`. Every other failure is raised as
`GraphError`, a `DirectoryError` carrying Graph's own error code (`Authorization_Request
Denied`, `Request_ResourceNotFound`, `TooManyRequests`…), the HTTP status and any Retry-After.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx

from bot.channels.teams.auth import GRAPH_SCOPE, BotTokens, TokenError
from bot.core.announcements.audience import DirectoryError

log = logging.getLogger(__name__)

DEFAULT_GRAPH_URL = "https://graph.microsoft.com"
RETRIED = frozenset({429, 503, 504})
MAX_RETRIES = 3
MAX_WAIT = 60.0  # the longest one Retry-After is waited for
MAX_PAGES = 1_000  # 999 people a page: a million-person tenant, and a bound on a bad nextLink
# What every directory lookup selects (Graph returns neither accountEnabled nor userType
# unless asked).
USER_FIELDS = "id,displayName,givenName,mail,userPrincipalName,userType,accountEnabled"


class GraphError(DirectoryError):
    """A Graph call failed: `code` is Graph's error code (`transport` when no answer came,
    `token` when the bot's credentials were refused), `status` the HTTP status (0 without
    one), `retry_after` the seconds Graph asked to wait."""

    def __init__(
        self, code: str, message: str = "", *, status: int = 0, retry_after: float | None = None
    ) -> None:
        super().__init__(code, message or code)
        self.status = status
        self.retry_after = retry_after


class GraphClient:
    """Microsoft Graph v1.0 with the bot's app-only token. Thread-safe."""

    def __init__(
        self,
        *,
        tokens: BotTokens,
        base_url: str = DEFAULT_GRAPH_URL,
        timeout: float = 15.0,
        max_retries: int = MAX_RETRIES,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.tokens = tokens
        self.base_url = base_url.rstrip("/") + "/v1.0"
        self.timeout = timeout
        self.max_retries = max_retries
        self.sleep = sleep
        self._http = httpx.Client(timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    # ---------------------------------------------------------------- requests

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
        retries: int | None = None,
        timeout: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        """One call (`path` relative to /v1.0, or a full nextLink); (status, JSON body or {}).
        Raises GraphError for any answer but 2xx."""
        url = path if path.startswith(("http://", "https://")) else f"{self.base_url}/{path}"
        allowed = self.max_retries if retries is None else retries
        for attempt in range(allowed + 1):
            try:
                return self._once(method, url, params=params, body=body, timeout=timeout)
            except GraphError as error:
                again = error.status in RETRIED and attempt < allowed
                log.warning(
                    "graph: %s %s failed: %s %s%s",
                    method,
                    url.split("?")[0].removeprefix(self.base_url)[:120],
                    error.status or "-",
                    error.code,
                    "; retrying" if again else "",
                )
                if not again:
                    raise
                self.sleep(_wait(attempt, error.retry_after))
        raise AssertionError("unreachable")

    def get(self, path: str, **kwargs: Any) -> dict[str, Any]:
        return self.request("GET", path, **kwargs)[1]

    def pages(self, path: str, params: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
        """Every item of a list, following `@odata.nextLink` (which carries the query)."""
        next_path: str | None = path
        query = params
        for _page in range(MAX_PAGES):
            if not next_path:
                return
            page = self.get(next_path, params=query)
            yield from page.get("value") or []
            next_path = page.get("@odata.nextLink")
            query = None
        raise GraphError("too_many_pages", f"more than {MAX_PAGES} pages from {path}")

    def _once(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, str] | None,
        body: dict[str, Any] | None,
        timeout: float | None,
    ) -> tuple[int, dict[str, Any]]:
        try:
            token = self.tokens(GRAPH_SCOPE)
        except TokenError as exc:
            raise GraphError("token", str(exc)) from None
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        try:
            response = self._http.request(
                method,
                url,
                params=params,
                json=body,
                headers=headers,
                timeout=self.timeout if timeout is None else timeout,
            )
        except httpx.HTTPError as exc:
            raise GraphError("transport", type(exc).__name__) from None
        try:
            answer = response.json() if response.content else {}
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if response.is_success:
            return response.status_code, answer
        error = answer.get("error") or {}
        retry_after: float | None = None
        with contextlib.suppress(ValueError, TypeError):
            retry_after = float(response.headers.get("Retry-After") or "")
        raise GraphError(
            str(error.get("code") or f"HTTP{response.status_code}"),
            str(error.get("message") or "")[:200],
            status=response.status_code,
            retry_after=retry_after,
        )

    # ---------------------------------------------------------------- the installer's calls

    def install_app(self, user_id: str, catalog_app_id: str, **kwargs: Any) -> bool:
        """Install the app (its id in the org's app catalog) for a user in their personal
        scope: True when installed now, False when it already was (Graph's 409)."""
        bind = f"{self.base_url}/appCatalogs/teamsApps/{catalog_app_id}"
        try:
            self.request(
                "POST",
                f"users/{quote(user_id)}/teamwork/installedApps",
                body={"teamsApp@odata.bind": bind},
                **kwargs,
            )
        except GraphError as error:
            if error.status == 409:
                return False
            raise
        return True

    def installation_id(self, user_id: str, catalog_app_id: str, **kwargs: Any) -> str | None:
        """The id of the app's installation for a user, or None when it is not installed."""
        page = self.get(
            f"users/{quote(user_id)}/teamwork/installedApps",
            params={"$filter": f"teamsApp/id eq '{odata_string(catalog_app_id)}'"},
            **kwargs,
        )
        for installation in page.get("value") or []:
            return str(installation.get("id") or "") or None
        return None

    def installed_app_chat(self, user_id: str, installation_id: str, **kwargs: Any) -> str:
        """The id of the user's 1:1 chat with the app's bot (`19:…@unq.gbl.spaces`)."""
        chat = self.get(
            f"users/{quote(user_id)}/teamwork/installedApps/{quote(installation_id, safe='')}/chat",
            **kwargs,
        )
        return str(chat.get("id") or "")


def odata_string(value: str) -> str:
    """A string literal inside an OData $filter (single quotes doubled)."""
    return value.replace("'", "''")


def _wait(attempt: int, retry_after: float | None) -> float:
    if retry_after is not None:
        return min(MAX_WAIT, max(0.0, retry_after))
    return min(MAX_WAIT, 2.0**attempt) * random.uniform(0.5, 1.5)
