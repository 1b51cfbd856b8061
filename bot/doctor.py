"""`mobilize doctor`: check a Slack and a Microsoft Teams installation and say what to click or
type to fix them.

`diagnose(settings)` asks Slack (read methods only; nothing is posted and no WebSocket is
opened) and, when `TEAMS_APP_ID` is set, Microsoft (tokens, metadata and one Bot Connector
read; nothing is posted) and returns a `Report`: one `Check` per thing looked at, each `ok`,
`fail`, `warn` or `skip`, with a fix for every problem. What it checks in Slack (skipped when
only Teams is configured):

- the bot token (`auth.test`: `invalid_auth`, a user or app-level token in its place);
- the token's scopes (the `x-oauth-scopes` header of `auth.test`) against what the
  configuration needs (`bot.channels.slack.scopes`): the support channel, the admin group,
  the audiences of the announcement plan and of scheduled surveys, survey segments;
- the support channel and each `channel:` audience: the bot is in it (`conversations.info`);
- each `members:` audience and survey segment channel: the bot can list its members;
- the admin group and each `group:` audience or segment: the bot can read its members;
- the signing secret's form (32 hex characters; Slack cannot confirm it until it signs a
  request) and the app-level token (`apps.connections.open`, the WebSocket left unopened).

In Teams:

- the settings: app id, password and tenant present and well-formed (GUIDs, a secret's value
  rather than its id), the support channel id;
- the bot's own token (client credentials, Bot Framework scope): a refusal quotes Entra's code
  (`invalid_client`, `AADSTS7000215`…) with what to do about it;
- the OpenID metadata and the signing keys next to it (what incoming requests are checked
  with), a key endorsed for `msteams` among them;
- a Graph token and the application permissions in its `roles` claim (read, not verified: it
  is our own token) against `bot.channels.teams.directory.GRAPH_PERMISSIONS`;
- the support channel: the bot has heard from it (a `teams_conversation` row), or it is a
  channel of a team the bot was added to (the Bot Connector's channel list of that team).

`render(report, console)` prints the checklist; `report.as_json()` is for scripts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from rich.console import Console
from rich.markup import escape
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError

from bot.channels.slack.chat import make_client, slack_error_code
from bot.channels.slack.scopes import (
    all_scopes,
    configured_uses,
    features_needing,
    needed_scopes,
)
from bot.config import Settings
from bot.core.content import ContentError

OK, FAIL, WARN, SKIP = "ok", "fail", "warn", "skip"

BOT_TOKEN = "Bot token"
SCOPES = "Scopes"
SUPPORT = "Support channel"
PLAN = "Channels and groups in the plan"
ADMIN = "Admin group"
SEGMENTS = "Survey segments"
SECRET = "Signing secret"
APP_TOKEN = "App token (Socket Mode)"
CONTENT = "Content"
TEAMS = "Teams settings"
TEAMS_TOKEN = "Teams bot token"
TEAMS_AUTH = "Teams incoming requests"
GRAPH = "Microsoft Graph permissions"
TEAMS_SUPPORT = "Teams support channel"
SECTIONS = (
    BOT_TOKEN,
    SCOPES,
    SUPPORT,
    PLAN,
    ADMIN,
    SEGMENTS,
    SECRET,
    APP_TOKEN,
    TEAMS,
    TEAMS_TOKEN,
    TEAMS_AUTH,
    GRAPH,
    TEAMS_SUPPORT,
    CONTENT,
)
SLACK_SECTIONS = (BOT_TOKEN, SCOPES, SUPPORT, PLAN, ADMIN, SEGMENTS, SECRET, APP_TOKEN)

APPS_PAGE = "https://api.slack.com/apps"
SCOPE_FIX = (
    f"{APPS_PAGE} → your app → OAuth & Permissions → Scopes → Bot Token Scopes → "
    "Add an OAuth Scope → {scope}; then Reinstall to Workspace (top of that page). "
    "Or paste the current slack-manifest.yml under App Manifest, save, and reinstall."
)
CHANNEL_ID_FIX = "open the channel, click its name: the Channel ID (C…) is at the bottom of About"
BOT_TOKEN_FIX = (
    f"{APPS_PAGE} → your app → OAuth & Permissions → copy the Bot User OAuth Token (xoxb-…) "
    "into SLACK_BOT_TOKEN (env or .env); install the app to the workspace first if there is none"
)
APP_TOKEN_FIX = (
    f"{APPS_PAGE} → your app → Basic Information → App-Level Tokens → Generate Token and Scopes, "
    "add the scope connections:write, and put the xapp-… token in SLACK_APP_TOKEN "
    "(Socket Mode must be on: Settings → Socket Mode)"
)
SECRET_FIX = (
    f"{APPS_PAGE} → your app → Basic Information → App Credentials → Signing Secret → Show, "
    "and copy it into SLACK_SIGNING_SECRET (env or .env)"
)
SIGNING_SECRET = re.compile(r"[0-9a-f]{32}")
# Slack's codes for a token that is wrong, revoked or from a removed app.
BAD_TOKEN = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "not_allowed_token_type",
    }
)
MAX_REASONS = 3

# --- Teams
# What each Microsoft Graph application permission the bot uses is for. The set itself is
# `bot.channels.teams.directory.GRAPH_PERMISSIONS`, imported only when Teams is configured
# (it brings the Teams SDK with it).
GRAPH_PURPOSES: dict[str, str] = {
    "User.Read.All": "finding people for announcement and survey audiences (everyone, users:, "
    "emails:) and their names",
    "GroupMember.Read.All": "group: audiences and survey segments by group",
    "TeamsAppInstallation.ReadWriteSelfForUser.All": "installing the app for people who do "
    "not have it yet, so the bot can write to them first",
}
PORTAL = "https://portal.azure.com"
REGISTRATION = f"{PORTAL} → Microsoft Entra ID → App registrations → your bot's app"
TEAMS_SETTINGS_FIX = {
    "TEAMS_APP_ID": f"{REGISTRATION} → Overview → Application (client) ID",
    "TEAMS_APP_PASSWORD": f"{REGISTRATION} → Certificates & secrets → New client secret; copy "
    "its Value (shown once), not its Secret ID",
    "TEAMS_TENANT_ID": f"{PORTAL} → Microsoft Entra ID → Overview → Tenant ID",
}
SECRET_FIX_TEAMS = (
    f"{REGISTRATION} → Certificates & secrets → New client secret, and put its Value (not the "
    "Secret ID) in TEAMS_APP_PASSWORD (env or .env)"
)
APP_TENANT_FIX = (
    "TEAMS_APP_ID must be the Application (client) ID of an app registered in the tenant "
    f"TEAMS_TENANT_ID ({REGISTRATION} → Overview shows both)"
)
# Entra's AADSTS codes for a token request, and what to do about each.
AADSTS_FIX = {
    "7000215": SECRET_FIX_TEAMS,  # invalid client secret
    "7000216": SECRET_FIX_TEAMS,  # no secret sent
    "7000222": SECRET_FIX_TEAMS,  # the secret expired
    "700016": APP_TENANT_FIX,  # app not found in the directory
    "90002": f"TEAMS_TENANT_ID: put the Tenant ID there ({PORTAL} → Microsoft Entra ID → Overview)",
}
GRAPH_FIX = (
    f"{REGISTRATION} → API permissions → Add a permission → Microsoft Graph → Application "
    "permissions → {permission}; then Grant admin consent for your organisation (a Global or "
    "Privileged Role Administrator must click it)"
)
METADATA_FIX = (
    "the bot must reach the Bot Framework's OpenID metadata and keys over HTTPS: allow "
    "login.botframework.com through the proxy or firewall; leave TEAMS_OPENID_METADATA_URL "
    "unset outside tests"
)
ADD_TO_TEAM_FIX = (
    "in Teams, add Mobilize to the team that holds the support channel (Apps → Manage your apps "
    "→ Mobilize → Add to a team, or the team's ⋯ → Manage team → Apps → Get more apps), then "
    "@mention Mobilize once in the support channel; and check the id (channel → ⋯ → Get link to "
    "channel: the part after /channel/, URL-decoded)"
)
TEAMS_CHANNEL = re.compile(r"19:[^;\s]+@thread\.[a-z0-9]+")
GUID = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


@dataclass(frozen=True)
class Check:
    """One thing checked: `status` is ok, fail, warn or skip; `fix` says what to do."""

    section: str
    subject: str
    status: str
    detail: str
    fix: str = ""


@dataclass
class Report:
    """What `diagnose()` found. `ok` when no check failed (warnings are allowed)."""

    checks: list[Check] = field(default_factory=list)
    workspace: dict[str, str] = field(default_factory=dict)
    granted: list[str] | None = None
    needed: dict[str, list[str]] = field(default_factory=dict)
    teams: dict[str, Any] | None = None  # None when Teams is not configured

    @property
    def problems(self) -> list[Check]:
        return [check for check in self.checks if check.status == FAIL]

    @property
    def warnings(self) -> list[Check]:
        return [check for check in self.checks if check.status == WARN]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        missing = (
            [scope for scope in self.needed if scope not in self.granted]
            if self.granted is not None
            else None
        )
        return {
            "ok": self.ok,
            "problems": len(self.problems),
            "warnings": len(self.warnings),
            "workspace": self.workspace,
            "scopes": {"granted": self.granted, "needed": self.needed, "missing": missing},
            "teams": self.teams,
            "checks": [
                {
                    "section": c.section,
                    "subject": c.subject,
                    "status": c.status,
                    "detail": c.detail,
                    "fix": c.fix,
                }
                for c in sorted(self.checks, key=_order)
            ],
        }


def _order(check: Check) -> int:
    return SECTIONS.index(check.section)


# ---------------------------------------------------------------------------- Slack calls


@dataclass(frozen=True)
class _Answer:
    """A Web API answer: its data and (lower-cased) headers, or Slack's error code."""

    data: dict[str, Any]
    headers: dict[str, str]
    error: str | None = None

    @property
    def needed(self) -> str:
        """The scope a `missing_scope` answer names."""
        return str(self.data.get("needed") or "")


