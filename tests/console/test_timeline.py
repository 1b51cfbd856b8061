"""The timeline page: the rollout's milestones and the announcements and survey runs planned
around them, from the same plan functions as `mobilize announce plan` and the survey runner."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from pathlib import Path

import pytest
from werkzeug.test import Client, TestResponse

from bot.config import SettingsError, load_settings
from bot.console.app import Console
from bot.core.announcements.plan import occurrences
from bot.core.surveys.definitions import recipient_times, runs
from bot.service import Service
from tests.auxil.running import ADMIN, bot_settings
from tests.console.conftest import audited, csrf_of, git_repo, sign_in
from tests.slack.fake_slack import FakeSlack


def test_the_timeline_lists_milestones_and_what_is_planned_around_them(
    client: Client, console: Console, service: Service
) -> None:
    sign_in(client, console)
    page = client.get("/console/timeline")
    assert page.status_code == 200
    html = page.text

    content = service.announcer.content
    rollout = content.rollout
    assert rollout.milestones, "the example content has milestones"
    for name, day in rollout.milestones.items():
        assert f"milestone</span> {name}" in html
        assert f'datetime="{day.isoformat()}"' in html

    # every announcement occurrence and survey run between the first and the last milestone,
    # as the plan functions compute them
    days = sorted(rollout.milestones.values())
    start = datetime.combine(days[0], time(), rollout.zone)
    end = datetime.combine(days[-1] + timedelta(days=1), time(), rollout.zone)
    planned = occurrences(content.plan, rollout, start=start, end=end)
    assert planned
    for occurrence in planned:
        assert f"announcement</span> {occurrence.announcement_id}" in html
    for schedule in service.surveys.schedules:
        for run in runs(schedule, rollout, start=start, end=end):
            # on its wall clock in the rollout's zone (a local_time run's own clock)
            times = recipient_times(schedule, run, tz=None, rollout=rollout)
            opens = times.invite_utc.astimezone(rollout.zone)
            assert f'datetime="{opens.date().isoformat()}"' in html
            assert f"survey</span> {schedule.survey}" in html

    # in date order, each placed against its nearest milestone
    shown = re.findall(r'datetime="(\d{4}-\d{2}-\d{2})"', html)
    assert shown == sorted(shown)
    assert re.search(r"\d+ days? (before|after) \w+|on \w+", html)
    go_live = rollout.milestones.get("go_live")
    if go_live is not None:
        assert html.index("milestone</span> go_live") > html.index(f"{go_live:%B %Y}")


def test_the_timeline_is_in_the_navigation_and_needs_a_session(
    client: Client, console: Console
) -> None:
    assert client.get("/console/timeline").status_code == 401
    sign_in(client, console)
    assert 'href="/console/timeline"' in client.get("/console/").text


# --- audience sizes and the message budget -----------------------------------------------------

ROLLOUT = "schedules/rollout.yaml"


def rows_of(html: str, name: str) -> list[str]:
    """The table rows of the timeline naming `name`."""
    return [
        row
        for row in re.findall(r"<tr[^>]*>.*?</tr>", html, re.S)
        if re.search(rf"</span> {re.escape(name)}</th>", row)
    ]


def test_each_announcement_and_survey_run_shows_its_audience_size(
    client: Client, console: Console, service: Service
) -> None:
    plan = service.settings.content_dir / "schedules" / "announcements.yaml"
    plan.write_text(
        plan.read_text(encoding="utf-8")
        + "\n  - id: warehouse-note\n    template: go-live-day\n    to: members:C5\n"
        '    at: "go_live at 12:00"\n'
        "\n  - id: lost-channel\n    template: go-live-day\n    to: members:C404\n"
        '    at: "go_live at 13:00"\n',
        encoding="utf-8",
    )
    assert service.announcer.load() == []
    sign_in(client, console)
    page = client.get("/console/timeline")
    assert page.status_code == 200
    # everyone: U1, U2 and U3 (the bot and the deactivated U9 are left out)
    for name in ("go-live-day", "go-live-countdown", "readiness"):
        rows = rows_of(page.text, name)
        assert rows, name
        assert all(
            re.search(r'class="audience-size"><span title="[^"]*">3 people<', r) for r in rows
        )
    (warehouse,) = rows_of(page.text, "warehouse-note")
    assert ">1 person<" in warehouse
    # an audience that does not resolve says why; the page still works
    (lost,) = rows_of(page.text, "lost-channel")
    assert "not resolved:" in lost and "Traceback" not in page.text


def test_weeks_over_the_message_budget_are_flagged_with_who_and_what(
    client: Client, console: Console, service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert service.settings.message_budget == 3  # the default
    sign_in(client, console)
    html = client.get("/console/timeline").text
    weeks = {
        m.group(1): m.group(0)
        for m in re.finditer(r'<tr[^>]*>\s*<th scope="row">(\d{4}-W\d{2}) .*?</tr>', html, re.S)
    }
    # the week before go-live: the countdown Tue-Fri (4), a readiness run (invitation and 2
    # reminders), the read-only notice and its reminder: 9 messages for each of the 3 people
    w13 = weeks["2027-W13"]
    assert 'class="over-budget"' in w13
    assert "9 / 3" in w13 and "3 people over" in w13
    assert "go-live-countdown" in w13 and "peopledesk-read-only reminder" in w13
    # training opens (Mon 15 Feb) and the first readiness run (invitation Tue 16, reminders
    # Thu 18 and Sat 20): 4 messages, over the budget of 3
    assert "4 / 3" in weeks["2027-W07"] and "readiness reminder 2" in weeks["2027-W07"]
    # go-live week: Monday's countdown, go-live day and the hypercare check-in: exactly at
    # the budget, not flagged
    assert "3 / 3" in weeks["2027-W14"] and "over-budget" not in weeks["2027-W14"]
    assert "1 / 3" in weeks["2027-W08"] and "over-budget" not in weeks["2027-W08"]
    assert "week over budget" in html

    # the setting is read as it is: exactly at the budget is not flagged
    monkeypatch.setattr(service.settings, "message_budget", 9)
    html = client.get("/console/timeline").text
    assert "9 / 9" in html and "2027-W13" in html
    assert 'class="over-budget"' not in html and "No week is over budget." in html


def test_the_budget_setting_has_a_default_and_a_named_error(tmp_path: Path) -> None:
    assert load_settings(MOBILIZE_CONTENT_DIR=str(tmp_path)).message_budget == 3
    assert load_settings(MOBILIZE_MESSAGE_BUDGET="5").message_budget == 5
    with pytest.raises(SettingsError, match="MOBILIZE_MESSAGE_BUDGET"):
        load_settings(MOBILIZE_MESSAGE_BUDGET="-1")


def test_the_send_form_warns_when_a_send_pushes_people_over_the_budget(
    client: Client, console: Console, service: Service
) -> None:
    csrf = sign_in(client, console)

    def confirm(at: str) -> str:
        response = client.post(
            "/console/send",
            data={
                "csrf": csrf,
                "template": "go-live-day",
                "to": "everyone",
                "when": "later",
                "at": at,
            },
        )
        assert response.status_code == 200, response.text[:300]
        assert "Check and confirm" in response.text
        return response.text

    busy = confirm("2027-04-01T12:00")  # the week before go-live: 6 messages each already
    assert "Message budget: in the week of Mon 29 Mar" in busy
    assert "3 people over 3 messages per person" in busy and "over it already" in busy
    assert "go-live-countdown" in busy
    # a week with nothing planned: one send is within budget
    calm = confirm("2027-08-10T12:00")
    assert "Message budget" not in calm


# --- moving a milestone ------------------------------------------------------------------------


def move_rows(html: str) -> dict[str, list[tuple[str, str]]]:
    """label -> [(now, after the move)] from the preview's table."""
    found: dict[str, list[tuple[str, str]]] = {}
    for row in re.findall(r'<tr class="move">(.*?)</tr>', html, re.S):
        label = re.search(r"</span> ([^<]+)</th>", row)
        cells = re.findall(r"<td>(.*?)</td>", row, re.S)
        assert label and len(cells) == 2
        text = [re.sub(r"<[^>]+>", "", cell).strip() for cell in cells]
        found.setdefault(label.group(1).strip(), []).append((text[0], text[1]))
    return found


