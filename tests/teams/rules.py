"""What Microsoft's services enforce, written down once for the loopback Teams doubles: the rule
names a test may loosen, Bot Connector rate limits and size limit, which Adaptive Cards render
in Teams, and which Graph application permission each call needs.

Sources: Teams platform docs ("Rate limiting for bots", "Status codes from bot conversational
APIs", "Format cards", Adaptive Cards schema 1.5), Microsoft Graph v1.0 reference pages
(permissions tables, error responses, throttling), Entra ID token endpoint errors.
../shared/PLATFORM-FACTS.md "Microsoft Teams" has the short version.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# The rules a test may switch off, by name: ``FakeTeams(loosen={...})``, ``fake.loosen(...)``
# (and the same on ``FakeGraph``). Say why in the test.
RULES = frozenset(
    {
        "auth",  # Bot Connector / Graph need a valid Bearer token from the token endpoint
        "activity_schema",  # activities need a known type, a message needs text or attachments
        "adaptive_cards",  # card version <= 1.5 and a schema check of the elements used
        "message_size",  # a request over ~100 KB answers 413 MessageSizeTooBig
        "rate_limits",  # per bot per conversation: 7/1 s, 8/2 s, 60/30 s, 1,800/hour
        "tenant_rate",  # per app per tenant budget (default 50 requests/s)
        "roster",  # the app must be installed for the user / in the team, and not blocked
        "permissions",  # Graph: the token's roles must include the call's permission
        "graph_rate_limits",  # Graph: per-app request budget answers 429 with Retry-After
        "default_properties",  # Graph: without $select, a user has only the default properties
    }
)


def check_rule_names(names: Any) -> set[str]:
    """The names as a set; ValueError for a name that is not a rule."""
    chosen = set(names)
    unknown = chosen - RULES
    if unknown:
        raise ValueError(f"no such rule: {sorted(unknown)}; rules: {sorted(RULES)}")
    return chosen


# ---------------------------------------------------------------------- Bot Connector limits

BOT_FRAMEWORK_SCOPE = "https://api.botframework.com/.default"
BOT_FRAMEWORK_AUDIENCE = "https://api.botframework.com"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"
GRAPH_AUDIENCE = "https://graph.microsoft.com"
BOT_FRAMEWORK_ISSUER = "https://api.botframework.com"  # issuer of tokens sent *to* the bot

MAX_MESSAGE_BYTES = 100 * 1024  # "about 100 KB" including text, cards and entities

# (window seconds, max operations): per bot per conversation (Teams "per bot per thread").
SEND_WINDOWS: tuple[tuple[float, int], ...] = ((1, 7), (2, 8), (30, 60), (3600, 1800))
READ_WINDOWS: tuple[tuple[float, int], ...] = ((1, 14), (2, 16), (30, 120), (3600, 3600))
TENANT_PER_SECOND = 50  # per app per tenant; the platform says 30-50/s

# Operations by kind for the rate limits above. Names follow the Bot Connector REST API.
SEND_OPERATIONS = frozenset(
    {
        "CreateConversation",
        "SendToConversation",
        "ReplyToActivity",
        "UpdateActivity",
        "DeleteActivity",
    }
)
READ_OPERATIONS = frozenset(
    {
        "GetConversationMembers",
        "GetConversationPagedMembers",
        "GetConversationMember",
        "GetActivityMembers",
        "GetTeamDetails",
        "GetTeamChannels",
    }
)

# Bot Framework error codes (body: {"error": {"code": ..., "message": ...}}).
ERRORS: dict[str, tuple[int, str]] = {
    "BadArgument": (400, "Malformed request."),
    "BadSyntax": (400, "Unable to parse the request."),
    "BotNotInConversationRoster": (403, "The bot is not part of the conversation roster."),
    "ConversationBlockedByUser": (403, "User blocked the conversation with the bot."),
    "BotDisabledByAdmin": (403, "The tenant admin disabled this bot."),
    "NotEnoughPermissions": (
        403,
        "Bot doesn't have required permissions to perform the requested action.",
    ),
    "ConversationNotFound": (404, "Conversation not found."),
    "ActivityNotFoundInConversation": (404, "The activity was not found in the conversation."),
    "NotFound": (404, "Not found."),
    "PreconditionFailed": (412, "Precondition failed, please try again."),
    "MessageSizeTooBig": (413, "Message size too large."),
    "Throttled": (429, "Too many requests."),
    "ServiceError": (500, "Internal service error."),
    "BadGateway": (502, "Bad gateway."),
    "ServiceUnavailable": (503, "Service unavailable."),
    "GatewayTimeout": (504, "Gateway timeout."),
}
# What the Bot Connector answers without a valid token (ASP.NET's default 401 body).
UNAUTHORIZED_BODY = {"message": "Authorization has been denied for this request."}

ACTIVITY_TYPES = frozenset(
    {
        "message",
        "typing",
        "event",
        "invoke",
        "invokeResponse",
        "endOfConversation",
        "messageReaction",
    }
)
TEXT_FORMATS = frozenset({"markdown", "plain", "xml"})
ATTACHMENT_LAYOUTS = frozenset({"list", "carousel"})

# ---------------------------------------------------------------------- Adaptive Cards

ADAPTIVE_CARD = "application/vnd.microsoft.card.adaptive"
# Other attachment types Teams renders; anything else is refused.
OTHER_ATTACHMENTS = frozenset(
    {
        "application/vnd.microsoft.card.hero",
        "application/vnd.microsoft.card.thumbnail",
        "application/vnd.microsoft.teams.card.o365connector",
        "application/vnd.microsoft.card.oauth",
        "application/vnd.microsoft.card.signin",
        "application/vnd.microsoft.teams.card.file.consent",
        "application/vnd.microsoft.teams.card.file.info",
    }
)
MAX_CARD_VERSION = (1, 5)  # Teams renders Adaptive Cards up to 1.5

# Element type -> fields it must have (Adaptive Cards schema 1.5).
ELEMENTS: dict[str, tuple[str, ...]] = {
    "TextBlock": ("text",),
    "RichTextBlock": ("inlines",),
    "Image": ("url",),
    "ImageSet": ("images",),
    "Media": ("sources",),
    "FactSet": ("facts",),
    "ColumnSet": (),
    "Container": ("items",),
    "ActionSet": ("actions",),
    "Table": (),
    "Input.Text": ("id",),
    "Input.Number": ("id",),
    "Input.Date": ("id",),
    "Input.Time": ("id",),
    "Input.Toggle": ("id", "title"),
    "Input.ChoiceSet": ("id",),
}
ACTIONS: dict[str, tuple[str, ...]] = {
    "Action.Submit": (),
    "Action.Execute": (),
    "Action.OpenUrl": ("url",),
    "Action.ShowCard": ("card",),
    "Action.ToggleVisibility": ("targetElements",),
}
INPUT_TYPES = frozenset(t for t in ELEMENTS if t.startswith("Input."))
_VERSION = re.compile(r"^(\d+)\.(\d+)$")


@dataclass(frozen=True)
class CardError(Exception):
    """Why the Bot Connector refuses an attachment (400 BadArgument)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