def _ask(call: Callable[..., Any], **kwargs: Any) -> _Answer:
    """Call a typed WebClient method; errors come back as codes, never raised."""
    try:
        response = call(**kwargs)
    except SlackApiError as exc:
        answer = exc.response
        data = answer.data if answer is not None and isinstance(answer.data, dict) else {}
        headers = _lower(answer.headers) if answer is not None else {}
        return _Answer(dict(data), headers, slack_error_code(exc))
    except (SlackClientError, OSError) as exc:
        return _Answer({"reason": type(exc).__name__}, {}, "connection_error")
    data = response.data if isinstance(response.data, dict) else {}
    return _Answer(dict(data), _lower(response.headers))


def _lower(headers: Any) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in dict(headers or {}).items():
        out[str(name).lower()] = str(value[0] if isinstance(value, list) else value)
    return out


def _failure(answer: _Answer, method: str, url: str) -> str:
    """A Slack failure in words."""
    if answer.error == "connection_error":
        return f"could not reach Slack at {url} ({answer.data.get('reason', 'no answer')})"
    if answer.error == "missing_scope":
        return f"{method} needs the scope {answer.needed or '?'}, which the token lacks"
    return f"{method} failed: {answer.error}"


# ---------------------------------------------------------------------------- diagnosis


@dataclass(frozen=True)
class _Plan:
    """What the content asks of Slack: audiences, channels to post in or list, groups."""

    audiences: list[tuple[str, str]]  # (where, audience)
    segments: list[tuple[str, str, str]]  # (where, by, id)
    errors: list[str]


