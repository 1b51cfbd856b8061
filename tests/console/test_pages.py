"""The console's pages: template editing as `mobilize check` checks, previews, the audience
picker, sending and managing sends through the core, survey results through suppression."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, select
from werkzeug.test import Client

from bot.channels.slack.server import WebApp
from bot.console import build_console
from bot.console.app import Console
from bot.console.render import mrkdwn_to_html
from bot.console.teams_card import card_html
from bot.core.announcements import sends
from bot.core.announcements.templates import render
from bot.core.surveys.report import run_results
from bot.service import Service
from bot.store.models import AnnouncementSend, Delivery
from tests.auxil.running import ADMIN, bot_settings
from tests.auxil.surveys import insert_run
from tests.console.conftest import PUBLIC_URL, Shift, audited, git_in, git_repo, sign_in
from tests.slack.fake_slack import FakeSlack
from tests.teams.fake_connector import FakeTeams

TEMPLATE = "messages/announcements/go-live-day.md"


def drain(service: Service) -> None:
    """What the running bot's scheduler and workers do, until idle."""
    for _ in range(20):
        service.announcer.tick()
        if service.announcer.outbox.drain_once(batch=100) == 0:
            break
    service.announcer.tick()


# --- templates ---------------------------------------------------------------------------


def test_templates_are_listed_with_where_the_plan_uses_them(client: Client, csrf: str) -> None:
    page = client.get("/console/templates")
    assert page.status_code == 200
    assert "go-live-day" in page.text and "peopledesk-read-only" in page.text
    assert "Compass is live" in page.text or "rollout.name" in page.text


def test_a_bad_edit_is_refused_with_file_and_line_and_nothing_is_written(
    client: Client, csrf: str, service: Service
) -> None:
    path = service.settings.content_dir / TEMPLATE
    before = path.read_text(encoding="utf-8")
    broken = before.replace(
        "{{ milestones.hypercare_ends | longdate }}", "{{ milestones.hypercare_end }}"
    )
    line = (
        broken.splitlines().index(next(x for x in broken.splitlines() if "hypercare_end }}" in x))
        + 1
    )
    response = client.post("/console/templates/go-live-day", data={"csrf": csrf, "source": broken})
    assert response.status_code == 422
    assert f"{TEMPLATE}:{line}" in response.text and "hypercare_end" in response.text
    assert "Not saved" in response.text and "hypercare_end }}" in response.text  # text kept
    assert path.read_text(encoding="utf-8") == before
    assert not [a for a in audited(service) if a[1] == "console.template.save"]


def test_removing_an_ack_button_the_plan_needs_is_refused(
    client: Client, csrf: str, service: Service
) -> None:
    path = service.settings.content_dir / "messages/announcements/peopledesk-read-only.md"
    text = path.read_text(encoding="utf-8")
    without = re.sub(r"\n  - ack: [^\n]*", "", text)
    assert without != text
    response = client.post(
        "/console/templates/peopledesk-read-only", data={"csrf": csrf, "source": without}
    )
    assert response.status_code == 422
    assert "schedules/announcements.yaml:" in response.text and "ack: true" in response.text
    assert path.read_text(encoding="utf-8") == text


def test_a_good_edit_is_written_reloaded_and_audited(
    client: Client, csrf: str, service: Service
) -> None:
    path = service.settings.content_dir / TEMPLATE
    text = path.read_text(encoding="utf-8").replace("Good morning", "Hello")
    response = client.post(
        "/console/templates/go-live-day",
        data={"csrf": csrf, "source": text.replace("\n", "\r\n")},  # as browsers send it
    )
    assert response.status_code == 303
    assert path.read_text(encoding="utf-8") == text  # LF line ends
    assert "Hello" in service.announcer.content.templates["go-live-day"].body
    page = client.get("/console/templates/go-live-day")
    assert f"Saved {TEMPLATE}" in page.text
    assert (ADMIN, "console.template.save", TEMPLATE) in audited(service)


def test_a_save_in_a_git_repository_is_a_commit_by_the_admin(
    client: Client, csrf: str, service: Service
) -> None:
    root = service.settings.content_dir

    git = git_repo(root)
    path = root / TEMPLATE
    text = path.read_text(encoding="utf-8").replace("Good morning", "Hello")
    response = client.post("/console/templates/go-live-day", data={"csrf": csrf, "source": text})
    assert response.status_code == 303
    assert git("log", "-1", "--format=%an <%ae>|%s") == (
        "chika <chika@example.com>|Edit announcement template go-live-day (console)"
    )
    assert git("status", "--porcelain") == ""
    assert "Committed as" in client.get("/console/templates/go-live-day").text


