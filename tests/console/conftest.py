"""Console fixtures: the real Service against the loopback Slack, the console mounted in the
bot's web app, and a WSGI client that keeps cookies."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, col, select
from werkzeug.test import Client, TestResponse

from bot.channels.slack.server import WebApp
from bot.console import build_console
from bot.console.app import Console
from bot.service import Service
from bot.store.models import AuditLog
from tests.auxil.running import ADMIN, bot_settings
from tests.slack.fake_slack import FakeSlack

PUBLIC_URL = "http://console.test"


class Shift:
    """The real time moved by `offset` (the outbox runs on real time, so sends stay due)."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, **delta: float) -> None:
        self.offset += timedelta(**delta)


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        fake.add_channel("C2", name="compass-news", members=["U1", "U2"])
        fake.add_channel("C5", name="warehouse", members=["U1"], bot=False)
        yield fake


@pytest.fixture
def clock() -> Shift:
    return Shift()


@pytest.fixture
def service(database_url: str, content_dir: Path, slack: FakeSlack) -> Iterator[Service]:
    settings = bot_settings(
        database_url=database_url,
        content_dir=content_dir,
        slack=slack,
        MOBILIZE_PUBLIC_URL=PUBLIC_URL,
        MOBILIZE_CONSOLE_SECRET="console-test-secret",
        MOBILIZE_SEND_RATE=1000,
        MOBILIZE_EDIT_RATE=100,
    )
    running = Service(settings)
    running.ready.set()
    yield running
    running.stop()


@pytest.fixture
def console(service: Service, clock: Shift) -> Console:
    return build_console(service, clock=clock)


@pytest.fixture
def client(service: Service, console: Console) -> Client:
    """The bot's one web app with the console mounted, as waitress would call it."""
    return Client(WebApp(service.app, ready=service.ready.is_set, console=console))


def token_of(link: str) -> str:
    return link.rsplit("/", 1)[1]


def sign_in(client: Client, console: Console, user: str = ADMIN) -> str:
    """Sign in through a fresh link; returns the session's CSRF token."""
    link = console.links.console_link(user)
    assert link is not None
    response = client.post(f"/console/signin/{token_of(link)}")
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/console/"))


def csrf_of(response: TestResponse) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', response.text)
    assert found, response.text[:500]
    return found.group(1)


@pytest.fixture
def csrf(client: Client, console: Console) -> str:
    """An admin signed in on `client`: the session's CSRF token."""
    return sign_in(client, console)


def audited(service: Service) -> list[tuple[str, str, str]]:
    """The audit log as (actor, action, detail), oldest first."""
    with Session(service.db) as session:
        rows = session.exec(select(AuditLog).order_by(col(AuditLog.id))).all()
    return [(row.actor, row.action, row.detail) for row in rows]


def git_in(root: Path) -> Callable[..., str]:
    """`git -C root …`: its output; the command must succeed."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    return git


def git_repo(root: Path) -> Callable[..., str]:
    """Make the content folder a git repository with everything committed; its `git`."""
    git = git_in(root)
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=Setup", "-c", "user.email=setup@example.com", "commit", "-qm", "start")
    return git