def _load_plan(settings: Settings, now: datetime) -> _Plan:
    """The announcement plan (as `mobilize announce plan` loads it) and the survey
    definitions and schedules."""
    from bot.core.announcements.announcer import load_announcements
    from bot.core.surveys.definitions import load_survey_schedules, load_surveys

    content, errors = load_announcements(
        settings.content_dir, now=now, default_timezone=settings.timezone
    )
    surveys, survey_errors = load_surveys(settings.content_dir)
    schedules, schedule_errors = load_survey_schedules(
        settings.content_dir, content.rollout, surveys
    )
    audiences: list[tuple[str, str]] = []
    for announcement in content.plan.announcements:
        if announcement.enabled:
            for part in announcement.audience:
                audiences.append((f"announcement {announcement.id}", part))
    for schedule in schedules:
        for part in schedule.audience:
            audiences.append((f"survey {schedule.survey}", part))
    segments: list[tuple[str, str, str]] = []
    for survey in surveys.values():
        for segment in survey.segments:
            if segment.by in ("channel", "group"):
                for label, target in segment.values.items():
                    where = f"survey {survey.id} segment {segment.id} {label!r}"
                    segments.append((where, segment.by, target))
    every = errors + survey_errors + schedule_errors
    return _Plan(audiences, segments, [_shown(error, settings.content_dir) for error in every])


def _shown(error: ContentError, content_dir: Path) -> str:
    """`file:line: reason`, the file relative to the content folder when inside it."""
    try:
        path = error.path.resolve().relative_to(content_dir.resolve())
    except ValueError:
        path = error.path
    return f"{path}:{error.line}: {error.reason}"