def test_a_save_over_someone_elses_change_is_refused(
    client: Client, csrf: str, service: Service
) -> None:
    path = service.settings.content_dir / TEMPLATE
    page = client.get("/console/templates/go-live-day")
    base = re.search(r'name="base" value="([^"]+)"', page.text)
    assert base
    path.write_text(path.read_text(encoding="utf-8") + "\nTheirs.\n", encoding="utf-8")
    response = client.post(
        "/console/templates/go-live-day",
        data={"csrf": csrf, "base": base.group(1), "source": "mine"},
    )
    assert response.status_code == 409 and "someone changed this file" in response.text
    assert path.read_text(encoding="utf-8").endswith("Theirs.\n")


def test_the_live_preview_renders_for_a_chosen_person(client: Client, csrf: str) -> None:
    source = client.get("/console/templates/go-live-day").text
    assert 'data-testid="slack-preview"' in source and "Good morning Chika!" in source
    text = (Path(__file__).parents[2] / TEMPLATE).read_text(encoding="utf-8")
    fragment = client.post(
        "/console/templates/go-live-day/preview",
        data={"source": text, "person": "U1"},
        headers={"HX-Request": "true", "X-CSRF-Token": csrf},
    )
    assert fragment.status_code == 200 and "<html" not in fragment.text
    assert "Good morning Alice!" in fragment.text and "No errors" in fragment.text
    assert 'href="https://compass.fernhill.example/"' in fragment.text  # the portal button
    unknown = client.post(
        "/console/templates/go-live-day/preview",
        data={"source": text, "person": "U404", "csrf": csrf},
        headers={"HX-Request": "true"},
    )
    assert "No person" in unknown.text and "Good morning Sam!" in unknown.text
    broken = client.post(
        "/console/templates/go-live-day/preview",
        data={"source": "no front matter", "csrf": csrf},
        headers={"HX-Request": "true"},
    )
    assert f"{TEMPLATE}:1" in broken.text and "slack-preview" not in broken.text


def test_an_unknown_template_is_a_clear_404(client: Client, csrf: str) -> None:
    for path in ("/console/templates/nope", "/console/templates/..%2Fsecrets"):
        response = client.get(path)
        assert response.status_code == 404 and "Traceback" not in response.text


def test_the_mrkdwn_renderer_escapes_and_links_only_the_web() -> None:
    html = mrkdwn_to_html(
        "*Hi* &lt;b&gt; <https://x.example/?a=1&amp;b=2|the page> <javascript:alert(1)|x>"
    )
    assert "<strong>Hi</strong>" in html and "&lt;b&gt;" in html
    assert 'href="https://x.example/?a=1&amp;b=2"' in html
    assert "javascript" not in html


# --- audience and sending ------------------------------------------------------------------


def test_the_audience_picker_shows_size_and_who_is_left_out(client: Client, csrf: str) -> None:
    page = client.get("/console/audience", query_string={"to": "everyone; channel:C5"})
    assert page.status_code == 200
    assert "<strong>3</strong> people" in page.text  # U1-U3; not the bot or the deactivated
    assert "deactivated" in page.text and "/invite @Mobilize" in page.text and "C5" in page.text
    bad = client.get("/console/audience", query_string={"to": "#general"})
    assert "unknown audience" in bad.text


@pytest.mark.parametrize(
    ("form", "expected"),
    [
        ({"template": "", "to": "everyone"}, "Pick a template"),
        ({"template": "go-live-day", "to": "members:general"}, "takes a channel id"),
        ({"template": "go-live-day", "to": ""}, "Say who"),
        (
            {"template": "go-live-day", "to": "everyone", "when": "later", "at": "soon"},
            "give a date",
        ),
        (
            {
                "template": "go-live-day",
                "to": "everyone",
                "when": "later",
                "at": "2020-01-01T09:00",
            },
            "has passed",
        ),
    ],
)
def test_the_send_form_explains_what_is_wrong(
    client: Client, csrf: str, service: Service, form: dict[str, str], expected: str
) -> None:
    response = client.post("/console/send", data={"csrf": csrf, "when": "now", **form})
    assert response.status_code == 422 and expected in response.text
    with Session(service.db) as session:
        assert session.exec(select(AnnouncementSend)).all() == []


