"""The console's pages: template editing as `mobilize check` checks, previews, the audience
picker, sending and managing sends through the core, survey results through suppression."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlmodel import Session, col, select
from werkzeug.test import Client

from bot.console.app import Console
from bot.console.render import mrkdwn_to_html
from bot.core.announcements import sends
from bot.core.surveys.report import run_results
from bot.service import Service
from bot.store.models import AnnouncementSend, AuditLog, Delivery
from tests.auxil.running import ADMIN
from tests.auxil.surveys import insert_run
from tests.console.conftest import sign_in

TEMPLATE = "messages/announcements/go-live-day.md"


@pytest.fixture
def csrf(client: Client, console: Console) -> str:
    return sign_in(client, console)


def actions(service: Service) -> list[tuple[str, str, str]]:
    with Session(service.db) as session:
        rows = session.exec(select(AuditLog).order_by(col(AuditLog.id))).all()
    return [(row.actor, row.action, row.detail) for row in rows]


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
    assert not [a for a in actions(service) if a[1] == "console.template.save"]


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
    assert (ADMIN, "console.template.save", TEMPLATE) in actions(service)


def test_a_save_in_a_git_repository_is_a_commit_by_the_admin(
    client: Client, csrf: str, service: Service
) -> None:
    root = service.settings.content_dir

    def git(*args: str) -> str:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=Setup", "-c", "user.email=setup@example.com", "commit", "-qm", "start")
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
        for a in actions(service)
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
    assert any(a[1] == "announce.resend" for a in actions(service))


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
    assert any(a[1] == "announce.recall" for a in actions(service))
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