class _Doctor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.url = settings.slack_api_url
        self.report = Report()
        self.client: WebClient = make_client(
            token=settings.slack_bot_token,
            base_url=self.url,
            max_retries=settings.slack_max_retries,
        )
        self.handle = "@Mobilize"
        self.private: set[str] = set()
        self._info: dict[str, _Answer] = {}
        self._members: dict[str, _Answer] = {}
        self._groups: dict[str, _Answer] = {}

    def add(self, section: str, subject: str, status: str, detail: str, fix: str = "") -> None:
        self.report.checks.append(Check(section, subject, status, detail, fix))

    def invite(self, name: str) -> str:
        return f"type /invite {self.handle} in {name}"

    # --- tokens and secret -------------------------------------------------------------

    def bot_token(self) -> bool:
        """auth.test; True when the bot token works (and the granted scopes are known)."""
        token = self.settings.slack_bot_token.strip()
        subject = "SLACK_BOT_TOKEN"
        if not token:
            self.add(BOT_TOKEN, subject, FAIL, "not set", BOT_TOKEN_FIX)
            return False
        if token != self.settings.slack_bot_token:
            self.add(BOT_TOKEN, subject, FAIL, "has spaces around it", BOT_TOKEN_FIX)
            return False
        wrong = {
            "xoxp-": "a user token (xoxp-…), not the bot token",
            "xapp-": "an app-level token (xapp-…): it belongs in SLACK_APP_TOKEN",
        }
        for prefix, what in wrong.items():
            if token.startswith(prefix):
                self.add(BOT_TOKEN, subject, FAIL, f"this is {what}", BOT_TOKEN_FIX)
                return False
        answer = _ask(self.client.auth_test)
        if answer.error in BAD_TOKEN:
            self.add(
                BOT_TOKEN,
                subject,
                FAIL,
                f"Slack refused the token ({answer.error}): it is wrong, or was revoked "
                "(e.g. the app was uninstalled)",
                BOT_TOKEN_FIX,
            )
            return False
        if answer.error:
            fix = f"check the network and SLACK_API_URL ({self.url})"
            self.add(BOT_TOKEN, subject, FAIL, _failure(answer, "auth.test", self.url), fix)
            return False
        data = answer.data
        team, user = str(data.get("team") or "?"), str(data.get("user") or "")
        self.report.workspace = {
            "team": team,
            "team_id": str(data.get("team_id") or ""),
            "url": str(data.get("url") or ""),
            "bot_user": user,
            "bot_user_id": str(data.get("user_id") or ""),
        }
        if not data.get("bot_id"):
            self.add(
                BOT_TOKEN, subject, FAIL, f"a token of @{user}, not of a bot user", BOT_TOKEN_FIX
            )
            return False
        if user:
            self.handle = f"@{user}"
        self.add(BOT_TOKEN, subject, OK, f"works: bot {self.handle} in {team}")
        header = answer.headers.get("x-oauth-scopes")
        if header is None:
            self.add(
                SCOPES,
                "granted scopes",
                WARN,
                "Slack did not say which scopes the token has (no x-oauth-scopes header); "
                "scopes not checked",
            )
        else:
            self.report.granted = sorted(s.strip() for s in header.split(",") if s.strip())
        return True

    def signing_secret(self) -> None:
        raw = self.settings.slack_signing_secret
        subject = "SLACK_SIGNING_SECRET"
        secret = raw.strip()
        if not secret:
            if self.settings.slack_app_token:
                self.add(
                    SECRET,
                    subject,
                    WARN,
                    "not set: fine in Socket Mode, but `mobilize run --http` needs it",
                    SECRET_FIX,
                )
            else:
                self.add(
                    SECRET,
                    subject,
                    FAIL,
                    "not set, and without SLACK_APP_TOKEN the bot runs in HTTP mode, "
                    "where every request from Slack is checked with it",
                    SECRET_FIX,
                )
            return
        if secret != raw or secret[:1] in "\"'":
            why = "has spaces or quotes around it"
        elif secret.startswith(("xoxb-", "xoxp-", "xapp-")):
            why = "is a token, not the signing secret"
        elif re.fullmatch(r"[A-Za-z0-9]{24}", secret):
            why = "looks like the deprecated Verification Token (24 characters)"
        elif not SIGNING_SECRET.fullmatch(secret.lower()):
            why = f"is {len(secret)} characters; a signing secret is 32 hexadecimal characters"
        else:
            self.add(
                SECRET,
                subject,
                OK,
                "32 hexadecimal characters (Slack confirms it only when it signs a request)",
            )
            return
        self.add(SECRET, subject, FAIL, f"malformed: it {why}", SECRET_FIX)

    def app_token(self) -> None:
        token = self.settings.slack_app_token.strip()
        subject = "SLACK_APP_TOKEN"
        if not token:
            self.add(
                APP_TOKEN,
                subject,
                SKIP,
                "not set: `mobilize run` uses HTTP mode (needs a public URL and the signing "
                "secret)",
            )
            return
        if token != self.settings.slack_app_token:
            self.add(APP_TOKEN, subject, FAIL, "has spaces around it", APP_TOKEN_FIX)
            return
        if not token.startswith("xapp-"):
            what = "a bot token (xoxb-…)" if token.startswith("xoxb-") else "not an xapp-… token"
            self.add(
                APP_TOKEN,
                subject,
                FAIL,
                f"{what}: Socket Mode needs an app-level token",
                APP_TOKEN_FIX,
            )
            return
        app_client = make_client(
            token="", base_url=self.url, max_retries=self.settings.slack_max_retries
        )
        answer = _ask(app_client.apps_connections_open, app_token=token)
        if answer.error is None and answer.data.get("url"):
            self.add(
                APP_TOKEN,
                subject,
                OK,
                "works: apps.connections.open gave a Socket Mode URL (not opened)",
            )
        elif answer.error in BAD_TOKEN:
            self.add(
                APP_TOKEN,
                subject,
                FAIL,
                f"Slack refused the app-level token ({answer.error}): it is wrong or revoked",
                APP_TOKEN_FIX,
            )
        elif answer.error == "missing_scope":
            self.add(
                APP_TOKEN,
                subject,
                FAIL,
                "the app-level token lacks connections:write",
                APP_TOKEN_FIX,
            )
        else:
            detail = _failure(answer, "apps.connections.open", self.url)
            fix = (
                f"check the network and SLACK_API_URL ({self.url})"
                if answer.error == "connection_error"
                else APP_TOKEN_FIX
            )
            self.add(APP_TOKEN, subject, FAIL, detail, fix)

    # --- channels and groups -----------------------------------------------------------

    def info(self, channel: str) -> _Answer:
        if channel not in self._info:
            answer = _ask(self.client.conversations_info, channel=channel)
            self._info[channel] = answer
            if answer.error is None and (answer.data.get("channel") or {}).get("is_private"):
                self.private.add(channel)
        return self._info[channel]

    def name(self, channel: str) -> str:
        answer = self.info(channel)
        found = (answer.data.get("channel") or {}).get("name") if answer.error is None else None
        return f"#{found}" if found else channel

    def can_post(self, section: str, channel: str, used_by: list[str]) -> None:
        """The bot is in `channel` (and can post there)."""
        answer = self.info(channel)
        uses = _uses(used_by)
        if answer.error == "missing_scope":
            self.add(
                section,
                channel,
                SKIP,
                f"not checked whether the bot is in it: the token lacks {answer.needed} "
                f"(see Scopes){uses}",
            )
            return
        if answer.error == "channel_not_found":
            self.add(
                section,
                channel,
                FAIL,
                f"the bot sees no channel {channel}{uses}",
                f"if it is a private channel, {self.invite('it')}; otherwise check the id "
                f"({CHANNEL_ID_FIX})",
            )
            return
        if answer.error:
            self.add(section, channel, FAIL, _failure(answer, "conversations.info", self.url))
            return
        info = answer.data.get("channel") or {}
        name = f"#{info.get('name') or channel}"
        subject = f"{name} ({channel})"
        granted = set(self.report.granted or ())
        if info.get("is_archived"):
            self.add(
                section,
                subject,
                FAIL,
                f"{name} is archived: nothing can be posted there{uses}",
                f"unarchive {name}, or use another channel",
            )
        elif info.get("is_member"):
            self.add(section, subject, OK, f"the bot is in {name}{uses}")
        elif not info.get("is_private") and "chat:write.public" in granted:
            self.add(
                section,
                subject,
                OK,
                f"the bot is not in {name} but may post there (chat:write.public){uses}",
            )
        else:
            self.add(section, subject, FAIL, f"the bot is not in {name}{uses}", self.invite(name))

    def can_list(self, section: str, channel: str, used_by: list[str]) -> None:
        """The bot can list `channel`'s members."""
        if channel not in self._members:
            self._members[channel] = _ask(
                self.client.conversations_members, channel=channel, limit=1
            )
        answer = self._members[channel]
        uses = _uses(used_by)
        if answer.error is None:
            name = self.name(channel)
            subject = f"{name} ({channel})" if name != channel else channel
            self.add(section, subject, OK, f"the bot can list the members of {name}{uses}")
        elif answer.error == "missing_scope":
            self.add(
                section,
                channel,
                FAIL,
                f"cannot list its members: the token lacks {answer.needed}{uses}",
                f"add {answer.needed} (see Scopes)",
            )
        elif answer.error == "channel_not_found":
            self.add(
                section,
                channel,
                FAIL,
                f"cannot list its members: the bot sees no channel {channel}{uses}",
                f"if it is a private channel, {self.invite('it')}; otherwise check the id "
                f"({CHANNEL_ID_FIX})",
            )
        else:
            self.add(
                section, channel, FAIL, _failure(answer, "conversations.members", self.url) + uses
            )

    def can_read_group(self, section: str, group: str, used_by: list[str]) -> None:
        """The bot can read the members of user group `group`."""
        if group not in self._groups:
            self._groups[group] = _ask(self.client.usergroups_users_list, usergroup=group)
        answer = self._groups[group]
        uses = _uses(used_by)
        if answer.error is None:
            count = len(answer.data.get("users") or [])
            if count == 0 and section == ADMIN:
                self.add(
                    section,
                    group,
                    WARN,
                    "the user group has no members (or is disabled): nobody is an admin through it",
                    "add people to the group in Slack, or use MOBILIZE_ADMINS",
                )
            else:
                people = "person" if count == 1 else "people"
                self.add(section, group, OK, f"the bot can read it: {count} {people}{uses}")
        elif answer.error == "missing_scope":
            self.add(
                section,
                group,
                FAIL,
                f"cannot read its members: the token lacks {answer.needed}{uses}",
                f"add {answer.needed} (see Scopes)",
            )
        elif answer.error == "no_such_subteam":
            self.add(
                section,
                group,
                FAIL,
                f"no user group {group} in this workspace{uses}",
                "check the id (S…): in Slack, People → User groups → the group; "
                "the id is in its link",
            )
        else:
            self.add(
                section, group, FAIL, _failure(answer, "usergroups.users.list", self.url) + uses
            )

    # --- the whole configuration -------------------------------------------------------

    def support_channel(self) -> None:
        channel = self.settings.support_channel.strip()
        if not channel:
            self.add(
                SUPPORT,
                "MOBILIZE_SUPPORT_CHANNEL",
                WARN,
                "not set: “Ask a person” has nowhere to post questions",
                f"create a channel, {self.invite('it')}, and put its id in "
                f"MOBILIZE_SUPPORT_CHANNEL ({CHANNEL_ID_FIX})",
            )
            return
        if not re.fullmatch(r"[CG][A-Z0-9]+", channel):
            self.add(
                SUPPORT,
                "MOBILIZE_SUPPORT_CHANNEL",
                FAIL,
                f"{channel!r} is not a channel id (C…): names change, ids do not",
                CHANNEL_ID_FIX,
            )
            return
        self.can_post(SUPPORT, channel, [])

    def admin_group(self) -> None:
        group = self.settings.admin_group.strip()
        if not group:
            self.add(ADMIN, "MOBILIZE_ADMIN_GROUP", SKIP, "not set: admins are MOBILIZE_ADMINS")
            return
        self.can_read_group(ADMIN, group, [])

    def plan(self, plan: _Plan) -> None:
        posts: dict[str, list[str]] = {}
        lists: dict[str, list[str]] = {}
        groups: dict[str, list[str]] = {}
        for where, audience in plan.audiences:
            kind, _, arg = audience.partition(":")
            bucket = {"channel": posts, "members": lists, "group": groups}.get(kind)
            if bucket is not None:
                bucket.setdefault(arg, []).append(where)
        for channel, used_by in posts.items():
            self.can_post(PLAN, channel, used_by)
        for channel, used_by in lists.items():
            self.can_list(PLAN, channel, used_by)
        for group, used_by in groups.items():
            self.can_read_group(PLAN, group, used_by)
        if not (posts or lists or groups):
            self.add(
                PLAN,
                "plan",
                SKIP,
                "no channel:, members: or group: audiences in the plan or survey schedules",
            )
        seg_channels: dict[str, list[str]] = {}
        seg_groups: dict[str, list[str]] = {}
        for where, by, target in plan.segments:
            (seg_channels if by == "channel" else seg_groups).setdefault(target, []).append(where)
        for channel, used_by in seg_channels.items():
            self.can_list(SEGMENTS, channel, used_by)
        for group, used_by in seg_groups.items():
            self.can_read_group(SEGMENTS, group, used_by)
        if not plan.segments:
            self.add(SEGMENTS, "surveys", SKIP, "no survey segments by channel or user group")

    def scopes(self, plan: _Plan) -> None:
        uses = configured_uses(
            support_channel=self.settings.support_channel.strip(),
            admin_group=self.settings.admin_group.strip(),
            audiences=plan.audiences,
            segments=plan.segments,
            private=self.private,
        )
        needed = needed_scopes(uses)
        self.report.needed = needed
        if self.report.granted is None:
            return
        granted = set(self.report.granted)
        missing = [scope for scope in needed if scope not in granted]
        for scope in missing:
            reasons = needed[scope]
            shown = "; ".join(reasons[:MAX_REASONS])
            if len(reasons) > MAX_REASONS:
                shown += f"; and {len(reasons) - MAX_REASONS} more"
            self.add(
                SCOPES,
                scope,
                FAIL,
                f"not granted; needed for {shown}",
                SCOPE_FIX.format(scope=scope),
            )
        if not missing:
            self.add(
                SCOPES,
                "needed scopes",
                OK,
                f"all {len(needed)} scopes this configuration needs are granted",
            )
        for scope in sorted(all_scopes() - set(needed) - granted):
            self.add(
                SCOPES,
                scope,
                WARN,
                "not granted; the current settings and plan do not need it, but these "
                f"would fail: {'; '.join(features_needing(scope))}",
                SCOPE_FIX.format(scope=scope),
            )
        unused = sorted(granted - all_scopes())
        if unused:
            self.add(
                SCOPES,
                ", ".join(unused),
                WARN,
                "granted but never used by the bot",
                f"{APPS_PAGE} → your app → OAuth & Permissions → Bot Token Scopes: remove "
                f"{', '.join(unused)} (or paste the current slack-manifest.yml), then reinstall",
            )


