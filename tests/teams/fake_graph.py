"""A loopback Microsoft Graph (v1.0) for Teams tests: the directory and Teams calls the bot makes,
on the tenant in ``tests/teams/directory.py``. ``FakeTeams`` owns one (``teams.graph``); it can
also run alone: ``FakeGraph(identity=…, directory=…)``.

``graph.url`` is the host root (``http://127.0.0.1:PORT``, like ``https://graph.microsoft.com``)
for ``TEAMS_GRAPH_URL``; requests go to ``<url>/v1.0/…``. Operation names (for ``calls_to`` /
``wait_for``) in brackets:

- ``GET /v1.0/users`` [ListUsers]: paged (``$top`` 1–999, default 100; ``@odata.nextLink``
  carries ``$skiptoken`` and the other options), ``$select``, ``$filter`` with ``eq`` clauses
  joined by ``and`` on ``id``, ``mail``, ``userPrincipalName``, ``displayName``, ``givenName``,
  ``surname``, ``userType``, ``accountEnabled``. Without ``$select`` a user has only Graph's
  default properties (no ``accountEnabled``, no ``userType``): select what you read.
- ``GET /v1.0/users/{id or UPN}`` [GetUser]; ``GET …/mailboxSettings`` and
  ``…/mailboxSettings/timeZone`` [GetMailboxSettings] (``timeZone`` is a Windows zone name such
  as ``"GMT Standard Time"``; a user without a mailbox → 404 ``MailboxNotEnabledForRESTAPI``;
  needs ``MailboxSettings.Read``, which the default grant does not include).
- ``GET /v1.0/groups/{id}/transitiveMembers`` (and ``…/microsoft.graph.user``)
  [ListTransitiveMembers]: users and nested groups with ``@odata.type``, paged; a team's
  group id works too (a team is a Microsoft 365 group whose members are the team's).
- ``GET /v1.0/teams/{group id}/channels`` [ListChannels], ``…/members`` [ListTeamMembers]
  (``aadUserConversationMember``: ``userId``, ``email``, ``roles``), paged.
- ``GET /v1.0/users/{id}/teamwork/installedApps`` [ListInstalledApps]: ``$expand=teamsApp``,
  ``teamsAppDefinition`` (``teamsAppDefinition($expand=bot)`` adds ``bot.id``), ``$filter`` on
  ``teamsApp/id``, ``teamsApp/externalId``, ``teamsAppDefinition/teamsAppId`` or
  ``teamsAppDefinition/bot/id``. Users also have two other apps installed (filter!).
- ``POST /v1.0/users/{id}/teamwork/installedApps`` [InstallApp] with
  ``{"teamsApp@odata.bind": "https://graph.microsoft.com/v1.0/appCatalogs/teamsApps/{catalog
  id}"}`` → 201 (no body); 409 ``Conflict`` when already installed; the catalog id is
  ``directory.teams_app_id``, *not* the bot's app id (its ``externalId``): an unknown id → 404.
  ``DELETE …/installedApps/{installation id}`` [UninstallApp] → 204.
- ``GET …/installedApps/{installation id}`` [GetInstalledApp], ``…/chat`` [GetInstalledAppChat]:
  ``{"id": "19:<aad id>_<app id>@unq.gbl.spaces"}``, the 1:1 chat the connector knows.
- ``GET /v1.0/appCatalogs/teamsApps?$filter=externalId eq '<app id>'`` [ListCatalogApps]
  (needs ``AppCatalog.Read.All``, not granted by default).

Strict (rules in ``tests/teams/rules.py``, loosened by name through ``FakeTeams``): ``auth``
(a Graph-scope token from the identity's token endpoint, else 401
``InvalidAuthenticationToken``); ``permissions`` (the token's ``roles`` must hold one of the
call's permissions: directory calls answer 403 ``Authorization_RequestDenied`` "Insufficient
privileges to complete the operation.", Teams calls 403 ``Forbidden`` "Missing role permissions
on the request. API requires one of '…'. Roles on the request '…'."; with only the ``…Self…``
installation permission the app may install itself only); ``graph_rate_limits``
(``per_10_seconds`` requests per app, default 2,000 → 429 ``TooManyRequests`` with
``Retry-After``); ``default_properties``. Errors: ``{"error": {"code", "message", "innerError":
{"date", "request-id", "client-request-id"}}}``. ``fail`` / ``rate_limit`` / ``drop`` queue
failures by operation, as on the connector.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import unquote, urlencode

from tests.teams import rules
from tests.teams.directory import Directory, Group, User
from tests.teams.identity import FakeIdentity, InvalidToken
from tests.teams.server import (
    Answer,
    ApiFailure,
    LoopbackServer,
    Request,
    SlidingWindows,
    retry_after,
)

__all__ = ["FakeGraph", "graph_error"]

# Apps every user has besides ours (built-in ones), so a bot that does not filter finds them.
OTHER_APPS: tuple[dict[str, Any], ...] = (
    {"id": "7c316234-ded0-4f95-8a83-8453d0876592", "externalId": None, "displayName": "Approvals"},
    {"id": "42f6c1da-a241-483a-a3cc-4f5be606a78b", "externalId": None, "displayName": "Shifts"},
)
_FILTER_CLAUSE = re.compile(r"^\s*([A-Za-z/]+)\s+eq\s+(?:'((?:[^']|'')*)'|(true|false))\s*$")
_USER_FILTERS = {
    "id",
    "mail",
    "userPrincipalName",
    "displayName",
    "givenName",
    "surname",
    "userType",
    "accountEnabled",
}


def graph_error(code: str, message: str, request_id: str | None = None) -> dict[str, Any]:
    """A Graph error body."""
    return {
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S"),
                "request-id": request_id or str(uuid.uuid4()),
                "client-request-id": request_id or str(uuid.uuid4()),
            },
        }
    }


def _fail(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> ApiFailure:
    return ApiFailure(status, graph_error(code, message), headers)


Handler = Callable[[Request, dict[str, str]], Answer]


class FakeGraph(LoopbackServer):
    """Microsoft Graph v1.0 on 127.0.0.1; see the module docstring."""

    name = "graph"

    def __init__(
        self,
        *,
        identity: FakeIdentity,
        directory: Directory,
        loosened: set[str] | None = None,
        per_10_seconds: int = rules.GRAPH_PER_10_SECONDS,
        lock: threading.Condition | None = None,
    ) -> None:
        super().__init__(lock=lock)
        self.identity = identity
        self.directory = directory
        self.loosened = loosened if loosened is not None else set()
        self._window = SlidingWindows(((10.0, per_10_seconds),))
        self.rejected_429 = 0

    @property
    def url(self) -> str:
        """The host root for ``TEAMS_GRAPH_URL``; requests go to ``<url>/v1.0/…``."""
        return self.base_url

    def _default_error(self, status: int) -> Any:
        codes = {
            429: "TooManyRequests",
            503: "ServiceNotAvailable",
            504: "GatewayTimeout",
            502: "BadGateway",
            500: "InternalServerError",
            403: "Forbidden",
            404: "NotFound",
        }
        return graph_error(codes.get(status, "UnknownError"), "injected failure")

    # ------------------------------------------------------------------ routing

    def _route(self, request: Request) -> tuple[str, dict[str, str], Handler]:
        if not request.path.startswith("/v1.0/"):
            return "Unknown", {}, self._not_found
        parts = [unquote(p) for p in request.path[len("/v1.0/") :].split("/") if p]
        method = request.method
        params: dict[str, str] = {}
        found: tuple[str, Handler] | None = None
        if parts == ["users"] and method == "GET":
            found = ("ListUsers", self._list_users)
        elif parts[:1] == ["users"] and len(parts) >= 2:
            params["user_id"] = parts[1]
            rest = parts[2:]
            if not rest and method == "GET":
                found = ("GetUser", self._get_user)
            elif rest[:1] == ["mailboxSettings"] and len(rest) <= 2 and method == "GET":
                params["property"] = rest[1] if len(rest) == 2 else ""
                found = ("GetMailboxSettings", self._mailbox_settings)
            elif rest[:2] == ["teamwork", "installedApps"]:
                if len(rest) == 2:
                    found = {
                        "GET": ("ListInstalledApps", self._list_installed),
                        "POST": ("InstallApp", self._install),
                    }.get(method)
                elif len(rest) >= 3:
                    params["installation_id"] = rest[2]
                    if len(rest) == 3:
                        found = {
                            "GET": ("GetInstalledApp", self._get_installed),
                            "DELETE": ("UninstallApp", self._uninstall),
                        }.get(method)
                    elif rest[3:] == ["chat"] and method == "GET":
                        found = ("GetInstalledAppChat", self._installed_chat)
        elif parts[:1] == ["groups"] and len(parts) >= 3 and parts[2] == "transitiveMembers":
            params["group_id"] = parts[1]
            params["cast"] = parts[3] if len(parts) == 4 else ""
            if method == "GET" and params["cast"] in ("", "microsoft.graph.user"):
                found = ("ListTransitiveMembers", self._transitive_members)
        elif parts[:1] == ["teams"] and len(parts) == 3 and method == "GET":
            params["team_id"] = parts[1]
            found = {
                "channels": ("ListChannels", self._channels),
                "members": ("ListTeamMembers", self._team_members),
            }.get(parts[2])
        elif parts == ["appCatalogs", "teamsApps"] and method == "GET":
            found = ("ListCatalogApps", self._catalog_apps)
        if found is None:
            return "Unknown", params, self._not_found
        operation, handler = found
        return operation, params, self._guarded(operation, handler)

    def _not_found(self, request: Request, params: dict[str, str]) -> Answer:
        return Answer(
            400,
            graph_error(
                "BadRequest",
                f"Resource not found for the segment '{request.path.rsplit('/', 1)[-1]}'.",
            ),
        )

    def _guarded(self, operation: str, handler: Handler) -> Handler:
        def run(request: Request, params: dict[str, str]) -> Answer:
            roles: set[str] = set()
            if "auth" not in self.loosened:
                roles = self._authenticate(request)
            if "graph_rate_limits" not in self.loosened:
                wait = self._window.take("app", request.at)
                if wait is not None:
                    self.rejected_429 += 1
                    raise _fail(
                        429,
                        "TooManyRequests",
                        "Too many requests, retry after the time in Retry-After.",
                        {"Retry-After": retry_after(wait)},
                    )
            if "permissions" not in self.loosened and "auth" not in self.loosened:
                self._authorize(operation, roles)
            params = dict(params, _roles=",".join(sorted(roles)))
            answer = handler(request, params)
            answer.headers.setdefault("request-id", str(uuid.uuid4()))
            return answer

        return run

    def _authenticate(self, request: Request) -> set[str]:
        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer ") or not header[7:].strip():
            raise _fail(401, "InvalidAuthenticationToken", "Access token is empty.")
        try:
            claims = self.identity.verify_access_token(header[7:].strip(), rules.GRAPH_AUDIENCE)
        except InvalidToken as e:
            raise _fail(
                401, "InvalidAuthenticationToken", f"Access token validation failure. {e}"
            ) from e
        return {str(r) for r in claims.get("roles") or []}

    def _authorize(self, operation: str, roles: set[str]) -> None:
        allowed, teams_api = rules.GRAPH_PERMISSIONS[operation]
        if roles & allowed:
            return
        if teams_api:
            raise _fail(
                403,
                "Forbidden",
                "Missing role permissions on the request. API requires one of "
                f"'{', '.join(sorted(allowed))}'. Roles on the request '{', '.join(sorted(roles))}'.",
            )
        raise _fail(
            403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation."
        )

    # ------------------------------------------------------------------ paging and options

    def _page(self, request: Request, items: list[dict[str, Any]], context: str) -> Answer:
        top_text = request.query.get("$top")
        top = rules.GRAPH_DEFAULT_TOP
        if top_text is not None:
            try:
                top = int(top_text)
            except ValueError:
                top = -1
            if not 1 <= top <= rules.GRAPH_MAX_TOP:
                raise _fail(
                    400,
                    "Request_BadRequest",
                    f"Invalid page size specified: '{top_text}'. Must be between 1 and "
                    f"{rules.GRAPH_MAX_TOP} inclusive.",
                )
        start = 0
        token = request.query.get("$skiptoken")
        if token:
            try:
                kind, _, offset = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
                if kind != "skip":
                    raise ValueError(token)
                start = int(offset)
            except (ValueError, binascii.Error) as e:
                raise _fail(
                    400,
                    "Directory_ExpiredPageToken",
                    "The specified page token value has expired and can no longer be included in your request.",
                ) from e
        body: dict[str, Any] = {
            "@odata.context": f"{self.url}/v1.0/$metadata#{context}",
            "value": items[start : start + top],
        }
        if start + top < len(items):
            query = {k: v for k, v in request.query.items() if k != "$skiptoken"}
            query["$skiptoken"] = base64.urlsafe_b64encode(f"skip:{start + top}".encode()).decode()
            body["@odata.nextLink"] = f"{self.url}{request.path}?{urlencode(query)}"
        return Answer(200, body)

    def _select(
        self, request: Request, full: dict[str, Any], defaults: Iterable[str]
    ) -> dict[str, Any]:
        select = request.query.get("$select")
        if select:
            fields = [f.strip() for f in select.split(",") if f.strip()]
            for name in fields:
                if name not in full:
                    raise _fail(
                        400,
                        "Request_BadRequest",
                        f"Could not find a property named '{name}' on type 'microsoft.graph.user'.",
                    )
            return {name: full[name] for name in fields}
        if "default_properties" in self.loosened:
            return dict(full)
        return {name: full[name] for name in defaults if name in full}

    def _user_view(self, request: Request, user: User) -> dict[str, Any]:
        return self._select(request, user.graph(), rules.USER_DEFAULT_PROPERTIES)

    def _user(self, key: str) -> User:
        user = self.directory.user_or_none(key)
        if user is None or key == user.key or key == user.teams_id:
            raise _fail(
                404,
                "Request_ResourceNotFound",
                f"Resource '{key}' does not exist or one of its queried reference-property "
                "objects are not present.",
            )
        return user

    # ------------------------------------------------------------------ users

    def _list_users(self, request: Request, params: dict[str, str]) -> Answer:
        users = list(self.directory.users.values())
        expression = request.query.get("$filter")
        if expression:
            users = [u for u in users if _matches(u.graph(), expression, _USER_FILTERS)]
        return self._page(request, [self._user_view(request, u) for u in users], "users")

    def _get_user(self, request: Request, params: dict[str, str]) -> Answer:
        user = self._user(params["user_id"])
        body = {"@odata.context": f"{self.url}/v1.0/$metadata#users/$entity"}
        body.update(self._user_view(request, user))
        return Answer(200, body)

    def _mailbox_settings(self, request: Request, params: dict[str, str]) -> Answer:
        user = self._user(params["user_id"])
        if user.time_zone is None:
            raise _fail(
                404,
                "MailboxNotEnabledForRESTAPI",
                "The mailbox is either inactive, soft-deleted, or is hosted on-premise.",
            )
        settings: dict[str, Any] = {
            "archiveFolder": "AAMkAGI2TGuLAAA=",
            "timeZone": user.time_zone,
            "dateFormat": "dd/MM/yyyy",
            "timeFormat": "HH:mm",
            "userPurpose": "user",
            "language": {"locale": "en-GB", "displayName": "English (United Kingdom)"},
            "workingHours": {
                "daysOfWeek": ["monday", "tuesday", "wednesday", "thursday", "friday"],
                "startTime": "08:00:00.0000000",
                "endTime": "17:00:00.0000000",
                "timeZone": {"name": user.time_zone},
            },
        }
        context = f"{self.url}/v1.0/$metadata#users('{user.id}')/mailboxSettings"
        if params["property"]:
            if params["property"] not in settings:
                raise _fail(
                    400, "BadRequest", f"Resource not found for the segment '{params['property']}'."
                )
            return Answer(
                200,
                {
                    "@odata.context": f"{context}/{params['property']}",
                    "value": settings[params["property"]],
                },
            )
        select = request.query.get("$select")
        if select:
            settings = {k: settings[k] for k in select.split(",") if k in settings}
        return Answer(200, {"@odata.context": context, **settings})

    # ------------------------------------------------------------------ groups and teams

    def _transitive_members(self, request: Request, params: dict[str, str]) -> Answer:
        group = self.directory.group_or_none(params["group_id"])
        if group is None:  # a team is a Microsoft 365 group: its members are the group's
            team = next(
                (t for t in self.directory.teams.values() if t.id == params["group_id"]), None
            )
            if team is not None:
                group = Group(team.key, team.id, team.name, members=list(team.members))
        if group is None or params["group_id"] == group.key:
            raise _fail(
                404,
                "Request_ResourceNotFound",
                f"Resource '{params['group_id']}' does not exist or one of its queried "
                "reference-property objects are not present.",
            )
        items: list[dict[str, Any]] = []
        for member in self.directory.transitive_members(group):
            if isinstance(member, Group):
                if params["cast"]:
                    continue
                items.append(
                    {
                        "@odata.type": "#microsoft.graph.group",
                        "id": member.id,
                        "displayName": member.display_name,
                    }
                )
            else:
                items.append(
                    {"@odata.type": "#microsoft.graph.user", **self._user_view(request, member)}
                )
        return self._page(request, items, "directoryObjects")

    def _team(self, params: dict[str, str]) -> Any:
        for team in self.directory.teams.values():
            if params["team_id"] == team.id:
                return team
        raise _fail(404, "NotFound", f"No team found with Group Id {params['team_id']}")

    def _channels(self, request: Request, params: dict[str, str]) -> Answer:
        team = self._team(params)
        items = [
            {
                "id": channel.id,
                "createdDateTime": "2024-01-08T09:00:00Z",
                "displayName": channel.name,
                "description": channel.description,
                "membershipType": channel.membership_type,
                "email": "",
                "tenantId": self.directory.tenant_id,
                "webUrl": f"https://teams.microsoft.com/l/channel/{channel.id}/{channel.name}",
            }
            for channel in team.channels
        ]
        return self._page(request, items, f"teams('{team.id}')/channels")

    def _team_members(self, request: Request, params: dict[str, str]) -> Answer:
        team = self._team(params)
        items = []
        for user_id in team.members:
            user = self.directory.users.get(user_id)
            if user is None:
                continue
            member_id = base64.b64encode(f"{team.id}##{user.id}".encode()).decode()
            items.append(
                {
                    "@odata.type": "#microsoft.graph.aadUserConversationMember",
                    "id": member_id,
                    "roles": ["owner"] if user.id in team.owners else [],
                    "displayName": user.display_name,
                    "visibleHistoryStartDateTime": "0001-01-01T00:00:00Z",
                    "userId": user.id,
                    "email": user.mail,
                    "tenantId": self.directory.tenant_id,
                }
            )
        return self._page(request, items, f"teams('{team.id}')/members")

    # ------------------------------------------------------------------ app installations

    def _installations(self, user: User) -> list[dict[str, Any]]:
        """Every app installed for the user: the two built-in ones, then ours if installed."""
        apps = []
        for other in OTHER_APPS:
            apps.append(
                {
                    "id": base64.b64encode(f"{user.id}##{other['id']}".encode()).decode(),
                    "teamsApp": {**other, "distributionMethod": "store"},
                    "bot": None,
                }
            )
        if user.app_installed:
            apps.append(
                {
                    "id": self.directory.installation_id(user),
                    "teamsApp": {
                        "id": self.directory.teams_app_id,
                        "externalId": self.directory.app_id,
                        "displayName": self.directory.app_name,
                        "distributionMethod": "organization",
                    },
                    "bot": {"id": self.directory.app_id},
                }
            )
        return apps

    def _installation_view(self, request: Request, installation: dict[str, Any]) -> dict[str, Any]:
        expand = request.query.get("$expand", "")
        app = installation["teamsApp"]
        view: dict[str, Any] = {"id": installation["id"]}
        if re.search(r"(^|,)\s*teamsApp\s*(,|$)", expand):
            view["teamsApp"] = dict(app)
        if "teamsAppDefinition" in expand:
            definition: dict[str, Any] = {
                "id": base64.b64encode(f"{app['id']}##1.0.0".encode()).decode(),
                "teamsAppId": app["id"],
                "displayName": app["displayName"],
                "version": "1.0.0",
                "publishingState": "published",
                "shortDescription": app["displayName"],
                "description": app["displayName"],
                "lastModifiedDateTime": None,
                "createdBy": None,
            }
            if re.search(r"teamsAppDefinition\(\s*\$expand\s*=\s*bot\s*\)", expand):
                definition["bot"] = installation["bot"]
            view["teamsAppDefinition"] = definition
        return view

    def _list_installed(self, request: Request, params: dict[str, str]) -> Answer:
        user = self._user(params["user_id"])
        installations = self._installations(user)
        expression = request.query.get("$filter")
        if expression:
            installations = [
                i for i in installations if _matches(_flatten(i), expression, _INSTALL_FILTERS)
            ]
        items = [self._installation_view(request, i) for i in installations]
        return self._page(request, items, f"users('{user.id}')/teamwork/installedApps")

    def _install(self, request: Request, params: dict[str, str]) -> Answer:
        user = self._user(params["user_id"])
        body = request.body if isinstance(request.body, dict) else {}
        bind = str(body.get("teamsApp@odata.bind") or "")
        match = re.search(r"/appCatalogs/teamsApps/([^/?'\"()]+)$", bind) or re.search(
            r"/appCatalogs/teamsApps\('([^']+)'\)$", bind
        )
        if match is None:
            raise _fail(
                400,
                "BadRequest",
                "The request needs 'teamsApp@odata.bind' with the app's catalog URL.",
            )
        app_id = match.group(1)
        known = {self.directory.teams_app_id} | {str(a["id"]) for a in OTHER_APPS}
        if app_id not in known:
            raise _fail(
                404, "NotFound", f"The app with id '{app_id}' was not found in the app catalog."
            )
        roles = set(filter(None, params.get("_roles", "").split(",")))
        if (
            app_id != self.directory.teams_app_id
            and "TeamsAppInstallation.ReadWriteForUser.All" not in roles
            and not self.loosened & {"permissions", "auth"}
        ):
            raise _fail(
                403,
                "Forbidden",
                "With TeamsAppInstallation.ReadWriteSelfForUser.All an app can install only itself.",
            )
        if self.directory.app_disabled and app_id == self.directory.teams_app_id:
            raise _fail(403, "Forbidden", "The app is blocked by the tenant admin.")
        if app_id == self.directory.teams_app_id:
            if user.app_installed:
                raise _fail(409, "Conflict", "App is already installed for the user.")
            user.app_installed = True
            return Answer(201, None)
        raise _fail(409, "Conflict", "App is already installed for the user.")

    def _installation(self, user: User, installation_id: str) -> dict[str, Any]:
        for installation in self._installations(user):
            if installation["id"] == installation_id:
                return installation
        raise _fail(404, "NotFound", f"The app installation '{installation_id}' was not found.")

    def _get_installed(self, request: Request, params: dict[str, str]) -> Answer:
        user = self._user(params["user_id"])
        installation = self._installation(user, params["installation_id"])
        return Answer(200, self._installation_view(request, installation))

    def _uninstall(self, request: Request, params: dict[str, str]) -> Answer:
        allowed = rules.GRAPH_PERMISSIONS["InstallApp"][0]
        roles = set(filter(None, params.get("_roles", "").split(",")))
        if (
            "permissions" not in self.loosened
            and "auth" not in self.loosened
            and not roles & allowed
        ):
            self._authorize("InstallApp", roles)
        user = self._user(params["user_id"])
        installation = self._installation(user, params["installation_id"])
        if installation["teamsApp"]["id"] != self.directory.teams_app_id:
            raise _fail(403, "Forbidden", "An app can only uninstall itself.")
        user.app_installed = False
        return Answer(204, None)

    def _installed_chat(self, request: Request, params: dict[str, str]) -> Answer:
        user = self._user(params["user_id"])
        installation = self._installation(user, params["installation_id"])
        if installation["bot"] is None:
            raise _fail(404, "NotFound", "The app has no bot, so there is no chat with it.")
        return Answer(
            200,
            {
                "@odata.context": f"{self.url}/v1.0/$metadata#chats/$entity",
                "id": self.directory.chat_id(user),
                "topic": None,
                "chatType": "oneOnOne",
                "tenantId": self.directory.tenant_id,
            },
        )

    def _catalog_apps(self, request: Request, params: dict[str, str]) -> Answer:
        apps: list[dict[str, Any]] = [
            {
                "id": self.directory.teams_app_id,
                "externalId": self.directory.app_id,
                "displayName": self.directory.app_name,
                "distributionMethod": "organization",
            },
            *({**a, "distributionMethod": "store"} for a in OTHER_APPS),
        ]
        expression = request.query.get("$filter")
        if expression:
            apps = [
                a
                for a in apps
                if _matches(
                    a, expression, {"id", "externalId", "displayName", "distributionMethod"}
                )
            ]
        return self._page(request, apps, "appCatalogs/teamsApps")


_INSTALL_FILTERS = {
    "teamsApp/id",
    "teamsApp/externalId",
    "teamsAppDefinition/teamsAppId",
    "teamsAppDefinition/bot/id",
}


def _flatten(installation: dict[str, Any]) -> dict[str, Any]:
    app = installation["teamsApp"]
    return {
        "teamsApp/id": app["id"],
        "teamsApp/externalId": app["externalId"],
        "teamsAppDefinition/teamsAppId": app["id"],
        "teamsAppDefinition/bot/id": (installation["bot"] or {}).get("id"),
    }


def _matches(item: dict[str, Any], expression: str, allowed: set[str]) -> bool:
    """``a eq 'x' and b eq true``: the only $filter form the fake understands (others → 400,
    as Graph answers a filter it does not support)."""
    for clause in re.split(r"\s+and\s+", expression.strip()):
        match = _FILTER_CLAUSE.match(clause)
        if match is None or match.group(1) not in allowed:
            raise _fail(
                400,
                "Request_UnsupportedQuery",
                f"Unsupported or invalid query filter clause specified: '{clause}'.",
            )
        name, text, boolean = match.groups()
        value: Any = (boolean == "true") if boolean else text.replace("''", "'")
        actual = item.get(name)
        if isinstance(actual, str) and isinstance(value, str):
            if actual.lower() != value.lower():  # Graph compares strings case-insensitively
                return False
        elif actual != value:
            return False
    return True
