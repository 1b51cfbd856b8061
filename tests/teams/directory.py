"""The tenant the Teams doubles share: users (Entra ID objects with their Teams ids), teams and
their channels, groups, and where the app is installed. ``FakeTeams`` (Bot Connector) and
``FakeGraph`` read and change the same ``Directory``, so a Graph installation is what lets the
connector open a 1:1 chat, and the chat id Graph reports is one the connector knows.

Preloaded (``Directory()``; ``preload=False`` for an empty tenant), by key:

- ``alice`` Alice Archer, GMT Standard Time, has the app;
- ``bob`` Bob Brown, Eastern Standard Time, does not have the app yet;
- ``chika`` Chika Sato, Tokyo Standard Time, has the app;
- ``dana`` Dana Guest, a guest (``userType`` Guest), no mailbox, no app;
- ``erin`` Erin Gone, ``accountEnabled`` false.
- team ``fernhill`` "Fernhill Logistics" (alice, bob, chika; app installed) with channels
  ``General`` and ``rollout-support``; group ``pilots`` (alice and nested group ``pilots-tokyo``
  with chika).

Ids: ``user.id`` is the Entra object id (a GUID, ``aadObjectId`` in activities);
``user.teams_id`` the pairwise Teams id ``29:…`` the Bot Connector uses; a user's 1:1 chat with
the bot has the connector id ``personal_conversation_id(user)`` (``a:…``) and the Graph chat id
``chat_id(user)`` (``19:<aad id>_<app id>@unq.gbl.spaces``), both accepted by the connector.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Channel", "Directory", "Group", "Team", "User"]

_NAMESPACE = uuid.UUID("6f1d3c2a-5b4e-4a8f-9c7d-1e2f3a4b5c6d")


def guid(name: str) -> str:
    """A stable GUID for a name (so tests can predict ids)."""
    return str(uuid.uuid5(_NAMESPACE, name))


def _opaque(prefix: str, *parts: str, length: int = 40) -> str:
    digest = hashlib.sha256("|".join(parts).encode()).digest() * 2
    return prefix + base64.urlsafe_b64encode(digest).decode().rstrip("=")[:length]


@dataclass
class User:
    """An Entra ID user as Graph and the Bot Connector see them (mutable: tests may edit)."""

    key: str
    id: str
    display_name: str
    given_name: str
    surname: str
    mail: str | None
    user_principal_name: str
    teams_id: str
    account_enabled: bool = True
    user_type: str = "Member"
    job_title: str | None = None
    time_zone: str | None = "GMT Standard Time"  # mailbox setting; None: no mailbox
    app_installed: bool = False
    blocked_bot: bool = False

    def graph(self) -> dict[str, Any]:
        """Every property Graph can return for this user (``$select`` picks from these)."""
        return {
            "id": self.id,
            "businessPhones": [],
            "displayName": self.display_name,
            "givenName": self.given_name,
            "jobTitle": self.job_title,
            "mail": self.mail,
            "mobilePhone": None,
            "officeLocation": None,
            "preferredLanguage": "en-GB",
            "surname": self.surname,
            "userPrincipalName": self.user_principal_name,
            "accountEnabled": self.account_enabled,
            "userType": self.user_type,
        }

    def account(self, tenant_id: str) -> dict[str, Any]:
        """This user as a Bot Connector ``TeamsChannelAccount``."""
        return {
            "id": self.teams_id,
            "name": self.display_name,
            "aadObjectId": self.id,
            "givenName": self.given_name,
            "surname": self.surname,
            "email": self.mail,
            "userPrincipalName": self.user_principal_name,
            "tenantId": tenant_id,
            "userRole": "anonymous" if self.user_type == "Guest" else "user",
        }


@dataclass
class Channel:
    id: str  # 19:…@thread.tacv2
    name: str
    membership_type: str = "standard"
    description: str | None = None


@dataclass
class Team:
    key: str
    id: str  # the team's Microsoft 365 group id (GUID), used by Graph
    name: str
    thread_id: str  # the team's id in the Bot Connector = the General channel's id
    members: list[str] = field(default_factory=list)  # user object ids
    owners: list[str] = field(default_factory=list)
    channels: list[Channel] = field(default_factory=list)
    app_installed: bool = True


@dataclass
class Group:
    key: str
    id: str
    display_name: str
    members: list[str] = field(default_factory=list)  # user or group object ids


class Directory:
    """Users, teams, groups and app installations of one tenant (see the module docstring).

    The doubles lock around it with their shared condition; tests may edit it directly between
    requests."""

    def __init__(
        self,
        *,
        tenant_id: str,
        app_id: str,
        app_name: str = "Mobilize",
        teams_app_id: str | None = None,
        preload: bool = True,
    ) -> None:
        self.tenant_id = tenant_id
        self.app_id = app_id
        self.app_name = app_name
        # The app's id in the tenant's app catalog (Graph's teamsApp id) differs from the
        # manifest id / bot id (its externalId), as it does for org-catalog apps.
        self.teams_app_id = teams_app_id or guid(f"catalog:{app_id}")
        self.app_disabled = False  # the tenant admin blocked the app: 403 BotDisabledByAdmin
        self.users: dict[str, User] = {}
        self.teams: dict[str, Team] = {}
        self.groups: dict[str, Group] = {}
        if preload:
            self._preload()

    # ------------------------------------------------------------------ building

    def add_user(
        self,
        key: str,
        display_name: str | None = None,
        *,
        mail: str | None = "",
        app_installed: bool = False,
        **fields: Any,
    ) -> User:
        """Add (or replace) a user; ``key`` is a short name (``"alice"``) that also seeds the
        ids. ``fields`` set any other ``User`` attribute (``time_zone``, ``user_type``…)."""
        name = display_name or key.title()
        given, _, surname = name.partition(" ")
        object_id = str(fields.pop("id", guid(f"user:{key}")))
        upn = str(fields.pop("user_principal_name", f"{key}@fernhill.example"))
        user = User(
            key=key,
            id=object_id,
            display_name=name,
            given_name=str(fields.pop("given_name", given)),
            surname=str(fields.pop("surname", surname)),
            mail=upn if mail == "" else mail,
            user_principal_name=upn,
            teams_id=str(fields.pop("teams_id", _opaque("29:1", self.app_id, object_id))),
            app_installed=app_installed,
            **fields,
        )
        self.users[object_id] = user
        return user

    def add_team(
        self,
        key: str,
        name: str,
        *,
        members: Sequence[str] = (),
        channels: Sequence[str] = (),
        app_installed: bool = True,
    ) -> Team:
        """A team with a General channel plus ``channels`` (names); ``members`` are user keys
        or object ids."""
        team_id = guid(f"team:{key}")
        thread = f"19:{hashlib.sha256(team_id.encode()).hexdigest()[:32]}@thread.tacv2"
        team = Team(
            key=key,
            id=team_id,
            name=name,
            thread_id=thread,
            members=[self.user(m).id for m in members],
            channels=[Channel(thread, "General")],
            app_installed=app_installed,
        )
        for channel_name in channels:
            channel_id = f"19:{hashlib.sha256(f'{team_id}/{channel_name}'.encode()).hexdigest()[:32]}@thread.tacv2"
            team.channels.append(Channel(channel_id, channel_name))
        team.owners = team.members[:1]
        self.teams[team_id] = team
        return team

    def add_group(self, key: str, name: str, *, members: Sequence[str] = ()) -> Group:
        """A group whose members are user keys/ids or group keys/ids (nested groups)."""
        resolved = []
        for member in members:
            group = self.group_or_none(member)
            resolved.append(group.id if group is not None else self.user(member).id)
        group = Group(key=key, id=guid(f"group:{key}"), display_name=name, members=resolved)
        self.groups[group.id] = group
        return group

    def _preload(self) -> None:
        self.add_user("alice", "Alice Archer", app_installed=True, job_title="Warehouse lead")
        self.add_user("bob", "Bob Brown", time_zone="Eastern Standard Time")
        self.add_user("chika", "Chika Sato", time_zone="Tokyo Standard Time", app_installed=True)
        self.add_user(
            "dana",
            "Dana Guest",
            user_type="Guest",
            mail="dana@partner.example",
            user_principal_name="dana_partner.example#EXT#@fernhill.example",
            time_zone=None,
        )
        self.add_user("erin", "Erin Gone", account_enabled=False)
        self.add_team(
            "fernhill",
            "Fernhill Logistics",
            members=["alice", "bob", "chika"],
            channels=["rollout-support"],
        )
        self.add_group("pilots-tokyo", "Compass pilots (Tokyo)", members=["chika"])
        self.add_group("pilots", "Compass pilots", members=["alice", "pilots-tokyo"])

    # ------------------------------------------------------------------ lookups

    def user(self, key: str) -> User:
        """A user by key, object id, Teams id or UPN; KeyError if none."""
        found = self.user_or_none(key)
        if found is None:
            raise KeyError(f"no user {key!r}")
        return found

    def user_or_none(self, key: str) -> User | None:
        if key in self.users:
            return self.users[key]
        lowered = key.lower()
        for user in self.users.values():
            if key in (user.key, user.teams_id) or lowered == user.user_principal_name.lower():
                return user
        return None

    def team(self, key: str) -> Team:
        """A team by key, group id or thread (General channel) id; KeyError if none."""
        for team in self.teams.values():
            if key in (team.key, team.id, team.thread_id):
                return team
        raise KeyError(f"no team {key!r}")

    def channel(self, team: Team, name_or_id: str) -> Channel:
        for channel in team.channels:
            if name_or_id in (channel.id, channel.name):
                return channel
        raise KeyError(f"no channel {name_or_id!r} in team {team.key!r}")

    def team_of_channel(self, channel_id: str) -> tuple[Team, Channel] | None:
        for team in self.teams.values():
            for channel in team.channels:
                if channel.id == channel_id:
                    return team, channel
        return None

    def group_or_none(self, key: str) -> Group | None:
        for group in self.groups.values():
            if key in (group.key, group.id):
                return group
        return None

    def transitive_members(self, group: Group) -> list[User | Group]:
        """Every user and group below ``group`` (each once, breadth first)."""
        seen: set[str] = set()
        out: list[User | Group] = []
        queue = list(group.members)
        while queue:
            member = queue.pop(0)
            if member in seen:
                continue
            seen.add(member)
            nested = self.groups.get(member)
            if nested is not None:
                out.append(nested)
                queue.extend(nested.members)
            elif member in self.users:
                out.append(self.users[member])
        return out

    # ------------------------------------------------------------------ chats and installations

    def personal_conversation_id(self, user: User) -> str:
        """The Bot Connector's id of the user's 1:1 chat with the bot (``a:…``)."""
        return _opaque("a:1", "personal", self.app_id, user.id, length=60)

    def chat_id(self, user: User) -> str:
        """Graph's id of the same chat (``…/installedApps/{id}/chat``)."""
        return f"19:{user.id}_{self.app_id}@unq.gbl.spaces"

    def installation_id(self, user: User) -> str:
        """Graph's id of the app's installation for the user."""
        raw = f"{user.id}##{self.teams_app_id}".encode()
        return base64.b64encode(raw).decode()

    def user_of_chat(self, conversation_id: str) -> User | None:
        """The user whose 1:1 chat with the bot has this id (either form), or None."""
        for user in self.users.values():
            if conversation_id in (self.personal_conversation_id(user), self.chat_id(user)):
                return user
        return None