# ---------------------------------------------------------------------------- Teams


class _TeamsDoctor:
    """The Teams checks, added to the same report (see the module docstring)."""

    def __init__(self, settings: Settings, report: Report) -> None:
        self.settings = settings
        self.report = report
        self.tokens: Any = None  # a BotTokens once the settings are complete
        self.bot_token = ""
        from bot.channels.teams.directory import GRAPH_PERMISSIONS

        self.needed = sorted(GRAPH_PERMISSIONS)
        self.graph: dict[str, Any] = {"granted": None, "needed": self.needed, "missing": None}
        report.teams = {
            "app_id": settings.teams_app_id,
            "tenant_id": settings.teams_tenant_id,
            "graph": self.graph,
        }

    def add(self, section: str, subject: str, status: str, detail: str, fix: str = "") -> None:
        self.report.checks.append(Check(section, subject, status, detail, fix))

    def run(self) -> None:
        complete = self.check_settings()
        token_works = complete and self.check_bot_token()
        if not complete:
            self.add(TEAMS_TOKEN, "—", SKIP, "not checked: the Teams settings are incomplete")
        self.check_metadata()
        if token_works:
            self.check_graph()
        else:
            self.add(GRAPH, "—", SKIP, "not checked: the bot gets no token")
        self.check_support_channel(token_works)

    # --- settings ----------------------------------------------------------------------

    def check_settings(self) -> bool:
        """Each setting present and well-formed; True when a token can be asked for."""
        complete = True
        values = {
            "TEAMS_APP_ID": self.settings.teams_app_id,
            "TEAMS_TENANT_ID": self.settings.teams_tenant_id,
        }
        for name, raw in values.items():
            value = raw.strip()
            if not value:
                self.add(TEAMS, name, FAIL, "not set", TEAMS_SETTINGS_FIX[name])
                complete = False
            elif not GUID.fullmatch(value):
                self.add(TEAMS, name, FAIL, f"{value!r} is not a GUID", TEAMS_SETTINGS_FIX[name])
                complete = False
            else:
                self.add(TEAMS, name, OK, f"a GUID ({value})")
        raw = self.settings.teams_app_password
        password = raw.strip()
        subject = "TEAMS_APP_PASSWORD"
        if not password:
            self.add(TEAMS, subject, FAIL, "not set", TEAMS_SETTINGS_FIX[subject])
            complete = False
        elif password != raw or password[:1] in "\"'":
            self.add(
                TEAMS, subject, FAIL, "has spaces or quotes around it", TEAMS_SETTINGS_FIX[subject]
            )
            complete = False
        elif GUID.fullmatch(password):
            self.add(
                TEAMS,
                subject,
                WARN,
                "is a GUID: that looks like the client secret's Secret ID, not its Value",
                TEAMS_SETTINGS_FIX[subject],
            )
        else:
            self.add(TEAMS, subject, OK, f"set ({len(password)} characters)")
        return complete

    # --- the bot's token -----------------------------------------------------------------

    def check_bot_token(self) -> bool:
        """A Bot Framework token by client credentials; True when the endpoint gave one."""
        from bot.channels.teams.auth import BOT_SCOPE, BotTokens, TokenError

        url = self.settings.teams_token_endpoint
        self.tokens = BotTokens(
            app_id=self.settings.teams_app_id,
            app_password=self.settings.teams_app_password,
            token_url=url,
        )
        subject = "client credentials"
        try:
            self.bot_token = self.tokens(BOT_SCOPE)
        except TokenError as exc:
            detail, fix = _token_failure(str(exc), url)
            self.add(TEAMS_TOKEN, subject, FAIL, detail, fix)
            return False
        self.add(
            TEAMS_TOKEN,
            subject,
            OK,
            f"works: a Bot Framework token for app {self.settings.teams_app_id} from {url}",
        )
        return True

    # --- incoming requests ----------------------------------------------------------------

    def check_metadata(self) -> None:
        """The OpenID metadata and the signing keys the bot checks each request with."""
        from bot.channels.teams.auth import CHANNEL, keys_url

        url = self.settings.teams_openid_metadata_url
        document, error = _get_json(url)
        if error:
            self.add(TEAMS_AUTH, "OpenID metadata", FAIL, error, METADATA_FIX)
        elif not isinstance(document, dict) or not document.get("jwks_uri"):
            self.add(
                TEAMS_AUTH, "OpenID metadata", FAIL, f"{url} is not OpenID metadata (no jwks_uri)"
            )
        else:
            self.add(TEAMS_AUTH, "OpenID metadata", OK, f"read from {url}")
        keys_at = keys_url(url)
        keys, error = _get_json(keys_at)
        found = keys.get("keys") if isinstance(keys, dict) else None
        if error:
            self.add(TEAMS_AUTH, "signing keys", FAIL, error, METADATA_FIX)
        elif not isinstance(found, list) or not found:
            self.add(TEAMS_AUTH, "signing keys", FAIL, f"{keys_at} lists no keys", METADATA_FIX)
        else:
            endorsed = [
                key
                for key in found
                if isinstance(key, dict) and CHANNEL in (key.get("endorsements") or [])
            ]
            if endorsed:
                self.add(
                    TEAMS_AUTH,
                    "signing keys",
                    OK,
                    f"{len(found)} keys, {len(endorsed)} endorsed for {CHANNEL}: requests from "
                    "Teams can be authenticated",
                )
            else:
                self.add(
                    TEAMS_AUTH,
                    "signing keys",
                    FAIL,
                    f"none of the {len(found)} keys at {keys_at} is endorsed for {CHANNEL}: "
                    "every request from Teams would be refused",
                    METADATA_FIX,
                )

    # --- Graph ------------------------------------------------------------------------------

    def check_graph(self) -> None:
        """A Graph token, and the application permissions in its `roles` claim."""
        import jwt

        from bot.channels.teams.auth import GRAPH_SCOPE, TokenError

        try:
            token = self.tokens(GRAPH_SCOPE)
        except TokenError as exc:
            detail, fix = _token_failure(str(exc), self.settings.teams_token_endpoint)
            self.add(GRAPH, "Graph token", FAIL, detail, fix)
            return
        try:
            # Our own token, read to see what was granted: no signature to check here.
            claims = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError as exc:
            self.add(GRAPH, "Graph token", WARN, f"could not read the token's roles ({exc})")
            return
        roles = claims.get("roles") or []
        granted = sorted(str(role) for role in roles) if isinstance(roles, list) else []
        missing = [name for name in self.needed if name not in granted]
        self.graph.update(granted=granted, missing=missing)
        for name in missing:
            self.add(
                GRAPH,
                name,
                FAIL,
                f"not granted; needed for {GRAPH_PURPOSES.get(name, 'what the bot does in Teams')}",
                GRAPH_FIX.format(permission=name),
            )
        if not missing:
            self.add(
                GRAPH,
                "needed permissions",
                OK,
                f"all {len(self.needed)} application permissions the bot uses are granted: "
                f"{', '.join(self.needed)}",
            )

    # --- the support channel ------------------------------------------------------------------

    def check_support_channel(self, token_works: bool) -> None:
        channel = self.settings.teams_support_channel.strip()
        subject = "MOBILIZE_TEAMS_SUPPORT_CHANNEL"
        if not channel:
            self.add(
                TEAMS_SUPPORT,
                subject,
                WARN,
                "not set: “Ask a person” in Teams has nowhere to post questions",
                ADD_TO_TEAM_FIX.replace("; and check the id", "; put its id there"),
            )
            return
        if not TEAMS_CHANNEL.fullmatch(channel):
            self.add(
                TEAMS_SUPPORT,
                subject,
                FAIL,
                f"{channel!r} is not a Teams channel id (19:…@thread.tacv2)",
                "channel → ⋯ → Get link to channel: the id is the part after /channel/, "
                "URL-decoded",
            )
            return
        known = self._known(channel)
        if known is None:
            return
        place, teams = known
        if place is not None:
            name = f" ({place.name})" if place.name else ""
            self.add(
                TEAMS_SUPPORT,
                channel,
                OK,
                f"the bot has heard from this channel{name}: it is in the channel's team",
            )
            return
        if not teams:
            self.add(
                TEAMS_SUPPORT,
                channel,
                FAIL,
                "the bot has not been added to the channel's team: it has heard from no team "
                "at all",
                ADD_TO_TEAM_FIX,
            )
            return
        if not token_works:
            self.add(
                TEAMS_SUPPORT,
                channel,
                SKIP,
                f"not confirmed: the bot has not heard from this channel, and without a token it "
                f"cannot list the channels of the {len(teams)} team(s) it is in",
            )
            return
        seen: list[str] = []
        for team_id, service_url in teams:
            body, note = self._connector(service_url, f"v3/teams/{team_id}/conversations")
            listed = body.get("conversations") if isinstance(body, dict) else None
            names = {
                str(entry.get("id")): str(entry.get("name") or "General")
                for entry in listed or []
                if isinstance(entry, dict)
            }
            seen.append(f"{team_id}: {note or f'{len(names)} channels, not this one'}")
            if channel in names:
                details, _ = self._connector(service_url, f"v3/teams/{team_id}")
                team = details.get("name") if isinstance(details, dict) else None
                self.add(
                    TEAMS_SUPPORT,
                    channel,
                    OK,
                    f"{names[channel]}, a channel of the team {team or team_id}, which the "
                    "bot is in (it has not heard from the channel itself yet)",
                )
                return
        self.add(
            TEAMS_SUPPORT,
            channel,
            FAIL,
            "the bot does not know this channel: it has not been added to the channel's team, "
            f"or the id is wrong (teams it knows: {'; '.join(seen)})",
            ADD_TO_TEAM_FIX,
        )

    def _known(self, channel: str) -> tuple[Any, list[tuple[str, str]]] | None:
        """The channel's `teams_conversation` row (or None) and the teams the bot has heard
        from (id, service URL); None (with a failed check) when the database cannot
        be read."""
        from sqlalchemy.exc import SQLAlchemyError
        from sqlmodel import Session, col, select

        from bot.channels.teams.refs import load_place
        from bot.store.db import make_engine
        from bot.store.models import TeamsConversation

        path = self.settings.sqlite_path
        if path is not None and not path.exists():
            self.add(
                TEAMS_SUPPORT,
                channel,
                FAIL,
                f"no database at {path}: the bot has not run here yet, so it cannot have been "
                "added to the channel's team (check DATABASE_URL)",
                "start the bot (`mobilize run --http`), then "
                + ADD_TO_TEAM_FIX.removeprefix("in "),
            )
            return None
        engine = make_engine(self.settings.database_url)
        try:
            with Session(engine) as session:
                place = load_place(session=session, conversation_id=channel)
                rows = session.exec(
                    select(TeamsConversation)
                    .where(
                        col(TeamsConversation.team_id) != "", TeamsConversation.service_url != ""
                    )
                    .order_by(col(TeamsConversation.updated_at).desc())
                ).all()
        except SQLAlchemyError as exc:
            reason = str(getattr(exc, "orig", None) or exc).splitlines()[0]
            self.add(
                TEAMS_SUPPORT,
                channel,
                FAIL,
                f"could not read the bot's conversations from the database: {reason}",
                "check DATABASE_URL; `mobilize db upgrade` creates the tables",
            )
            return None
        finally:
            engine.dispose()
        teams: dict[str, str] = {}  # team id -> its latest service URL
        for row in rows:  # the newest first
            teams.setdefault(row.team_id, row.service_url)
        return place, list(teams.items())

    def _connector(self, service_url: str, path: str) -> tuple[Any, str]:
        """GET a Bot Connector path (ids in it are quoted) with the bot's token: the JSON
        answer and "", or None and what went wrong."""
        import httpx

        quoted = "/".join(quote(part, safe="") for part in path.split("/"))
        url = f"{service_url.rstrip('/')}/{quoted}"
        try:
            answer = httpx.get(
                url, headers={"Authorization": f"Bearer {self.bot_token}"}, timeout=10.0
            )
        except httpx.HTTPError as exc:
            return None, f"not reachable ({type(exc).__name__})"
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code != 200:
            error = body.get("error") if isinstance(body, dict) else None
            code = error.get("code") if isinstance(error, dict) else ""
            return None, f"{answer.status_code} {code or ''}".strip()
        return body, ""