def check_attachments(attachments: Any) -> None:
    """Raise CardError for attachments Teams would not take or not render."""
    if not isinstance(attachments, list):
        raise CardError("/attachments", "must be an array")
    for index, attachment in enumerate(attachments):
        path = f"/attachments/{index}"
        if not isinstance(attachment, dict):
            raise CardError(path, "must be an object")
        content_type = attachment.get("contentType")
        if content_type == ADAPTIVE_CARD:
            check_card(attachment.get("content"), f"{path}/content")
        elif content_type not in OTHER_ATTACHMENTS and not _is_file(attachment):
            raise CardError(f"{path}/contentType", f"unknown attachment type {content_type!r}")


def _is_file(attachment: dict[str, Any]) -> bool:
    content_type = str(attachment.get("contentType") or "")
    return bool(attachment.get("contentUrl")) and "/" in content_type


def check_card(card: Any, path: str = "/content", *, top: bool = True) -> None:
    """Raise CardError unless ``card`` is an Adaptive Card Teams renders (version <= 1.5, known
    elements and actions with their required fields, unique input ids)."""
    if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
        raise CardError(f"{path}/type", "must be 'AdaptiveCard'")
    version = card.get("version")
    if top or version is not None:
        match = _VERSION.match(str(version or ""))
        if match is None:
            raise CardError(f"{path}/version", "a card needs a version like '1.5'")
        if (int(match.group(1)), int(match.group(2))) > MAX_CARD_VERSION:
            raise CardError(
                f"{path}/version", f"version {version} is above 1.5, which Teams renders"
            )
    ids: set[str] = set()
    body = card.get("body", [])
    if not isinstance(body, list):
        raise CardError(f"{path}/body", "must be an array")
    for index, element in enumerate(body):
        _check_element(element, f"{path}/body/{index}", ids)
    actions = card.get("actions", [])
    if not isinstance(actions, list):
        raise CardError(f"{path}/actions", "must be an array")
    for index, action in enumerate(actions):
        _check_action(action, f"{path}/actions/{index}", ids)