def test_the_move_preview_lists_what_moves_old_to_new_and_what_stays(
    client: Client, console: Console, service: Service
) -> None:
    sign_in(client, console)
    rollout_before = (service.settings.content_dir / ROLLOUT).read_bytes()
    page = client.get("/console/timeline/move?milestone=go_live&day=2027-04-13")
    assert page.status_code == 200
    moves = move_rows(page.text)
    # in the rollout's zone (Europe/London); local_time ones at their wall clock
    assert moves["go-live-day"] == [("Tue 06 Apr 2027 08:00", "Tue 13 Apr 2027 08:00")]
    assert ("Tue 30 Mar 2027 09:30", "Tue 06 Apr 2027 09:30") in moves["go-live-countdown"]
    assert len(moves["go-live-countdown"]) == 5  # weekdays go_live-7 .. go_live-1
    # weekly from go_live + 3 days until hypercare_ends - 1 day (fixed): the first is dropped,
    # the others stay
    assert moves["hypercare-check-in"] == [("Fri 09 Apr 2027 14:00", "no longer sent")]
    # readiness runs fortnightly until go_live + 12 weeks: a week later reaches 6 July, which
    # adds a run and its reminders; the earlier runs (from training_opens) stay
    assert moves["readiness"] == [("not sent", "Tue 06 Jul 2027 10:00")]
    assert moves["readiness reminder 1"] == [("not sent", "Thu 08 Jul 2027 10:00")]
    assert "training-opens" not in moves and "peopledesk-read-only" not in moves
    kept = re.findall(r'<li class="kept-item">([^:]+):', page.text)
    assert "training-opens" in kept and "peopledesk-read-only" in kept and "readiness" in kept
    assert 'action="/console/timeline/move"' in page.text and "Save: move go_live" in page.text
    # previewing writes nothing
    assert (service.settings.content_dir / ROLLOUT).read_bytes() == rollout_before

    partial = client.get(
        "/console/timeline/move?milestone=go_live&day=2027-04-13", headers={"HX-Request": "true"}
    )
    assert partial.status_code == 200 and "<html" not in partial.text
    assert move_rows(partial.text) == moves
    # the timeline offers the move, with HTMX and without
    timeline = client.get("/console/timeline").text
    assert 'hx-get="/console/timeline/move"' in timeline and '<option value="go_live">' in timeline