def _token_failure(message: str, url: str) -> tuple[str, str]:
    """A TokenError's message without Entra's trace ids, and what to do about it."""
    detail = message.split(" Trace ID:")[0].rstrip()
    code = re.search(r"AADSTS(\d+)", message)
    if code and code.group(1) in AADSTS_FIX:
        fix = AADSTS_FIX[code.group(1)]
    elif "unreachable" in message:
        fix = (
            f"check the network (the bot must reach {url} over HTTPS) and TEAMS_TOKEN_URL "
            "(leave it unset outside tests)"
        )
    else:
        fix = f"check TEAMS_APP_ID, TEAMS_APP_PASSWORD and TEAMS_TENANT_ID ({REGISTRATION})"
    return f"{detail} (from {url})", fix


def _get_json(url: str) -> tuple[Any, str]:
    """A JSON document and "", or None and what went wrong."""
    import httpx

    try:
        answer = httpx.get(url, timeout=10.0)
    except httpx.HTTPError as exc:
        return None, f"could not reach {url} ({type(exc).__name__})"
    if answer.status_code != 200:
        return None, f"{url} answered {answer.status_code}"
    try:
        return answer.json(), ""
    except ValueError:
        return None, f"{url} did not answer JSON"


def _uses(used_by: list[str]) -> str:
    if not used_by:
        return ""
    shown = ", ".join(used_by[:MAX_REASONS])
    if len(used_by) > MAX_REASONS:
        shown += f" and {len(used_by) - MAX_REASONS} more"
    return f" (used by {shown})"


