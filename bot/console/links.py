"""Signing in to the console through chat: one-time links and the sessions they open.

An admin writes `console` to the bot in a 1:1 chat; the chat front end calls
`ConsoleLinks.console_link(user_id)` and posts the link (or `ConsoleLinks.reply()`, the whole
message). The link holds a random token (only its SHA-256 is stored), works once and for
`LINK_MINUTES` minutes; opening it shows a button, and pressing it exchanges the token for a
session (so a link previewer that fetches the URL cannot use it up). The session id is random
too (the signed cookie holds it, the database its SHA-256) and ends after
MOBILIZE_CONSOLE_SESSION_HOURS without use, or on signing out.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, delete, update
from sqlmodel import Session, col

from bot.core.messages import Message, say
from bot.store.audit import record
from bot.store.models import ConsoleLink, ConsoleSession, as_utc

LINK_MINUTES = 5
TOUCH_SECONDS = 60  # a session's last use is written at most this often


def digest(token: str) -> str:
    """The SHA-256 of a token, as stored."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class SignedIn:
    """A live session: who, and the CSRF token its forms carry."""

    user_id: str
    csrf: str
    id_hash: str


class ConsoleLinks:
    """Makes one-time links for admins and turns them into sessions."""

    def __init__(
        self,
        *,
        db: Engine,
        public_url: str,
        admins: Container[str],
        session_hours: float = 8.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.public_url = public_url.rstrip("/")
        self.admins = admins
        self.idle = timedelta(hours=session_hours)
        self.clock = clock

    # --- links ------------------------------------------------------------------------------

    def console_link(self, user_id: str) -> str | None:
        """A fresh one-time sign-in link for an admin; None for anyone else, or when
        MOBILIZE_PUBLIC_URL is not set (there is no address to link to)."""
        if not self.public_url or user_id not in self.admins:
            return None
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with Session(self.db) as session:
            session.execute(  # links past their time are of no use to anyone
                delete(ConsoleLink).where(col(ConsoleLink.expires_at) < now - timedelta(days=1))
            )
            session.add(
                ConsoleLink(
                    token_hash=digest(token),
                    user_id=user_id,
                    created_at=now,
                    expires_at=now + timedelta(minutes=LINK_MINUTES),
                )
            )
            session.commit()
        record(self.db, actor=user_id, action="console.link", detail="sign-in link sent")
        return f"{self.public_url}/console/signin/{token}"

    def reply(self, user_id: str) -> Message:
        """What the bot answers `console` with in a 1:1 chat."""
        if user_id not in self.admins:
            return say("The console is for the rollout's admins (MOBILIZE_ADMINS).")
        link = self.console_link(user_id)
        if link is None:
            return say(
                "The console has no address yet: set MOBILIZE_PUBLIC_URL to where this bot's "
                "web port is reached (e.g. https://mobilize.example.com) and restart it."
            )
        return say(
            f"*Your console link* (works once, for {LINK_MINUTES} minutes; do not share it):\n"
            f"{link}",
            summary="Your console sign-in link",
        )

    def pending(self, token: str) -> str | None:
        """Whose link this is, while it is unused and in time (nothing is changed)."""
        with Session(self.db) as session:
            link = session.get(ConsoleLink, digest(token))
        if link is None or link.used_at is not None or as_utc(link.expires_at) <= self.clock():
            return None
        return link.user_id

    def exchange(self, token: str) -> tuple[str, SignedIn] | None:
        """Use the link (once: a conditional update) and open a session; returns the session
        id for the cookie and the session, or None for a used, expired or unknown link."""
        now = self.clock()
        token_hash = digest(token)
        with Session(self.db) as session:
            used = session.execute(
                update(ConsoleLink)
                .where(
                    col(ConsoleLink.token_hash) == token_hash,
                    col(ConsoleLink.used_at).is_(None),
                    col(ConsoleLink.expires_at) > now,
                )
                .values(used_at=now)
            )
            if used.rowcount != 1:  # type: ignore[attr-defined]
                session.rollback()
                return None
            link = session.get(ConsoleLink, token_hash)
            assert link is not None
            user_id = link.user_id
            session_id, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
            session.execute(  # sessions idle past their time are over
                delete(ConsoleSession).where(col(ConsoleSession.last_seen_at) < now - self.idle)
            )
            session.add(
                ConsoleSession(
                    id_hash=digest(session_id),
                    user_id=user_id,
                    csrf=csrf,
                    created_at=now,
                    last_seen_at=now,
                )
            )
            session.commit()
        return session_id, SignedIn(user_id, csrf, digest(session_id))

    # --- sessions ---------------------------------------------------------------------------

    def session(self, session_id: str) -> SignedIn | None:
        """The live session with this id (its last use moved to now), or None when it is
        unknown, ended or idle for too long."""
        now = self.clock()
        id_hash = digest(session_id)
        with Session(self.db) as session:
            row = session.get(ConsoleSession, id_hash)
            if row is None:
                return None
            seen = as_utc(row.last_seen_at)
            if seen + self.idle <= now:
                session.delete(row)
                session.commit()
                return None
            if (now - seen).total_seconds() >= TOUCH_SECONDS:
                session.execute(
                    update(ConsoleSession)
                    .where(col(ConsoleSession.id_hash) == id_hash)
                    .values(last_seen_at=now)
                )
                session.commit()
            return SignedIn(row.user_id, row.csrf, id_hash)

    def end(self, id_hash: str) -> None:
        """Sign out: the session is gone for good."""
        with Session(self.db) as session:
            session.execute(delete(ConsoleSession).where(col(ConsoleSession.id_hash) == id_hash))
            session.commit()