def test_send_now_asks_to_confirm_then_queues_through_the_core(
    client: Client, csrf: str, service: Service
) -> None:
    form = {"csrf": csrf, "template": "go-live-day", "to": "users:U1,U2", "when": "now"}
    check = client.post("/console/send", data=form)
    assert check.status_code == 200 and "2 people" in check.text and "Send now" in check.text
    with Session(service.db) as session:
        assert session.exec(select(AnnouncementSend)).all() == []
    done = client.post("/console/send", data={**form, "confirm": "yes"})
    assert done.status_code == 303
    send_id = int(done.headers["Location"].rsplit("/", 1)[1])
    with Session(service.db) as session:
        row = session.get(AnnouncementSend, send_id)
    assert row is not None and row.created_by == ADMIN and row.owner == ADMIN
    assert json.loads(row.audience) == ["users:U1,U2"]
    assert any(
        a[1] == "announce.send" and a[2].startswith(f"#{send_id} go-live-day")
        for a in audited(service)
    )

    drain(service)
    page = client.get(f"/console/sends/{send_id}")
    assert page.status_code == 200 and "Queued announcement" in page.text
    assert 'value="2"' in page.text and "100%" in page.text and "hx-trigger" not in page.text
    csv = client.get(f"/console/sends/{send_id}/export.csv")
    assert csv.status_code == 200 and csv.mimetype == "text/csv"
    lines = csv.text.strip().splitlines()
    assert lines[0].startswith("recipient,kind,name,state") and len(lines) == 3
    assert all(",sent," in line for line in lines[1:])


def test_a_schedule_is_due_at_the_rollout_time_given(
    client: Client, csrf: str, service: Service
) -> None:
    later = (datetime.now(UTC) + timedelta(days=3)).astimezone(
        service.announcer.content.rollout.zone
    )
    at = later.strftime("%Y-%m-%dT%H:%M")
    form = {
        "csrf": csrf,
        "template": "go-live-day",
        "to": "everyone",
        "when": "later",
        "at": at,
        "confirm": "yes",
    }
    done = client.post("/console/send", data=form)
    assert done.status_code == 303
    with Session(service.db) as session:
        (row,) = session.exec(select(AnnouncementSend)).all()
    assert row.due_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") == later.astimezone(UTC).strftime(
        "%Y-%m-%dT%H:%M"
    )
    page = client.get(done.headers["Location"])
    assert "Scheduled announcement" in page.text and 'hx-trigger="every 2s"' in page.text


def make_send(service: Service, *audience: str) -> int:
    with Session(service.db) as session:
        send_id = sends.create_adhoc(
            session=session,
            template="go-live-day",
            audience=list(audience),
            at=datetime.now(UTC),
            by=ADMIN,
        )
        session.commit()
    return send_id


def test_failures_are_grouped_with_what_to_do_and_can_be_resent(
    client: Client, csrf: str, service: Service
) -> None:
    send_id = make_send(service, "users:U1,U2")
    service.announcer.tick()  # resolve: two rows
    with Session(service.db) as session:
        row = session.exec(select(Delivery).where(Delivery.recipient == "U2")).one()
        row.state, row.error = "failed", "account_inactive"
        session.commit()
    drain(service)
    page = client.get(f"/console/sends/{send_id}")
    assert "account_inactive" in page.text and "deactivated: nothing to do" in page.text
    resent = client.post(f"/console/sends/{send_id}/resend", data={"csrf": csrf})
    assert resent.status_code == 303
    assert "1 failed deliveries" in client.get(resent.headers["Location"]).text
    assert any(a[1] == "announce.resend" for a in audited(service))


def test_cancel_and_recall_need_the_box_ticked_then_go_through_the_core(
    client: Client, csrf: str, service: Service
) -> None:
    send_id = make_send(service, "users:U1")
    drain(service)
    unticked = client.post(f"/console/sends/{send_id}/recall", data={"csrf": csrf})
    assert "tick the box" in client.get(unticked.headers["Location"]).text
    with Session(service.db) as session:
        assert session.exec(select(Delivery)).one().op == ""
    client.post(f"/console/sends/{send_id}/recall", data={"csrf": csrf, "sure": "yes"})
    with Session(service.db) as session:
        assert session.exec(select(Delivery)).one().op == "delete"
    assert any(a[1] == "announce.recall" for a in audited(service))
    update = client.post(f"/console/sends/{send_id}/update", data={"csrf": csrf})
    assert update.status_code == 303
    assert client.post(f"/console/sends/{send_id}/explode", data={"csrf": csrf}).status_code == 404


