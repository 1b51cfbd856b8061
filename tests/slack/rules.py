"""What Slack enforces, written down once for the loopback Slack: the scope each Web API
method needs, which methods read form arguments only, rate tiers, Block Kit limits, and how
Slack encodes the text it sends.

Sources: Slack's method reference pages (scopes, rate tiers), "Formatting text for app
surfaces" (entity encoding), the Block Kit reference (limits). ../shared/PLATFORM-FACTS.md
has the table these follow.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import yaml

MANIFEST = Path(__file__).resolve().parents[2] / "slack-manifest.yml"

# The rules a test may switch off, by name, with `FakeSlack(loosen={...})` or `fake.loosen()`.
RULES = frozenset(
    {
        "scopes",  # every method needs its documented scope
        "form_reads",  # read methods ignore a JSON body
        "membership",  # posting to / reading a channel needs the bot in it
        "rate_limits",  # Slack's rate tiers answer 429 with Retry-After
        "block_kit",  # invalid_blocks / msg_too_long
        "trigger_ids",  # views.open needs a trigger_id Slack issued within 3 s
        "response_urls",  # a response_url is good for 5 uses within 30 minutes
    }
)


@cache
def manifest_scopes(path: Path = MANIFEST) -> frozenset[str]:
    """The bot scopes `slack-manifest.yml` asks for."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    scopes = ((data.get("oauth_config") or {}).get("scopes") or {}).get("bot") or []
    return frozenset(str(scope) for scope in scopes)


# Methods that need one fixed bot scope. None: no scope needed.
METHOD_SCOPES: dict[str, str | None] = {
    "auth.test": None,
    "chat.postMessage": "chat:write",
    "chat.postEphemeral": "chat:write",
    "chat.update": "chat:write",
    "chat.delete": "chat:write",
    "chat.scheduleMessage": "chat:write",
    "chat.getPermalink": None,
    "conversations.open": "im:write",
    "conversations.join": "channels:join",
    "users.info": "users:read",
    "users.list": "users:read",
    "users.lookupByEmail": "users:read.email",
    "usergroups.users.list": "usergroups:read",
    "usergroups.list": "usergroups:read",
    "views.open": None,
    "views.publish": None,
    "views.update": None,
    "views.push": None,
    "reactions.add": "reactions:write",
    "reactions.remove": "reactions:write",
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
}

# conversations.* methods whose scope depends on the conversation type: prefix of the scope.
CONVERSATION_SCOPES: dict[str, str] = {
    "conversations.history": "history",
    "conversations.replies": "history",
    "conversations.members": "read",
    "conversations.info": "read",
}

# Methods whose arguments Slack takes from the query string or a form body only: a JSON body
# is ignored (Slack accepts JSON for write methods).
FORM_ONLY = frozenset(
    {
        "auth.test",
        "chat.getPermalink",
        "conversations.history",
        "conversations.replies",
        "conversations.members",
        "conversations.info",
        "conversations.list",
        "users.info",
        "users.list",
        "users.lookupByEmail",
        "usergroups.users.list",
        "usergroups.list",
        "files.getUploadURLExternal",  # Slack documents form arguments only
    }
)

# Rate tiers, per minute (https://api.slack.com/apis/rate-limits). chat.postMessage has its
# own rule (1 message/s per channel, plus a workspace-wide budget) set in FakeSlack.
TIER_2, TIER_3, TIER_4 = 20, 50, 100
METHOD_TIERS: dict[str, int] = {
    "chat.update": TIER_3,
    "chat.delete": TIER_3,
    "chat.getPermalink": TIER_4,
    "chat.postEphemeral": TIER_4,
    "conversations.open": TIER_3,
    "conversations.history": TIER_3,
    "conversations.replies": TIER_3,
    "conversations.members": TIER_4,
    "conversations.info": TIER_3,
    "conversations.list": TIER_2,
    "conversations.join": TIER_3,
    "users.info": TIER_4,
    "users.list": TIER_2,
    "users.lookupByEmail": TIER_3,
    "usergroups.users.list": TIER_2,
    "usergroups.list": TIER_2,
    "views.open": TIER_4,
    "views.publish": TIER_4,
    "views.update": TIER_4,
    "reactions.add": TIER_3,
    "files.getUploadURLExternal": TIER_4,
    "files.completeUploadExternal": TIER_4,
    "auth.test": TIER_4,
    "apps.connections.open": 60,
}