def diagnose(settings: Settings, *, now: datetime | None = None) -> Report:
    """Check the Slack and Teams setup described by `settings` (see the module docstring)."""
    doctor = _Doctor(settings)
    plan = _load_plan(settings, now or datetime.now(UTC))
    if plan.errors:
        shown = "; ".join(plan.errors[:MAX_REASONS])
        more = f"; and {len(plan.errors) - MAX_REASONS} more" if len(plan.errors) > 3 else ""
        doctor.add(
            CONTENT,
            str(Path(settings.content_dir)),
            FAIL,
            f"{len(plan.errors)} content error(s), so the plan was checked only in part: "
            f"{shown}{more}",
            "run `mobilize check` and fix what it lists",
        )
    if not settings.slack_enabled and settings.teams_enabled:
        doctor.add(BOT_TOKEN, "SLACK_BOT_TOKEN", SKIP, "not set: Teams only, Slack not checked")
    elif doctor.bot_token():
        doctor.support_channel()
        doctor.admin_group()
        doctor.plan(plan)
        doctor.scopes(plan)
    else:
        for section in (SCOPES, SUPPORT, PLAN, ADMIN, SEGMENTS):
            doctor.add(section, "—", SKIP, "not checked: the bot token does not work")
    if settings.slack_enabled or not settings.teams_enabled:
        doctor.signing_secret()
        doctor.app_token()
    if settings.teams_enabled:
        _TeamsDoctor(settings, doctor.report).run()
    else:
        doctor.add(TEAMS, "TEAMS_APP_ID", SKIP, "not set: Teams is not served")
    return doctor.report


