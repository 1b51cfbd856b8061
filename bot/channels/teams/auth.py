"""Who may talk to the bot, and the bot's own tokens.

Incoming: every activity carries `Authorization: Bearer <JWT>` from the Bot Framework. The
Teams SDK's `TokenValidator.for_service` checks the RS256 signature with a key from the JWKS
next to the OpenID metadata, the issuer (`https://api.botframework.com`), the audience (the app
id), expiry with 5 minutes' skew and that the `serviceurl` claim equals the activity's
`serviceUrl`. What it lacks is added here: the signing key must be *endorsed* for the activity's
channel (`msteams`) in the JWKS, the activity must name a `serviceUrl` at all (the SDK skips
the claim check without one), and only the Bot Framework issuer is accepted (the SDK's
`InboundActivityTokenValidator` also takes Entra tokens for Agent 365, which this bot does not
serve). There is no switch to turn this off: a test that wants an unchecked endpoint passes its
own `Authenticator`.

Outgoing: `BotTokens` gets app-only tokens by client credentials from the tenant's Entra token
endpoint and caches each scope until five minutes before it expires; thread-safe. It is also a
`token(scope, tenant_id)` callable as the SDK's `TokenCredentials` expects. MSAL is not used: it
refuses the http:// authority of the loopback token endpoint the tests run against.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import jwt

with warnings.catch_warnings():  # the SDK warns about its preview features on import
    warnings.simplefilter("ignore")
    from microsoft_teams.api.auth.cloud_environment import PUBLIC, with_overrides
    from microsoft_teams.apps.auth import TokenValidator

log = logging.getLogger(__name__)

BOT_SCOPE = "https://api.botframework.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
CHANNEL = "msteams"
KEYS_TTL = 24 * 3600.0  # endorsements are re-read daily, and at once for an unknown key
KEYS_RETRY = 60.0  # ...but not more than once a minute for keys nobody publishes
EARLY = 300.0  # a cached token is renewed this many seconds before it expires


class Unauthorized(Exception):
    """An activity the bot refuses (401); `reason` is for the log, never for the caller."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Authenticator(Protocol):
    def check(self, authorization: str, activity: Mapping[str, Any]) -> dict[str, Any]: ...


def keys_url(openid_metadata_url: str) -> str:
    """The JWKS address next to the metadata document, as the SDK derives it."""
    base = openid_metadata_url
    if base.endswith("/openidconfiguration"):
        return base[: -len("openidconfiguration")] + "keys"
    return base.rsplit("/", 1)[0] + "/keys"