def needed_scope(method: str, params: dict[str, Any]) -> str | tuple[str, ...] | None:
    """The scope `method` needs for these arguments (a tuple: all of them), or None."""
    if method in METHOD_SCOPES:
        return METHOD_SCOPES[method]
    kind = CONVERSATION_SCOPES.get(method)
    if kind is not None:
        return f"{conversation_type(str(params.get('channel') or ''))}:{kind}"
    if method == "conversations.list":
        types = {t.strip() for t in str(params.get("types") or "public_channel").split(",")}
        needed = []
        if "public_channel" in types:
            needed.append("channels:read")
        if "private_channel" in types:
            needed.append("groups:read")
        if "im" in types:
            needed.append("im:read")
        if "mpim" in types:
            needed.append("mpim:read")
        return tuple(needed)
    return None


def conversation_type(channel: str) -> str:
    """The scope family of a conversation id: C… public, G… private, D… direct message."""
    if channel.startswith("D") or channel[:1] in ("U", "W"):
        return "im"
    if channel.startswith("G"):
        return "groups"
    return "channels"


# ---------------------------------------------------------------------- what Slack sends

# A Slack token inside text: <@U…>, <#C…|name>, <!here>, <https://…|label>, <mailto:…>.
SLACK_TOKEN = re.compile(r"<(?:[@#!][^<>]*|(?:https?|mailto):[^<>]*)>")


def encode_text(text: str) -> str:
    """Text as Slack puts it in an event: `&`, `<`, `>` entity-encoded, except in the Slack
    tokens already written in Slack's syntax (mentions, channels, links, `<!here>`)."""
    out: list[str] = []
    position = 0
    for match in SLACK_TOKEN.finditer(text):
        out.append(_escape(text[position : match.start()]))
        token = match.group(0)
        inner = token[1:-1]
        target, bar, label = inner.partition("|")
        out.append(f"<{target.replace('&', '&amp;')}{bar}{_escape(label)}>")
        position = match.end()
    out.append(_escape(text[position:]))
    return "".join(out)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# ---------------------------------------------------------------------- Block Kit

MAX_BLOCKS = 50
MAX_VIEW_BLOCKS = 100
MAX_TEXT = 40_000  # characters of a message's top-level text (msg_too_long above)
SECTION_TEXT = 3000
BUTTON_TEXT = 75
ACTION_ID = 255
BLOCK_ID = 255
BUTTON_VALUE = 2000
CONTEXT_ELEMENTS = 10
ACTIONS_ELEMENTS = 25
SELECT_OPTIONS = 100
CHECKBOX_OPTIONS = 10
OPTION_TEXT = 75
OPTION_VALUE = 150
BLOCK_TYPES = frozenset(
    {"section", "actions", "context", "divider", "header", "image", "input", "rich_text"}
)


@dataclass(frozen=True)
class BlockError(Exception):
    """Why Slack would refuse these blocks (the `invalid_blocks` details)."""

    path: str
    reason: str

    def __str__(self) -> str:
        return f"{self.reason} [json-pointer:{self.path}]"