# ---------------------------------------------------------------------------- output

MARKS = {
    OK: "[green]✓[/green]",
    FAIL: "[red]✗[/red]",
    WARN: "[yellow]![/yellow]",
    SKIP: "[dim]–[/dim]",
}


def render(report: Report, console: Console) -> None:
    """The checklist: one line per check, a fix line under each problem."""
    workspace = report.workspace
    title = "[bold]Mobilize doctor[/bold]"
    if workspace:
        title += escape(f": {workspace.get('team', '?')} ({workspace.get('url', '')})")
    console.print(title, highlight=False, soft_wrap=True)
    checks = sorted(report.checks, key=_order)
    section = ""
    for check in checks:
        if check.section != section:
            section = check.section
            console.print(f"\n[bold]{escape(section)}[/bold]", highlight=False)
        line = f"  {MARKS[check.status]} {escape(check.subject)}: {escape(check.detail)}"
        console.print(line, highlight=False, soft_wrap=True)
        if check.fix and check.status in (FAIL, WARN):
            console.print(f"      fix: {escape(check.fix)}", highlight=False, soft_wrap=True)
    console.print()
    problems, warnings = len(report.problems), len(report.warnings)
    also = f" ({warnings} warning{'s' if warnings != 1 else ''})" if warnings else ""
    if problems:
        console.print(
            f"[red]{problems} problem{'s' if problems != 1 else ''} to fix{also}.[/red]",
            highlight=False,
        )
    else:
        console.print(f"[green]All good{also}.[/green]", highlight=False)