def _required(obj: dict[str, Any], fields: tuple[str, ...], path: str) -> None:
    for name in fields:
        value = obj.get(name)
        if (
            value is None
            or value == ""
            or (isinstance(value, list) and not value and name != "items")
        ):
            raise CardError(f"{path}/{name}", "required")


def _check_element(element: Any, path: str, ids: set[str]) -> None:
    if not isinstance(element, dict):
        raise CardError(path, "must be an object")
    kind = element.get("type")
    if kind not in ELEMENTS:
        if "fallback" in element:  # an unknown element with a fallback renders the fallback
            fallback = element["fallback"]
            if fallback != "drop":
                _check_element(fallback, f"{path}/fallback", ids)
            return
        raise CardError(f"{path}/type", f"unknown element type {kind!r}")
    _required(element, ELEMENTS[kind], path)
    element_id = element.get("id")
    if element_id is not None:
        if not isinstance(element_id, str) or not element_id:
            raise CardError(f"{path}/id", "must be a non-empty string")
        if element_id in ids:
            raise CardError(f"{path}/id", f"duplicate id {element_id!r}")
        ids.add(element_id)
    if kind == "TextBlock" and not isinstance(element["text"], str):
        raise CardError(f"{path}/text", "must be a string")
    elif kind == "FactSet":
        facts = element["facts"]
        if not isinstance(facts, list):
            raise CardError(f"{path}/facts", "must be an array")
        for number, fact in enumerate(facts):
            if not isinstance(fact, dict):
                raise CardError(f"{path}/facts/{number}", "must be an object")
            _required(fact, ("title", "value"), f"{path}/facts/{number}")
    elif kind == "Container":
        _check_items(element["items"], f"{path}/items", ids)
    elif kind == "ColumnSet":
        columns = element.get("columns", [])
        if not isinstance(columns, list):
            raise CardError(f"{path}/columns", "must be an array")
        for number, column in enumerate(columns):
            column_path = f"{path}/columns/{number}"
            if not isinstance(column, dict) or column.get("type", "Column") != "Column":
                raise CardError(f"{column_path}/type", "must be 'Column'")
            _check_items(column.get("items", []), f"{column_path}/items", ids)
    elif kind == "ActionSet":
        actions = element["actions"]
        if not isinstance(actions, list):
            raise CardError(f"{path}/actions", "must be an array")
        for number, action in enumerate(actions):
            _check_action(action, f"{path}/actions/{number}", ids)
    elif kind == "Input.ChoiceSet":
        choices = element.get("choices", [])
        if not isinstance(choices, list):
            raise CardError(f"{path}/choices", "must be an array")
        for number, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise CardError(f"{path}/choices/{number}", "must be an object")
            _required(choice, ("title", "value"), f"{path}/choices/{number}")
    value = element.get("value")
    scalar = isinstance(value, str | int | float)
    if kind in INPUT_TYPES and kind != "Input.Toggle" and value is not None and not scalar:
        raise CardError(f"{path}/value", "must be a string or number")
    for key in ("selectAction",):
        if key in element:
            _check_action(element[key], f"{path}/{key}", ids)


def _check_items(items: Any, path: str, ids: set[str]) -> None:
    if not isinstance(items, list):
        raise CardError(path, "must be an array")
    for number, item in enumerate(items):
        _check_element(item, f"{path}/{number}", ids)


def _check_action(action: Any, path: str, ids: set[str]) -> None:
    if not isinstance(action, dict):
        raise CardError(path, "must be an object")
    kind = action.get("type")
    if kind not in ACTIONS:
        if "fallback" in action:
            if action["fallback"] != "drop":
                _check_action(action["fallback"], f"{path}/fallback", ids)
            return
        raise CardError(f"{path}/type", f"unknown action type {kind!r}")
    _required(action, ACTIONS[kind], path)
    if kind == "Action.ShowCard":
        check_card(action["card"], f"{path}/card", top=False)
    if kind == "Action.OpenUrl" and not str(action["url"]).startswith(
        ("https://", "http://", "mailto:", "tel:", "msteams:")
    ):
        raise CardError(f"{path}/url", "must be an absolute URL")
    if "data" in action and kind in ("Action.Submit", "Action.Execute"):
        data = action["data"]
        if not isinstance(data, dict | str):
            raise CardError(f"{path}/data", "must be an object or a string")


