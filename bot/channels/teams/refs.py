"""Conversation references: what the bot learns from the activities Teams sends it, kept so it
can write first later (a relayed reply, a notice, and — for announcements and surveys — every
person's 1:1 chat and service URL).

The data functions take the session (keyword-only) and leave the commit to the caller;
`References` is the cached view the Teams front end uses, writing only what changed.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.store.models import TeamsConversation, TeamsPerson, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Person:
    """Someone the bot has heard from on Teams. `user_id` is the Entra object id (the core's
    id for them), `teams_id` the Bot Connector's `29:…` id."""

    user_id: str
    teams_id: str
    name: str = ""
    tenant_id: str = ""
    conversation_id: str = ""
    service_url: str = ""
    installed: bool = True


@dataclass(frozen=True)
class Place:
    """A channel or group chat the bot has heard from."""

    conversation_id: str
    kind: str
    service_url: str = ""
    tenant_id: str = ""
    team_id: str = ""
    team_group_id: str = ""
    name: str = ""


def save_person(*, session: Session, person: Person) -> None:
    """Insert or update a person's row (the caller commits)."""
    row = session.get(TeamsPerson, person.user_id)
    if row is None:
        row = TeamsPerson(user_id=person.user_id, teams_id=person.teams_id)
    row.teams_id = person.teams_id
    row.name = person.name[:200]
    row.tenant_id = person.tenant_id
    row.conversation_id = person.conversation_id
    row.service_url = person.service_url
    row.installed = person.installed
    row.updated_at = utcnow()
    session.add(row)


def save_place(*, session: Session, place: Place) -> None:
    """Insert or update a channel's or group chat's row (the caller commits)."""
    row = session.get(TeamsConversation, place.conversation_id)
    if row is None:
        row = TeamsConversation(conversation_id=place.conversation_id)
    row.kind = place.kind
    row.service_url = place.service_url
    row.tenant_id = place.tenant_id
    row.team_id = place.team_id
    row.team_group_id = place.team_group_id
    row.name = place.name[:200]
    row.updated_at = utcnow()
    session.add(row)


def load_person(*, session: Session, key: str) -> Person | None:
    """A person by Entra object id or Teams id."""
    row = session.get(TeamsPerson, key)
    if row is None:
        row = session.exec(select(TeamsPerson).where(TeamsPerson.teams_id == key)).first()
    return _person(row) if row is not None else None


def load_place(*, session: Session, conversation_id: str) -> Place | None:
    row = session.get(TeamsConversation, conversation_id)
    if row is None:
        return None
    return Place(
        row.conversation_id,
        row.kind,
        row.service_url,
        row.tenant_id,
        row.team_id,
        row.team_group_id,
        row.name,
    )


def latest_service_url(*, session: Session) -> str | None:
    """The service URL most recently seen (the tenant's region), for a first post anywhere."""
    urls = [
        session.exec(
            select(TeamsPerson.service_url)
            .where(TeamsPerson.service_url != "")
            .order_by(col(TeamsPerson.updated_at).desc())
        ).first(),
        session.exec(
            select(TeamsConversation.service_url)
            .where(TeamsConversation.service_url != "")
            .order_by(col(TeamsConversation.updated_at).desc())
        ).first(),
    ]
    return next((url for url in urls if url), None)


def _person(row: TeamsPerson) -> Person:
    return Person(
        row.user_id,
        row.teams_id,
        row.name,
        row.tenant_id,
        row.conversation_id,
        row.service_url,
        row.installed,
    )


def base_conversation(conversation_id: str) -> str:
    """A conversation id without its thread (`;messageid=…`)."""
    return conversation_id.split(";", 1)[0]


def thread_of(conversation_id: str) -> str:
    """The thread root in a channel conversation id, or ""."""
    _, _, rest = conversation_id.partition(";messageid=")
    return rest


