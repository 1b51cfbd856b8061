"""The core's `Directory` on Microsoft Teams: who is in the tenant (Microsoft Graph) and who can
be messaged (what the bot has heard, kept in `References`).

- `everyone()`: every user of the tenant (`GET /users`, 999 a page), guests and disabled
  accounts included and marked. Ids are Entra object ids, lower-case.
- `group_members(group)`: a Microsoft 365 or security group's users, nested groups included
  (`transitiveMembers`); a team's members are its group's.
- `channel_members(channel)`: the members of the team a `19:…@thread.tacv2` channel belongs
  to (the team known from the activities the bot got from that channel; a private channel's
  own membership is not looked up).
- `can_post(channel)`: the bot has heard from the channel, so its team has the app.

Who has the app: someone the bot has heard from in their 1:1 chat (`installed` in
References). Anyone else is `no_app` — left out of audiences as "app not installed" — unless
the deployment installs the app for people itself (TEAMS_INSTALL_FOR_USERS). Time zones are not
read (Graph has them only in mailbox settings, a permission of its own): `tz` is None.

Graph application permissions this needs (admin consent) are in `GRAPH_PERMISSIONS`; the
sender's installer needs the last one.
"""

from __future__ import annotations

import logging
import re

from sqlmodel import Session, col, select

from bot.channels.teams.graph import USER_FIELDS, GraphClient, GraphError, odata_string
from bot.channels.teams.refs import References
from bot.core.announcements.audience import DirectoryError, Person
from bot.core.platforms import GUID, is_teams_channel
from bot.store.models import TeamsPerson

log = logging.getLogger(__name__)

GRAPH_PERMISSIONS = frozenset(
    {
        "User.Read.All",  # everyone(), person(), by_email()
        "GroupMember.Read.All",  # group_members(), channel_members()
        # install the app for someone who has not (TEAMS_INSTALL_FOR_USERS): itself only
        "TeamsAppInstallation.ReadWriteSelfForUser.All",
    }
)
PAGE_SIZE = "999"  # the most Graph gives in one page of users or members
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+$")


class TeamsDirectory:
    """Implements bot.core.announcements.audience.Directory on Graph and References."""

    def __init__(
        self, *, graph: GraphClient, refs: References, install_for_users: bool = False
    ) -> None:
        self.graph = graph
        self.refs = refs
        self.install_for_users = install_for_users

    # ---------------------------------------------------------------- the Directory port

    def everyone(self) -> list[Person]:
        """Every user of the tenant, guests and disabled accounts included (marked)."""
        installed = self._installed()
        users = self.graph.pages("users", {"$select": USER_FIELDS, "$top": PAGE_SIZE})
        return [self._person(user, installed) for user in users]

    def group_members(self, group: str) -> list[str]:
        """The object ids of a group's users, nested groups' included (each once)."""
        if not GUID.fullmatch(group):
            raise DirectoryError("invalid_group", f"{group!r} is not a group's object id")
        members = self.graph.pages(
            f"groups/{group.lower()}/transitiveMembers/microsoft.graph.user",
            {"$select": "id", "$top": PAGE_SIZE},
        )
        return list(dict.fromkeys(str(user["id"]).lower() for user in members if user.get("id")))

    def channel_members(self, channel: str) -> list[str]:
        """The members of the channel's team (the team's Microsoft 365 group)."""
        place = self.refs.place(channel) if is_teams_channel(channel) else None
        if place is None or not place.team_group_id:
            raise DirectoryError(
                "channel_not_found",
                f"{channel}: the bot has not heard from this channel, so its team is unknown",
            )
        return self.group_members(place.team_group_id)

    def person(self, user_id: str) -> Person | None:
        """One user by Entra object id (or the `29:…` id of someone the bot has heard from)."""
        if user_id.startswith("29:"):
            known = self.refs.person(user_id)
            user_id = known.user_id if known is not None else ""
        if not GUID.fullmatch(user_id):
            return None
        try:
            user = self.graph.get(f"users/{user_id.lower()}", params={"$select": USER_FIELDS})
        except GraphError as error:
            if error.status == 404:
                return None
            raise
        return self._person(user, self._installed([user_id.lower()]))

    def by_email(self, email: str) -> Person | None:
        """The user with this mail address, else with this user principal name."""
        email = email.strip()
        if not _EMAIL.match(email):
            return None
        for field in ("mail", "userPrincipalName"):
            page = self.graph.get(
                "users",
                params={
                    "$filter": f"{field} eq '{odata_string(email)}'",
                    "$select": USER_FIELDS,
                },
            )
            for user in page.get("value") or []:
                return self._person(user, self._installed([str(user.get("id") or "").lower()]))
        return None

    def can_post(self, channel: str) -> bool:
        """The bot has heard from the channel: it is in the channel's team."""
        if not is_teams_channel(channel):
            return False
        place = self.refs.place(channel)
        return place is not None and place.kind == "channel"

    # ---------------------------------------------------------------- helpers

    def _person(self, user: dict[str, object], installed: set[str]) -> Person:
        user_id = str(user.get("id") or "").lower()
        name = str(user.get("displayName") or user.get("userPrincipalName") or user_id)
        first = str(user.get("givenName") or name.split(" ")[0])
        email = str(user.get("mail") or user.get("userPrincipalName") or "").lower()
        return Person(
            id=user_id,
            name=name,
            first_name=first,
            tz=None,
            email=email or None,
            deleted=user.get("accountEnabled") is False,
            guest=str(user.get("userType") or "") == "Guest",
            no_app=not self.install_for_users and user_id not in installed,
        )

    def _installed(self, user_ids: list[str] | None = None) -> set[str]:
        """Object ids (lower-case) of the people the bot knows have the app: all of them, or
        those of `user_ids`. One query, not one per person."""
        query = select(TeamsPerson.user_id).where(col(TeamsPerson.installed).is_(True))
        if user_ids is not None:
            wanted = [user_id for user_id in user_ids if user_id]
            if not wanted:
                return set()
            query = query.where(col(TeamsPerson.user_id).in_(wanted))
        with Session(self.refs.db) as session:
            return {str(user_id).lower() for user_id in session.exec(query).all()}