class ActivityAuthenticator:
    """Checks the Bot Framework's token on an incoming activity; raises Unauthorized."""

    def __init__(self, *, app_id: str, openid_metadata_url: str, timeout: float = 10.0) -> None:
        self.app_id = app_id
        cloud = with_overrides(PUBLIC, openid_metadata_url=openid_metadata_url)
        self._issuer = cloud.token_issuer
        self._validator = TokenValidator.for_service(app_id, cloud=cloud)
        self._keys_url = keys_url(openid_metadata_url)
        self._timeout = timeout
        self._endorsements: dict[str, frozenset[str]] = {}
        self._keys_read = 0.0
        self._lock = threading.Lock()
        self._loops = threading.local()

    def check(self, authorization: str, activity: Mapping[str, Any]) -> dict[str, Any]:
        """The token's claims when the request may be handled; Unauthorized otherwise."""
        if not authorization.startswith("Bearer "):
            raise Unauthorized("no bearer token")
        token = authorization[len("Bearer ") :].strip()
        service_url = str(activity.get("serviceUrl") or "")
        if not service_url:
            raise Unauthorized("the activity names no serviceUrl")
        try:
            header = jwt.get_unverified_header(token)
            claims = self._run(self._validator.validate_token(token, service_url))
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"token refused: {exc}") from None
        if claims.get("iss") != self._issuer:
            raise Unauthorized("token not issued by the Bot Framework")
        channel = str(activity.get("channelId") or CHANNEL)
        if channel != CHANNEL:
            raise Unauthorized(f"activity from channel {channel!r}, not msteams")
        kid = str(header.get("kid") or "")
        if CHANNEL not in self._endorsed(kid):
            raise Unauthorized(f"signing key {kid!r} is not endorsed for {CHANNEL}")
        return claims

    def _run(self, coroutine: Any) -> dict[str, Any]:
        # The SDK's validator is a coroutine without awaits inside (its key fetch is blocking):
        # run it on a loop private to this request thread.
        loop = getattr(self._loops, "loop", None)
        if loop is None:
            loop = self._loops.loop = asyncio.new_event_loop()
        result: dict[str, Any] = loop.run_until_complete(coroutine)
        return result

    def _endorsed(self, kid: str) -> frozenset[str]:
        with self._lock:
            now = time.monotonic()
            stale = now - self._keys_read > KEYS_TTL
            unknown = kid not in self._endorsements and now - self._keys_read > KEYS_RETRY
            if stale or unknown:
                self._read_keys()
                self._keys_read = now
            return self._endorsements.get(kid, frozenset())

    def _read_keys(self) -> None:
        try:
            answer = httpx.get(self._keys_url, timeout=self._timeout)
            answer.raise_for_status()
            keys = answer.json().get("keys") or []
        except (httpx.HTTPError, ValueError) as exc:
            log.warning("teams: could not read the signing keys' endorsements: %s", exc)
            return
        self._endorsements = {
            str(key.get("kid")): frozenset(str(e) for e in key.get("endorsements") or [])
            for key in keys
            if isinstance(key, dict)
        }


@dataclass
class _Cached:
    value: str
    renew_at: float


class TokenError(Exception):
    """The token endpoint refused the bot's credentials; the message says what Entra said."""


class BotTokens:
    """App-only access tokens by client credentials, cached per scope; thread-safe."""

    def __init__(
        self, *, app_id: str, app_password: str, token_url: str, timeout: float = 10.0
    ) -> None:
        self.app_id = app_id
        self._password = app_password
        self.token_url = token_url
        self._timeout = timeout
        self._cache: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def __call__(self, scope: str | list[str] = BOT_SCOPE, tenant_id: str | None = None) -> str:
        """A valid token for `scope` (the SDK's `TokenCredentials.token` signature; the
        tenant is the one of the configured token endpoint)."""
        wanted = scope[0] if isinstance(scope, list) else scope
        cached = self.cached(wanted)
        if cached is not None:
            return cached
        with self._lock:
            cached = self.cached(wanted)
            if cached is not None:
                return cached
            value, lifetime = self._fetch(wanted)
            renew = time.monotonic() + max(lifetime - EARLY, lifetime / 2)
            self._cache[wanted] = _Cached(value, renew)
            return value

    def cached(self, scope: str = BOT_SCOPE) -> str | None:
        """The cached token for `scope` while it is fresh, without any network call."""
        entry = self._cache.get(scope)
        if entry is not None and time.monotonic() < entry.renew_at:
            return entry.value
        return None

    def _fetch(self, scope: str) -> tuple[str, float]:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.app_id,
            "client_secret": self._password,
            "scope": scope,
        }
        try:
            answer = httpx.post(self.token_url, data=form, timeout=self._timeout)
        except httpx.HTTPError as exc:
            raise TokenError(f"token endpoint unreachable: {exc}") from None
        try:
            body = answer.json()
        except ValueError:
            body = {}
        if answer.status_code != 200 or "access_token" not in body:
            code = body.get("error") or answer.status_code
            described = str(body.get("error_description") or "").split("\r\n")[0][:200]
            raise TokenError(f"token endpoint refused the bot's credentials ({code}): {described}")
        return str(body["access_token"]), float(body.get("expires_in") or 3599)
