"""A loopback Microsoft identity for Teams tests: the Bot Framework's OpenID metadata and signing
keys (for activities sent *to* the bot) and an Entra ID token endpoint (for the bot's own calls).

    with FakeIdentity(app_id=APP_ID, app_password=SECRET, tenant_id=TENANT) as identity:
        identity.openid_metadata_url   # TEAMS_OPENID_METADATA_URL
        identity.token_url             # TEAMS_TOKEN_URL (this tenant's /oauth2/v2.0/token)
        token = identity.sign_activity_token(service_url)        # the bot must accept it
        bad = identity.sign_activity_token(service_url, expired=True)  # ... and refuse this

Served paths (``identity.base_url`` + …):

- ``GET /v1/.well-known/openidconfiguration``: ``{"issuer": "https://api.botframework.com",
  "jwks_uri": <base>/v1/.well-known/keys, "id_token_signing_alg_values_supported": ["RS256"],
  …}`` (operation ``"OpenIdMetadata"``).
- ``GET /v1/.well-known/keys``: the JWKS; each key has ``kid``, ``x5t``, ``x5c``, ``n``, ``e``,
  ``use: "sig"`` and ``endorsements`` (``["msteams"]`` for the main key). Operation ``"Keys"``.
  The Teams SDK does not read the metadata document: it derives the JWKS URL from the metadata
  URL by replacing the trailing ``/openidconfiguration`` with ``/keys``; both are served.
- ``POST /<tenant>/oauth2/v2.0/token``: client credentials (form fields ``grant_type``,
  ``client_id``, ``client_secret`` or HTTP Basic, ``scope``). ``scope`` must be
  ``https://api.botframework.com/.default`` or ``https://graph.microsoft.com/.default``.
  Answers like Entra: ``{"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
  "access_token": <JWT>}``; errors ``{"error": "invalid_client", "error_description":
  "AADSTS7000215: …", "error_codes": [7000215], …}`` with 400/401. Operation ``"Token"``.

Access tokens are RS256 JWTs signed by a key of the token endpoint (not the Bot Framework key):
``aud`` (``https://api.botframework.com`` or ``https://graph.microsoft.com``), ``iss``
(``https://sts.windows.net/<tenant>/``), ``appid``, ``tid``, ``idtyp: "app"``, ``exp``/``nbf``/
``iat``, and for Graph ``roles`` = the application permissions granted (``graph_permissions``).
``verify_access_token(token, audience)`` is how the other doubles check them.

API: ``sign_activity_token(service_url, *, audience=None, issuer=…, expired=False,
expires_in=3600, not_before=None, key="trusted"|"untrusted"|"unendorsed", kid=None,
claims=None, omit=())``; ``issue_access_token(scope, *, expires_in=None)`` (skip the
endpoint); ``verify_access_token(token, audience) -> claims`` (raises ``InvalidToken``);
``grant(*permissions)`` / ``revoke(*permissions)``; ``token_lifetime`` (seconds);
``calls`` / ``calls_to`` / ``wait_for`` / ``fail`` / ``rate_limit`` / ``drop`` as in
``tests/teams/server.py``.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from functools import cache
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from tests.teams import rules
from tests.teams.server import Answer, LoopbackServer, Request

__all__ = [
    "APP_ID",
    "APP_PASSWORD",
    "TENANT_ID",
    "FakeIdentity",
    "InvalidToken",
]

APP_ID = "00000000-0000-4000-8000-00000000b07a"  # the bot's Microsoft App ID (Entra client id)
APP_PASSWORD = "test-app-password~not-a-real-secret"
TENANT_ID = "11111111-1111-4111-8111-111111111111"
OPENID_PATH = "/v1/.well-known/openidconfiguration"
KEYS_PATH = "/v1/.well-known/keys"
_CORRELATION = "22222222-2222-4222-8222-222222222222"


class InvalidToken(Exception):
    """An access token the services would refuse (reason in the message)."""


class _Key:
    """An RSA key pair with a self-signed certificate, as the JWKS publishes it."""

    def __init__(self, kid: str, endorsements: list[str]) -> None:
        self.kid = kid
        self.endorsements = endorsements
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "api.botframework.com")])
        now = dt.datetime.now(dt.UTC)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(self.private.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(self.private, hashes.SHA256())
        )
        der = certificate.public_bytes(serialization.Encoding.DER)
        self.x5c = base64.b64encode(der).decode()
        self.x5t = _b64url(hashlib.sha1(der).digest())
        self.pem = self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def jwk(self) -> dict[str, Any]:
        numbers = self.private.public_key().public_numbers()
        return {
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "x5t": self.x5t,
            "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
            "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
            "x5c": [self.x5c],
            "endorsements": list(self.endorsements),
        }


@cache
def _key_pool() -> tuple[dict[str, _Key], _Key]:
    """Keys generated once per test process (RSA key generation costs ~70 ms a key)."""
    keys = {
        "trusted": _Key(f"bf-{secrets.token_hex(6)}", ["msteams", "skype", "webchat"]),
        "unendorsed": _Key(f"bf-{secrets.token_hex(6)}", ["skype"]),
        "untrusted": _Key(f"bf-{secrets.token_hex(6)}", ["msteams"]),
    }
    return keys, _Key(f"aad-{secrets.token_hex(6)}", [])


class FakeIdentity(LoopbackServer):
    """OpenID metadata, JWKS and a client-credentials token endpoint on 127.0.0.1."""

    name = "identity"

    def __init__(
        self,
        *,
        app_id: str = APP_ID,
        app_password: str = APP_PASSWORD,
        tenant_id: str = TENANT_ID,
        graph_permissions: Iterable[str] | None = None,
        token_lifetime: int = 3599,
        lock: threading.Condition | None = None,
    ) -> None:
        super().__init__(lock=lock)
        self.app_id = app_id
        self.app_password = app_password
        self.tenant_id = tenant_id
        self.graph_permissions: set[str] = set(
            rules.GRAPH_DEFAULT_PERMISSIONS if graph_permissions is None else graph_permissions
        )
        self.token_lifetime = token_lifetime
        self.issued: list[dict[str, Any]] = []  # claims of every access token issued
        # The Bot Framework's signing keys: the main one (endorsed for msteams), one in the JWKS
        # that is not endorsed for msteams, and one the JWKS does not have; and the token
        # endpoint's own key for access tokens.
        self._keys, self._access_key = _key_pool()

    # ------------------------------------------------------------------ addresses

    @property
    def openid_metadata_url(self) -> str:
        """For ``TEAMS_OPENID_METADATA_URL`` (the SDK's ``CloudEnvironment.openid_metadata_url``)."""
        return self.base_url + OPENID_PATH

    @property
    def jwks_url(self) -> str:
        return self.base_url + KEYS_PATH

    @property
    def login_endpoint(self) -> str:
        """The Entra host root (the SDK's ``CloudEnvironment.login_endpoint``)."""
        return self.base_url

    @property
    def token_url(self) -> str:
        """For ``TEAMS_TOKEN_URL``: this tenant's ``/oauth2/v2.0/token``."""
        return f"{self.base_url}/{self.tenant_id}/oauth2/v2.0/token"

    @property
    def bot_id(self) -> str:
        """The bot's id in activities: ``28:<app id>``."""
        return f"28:{self.app_id}"

    # ------------------------------------------------------------------ permissions

    def grant(self, *permissions: str) -> None:
        """Grant Graph application permissions (admin consent); new tokens carry them."""
        with self._cond:
            self.graph_permissions.update(permissions)

    def revoke(self, *permissions: str) -> None:
        """Remove Graph application permissions; new tokens lack them."""
        with self._cond:
            self.graph_permissions.difference_update(permissions)

    # ------------------------------------------------------------------ tokens to the bot

    def sign_activity_token(
        self,
        service_url: str,
        *,
        audience: str | None = None,
        issuer: str = rules.BOT_FRAMEWORK_ISSUER,
        expired: bool = False,
        expires_in: int = 3600,
        not_before: int | None = None,
        key: str = "trusted",
        kid: str | None = None,
        claims: dict[str, Any] | None = None,
        omit: Iterable[str] = (),
    ) -> str:
        """The Bearer JWT the Bot Framework puts on a request to the bot.

        Right by default: RS256 with the msteams-endorsed key of the JWKS, ``iss``
        ``https://api.botframework.com``, ``aud`` = app id, ``serviceurl`` = ``service_url``,
        ``nbf``/``iat`` now-ish, ``exp`` in an hour. Knobs to make it wrong: ``expired`` (exp 10
        minutes ago, beyond the 5-minute skew), ``expires_in``, ``not_before`` (epoch seconds),
        ``audience``, ``issuer``, ``service_url`` (pass another URL than the activity's),
        ``key="untrusted"`` (a key not in the JWKS, same kid format), ``key="unendorsed"`` (in
        the JWKS but not endorsed for msteams), ``kid`` (e.g. one the JWKS does not have),
        ``claims`` (extra / overriding claims), ``omit`` (claim names to leave out)."""
        now = int(time.time())
        chosen = self._keys[key]
        payload: dict[str, Any] = {
            "serviceurl": service_url,
            "nbf": now - 5 if not_before is None else not_before,
            "exp": now - 600 if expired else now + expires_in,
            "iss": issuer,
            "aud": self.app_id if audience is None else audience,
        }
        payload.update(claims or {})
        for name in omit:
            payload.pop(name, None)
        headers = {"kid": chosen.kid if kid is None else kid, "x5t": chosen.x5t, "typ": "JWT"}
        return jwt.encode(payload, chosen.pem, algorithm="RS256", headers=headers)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [self._keys["trusted"].jwk(), self._keys["unendorsed"].jwk()]}

    def openid_metadata(self) -> dict[str, Any]:
        return {
            "issuer": rules.BOT_FRAMEWORK_ISSUER,
            "authorization_endpoint": "https://invalid.botframework.com",
            "jwks_uri": self.jwks_url,
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        }

    # ------------------------------------------------------------------ the bot's tokens

    def issue_access_token(self, scope: str, *, expires_in: int | None = None) -> str:
        """An access token as the token endpoint would issue for ``scope`` (no HTTP call)."""
        with self._cond:
            return self._issue(scope, self.token_lifetime if expires_in is None else expires_in)

    def _issue(self, scope: str, lifetime: int) -> str:
        now = int(time.time())
        audience = scope.removesuffix("/.default")
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{self.tenant_id}/",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "appid": self.app_id,
            "appidacr": "1",
            "idp": f"https://sts.windows.net/{self.tenant_id}/",
            "idtyp": "app",
            "oid": str(uuid.uuid5(uuid.NAMESPACE_URL, self.app_id)),
            "sub": str(uuid.uuid5(uuid.NAMESPACE_URL, self.app_id)),
            "tid": self.tenant_id,
            "ver": "1.0",
            "uti": secrets.token_urlsafe(16),
        }
        if audience == rules.GRAPH_AUDIENCE:
            claims["roles"] = sorted(self.graph_permissions)
        self.issued.append(claims)
        key = self._access_key
        return jwt.encode(
            claims, key.pem, algorithm="RS256", headers={"kid": key.kid, "x5t": key.x5t}
        )

    def verify_access_token(self, token: str, audience: str) -> dict[str, Any]:
        """The claims of an access token this identity issued for ``audience`` (and for this
        app and tenant), checked like the services do; InvalidToken otherwise."""
        public = self._access_key.private.public_key()
        try:
            header = jwt.get_unverified_header(token)
            if header.get("kid") != self._access_key.kid:
                raise InvalidToken("unknown signing key")
            claims: dict[str, Any] = jwt.decode(
                token,
                public,
                algorithms=["RS256"],
                audience=audience,
                issuer=f"https://sts.windows.net/{self.tenant_id}/",
                options={"require": ["exp", "nbf", "aud", "iss"]},
            )
        except jwt.PyJWTError as e:
            raise InvalidToken(str(e)) from e
        if claims.get("appid") != self.app_id:
            raise InvalidToken("token issued to another app")
        return claims

    # ------------------------------------------------------------------ HTTP

    def _route(
        self, request: Request
    ) -> tuple[str, dict[str, str], Callable[[Request, dict[str, str]], Answer]]:
        parts = [p for p in request.path.split("/") if p]
        if request.method == "GET" and request.path == OPENID_PATH:
            return "OpenIdMetadata", {}, lambda r, p: Answer(200, self.openid_metadata())
        if request.method == "GET" and request.path == KEYS_PATH:
            return "Keys", {}, lambda r, p: Answer(200, self.jwks())
        if len(parts) == 4 and parts[1:] == ["oauth2", "v2.0", "token"]:
            if request.method != "POST":
                return (
                    "Token",
                    {"tenant": parts[0]},
                    lambda r, p: _entra_error(
                        400, "invalid_request", 900561, "The endpoint only accepts POST requests."
                    ),
                )
            return "Token", {"tenant": parts[0]}, self._token
        return "Unknown", {}, lambda r, p: Answer(404, {"error": "not_found"})

    def _token(self, request: Request, params: dict[str, str]) -> Answer:
        tenant = params["tenant"]
        if tenant not in (self.tenant_id,):
            if tenant in ("botframework.com", "common", "organizations"):
                return _entra_error(
                    400,
                    "unauthorized_client",
                    700016,
                    f"Application with identifier '{self.app_id}' was not found in the directory "
                    f"'{tenant}'. This can happen if the application has not been installed by the "
                    "administrator of the tenant or consented to by any user in the tenant. You "
                    "might have sent your authentication request to the wrong tenant.",
                )
            return _entra_error(400, "invalid_request", 90002, f"Tenant '{tenant}' not found.")
        form = request.body if isinstance(request.body, dict) else {}
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            form = {}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                user, _, password = base64.b64decode(basic[6:]).decode().partition(":")
            except ValueError:
                user, password = "", ""
            client_id, client_secret = client_id or user, client_secret or password
        grant_type = form.get("grant_type")
        if not grant_type:
            return _missing("grant_type")
        if grant_type != "client_credentials":
            return _entra_error(
                400,
                "unsupported_grant_type",
                70003,
                f"The app requested an unsupported grant type '{grant_type}'.",
            )
        if not client_id:
            return _missing("client_id")
        if client_id != self.app_id:
            return _entra_error(
                400,
                "unauthorized_client",
                700016,
                f"Application with identifier '{client_id}' was not found in the directory "
                f"'{self.tenant_id}'.",
            )
        scope = form.get("scope")
        if not scope:
            return _missing("scope")
        if scope not in (rules.BOT_FRAMEWORK_SCOPE, rules.GRAPH_SCOPE):
            if not scope.endswith("/.default"):
                return _entra_error(
                    400,
                    "invalid_scope",
                    1002012,
                    f"The provided value for scope {scope} is not valid. Client credential flows "
                    "must have a scope value with /.default suffixed to the resource identifier "
                    "(application ID URI).",
                )
            return _entra_error(
                400,
                "invalid_resource",
                500011,
                f"The resource principal named {scope.removesuffix('/.default')} was not found "
                f"in the tenant named {self.tenant_id}.",
            )
        if not client_secret:
            return _entra_error(
                401,
                "invalid_client",
                7000216,
                "'client_assertion', 'client_secret' or 'request' is required for the "
                "'client_credentials' grant type.",
            )
        if not secrets.compare_digest(client_secret, self.app_password):
            return _entra_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID, for a secret added to app "
                f"'{self.app_id}'.",
            )
        lifetime = self.token_lifetime
        token = self._issue(scope, lifetime)
        return Answer(
            200,
            {
                "token_type": "Bearer",
                "expires_in": lifetime,
                "ext_expires_in": lifetime,
                "access_token": token,
            },
            {"Cache-Control": "no-store, no-cache", "Pragma": "no-cache"},
        )


def _missing(name: str) -> Answer:
    return _entra_error(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{name}'.",
    )


def _entra_error(status: int, error: str, code: int, description: str) -> Answer:
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    trace = str(uuid.uuid4())
    return Answer(
        status,
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
            f"Correlation ID: {_CORRELATION} Timestamp: {now}",
            "error_codes": [code],
            "timestamp": now,
            "trace_id": trace,
            "correlation_id": _CORRELATION,
            "error_uri": f"https://login.microsoftonline.com/error?code={code}",
        },
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