# ---------------------------------------------------------------------- Microsoft Graph

GRAPH_DEFAULT_PERMISSIONS = frozenset(
    {
        "User.Read.All",
        "GroupMember.Read.All",
        "TeamsAppInstallation.ReadWriteSelfForUser.All",
        "TeamMember.Read.All",
        "Channel.ReadBasic.All",
    }
)

# Operation -> (permissions any one of which suffices, whether the API is a Teams one). Teams
# APIs answer a missing role with 403 "Forbidden" ("Missing role permissions on the request"),
# directory APIs with 403 "Authorization_RequestDenied".
GRAPH_PERMISSIONS: dict[str, tuple[frozenset[str], bool]] = {
    "ListUsers": (
        frozenset(
            {
                "User.Read.All",
                "User.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
                "User.ReadBasic.All",
            }
        ),
        False,
    ),
    "GetUser": (
        frozenset(
            {
                "User.Read.All",
                "User.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
                "User.ReadBasic.All",
            }
        ),
        False,
    ),
    "GetMailboxSettings": (frozenset({"MailboxSettings.Read", "MailboxSettings.ReadWrite"}), False),
    "ListTransitiveMembers": (
        frozenset(
            {
                "GroupMember.Read.All",
                "Group.Read.All",
                "Directory.Read.All",
                "Group.ReadWrite.All",
                "Directory.ReadWrite.All",
            }
        ),
        False,
    ),
    "ListChannels": (
        frozenset(
            {
                "Channel.ReadBasic.All",
                "ChannelSettings.Read.All",
                "ChannelSettings.ReadWrite.All",
                "Group.Read.All",
                "Directory.Read.All",
            }
        ),
        True,
    ),
    "ListTeamMembers": (
        frozenset(
            {
                "TeamMember.Read.All",
                "TeamMember.ReadWrite.All",
                "Group.Read.All",
                "Directory.Read.All",
            }
        ),
        True,
    ),
    "ListInstalledApps": (
        frozenset(
            {
                "TeamsAppInstallation.ReadForUser.All",
                "TeamsAppInstallation.ReadWriteSelfForUser.All",
                "TeamsAppInstallation.ReadWriteForUser.All",
                "TeamsAppInstallation.ReadSelfForUser.All",
            }
        ),
        True,
    ),
    "InstallApp": (
        frozenset(
            {
                "TeamsAppInstallation.ReadWriteSelfForUser.All",
                "TeamsAppInstallation.ReadWriteForUser.All",
            }
        ),
        True,
    ),
    "GetInstalledApp": (
        frozenset(
            {
                "TeamsAppInstallation.ReadForUser.All",
                "TeamsAppInstallation.ReadWriteSelfForUser.All",
                "TeamsAppInstallation.ReadWriteForUser.All",
                "TeamsAppInstallation.ReadSelfForUser.All",
            }
        ),
        True,
    ),
    "GetInstalledAppChat": (
        frozenset(
            {
                "TeamsAppInstallation.ReadForUser.All",
                "TeamsAppInstallation.ReadWriteSelfForUser.All",
                "TeamsAppInstallation.ReadWriteForUser.All",
                "TeamsAppInstallation.ReadSelfForUser.All",
            }
        ),
        True,
    ),
    "ListCatalogApps": (
        frozenset(
            {
                "AppCatalog.Read.All",
                "AppCatalog.ReadWrite.All",
                "Directory.Read.All",
                "Directory.ReadWrite.All",
            }
        ),
        True,
    ),
}
# "Self" permissions let the app act on its own installation only.
SELF_ONLY = frozenset(
    {"TeamsAppInstallation.ReadWriteSelfForUser.All", "TeamsAppInstallation.ReadSelfForUser.All"}
)

# Properties of a user that Graph returns without $select.
USER_DEFAULT_PROPERTIES = (
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
)
GRAPH_MAX_TOP = 999
GRAPH_DEFAULT_TOP = 100
# Per app: requests per 10 s before Graph answers 429 (a round figure in the range Graph's
# identity and Teams service limits document for one app in one tenant).
GRAPH_PER_10_SECONDS = 2000