def test_the_progress_fragment_polls_while_sending(
    client: Client, csrf: str, service: Service
) -> None:
    send_id = make_send(service, "users:U1,U2")
    service.announcer.tick()
    fragment = client.get(f"/console/sends/{send_id}/progress", headers={"HX-Request": "true"})
    assert 'hx-trigger="every 2s"' in fragment.text and 'value="0"' in fragment.text
    drain(service)
    fragment = client.get(f"/console/sends/{send_id}/progress")
    assert "hx-trigger" not in fragment.text and 'value="2"' in fragment.text
    assert client.get("/console/sends/999/progress").status_code == 404


# --- surveys ---------------------------------------------------------------------------------


def readiness_rows(
    count: int, *, site: str = "Coventry DC"
) -> list[tuple[dict[str, object], dict[str, str]]]:
    rows = []
    for n in range(count):
        answers: dict[str, object] = {
            q: 1 + (n % 5)
            for q in ("awareness", "desire", "knowledge", "ability", "reinforcement", "confidence")
        }
        answers["recommend"] = n % 11
        answers["comment"] = "More training please" if n < 6 else ""
        rows.append((answers, {"site": site}))
    return rows


def test_results_are_charts_of_the_published_figures_only(
    client: Client, csrf: str, service: Service
) -> None:
    survey = service.surveys.surveys["readiness"]
    responses = readiness_rows(12) + readiness_rows(2, site="Dublin office")
    run_id = insert_run(
        service.db, survey, invitations=[r[1] for r in responses] * 2, responses=responses
    )
    report = run_results(db=service.db, survey=survey, run_id=run_id)
    assert report["segments"]["site"]["Dublin office"].get("suppressed")  # 2 < min_group 5
    listing = client.get("/console/surveys")
    assert "How ready do you feel" in listing.text and "14 of 28" in listing.text
    page = client.get("/console/surveys/readiness/runs/1")
    assert page.status_code == 200
    assert page.text.count('<svg class="chart"') == 7  # six Likert questions and eNPS
    assert "eNPS" in page.text and "More training please" in page.text
    assert "hidden (small group)" in page.text
    dublin = page.text[page.text.index("Dublin office") :][:300]
    assert "hidden" in dublin and '<td class="num">2</td>' not in dublin


def test_an_open_anonymous_run_shows_no_results(
    client: Client, csrf: str, service: Service
) -> None:
    survey = service.surveys.surveys["readiness"]
    insert_run(service.db, survey, invitations=[{}] * 6, responses=[], state="open")
    page = client.get("/console/surveys/readiness/runs/1")
    assert "shown once the run closes" in page.text and "<svg" not in page.text
    assert client.get("/console/surveys/readiness/runs/9").status_code == 404
    assert client.get("/console/surveys/nope/runs/1").status_code == 404


def test_a_run_below_min_group_shows_nothing(client: Client, csrf: str, service: Service) -> None:
    survey = service.surveys.surveys["readiness"]
    responses = readiness_rows(3)
    insert_run(service.db, survey, invitations=[r[1] for r in responses], responses=responses)
    page = client.get("/console/surveys/readiness/runs/1")
    assert "Only 3 responses" in page.text and "<svg" not in page.text


def test_the_overview_shows_plan_sends_and_surveys(
    client: Client, csrf: str, service: Service
) -> None:
    make_send(service, "users:U1")
    page = client.get("/console/")
    assert page.status_code == 200
    assert "#1 go-live-day" in page.text and "Open surveys" in page.text


# --- new templates -----------------------------------------------------------------------