class References:
    """People and places the bot has heard from: read through a cache, written when changed.
    Thread-safe."""

    def __init__(self, db: Engine) -> None:
        self.db = db
        self._people: dict[str, Person] = {}
        self._places: dict[str, Place] = {}
        self._service_url: str | None = None
        self._lock = threading.Lock()

    # ---------------------------------------------------------------- what activities say

    def observe(self, activity: dict[str, Any]) -> Person | None:
        """Remember who sent an activity and where (a 1:1 chat for a person, a channel or group
        chat for a place); the sender, when it is a person."""
        service_url = str(activity.get("serviceUrl") or "")
        conversation = activity.get("conversation") or {}
        sender = activity.get("from") or {}
        channel_data = activity.get("channelData") or {}
        tenant = str(
            (channel_data.get("tenant") or {}).get("id") or conversation.get("tenantId") or ""
        )
        kind = str(conversation.get("conversationType") or "personal")
        conversation_id = base_conversation(str(conversation.get("id") or ""))
        if service_url:
            self._service_url = service_url
        person: Person | None = None
        teams_id = str(sender.get("id") or "")
        if teams_id.startswith("29:"):
            user_id = str(sender.get("aadObjectId") or teams_id)
            known = self.person(user_id)
            person = Person(
                user_id,
                teams_id,
                str(sender.get("name") or (known.name if known else "")),
                tenant or (known.tenant_id if known else ""),
                conversation_id if kind == "personal" else (known.conversation_id if known else ""),
                service_url if kind == "personal" or not known else known.service_url,
                True if kind == "personal" else (known.installed if known else False),
            )
            if kind != "personal" and not person.service_url:
                person = replace(person, service_url=service_url)
            if person != known:
                self.store_person(person)
        if kind in ("channel", "groupChat") and conversation_id:
            team = channel_data.get("team") or {}
            channel = channel_data.get("channel") or {}
            place = Place(
                conversation_id,
                kind,
                service_url,
                tenant,
                str(team.get("id") or ""),
                str(team.get("aadGroupId") or ""),
                str(channel.get("name") or team.get("name") or ""),
            )
            known_place = self.place(conversation_id)
            if known_place is not None and not place.team_group_id:
                place = replace(place, team_group_id=known_place.team_group_id)
            if place != known_place:
                self.store_place(place)
        return person

    # ---------------------------------------------------------------- reads

    def person(self, key: str) -> Person | None:
        """By Entra object id or Teams id; None when the bot never heard from them."""
        cached = self._people.get(key)
        if cached is not None:
            return cached
        with Session(self.db) as session:
            found = load_person(session=session, key=key)
        if found is not None:
            self._cache_person(found)
        return found

    def place(self, conversation_id: str) -> Place | None:
        base = base_conversation(conversation_id)
        cached = self._places.get(base)
        if cached is not None:
            return cached
        with Session(self.db) as session:
            found = load_place(session=session, conversation_id=base)
        if found is not None:
            self._places[base] = found
        return found

    def service_url(self, conversation_id: str = "") -> str | None:
        """Where to reach a conversation: its own service URL, else the latest one seen."""
        if conversation_id:
            place = self.place(conversation_id)
            if place is not None and place.service_url:
                return place.service_url
            person = self._people.get(conversation_id)
            if person is not None and person.service_url:
                return person.service_url
        if self._service_url is None:
            with Session(self.db) as session:
                self._service_url = latest_service_url(session=session)
        return self._service_url

    def mention(self, key: str) -> tuple[str, str] | None:
        """(id to mention, display name) for a person id the core wrote, or None."""
        person = self.person(key)
        if person is None or not person.name:
            return None
        return person.teams_id, person.name

    # ---------------------------------------------------------------- writes

    def store_person(self, person: Person) -> None:
        for attempt in (1, 2):
            try:
                with Session(self.db) as session:
                    save_person(session=session, person=person)
                    session.commit()
                break
            except IntegrityError:  # another thread inserted them first: update instead
                if attempt == 2:
                    raise
        self._cache_person(person)

    def store_place(self, place: Place) -> None:
        for attempt in (1, 2):
            try:
                with Session(self.db) as session:
                    save_place(session=session, place=place)
                    session.commit()
                break
            except IntegrityError:
                if attempt == 2:
                    raise
        self._places[place.conversation_id] = place

    def set_installed(self, key: str, installed: bool) -> None:
        person = self.person(key)
        if person is not None and person.installed != installed:
            self.store_person(replace(person, installed=installed))

    def set_conversation(self, person: Person, conversation_id: str, service_url: str) -> Person:
        updated = replace(person, conversation_id=conversation_id, service_url=service_url)
        if updated != person:
            self.store_person(updated)
        return updated

    def _cache_person(self, person: Person) -> None:
        with self._lock:
            self._people[person.user_id] = person
            self._people[person.teams_id] = person