def check_blocks(blocks: Any, *, limit: int = MAX_BLOCKS) -> None:
    """Raise BlockError where Slack answers `invalid_blocks`."""
    if not isinstance(blocks, list):
        raise BlockError("/blocks", "must be an array")
    if len(blocks) > limit:
        raise BlockError("/blocks", f"must contain at most {limit} items")
    block_ids: set[str] = set()
    for index, block in enumerate(blocks):
        path = f"/blocks/{index}"
        action_ids: set[str] = set()  # an action_id is unique within its containing block
        if not isinstance(block, dict) or block.get("type") not in BLOCK_TYPES:
            raise BlockError(f"{path}/type", "unknown or missing block type")
        block_id = block.get("block_id")
        if block_id is not None:
            if not isinstance(block_id, str) or not block_id or len(block_id) > BLOCK_ID:
                raise BlockError(f"{path}/block_id", "invalid block_id")
            if block_id in block_ids:
                raise BlockError(f"{path}/block_id", "duplicate block_id")
            block_ids.add(block_id)
        kind = block["type"]
        if kind == "section":
            _check_section(block, path)
            if isinstance(block.get("accessory"), dict):
                _check_element(block["accessory"], f"{path}/accessory", action_ids)
        elif kind == "actions":
            elements = block.get("elements")
            if not isinstance(elements, list) or not elements:
                raise BlockError(f"{path}/elements", "must contain at least 1 item")
            if len(elements) > ACTIONS_ELEMENTS:
                raise BlockError(f"{path}/elements", f"must contain at most {ACTIONS_ELEMENTS}")
            for number, element in enumerate(elements):
                _check_element(element, f"{path}/elements/{number}", action_ids)
        elif kind == "context":
            elements = block.get("elements")
            if not isinstance(elements, list) or not elements:
                raise BlockError(f"{path}/elements", "must contain at least 1 item")
            if len(elements) > CONTEXT_ELEMENTS:
                raise BlockError(f"{path}/elements", f"must contain at most {CONTEXT_ELEMENTS}")
            for number, element in enumerate(elements):
                if element.get("type") in ("mrkdwn", "plain_text"):
                    _check_text(element, f"{path}/elements/{number}", SECTION_TEXT)
        elif kind == "input":
            if not isinstance(block.get("element"), dict) or not isinstance(
                block.get("label"), dict
            ):
                raise BlockError(path, "input needs an element and a label")
            _check_element(block["element"], f"{path}/element", action_ids)


def _check_text(obj: Any, path: str, limit: int) -> None:
    if not isinstance(obj, dict) or obj.get("type") not in ("mrkdwn", "plain_text"):
        raise BlockError(path, "must be a text object")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        raise BlockError(f"{path}/text", "must be a non-empty string")
    if len(text) > limit:
        raise BlockError(f"{path}/text", f"must be less than {limit + 1} characters")


def _check_section(block: dict[str, Any], path: str) -> None:
    if "text" not in block and "fields" not in block:
        raise BlockError(path, "a section needs text or fields")
    if "text" in block:
        _check_text(block["text"], f"{path}/text", SECTION_TEXT)
    for number, field in enumerate(block.get("fields") or []):
        _check_text(field, f"{path}/fields/{number}", 2000)


def _check_element(element: Any, path: str, action_ids: set[str]) -> None:
    if not isinstance(element, dict) or "type" not in element:
        raise BlockError(path, "element without a type")
    action_id = element.get("action_id")
    if action_id is not None:
        if not isinstance(action_id, str) or len(action_id) > ACTION_ID:
            raise BlockError(f"{path}/action_id", "invalid action_id")
        if action_id in action_ids:
            raise BlockError(f"{path}/action_id", "duplicate action_id")
        action_ids.add(action_id)
    kind = element["type"]
    if kind == "button":
        text = element.get("text") or {}
        if text.get("type") != "plain_text":
            raise BlockError(f"{path}/text", "a button's text must be plain_text")
        _check_text(text, f"{path}/text", BUTTON_TEXT)
        if len(str(element.get("value") or "")) > BUTTON_VALUE:
            raise BlockError(f"{path}/value", f"must be less than {BUTTON_VALUE + 1} characters")
    elif kind in ("static_select", "checkboxes", "radio_buttons"):
        options = element.get("options")
        limit = SELECT_OPTIONS if kind == "static_select" else CHECKBOX_OPTIONS
        if not isinstance(options, list) or not options or len(options) > limit:
            raise BlockError(f"{path}/options", f"must contain 1 to {limit} items")
        for number, option in enumerate(options):
            _check_text(option.get("text"), f"{path}/options/{number}/text", OPTION_TEXT)
            if len(str(option.get("value") or "")) > OPTION_VALUE:
                raise BlockError(f"{path}/options/{number}/value", "too long")
