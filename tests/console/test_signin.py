"""Signing in through chat: one-time links, sessions, the admin rule and CSRF, through the
bot's real web app."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlmodel import Session, select
from werkzeug.test import Client

from bot.config import load_settings
from bot.console.app import Console
from bot.console.links import digest
from bot.console.secret import console_key, secret_path
from bot.service import Service
from bot.store.models import AuditLog, ConsoleLink, ConsoleSession
from tests.auxil.running import ADMIN, bot_settings
from tests.console.conftest import PUBLIC_URL, Shift, csrf_of, sign_in, token_of
from tests.slack.fake_slack import FakeSlack


def audit(service: Service, action: str) -> list[AuditLog]:
    with Session(service.db) as session:
        return list(session.exec(select(AuditLog).where(AuditLog.action == action)).all())


def test_a_link_signs_in_once(client: Client, console: Console, service: Service) -> None:
    link = console.links.console_link(ADMIN)
    assert link is not None and link.startswith(f"{PUBLIC_URL}/console/signin/")
    token = token_of(link)
    with Session(service.db) as session:  # only the hash is stored
        (row,) = session.exec(select(ConsoleLink)).all()
    assert row.token_hash == digest(token) and token not in row.token_hash

    opened = client.get(f"/console/signin/{token}")  # a link previewer's fetch uses nothing
    assert opened.status_code == 200 and "chika" in opened.text
    signed = client.post(f"/console/signin/{token}")
    assert signed.status_code == 303 and signed.headers["Location"] == "/console/"
    cookie = signed.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # http:// public URL
    page = client.get("/console/")
    assert page.status_code == 200 and "Overview" in page.text
    assert [row.actor for row in audit(service, "console.signin")] == [ADMIN]

    again = Client(client.application).post(f"/console/signin/{token}")
    assert again.status_code == 410 and "no longer works" in again.text
    assert Client(client.application).get(f"/console/signin/{token}").status_code == 410


def test_a_link_expires_after_five_minutes(client: Client, console: Console, clock: Shift) -> None:
    link = console.links.console_link(ADMIN)
    assert link is not None
    clock.advance(minutes=5, seconds=1)
    assert client.get(f"/console/signin/{token_of(link)}").status_code == 410
    response = client.post(f"/console/signin/{token_of(link)}")
    assert response.status_code == 410 and "Write" in response.text
    assert client.get("/console/").status_code == 401


def test_an_unknown_link_is_refused(client: Client) -> None:
    assert client.post("/console/signin/not-a-token").status_code == 410


def test_no_link_for_a_non_admin_or_without_a_public_url(
    console: Console, service: Service
) -> None:
    assert console.links.console_link("U1") is None
    assert "for the rollout's admins" in console.links.reply("U1").plain
    assert "Your console link" in console.links.reply(ADMIN).plain
    console.links.public_url = ""
    assert console.links.console_link(ADMIN) is None
    assert "MOBILIZE_PUBLIC_URL" in console.links.reply(ADMIN).plain


def test_a_non_admin_is_refused_even_with_a_link(
    client: Client, console: Console, service: Service
) -> None:
    link = console.links.console_link(ADMIN)
    assert link is not None
    with Session(service.db) as session:  # the link was made for someone not (or no longer) admin
        row = session.get(ConsoleLink, digest(token_of(link)))
        assert row is not None
        row.user_id = "U1"
        session.commit()
    response = client.post(f"/console/signin/{token_of(link)}")
    assert response.status_code == 403 and "Not an admin" in response.text
    assert client.get("/console/").status_code == 401


def test_every_request_checks_the_admin_rule_again(
    client: Client, console: Console, service: Service, database_url: str, slack: FakeSlack
) -> None:
    sign_in(client, console)
    assert client.get("/console/templates").status_code == 200
    service.settings = bot_settings(
        database_url=database_url,
        content_dir=service.settings.content_dir,
        slack=slack,
        MOBILIZE_ADMINS="U2",
    )
    service.admins.users = frozenset({"U2"})
    refused = client.get("/console/templates")
    assert refused.status_code == 403
    assert "Not an admin" in refused.text and "Traceback" not in refused.text


def test_members_of_the_admin_group_are_admins(
    client: Client, console: Console, service: Service, slack: FakeSlack
) -> None:
    assert console.links.console_link("U2") is None
    slack.usergroup_members["S1"] = ["U2"]
    service.admins.group, service.admins.ttl = "S1", 0
    sign_in(client, console, user="U2")
    assert client.get("/console/templates").status_code == 200


def test_a_session_ends_after_idle_hours_but_use_keeps_it(
    client: Client, console: Console, clock: Shift
) -> None:
    sign_in(client, console)
    clock.advance(hours=7)
    assert client.get("/console/").status_code == 200  # used: the idle time starts again
    clock.advance(hours=7)
    assert client.get("/console/").status_code == 200
    clock.advance(hours=8, minutes=1)
    ended = client.get("/console/")
    assert ended.status_code == 401 and "Your session has ended" in ended.text


def test_signing_out_ends_the_session_for_good(
    client: Client, console: Console, service: Service
) -> None:
    csrf = sign_in(client, console)
    cookie = client.get_cookie("mobilize_console", path="/console")
    assert cookie is not None
    assert client.post("/console/signout", data={"csrf": csrf}).status_code == 200
    with Session(service.db) as session:
        assert session.exec(select(ConsoleSession)).all() == []
    replay = Client(client.application)  # the old cookie, replayed
    replay.set_cookie("mobilize_console", cookie.value, path="/console")
    assert replay.get("/console/").status_code == 401


def test_a_post_without_the_sessions_token_is_refused(
    client: Client, console: Console, service: Service
) -> None:
    csrf = sign_in(client, console)
    path = service.settings.content_dir / "messages/announcements/go-live-day.md"
    before = path.read_text(encoding="utf-8")
    for data in ({"source": "x"}, {"source": "x", "csrf": "wrong"}):
        refused = client.post("/console/templates/go-live-day", data=data)
        assert refused.status_code == 400 and "security token" in refused.text
    assert path.read_text(encoding="utf-8") == before
    refused = client.post("/console/signout", headers={"X-CSRF-Token": "nope"})
    assert refused.status_code == 400
    assert client.post("/console/signout", headers={"X-CSRF-Token": csrf}).status_code == 200


def test_pages_need_a_session(client: Client) -> None:
    for path in ("/console", "/console/", "/console/templates", "/console/sends/1"):
        response = client.get(path)
        assert response.status_code == 401 and "write <code>console</code>" in response.text
    assert client.post("/console/send", data={}).status_code == 401


def test_the_web_app_still_serves_health_and_static_files(client: Client) -> None:
    assert client.get("/healthz").status_code == 200
    script = client.get("/console/static/htmx.min.js")
    assert script.status_code == 200 and b"htmx" in script.data
    assert client.get("/console/static/console.css").status_code == 200


def test_https_public_url_makes_the_cookie_secure(
    database_url: str, content_dir: Path, slack: FakeSlack
) -> None:
    settings = bot_settings(
        database_url=database_url,
        content_dir=content_dir,
        slack=slack,
        MOBILIZE_PUBLIC_URL="https://mobilize.example.com/",
        MOBILIZE_CONSOLE_SECRET="s",
    )
    from bot.channels.slack.server import WebApp
    from bot.console import build_console

    service = Service(settings)
    try:
        console = build_console(service)
        client = Client(WebApp(None, ready=lambda: True, console=console))
        link = console.links.console_link(ADMIN)
        assert link is not None and link.startswith("https://mobilize.example.com/console/")
        response = client.post(f"/console/signin/{token_of(link)}")
        assert "Secure" in response.headers["Set-Cookie"]
    finally:
        service.stop()


def test_the_signing_key_file_is_made_once_and_private(tmp_path: Path) -> None:
    settings = load_settings(DATABASE_URL=f"sqlite:///{tmp_path / 'bot.db'}")
    path = secret_path(settings)
    assert path == tmp_path / "bot.db.console-secret"
    first = console_key(settings)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert console_key(settings) == first and len(first) > 40
    assert console_key(load_settings(MOBILIZE_CONSOLE_SECRET="given")) == b"given"


def test_csrf_token_is_per_session(client: Client, console: Console) -> None:
    first = sign_in(client, console)
    other = Client(client.application)
    second = sign_in(other, console)
    assert first != second
    assert client.post("/console/signout", data={"csrf": second}).status_code == 400
    assert csrf_of(client.get("/console/")) == first


def test_an_admin_gets_the_link_by_writing_console_to_the_bot(
    database_url: str, content_dir: Path
) -> None:
    """Through Slack as it really arrives: a signed DM event; the link in the answer opens the
    sign-in page of the same running bot. Someone else gets a polite no."""
    import re
    import urllib.request

    from tests.auxil.running import running_bot

    with FakeSlack() as slack:
        settings = bot_settings(
            database_url=database_url,
            content_dir=content_dir,
            slack=slack,
            MOBILIZE_PUBLIC_URL=PUBLIC_URL,
        )
        with running_bot(settings, slack) as bot:
            assert bot.dm("console", user=ADMIN)[0] == 200
            slack.wait_for("chat.postMessage")
            (answer,) = [
                c for c in slack.calls_to("chat.postMessage") if c.params["channel"] == f"D{ADMIN}"
            ]
            text = str(answer.params.get("text", "")) + str(answer.params.get("blocks", ""))
            (link,) = set(re.findall(re.escape(PUBLIC_URL) + r"/console/signin/[\w\-]+", text))
            local = bot.base + link[len(PUBLIC_URL) :]
            with urllib.request.urlopen(local) as page:  # loopback only
                assert page.status == 200
                assert "Sign in" in page.read().decode()

            assert bot.dm("console", user="U1")[0] == 200
            slack.wait_for("chat.postMessage", where=lambda call: call.params["channel"] == "DU1")
            (refusal,) = [
                c for c in slack.calls_to("chat.postMessage") if c.params["channel"] == "DU1"
            ]
            assert "/console/signin/" not in str(refusal.params)