def test_a_new_template_is_refused_for_a_bad_or_taken_id_then_created_committed_and_audited(
    client: Client, csrf: str, service: Service
) -> None:
    root = service.settings.content_dir
    git = git_in(root)
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=Setup", "-c", "user.email=setup@example.com", "commit", "-qm", "start")
    before = sorted(p.name for p in (root / "messages/announcements").iterdir())
    page = client.get("/console/templates")
    assert 'action="/console/templates/new"' in page.text
    assert client.post("/console/templates/new", data={"id": "payroll"}).status_code == 400
    for bad in ("Payroll Reminder", "../x", "", "-x"):
        refused = client.post("/console/templates/new", data={"csrf": csrf, "id": bad})
        assert refused.status_code == 303
        assert "is not a template id" in client.get(refused.headers["Location"]).text
    taken = client.post("/console/templates/new", data={"csrf": csrf, "id": "go-live-day"})
    assert "exists already" in client.get(taken.headers["Location"]).text
    assert not [a for a in audited(service) if a[1] == "console.template.create"]
    assert sorted(p.name for p in (root / "messages/announcements").iterdir()) == before

    made = client.post("/console/templates/new", data={"csrf": csrf, "id": "payroll-reminder"})
    assert made.status_code == 303
    assert made.headers["Location"].endswith("/console/templates/payroll-reminder")
    path = root / "messages/announcements/payroll-reminder.md"
    assert path.is_file() and oct(path.stat().st_mode & 0o777) == "0o644"
    assert "payroll-reminder" in service.announcer.content.templates  # loaded, no errors
    editor = client.get(made.headers["Location"])
    assert "Created messages/announcements/payroll-reminder.md" in editor.text
    assert "No errors" in editor.text and 'data-testid="slack-preview"' in editor.text
    assert git("log", "-1", "--format=%an|%s") == (
        "chika|Create announcement template payroll-reminder (console)"
    )
    assert (
        ADMIN,
        "console.template.create",
        f"messages/announcements/payroll-reminder.md (commit {git('rev-parse', '--short', 'HEAD')})",
    ) in audited(service)
    # then the ordinary editor saves it
    text = path.read_text(encoding="utf-8").replace("Write the message here", "Payroll runs")
    assert (
        client.post(
            "/console/templates/payroll-reminder", data={"csrf": csrf, "source": text}
        ).status_code
        == 303
    )
    assert "Payroll runs" in service.announcer.content.templates["payroll-reminder"].body
    assert git("status", "--porcelain") == ""


# --- the Teams card preview ----------------------------------------------------------------


def test_no_teams_preview_without_teams(client: Client, csrf: str, service: Service) -> None:
    assert service.platforms.teams is None
    page = client.get("/console/templates/go-live-day")
    assert 'data-testid="slack-preview"' in page.text and "teams-preview" not in page.text


@pytest.fixture
def teams_client(
    database_url: str, content_dir: Path, slack: FakeSlack, clock: Shift
) -> Iterator[tuple[Client, Console, Service]]:
    with FakeTeams() as teams:
        settings = bot_settings(
            database_url=database_url,
            content_dir=content_dir,
            slack=slack,
            MOBILIZE_PUBLIC_URL=PUBLIC_URL,
            MOBILIZE_CONSOLE_SECRET="console-test-secret",
            **teams.settings(),
        )
        running = Service(settings)
        running.ready.set()
        try:
            console = build_console(running, clock=clock)
            yield (
                Client(WebApp(running.app, ready=running.ready.is_set, console=console)),
                console,
                running,
            )
        finally:
            running.stop()


def test_the_teams_card_preview_is_drawn_from_the_card_the_sender_posts(
    teams_client: tuple[Client, Console, Service],
) -> None:
    client, console, service = teams_client
    parts = service.platforms.teams
    assert parts is not None
    csrf = sign_in(client, console)
    text = (service.settings.content_dir / TEMPLATE).read_text(encoding="utf-8")
    fragment = client.post(
        "/console/templates/go-live-day/preview",
        data={"source": text, "person": "U1"},
        headers={"HX-Request": "true", "X-CSRF-Token": csrf},
    )
    assert fragment.status_code == 200
    assert 'data-testid="slack-preview"' in fragment.text
    assert 'data-testid="teams-preview"' in fragment.text
    # the card the Teams sender would post for this person, rendered by its own code
    template = service.announcer.content.templates["go-live-day"]
    recipient, _note = console.recipient("U1")
    message = render(
        template,
        service.announcer.content.rollout,
        user=recipient,
        now=console.clock(),
        ack_value="preview",
    )
    card = parts.chat.render(message).card
    shown = re.search(r'data-testid="teams-card-json">(.*?)</pre>', fragment.text, re.S)
    assert shown and json.loads(html.unescape(shown.group(1))) == card
    drawn = fragment.text.split('data-testid="teams-preview"', 1)[1].split("</details>", 1)[0]
    for action in card["actions"]:  # the link buttons, as Teams shows them
        assert f'class="tm-button" href="{action["url"]}"' in drawn and action["title"] in drawn
    assert "<strong>Compass</strong>" in drawn and "Good morning Alice!" in drawn
    assert '<a class="tm-link" href="https://' in drawn  # Markdown links of the text blocks
    editor = client.get("/console/templates/go-live-day")
    assert 'data-testid="teams-preview"' in editor.text


