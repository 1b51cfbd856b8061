"""Which bot scopes Mobilize needs, written down once.

Three tables: `USES` maps each Web API method, event and slash command the bot uses to the
bot scope Slack requires for it (Slack's method reference; `../shared/PLATFORM-FACTS.md` has
the same table); `FEATURES` lists which of those each feature uses; `configured_uses()` says
which features a configuration switches on (the support channel, the admin group, the
audiences of the plan, survey segments). Then::

    needed = needed_scopes(configured_uses(support_channel="C0123", audiences=[...]))
    needed["users:read"]   # ["announcement go-live (to: everyone)", ...]: why it is needed
    all_scopes()           # what every feature together needs: slack-manifest.yml asks for
                           # exactly this (tests/test_doctor.py checks it)

Some methods need a scope that depends on the conversation: `channels:` for a public channel,
`groups:` for a private one, `im:` for a direct message. A use written with `{type}` takes
the family of the conversation it is used on (`conversation_type()`).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

PUBLIC, PRIVATE, IM = "channels", "groups", "im"  # scope families by conversation type

# Every Web API method ("chat.postMessage"), event ("event:app_mention"), slash command
# ("command:/ask") and answer field ("users.list:email") the bot uses → the bot scope it needs
# (None: none). "{type}" is the conversation's family: channels, groups or im.
USES: dict[str, str | None] = {
    "auth.test": None,
    "chat.postMessage": "chat:write",
    "chat.postEphemeral": "chat:write",
    "chat.update": "chat:write",
    "chat.delete": "chat:write",
    "chat.getPermalink": None,
    "conversations.open": "im:write",
    "conversations.history": "{type}:history",
    "conversations.info": "{type}:read",
    "conversations.members": "{type}:read",
    "users.list": "users:read",
    "users.info": "users:read",
    "users.lookupByEmail": "users:read.email",
    # users.list / users.info answers carry profile.email only with users:read.email
    "users.list:email": "users:read.email",
    "usergroups.users.list": "usergroups:read",
    "views.open": None,
    "views.publish": None,
    "files.getUploadURLExternal": "files:write",
    "files.completeUploadExternal": "files:write",
    "event:app_home_opened": None,
    "event:app_mention": "app_mentions:read",
    "event:message.{type}": "{type}:history",  # message.channels / .groups / .im
    "command:/ask": "commands",
}


@dataclass(frozen=True)
class Feature:
    """Something the bot does, and the methods, events and commands it takes. `types`: the
    conversation families its `{type}` uses can act on (empty: it has none)."""

    what: str
    uses: tuple[str, ...]
    types: tuple[str, ...] = ()


FEATURES: dict[str, Feature] = {
    "dm_questions": Feature(
        "questions in the app's DM", ("event:message.{type}", "chat.postMessage"), (IM,)
    ),
    "mentions": Feature(
        "@Mobilize questions in channels (answered in the thread)",
        ("event:app_mention", "chat.postMessage"),
    ),
    "ask_command": Feature("the /ask command", ("command:/ask",)),
    "home": Feature("the App Home", ("event:app_home_opened", "views.publish")),
    "buttons": Feature(
        "buttons, menus and the survey comment form",
        ("chat.update", "chat.postEphemeral", "views.open", "chat.getPermalink"),
    ),
    "direct_messages": Feature(
        "messages by DM (announcements, survey invitations, support replies, reports), "
        "found again after a crash",
        (
            "chat.postMessage",
            "chat.update",
            "chat.delete",
            "conversations.open",
            "conversations.history",
        ),
        (IM,),
    ),
    "support": Feature(
        "the support channel: tickets, and supporters' replies in their threads",
        ("chat.postMessage", "chat.getPermalink", "event:message.{type}"),
        (PUBLIC, PRIVATE),
    ),
    "membership_check": Feature(
        "mobilize doctor: checking the bot is in the channel",
        ("conversations.info",),
        (PUBLIC, PRIVATE),
    ),
    "results_chart": Feature(
        "the chart image in a survey owner's results DM",
        ("files.getUploadURLExternal", "files.completeUploadExternal"),
    ),
    "admin_group": Feature("admins from MOBILIZE_ADMIN_GROUP", ("usergroups.users.list",)),
    "everyone": Feature("audience everyone", ("users.list",)),
    "users": Feature("audience users:", ("users.info", "users.list")),
    "emails": Feature(
        "audience emails:", ("users.lookupByEmail", "users.list", "users.list:email")
    ),
    "group": Feature("audience group:", ("usergroups.users.list", "users.info", "users.list")),
    "members": Feature(
        "audience members:",
        ("conversations.members", "users.info", "users.list"),
        (PUBLIC, PRIVATE),
    ),
    "channel": Feature("audience channel: (one post in the channel)", ("chat.postMessage",)),
    "segment_channel": Feature(
        "survey segment by channel", ("conversations.members",), (PUBLIC, PRIVATE)
    ),
    "segment_group": Feature("survey segment by user group", ("usergroups.users.list",)),
}

# Features every configuration has.
ALWAYS = (
    "dm_questions",
    "mentions",
    "ask_command",
    "home",
    "buttons",
    "direct_messages",
    "results_chart",
)


@dataclass(frozen=True)
class Use:
    """One feature switched on: `type` is the conversation family its `{type}` uses act on,
    `where` says what in the configuration switches it on."""

    feature: str
    type: str | None = None
    where: str = ""

    @property
    def why(self) -> str:
        what = FEATURES[self.feature].what
        if self.where and self.feature in AUDIENCE_FEATURES.values():
            return self.where  # "announcement go-live (to: everyone)" says it all
        return f"{self.where}: {what}" if self.where else what


def conversation_type(channel: str, private: bool | None = None) -> str:
    """The scope family of a conversation: `private` when known, else guessed from the id
    (D… a DM, G… a private channel, C… public; newer private channels have C… ids too)."""
    if private is not None:
        return PRIVATE if private else PUBLIC
    if channel[:1] == "D":
        return IM
    return PRIVATE if channel[:1] == "G" else PUBLIC


def scopes_of(use: Use) -> set[str]:
    """The bot scopes one feature use needs."""
    found: set[str] = set()
    for item in FEATURES[use.feature].uses:
        scope = USES[item]
        if scope is None:
            continue
        if "{type}" in item or "{type}" in scope:
            if use.type is None:
                raise ValueError(f"{use.feature}: {item} needs a conversation type")
            scope = scope.format(type=use.type)
        found.add(scope)
    return found


AUDIENCE_FEATURES = {
    "everyone": "everyone",
    "everyone+guests": "everyone",
    "users": "users",
    "emails": "emails",
    "group": "group",
    "members": "members",
    "channel": "channel",
}


def audience_uses(
    audience: str, where: str = "", private: Collection[str] = frozenset()
) -> list[Use]:
    """The features one audience (in its normal form: `everyone`, `channel:C…`, …) takes."""
    kind, _, arg = audience.partition(":")
    feature = AUDIENCE_FEATURES.get(kind)
    if feature is None:
        return []
    label = f"{where} (to: {audience})" if where else f"to: {audience}"
    if feature == "members":
        return [Use("members", conversation_type(arg, _known(arg, private)), label)]
    if feature == "channel":
        return [
            Use("channel", None, label),
            Use("membership_check", conversation_type(arg, _known(arg, private)), label),
        ]
    return [Use(feature, None, label)]


def _known(channel: str, private: Collection[str]) -> bool | None:
    return True if channel in private else None


def configured_uses(
    *,
    support_channel: str = "",
    admin_group: str = "",
    audiences: Iterable[tuple[str, str]] = (),
    segments: Iterable[tuple[str, str, str]] = (),
    private: Collection[str] = frozenset(),
) -> list[Use]:
    """Every feature a configuration switches on.

    `audiences`: (where, audience) pairs, e.g. ("announcement go-live", "group:S0123");
    `segments`: (where, by, channel or group id) for survey segments by channel or group;
    `private`: channel ids known to be private (from conversations.info), so that C… ids of
    private channels count as private.
    """
    uses = [Use(feature, _only_type(feature)) for feature in ALWAYS]
    if support_channel:
        kind = conversation_type(support_channel, _known(support_channel, private))
        where = f"MOBILIZE_SUPPORT_CHANNEL {support_channel}"
        uses += [Use("support", kind, where), Use("membership_check", kind, where)]
    if admin_group:
        uses.append(Use("admin_group", None, f"MOBILIZE_ADMIN_GROUP {admin_group}"))
    for where, audience in audiences:
        uses += audience_uses(audience, where, private)
    for where, by, target in segments:
        if by == "channel":
            kind = conversation_type(target, _known(target, private))
            uses.append(Use("segment_channel", kind, f"{where} ({target})"))
        elif by == "group":
            uses.append(Use("segment_group", None, f"{where} ({target})"))
    return uses


def needed_scopes(uses: Iterable[Use]) -> dict[str, list[str]]:
    """Each needed scope → why (one line per feature use, first seen first), sorted by scope."""
    found: dict[str, dict[str, None]] = {}
    for use in uses:
        for scope in scopes_of(use):
            found.setdefault(scope, {})[use.why] = None
    return {scope: list(found[scope]) for scope in sorted(found)}


def _only_type(feature: str) -> str | None:
    types = FEATURES[feature].types
    return types[0] if len(types) == 1 else None


def _every_use(feature: str) -> list[Use]:
    """The feature on each conversation type it can act on."""
    return [Use(feature, kind) for kind in FEATURES[feature].types or (None,)]


def features_needing(scope: str) -> list[str]:
    """What each feature that can need `scope` does, in `FEATURES` order."""
    return [
        feature.what
        for key, feature in FEATURES.items()
        if any(scope in scopes_of(use) for use in _every_use(key))
    ]


def all_scopes() -> frozenset[str]:
    """What every feature needs, on every conversation type it can act on: the scopes
    `slack-manifest.yml` asks for."""
    return frozenset(needed_scopes(use for feature in FEATURES for use in _every_use(feature)))