def save_move(client: Client, csrf: str, milestone: str, day: str, **extra: str) -> TestResponse:
    return client.post(
        "/console/timeline/move", data={"csrf": csrf, "milestone": milestone, "day": day, **extra}
    )


def test_saving_a_move_edits_only_that_line_reloads_and_is_audited(
    client: Client, console: Console, service: Service
) -> None:
    csrf = sign_in(client, console)
    path = service.settings.content_dir / ROLLOUT
    before = path.read_text(encoding="utf-8").splitlines(keepends=True)
    preview = client.get("/console/timeline/move?milestone=go_live&day=2027-04-13").text
    base = re.search(r'name="base" value="([^"]+)"', preview)
    assert base
    response = save_move(client, csrf, "go_live", "2027-04-13", base=base.group(1))
    assert response.status_code == 303, response.text[:500]
    after = path.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(after) == len(before)
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [
        (
            "  go_live: 2027-04-06                     # Compass live for everyone (start of UK tax year)\n",
            "  go_live: 2027-04-13                     # Compass live for everyone (start of UK tax year)\n",
        )
    ]
    # the running bot's content is current at once
    assert str(service.announcer.content.rollout.milestones["go_live"]) == "2027-04-13"
    assert str(service.surveys.rollout.milestones["go_live"]) == "2027-04-13"
    assert (
        ADMIN,
        "console.milestone.move",
        f"go_live: 2027-04-06 -> 2027-04-13 in {ROLLOUT}",
    ) in audited(service)
    page = client.get("/console/timeline").text
    assert "Moved go_live to Tue 13 Apr 2027" in page
    assert (
        "(go_live 2027-04-13)" not in page
        and '<option value="go_live">go_live (2027-04-13)' in page
    )


