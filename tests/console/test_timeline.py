"""The timeline page: the rollout's milestones and the announcements and survey runs planned
around them, from the same plan functions as `mobilize announce plan` and the survey runner."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta

from werkzeug.test import Client

from bot.console.app import Console
from bot.core.announcements.plan import occurrences
from bot.core.surveys.definitions import runs
from bot.service import Service
from tests.console.conftest import sign_in


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
            opens = run.starts_utc.astimezone(rollout.zone)
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