def test_the_teams_card_drawing_escapes_and_links_only_the_web() -> None:
    card = {
        "body": [
            {"type": "TextBlock", "text": "**Hi** <at>Bob</at> <b>x</b> [a](javascript:alert(1))"},
            {"type": "FactSet", "facts": [{"title": "When", "value": "_today_"}]},
            {
                "type": "Container",
                "items": [
                    {
                        "type": "ActionSet",
                        "actions": [
                            {"type": "Action.Execute", "title": "Ack <now>", "style": "positive"}
                        ],
                    }
                ],
            },
        ],
        "actions": [{"type": "Action.OpenUrl", "title": "Go", "url": "javascript:alert(1)"}],
    }
    drawn = str(card_html(card))
    assert "<strong>Hi</strong>" in drawn and '<span class="tm-mention">Bob</span>' in drawn
    assert "&lt;b&gt;x&lt;/b&gt;" in drawn and 'href="javascript' not in drawn
    assert "<dt><p>When</p>" in drawn and "<dd><p><em>today</em></p>" in drawn
    assert (
        '<span class="tm-button tm-button-positive" aria-disabled="true">Ack &lt;now&gt;</span>'
        in drawn
    )
    assert '<span class="tm-button" aria-disabled="true">Go</span>' in drawn


# --- the send page's buttons ----------------------------------------------------------------


def manage(client: Client, send_id: int) -> set[str]:
    page = client.get(f"/console/sends/{send_id}")
    assert page.status_code == 200
    section = page.text.split("<h2>Manage</h2>", 1)[1]
    return set(re.findall(rf"/console/sends/{send_id}/(\w+)\"", section)) - {"export"}


def test_the_manage_buttons_fit_the_sends_state(
    client: Client, csrf: str, service: Service
) -> None:
    later = make_send(service, "users:U1,U2")
    with Session(service.db) as session:
        row = session.get(AnnouncementSend, later)
        assert row is not None
        row.due_at = datetime.now(UTC) + timedelta(days=1)
        session.commit()
    assert manage(client, later) == {"cancel"}  # planned: nothing sent, nothing failed

    send_id = make_send(service, "users:U1,U2")
    service.announcer.tick()
    with Session(service.db) as session:
        failed = session.exec(select(Delivery).where(Delivery.recipient == "U2")).one()
        failed.state, failed.error = "failed", "ratelimited"
        session.commit()
        failed_id = failed.id
    drain(service)
    assert manage(client, send_id) == {"resend", "update", "recall"}  # done: no cancel
    client.post(f"/console/sends/{send_id}/recall", data={"csrf": csrf, "sure": "yes"})
    assert manage(client, send_id) == set()  # recalled: no update, recall or resend
    stale = client.post(f"/console/sends/{send_id}/resend", data={"csrf": csrf})
    assert "Not done: it was recalled" in client.get(stale.headers["Location"]).text
    with Session(service.db) as session:
        assert session.get(Delivery, failed_id).state == "failed"  # type: ignore[union-attr]
    assert [a for a in audited(service) if a[1] == "announce.resend"] == []

    clean = make_send(service, "users:U1")
    drain(service)
    assert manage(client, clean) == {"update", "recall"}  # nothing failed: no resend
    client.post(f"/console/sends/{later}/cancel", data={"csrf": csrf, "sure": "yes"})
    assert manage(client, later) == set()  # cancelled: nothing left to do
    again = client.post(f"/console/sends/{later}/cancel", data={"csrf": csrf, "sure": "yes"})
    assert "Not done: nothing is left to send" in client.get(again.headers["Location"]).text
    assert len([a for a in audited(service) if a[1] == "announce.cancel"]) == 1
    assert client.post(f"/console/sends/{clean}/recall", data={"sure": "yes"}).status_code == 400