def test_a_move_in_a_git_repository_is_a_commit_by_the_admin(
    client: Client, console: Console, service: Service
) -> None:
    root = service.settings.content_dir

    git = git_repo(root)
    csrf = sign_in(client, console)
    assert save_move(client, csrf, "pilot_ends", "2027-02-25").status_code == 303
    assert git("log", "-1", "--format=%an <%ae>|%s") == (
        "chika <chika@example.com>|Move milestone pilot_ends from 2027-02-26 to 2027-02-25 (console)"
    )
    assert git("status", "--porcelain") == ""
    assert git("show", "--stat", "--format=", "HEAD").startswith(ROLLOUT)
    commit = git("rev-parse", "--short", "HEAD")
    assert any(a[1] == "console.milestone.move" and commit in a[2] for a in audited(service))
    assert f"Committed as {commit}" in client.get("/console/timeline").text


def test_a_bad_date_or_a_move_that_breaks_the_plan_is_refused_and_nothing_is_written(
    client: Client, console: Console, service: Service
) -> None:
    csrf = sign_in(client, console)
    path = service.settings.content_dir / ROLLOUT
    original = path.read_bytes()

    for day in ("2027-02-30", "next tuesday", ""):
        refused = save_move(client, csrf, "go_live", day)
        assert refused.status_code == 422
        assert "Give the new date as YYYY-MM-DD" in refused.text
    assert save_move(client, csrf, "go_liev", "2027-04-13").status_code == 422
    same = save_move(client, csrf, "go_live", "2027-04-06")
    assert same.status_code == 422 and "nothing moves" in same.text

    # training-reminder runs from training_opens + 1 week (22 Feb) until training_deadline
    preview = client.get("/console/timeline/move?milestone=training_deadline&day=2027-02-20")
    assert preview.status_code == 200
    assert "makes the plan invalid" in preview.text
    assert "from (2027-02-22) is after until (2027-02-20)" in preview.text
    assert "schedules/announcements.yaml:" in preview.text
    assert "Save: move" not in preview.text
    broken = save_move(client, csrf, "training_deadline", "2027-02-20")
    assert broken.status_code == 422
    assert "from (2027-02-22) is after until (2027-02-20)" in broken.text
    assert "Traceback" not in broken.text

    # a preview of a file that changed since is not saved over
    stale = save_move(client, csrf, "go_live", "2027-04-13", base="0" * 64)
    assert stale.status_code == 409 and "changed since the preview" in stale.text

    assert path.read_bytes() == original
    assert str(service.announcer.content.rollout.milestones["training_deadline"]) == "2027-03-19"
    assert not [a for a in audited(service) if a[1] == "console.milestone.move"]


def test_a_move_without_the_csrf_token_or_by_a_non_admin_is_refused(
    client: Client, console: Console, service: Service, database_url: str, slack: FakeSlack
) -> None:
    path = service.settings.content_dir / ROLLOUT
    original = path.read_bytes()
    assert client.get("/console/timeline/move?milestone=go_live&day=2027-04-13").status_code == 401
    assert save_move(client, "", "go_live", "2027-04-13").status_code == 401
    sign_in(client, console)
    no_token = client.post(
        "/console/timeline/move", data={"milestone": "go_live", "day": "2027-04-13"}
    )
    assert no_token.status_code == 400 and "This form has expired" in no_token.text
    wrong = save_move(client, "not-the-token", "go_live", "2027-04-13")
    assert wrong.status_code == 400

    csrf = csrf_of(client.get("/console/timeline"))
    service.settings = bot_settings(
        database_url=database_url,
        content_dir=service.settings.content_dir,
        slack=slack,
        MOBILIZE_ADMINS="U2",
    )
    service.admins.users = frozenset({"U2"})
    assert client.get("/console/timeline").status_code == 403
    assert client.get("/console/timeline/move?milestone=go_live&day=2027-04-13").status_code == 403
    refused = save_move(client, csrf, "go_live", "2027-04-13")
    assert refused.status_code == 403 and "Not an admin" in refused.text
    assert path.read_bytes() == original
    assert not [a for a in audited(service) if a[1] == "console.milestone.move"]
