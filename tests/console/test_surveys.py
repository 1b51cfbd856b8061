"""The console's survey pages: trends with confidence bands, the ADKAR heat map through the
suppression layer (and what a reader of the HTML can learn about a small group: nothing),
barrier links, and start / close / share through the same core as `mobilize survey`."""

from __future__ import annotations

import html
import re
from typing import Any
from urllib.parse import quote

import pytest
from sqlmodel import Session, select
from werkzeug.test import Client

from bot.console.app import Console
from bot.core.surveys.report import run_results, runs_of
from bot.service import Service
from bot.store.models import SurveyRun, SurveyShare
from tests.auxil.running import ADMIN, bot_settings
from tests.auxil.surveys import QUICK, insert_run, load_survey
from tests.console.conftest import audited, sign_in
from tests.slack.fake_slack import FakeSlack

STAGES = ("awareness", "desire", "knowledge", "ability", "reinforcement")
Rows = list[tuple[dict[str, Any], dict[str, str]]]


def rows(
    count: int,
    segments: dict[str, str],
    *,
    scores: dict[str, int] | None = None,
    spread: bool = True,
    skip: frozenset[str] = frozenset(),
    skip_from: int = 0,
) -> Rows:
    """`count` readiness answers: every ADKAR stage at `scores` (default 4), varied by ±1
    when `spread`; questions in `skip` left out by answers from index `skip_from` on."""
    found: Rows = []
    for n in range(count):
        wobble = (n % 3) - 1 if spread else 0
        answers: dict[str, Any] = {}
        for question in (*STAGES, "confidence"):
            base = (scores or {}).get(question, 4)
            answers[question] = min(5, max(1, base + wobble))
        answers["recommend"] = (n * 3) % 11
        answers["comment"] = ""
        for question in skip:
            if n >= skip_from:
                del answers[question]
        found.append((answers, dict(segments)))
    return found


LAYOUT = re.compile(
    r'\s(?:x|y|x1|y1|x2|y2|width|height|colspan|font-size|fill|text-anchor|class|scope)="[^"]*"'
)


def layout_free(markup: str) -> str:
    """`markup` without the attributes that only place and colour things."""
    return LAYOUT.sub("", markup)


def insert(service: Service, responses: Rows, *, number: int = 1, state: str = "closed") -> int:
    survey = service.surveys.surveys["readiness"]
    return insert_run(
        service.db,
        survey,
        invitations=[segments for _answers, segments in responses],
        responses=responses,
        number=number,
        state=state,
    )


# --- trends -------------------------------------------------------------------------------


def test_the_trend_draws_each_run_with_its_95_percent_band(
    client: Client, csrf: str, service: Service
) -> None:
    for number, level in enumerate((2, 3, 4), start=1):
        insert(service, rows(12, {}, scores={"awareness": level}), number=number)
    page = client.get("/console/surveys/readiness")
    assert page.status_code == 200
    # Six Likert questions and the eNPS, each a line with a band over the three runs.
    assert page.text.count('<svg class="survey-chart trend"') == 7
    awareness = page.text[page.text.index('data-testid="trend-awareness"') :]
    awareness = awareness[: awareness.index("</section>")]
    assert awareness.count('<polygon class="band"') == 1
    assert awareness.count('<polyline class="line"') == 1
    assert awareness.count('<circle class="point') == 3
    survey = service.surveys.surveys["readiness"]
    for run in runs_of(service.db, "readiness"):  # the published figures, as the core has them
        summary = run_results(db=service.db, survey=survey, run_id=int(run.id or 0))
        figure = summary["overall"]["questions"]["awareness"]
        lo, hi = figure["ci95"]
        assert f"run {run.number}: {figure['mean']:.2f} (95% interval {lo:.2f} to {hi:.2f}" in (
            html.unescape(awareness)
        )
    # 2 → 3 → 4 with twelve answers each: both steps are flagged by the trend test.
    assert awareness.count("significant") >= 2 and "<title" in awareness and "<desc" in awareness


def test_a_suppressed_run_is_a_gap_not_a_value(client: Client, csrf: str, service: Service) -> None:
    insert(service, rows(12, {}, scores={"awareness": 2}), number=1)
    hidden = rows(3, {}, scores={"awareness": 1}, spread=False)  # 3 < min_group 5
    insert(service, hidden, number=2)
    insert(service, rows(12, {}, scores={"awareness": 4}), number=3)
    page = client.get("/console/surveys/readiness")
    awareness = page.text[page.text.index('data-testid="trend-awareness"') :]
    awareness = awareness[: awareness.index("</section>")]
    assert "run 2: hidden: fewer than 5 answers" in awareness
    assert awareness.count('<g class="gap">') == 1
    assert awareness.count('<circle class="point') == 2
    assert '<polyline class="line"' not in awareness  # no line across the gap
    assert "1.00" not in awareness  # the hidden run's mean is nowhere
    table_row = re.search(r'<th scope="row">2</th>(.*?)</tr>', awareness, re.S)
    assert table_row and "hidden" in table_row.group(1)
    assert not re.search(r"\d", layout_free(table_row.group(1)).replace("fewer than 5", ""))


def test_trends_wait_for_two_closed_runs(client: Client, csrf: str, service: Service) -> None:
    insert(service, rows(12, {}), number=1)
    insert(service, rows(0, {}), number=2, state="open")
    page = client.get("/console/surveys/readiness")
    assert page.status_code == 200 and "this survey has 1" in page.text
    assert client.get("/console/surveys/nope").status_code == 404


# --- the ADKAR heat map ---------------------------------------------------------------------


def heat_map_run(service: Service) -> int:
    """Coventry (12, barrier knowledge), Dublin (7, barrier awareness; only 3 answered
    reinforcement), Head office (2 people, all answering 1: hidden), 5 people in no site."""
    responses = (
        rows(12, {"site": "Coventry DC"}, scores={"knowledge": 2})
        + rows(
            7,
            {"site": "Dublin office"},
            scores={"awareness": 2},
            skip=frozenset({"reinforcement"}),
            skip_from=3,
        )
        + rows(2, {"site": "Head office"}, scores=dict.fromkeys(STAGES, 1), spread=False)
        + rows(5, {}, scores={"desire": 5})
    )
    return insert(service, responses)


def test_the_heat_map_shows_published_scores_and_marks_each_barrier(
    client: Client, csrf: str, service: Service
) -> None:
    run_id = heat_map_run(service)
    survey = service.surveys.surveys["readiness"]
    report = run_results(db=service.db, survey=survey, run_id=run_id)
    coventry = report["segments"]["site"]["Coventry DC"]
    page = client.get("/console/surveys/readiness/runs/1")
    assert page.status_code == 200
    assert page.text.count('<svg class="survey-chart heatmap"') == 1
    table = page.text[page.text.index('id="heat-h"') :]
    table = table[: table.index("</table>")]
    row = re.search(r"Site: Coventry DC</th>(.*?)</tr>", table, re.S)
    assert row is not None
    for stage in STAGES:
        assert f"{coventry['questions'][stage]['mean']:.2f}" in row.group(1)
    assert '<td class="num barrier">' in row.group(1) and "knowledge: what helps" in row.group(1)
    dublin = re.search(r"Site: Dublin office</th>(.*?)</tr>", table, re.S)
    assert dublin is not None and "awareness: what helps" in dublin.group(1)
    assert report["segments"]["site"]["Dublin office"]["questions"]["reinforcement"]["suppressed"]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", dublin.group(1), re.S)
    assert "hidden" in cells[STAGES.index("reinforcement")]
    assert "Dublin office, reinforcement: hidden" in page.text  # in the chart's cell title
    assert "barrier knowledge" in page.text  # the chart's text alternative names it


def test_a_small_group_leaves_no_number_anywhere_in_the_page(
    client: Client, csrf: str, service: Service
) -> None:
    """The attacker reads the HTML, attributes and text alternatives included."""
    heat_map_run(service)
    page = client.get("/console/surveys/readiness/runs/1")
    text = html.unescape(page.text)
    assert "Head office" in text  # the group exists (its name is in the survey file)
    # The chart's text alternative lists it as hidden, without figures.
    desc = re.search(r'<desc id="adkar-d">(.*?)</desc>', text, re.S)
    assert desc is not None
    mention = desc.group(1)[desc.group(1).index("Site: Head office") :].split(";")[0]
    assert mention == "Site: Head office: hidden (too few answers)."
    rest = text.replace(desc.group(0), "")
    spots = [m.start() for m in re.finditer("Head office", rest)]
    assert len(spots) >= 4  # the heat map's label and cell, its table row, the segment table
    for spot in spots:
        # The innermost element around each mention (a table row, an SVG text or title),
        # with every attribute but layout kept: no digit may be left.
        start = max(rest.rfind(tag, 0, spot) for tag in ("<tr", "<text", "<rect", "<title"))
        end = min(
            i for i in (rest.find(tag, spot) for tag in ("</tr>", "</text>", "</title>")) if i != -1
        )
        around = layout_free(rest[start:end])
        assert "Head office" in around and not re.search(r"\d", around), around
    # Its means (all 1) and its size are not among the heat map's values.
    heat = text[text.index('id="heat-h"') : text.index("</table>", text.index('id="heat-h"'))]
    assert "1.00" not in heat and ">1.0<" not in text
    assert "no barrier" not in heat.split("Head office")[1][:200]
    # No link to act on its barrier, and asking for it is answered as for no group at all.
    assert "group=Head" not in page.text
    hidden = client.get("/console/surveys/readiness/runs/1/barrier?segment=site&group=Head+office")
    missing = client.get("/console/surveys/readiness/runs/1/barrier?segment=site&group=Mars")
    assert hidden.status_code == missing.status_code == 404
    assert hidden.text == missing.text


# --- from a barrier to what addresses it ------------------------------------------------------


def test_a_barrier_links_to_faq_entries_templates_and_a_targeted_send(
    client: Client, csrf: str, service: Service
) -> None:
    heat_map_run(service)
    results = client.get("/console/surveys/readiness/runs/1")
    link = re.search(
        r'href="(/console/surveys/readiness/runs/1/barrier\?[^"]*Coventry[^"]*)"', results.text
    )
    assert link is not None
    page = client.get(html.unescape(link.group(1)))
    assert page.status_code == 200
    assert "the barrier is knowledge" in page.text
    assert "I know how to do the things I need in Compass" in html.unescape(page.text)
    entries = page.text[page.text.index('class="plain barrier-entries"') :].split("</ul>")[0]
    # The FAQ engine matches the knowledge question to the training entries.
    assert "training-where-how-long" in entries and "/console/knowledge" in entries
    templates = page.text[page.text.index('class="plain barrier-templates"') :].split("</ul>")[0]
    assert 'href="/console/templates/training-opens"' in templates
    target = page.text[page.text.index('id="target-h"') :]
    assert 'href="/console/send?to=members:C0COVENTRY"' in target  # the site channel's members
    assert "/console/send?template=training-opens&amp;to=members:C0COVENTRY" in templates
    send = client.get(f"/console/send?to={quote('members:C0COVENTRY')}")
    assert 'value="members:C0COVENTRY"' in send.text


def test_a_tagged_entry_is_pinned_to_its_stage(client: Client, csrf: str, service: Service) -> None:
    entry = service.settings.content_dir / "messages/faq/champions.md"
    source = entry.read_text(encoding="utf-8")
    assert "tags: [support, champions]" in source
    entry.write_text(source.replace("tags: [support, champions]", "tags: [support, awareness]"))
    assert service.desk.engine.load() == []
    heat_map_run(service)
    page = client.get("/console/surveys/readiness/runs/1/barrier?segment=site&group=Dublin+office")
    assert page.status_code == 200 and "the barrier is awareness" in page.text
    assert "champions" in page.text and "tagged awareness" in page.text


def test_a_profile_segment_is_not_an_audience_and_the_page_says_so(
    client: Client, csrf: str, service: Service
) -> None:
    responses = rows(10, {"department": "Warehouse"}, scores={"ability": 2}) + rows(
        10, {"department": "HR"}
    )
    insert(service, responses)
    page = client.get(
        "/console/surveys/readiness/runs/1/barrier?segment=department&group=Warehouse"
    )
    assert page.status_code == 200 and "the barrier is ability" in page.text
    assert "No announcement link" in page.text and "profile field" in page.text
    assert "Announce to" not in page.text


# --- start, close, share ----------------------------------------------------------------------


def test_start_asks_for_confirmation_then_starts_once(
    client: Client, csrf: str, service: Service
) -> None:
    form = {"csrf": csrf, "to": "users:U1,U2", "days": "3"}
    confirm = client.post("/console/surveys/readiness/start", data=form)
    assert confirm.status_code == 200 and "Check and confirm" in confirm.text
    assert "2 people" in confirm.text and runs_of(service.db, "readiness") == []
    done = client.post("/console/surveys/readiness/start", data={**form, "confirm": "yes"})
    assert done.status_code == 303
    runs = runs_of(service.db, "readiness")
    assert [(r.number, r.state) for r in runs] == [(1, "planned")]
    assert (runs[0].closes_at - runs[0].starts_at).days == 3
    assert audited(service)[-1][:2] == (ADMIN, "survey.start")
    assert "users:U1,U2" in audited(service)[-1][2]
    again = client.post("/console/surveys/readiness/start", data={**form, "confirm": "yes"})
    assert again.status_code == 422 and "still planned" in again.text
    assert len(runs_of(service.db, "readiness")) == 1


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("days", "0", "Days open: a whole number from 1 to"),
        ("days", "soon", "Days open: a whole number from 1 to"),
        ("to", "#general", "Audience:"),
    ],
)
def test_start_refuses_bad_input_clearly(
    client: Client, csrf: str, service: Service, field: str, value: str, message: str
) -> None:
    form = {"csrf": csrf, "to": "everyone", "days": "5", "confirm": "yes", field: value}
    refused = client.post("/console/surveys/readiness/start", data=form)
    assert refused.status_code == 422 and message in refused.text
    assert "Traceback" not in refused.text and runs_of(service.db, "readiness") == []


def test_every_post_needs_the_csrf_token(client: Client, csrf: str, service: Service) -> None:
    insert(service, rows(12, {}), state="open")
    for path, data in [
        ("/console/surveys/readiness/start", {"to": "everyone", "confirm": "yes"}),
        ("/console/surveys/readiness/runs/1/close", {"sure": "yes"}),
        ("/console/surveys/readiness/runs/1/share", {"note": "x", "confirm": "yes"}),
    ]:
        refused = client.post(path, data={**data, "csrf": "forged"})
        assert refused.status_code == 400 and "expired" in refused.text
    assert [r.state for r in runs_of(service.db, "readiness")] == ["open"]
    assert not [a for a in audited(service) if a[1].startswith("survey.")]


def test_close_needs_the_tick_then_closes_and_is_audited(
    client: Client, csrf: str, service: Service
) -> None:
    client.post(
        "/console/surveys/readiness/start",
        data={"csrf": csrf, "to": "users:U1,U2", "confirm": "yes"},
    )
    service.surveys.tick()  # the running bot opens it and invites
    assert runs_of(service.db, "readiness")[0].state == "open"
    page = client.get("/console/surveys/readiness")
    assert "Close run 1 now" in page.text and "Start the run" not in page.text
    unticked = client.post("/console/surveys/readiness/runs/1/close", data={"csrf": csrf})
    assert unticked.status_code == 303
    assert "tick the box" in client.get("/console/surveys/readiness").text
    assert runs_of(service.db, "readiness")[0].state == "open"
    closed = client.post(
        "/console/surveys/readiness/runs/1/close", data={"csrf": csrf, "sure": "yes"}
    )
    assert closed.status_code == 303
    assert runs_of(service.db, "readiness")[0].state == "closed"
    assert "Closed run 1" in client.get("/console/surveys/readiness").text
    assert audited(service)[-1] == (ADMIN, "survey.close", "readiness run 1")
    client.post("/console/surveys/readiness/runs/1/close", data={"csrf": csrf, "sure": "yes"})
    assert "already closed" in client.get("/console/surveys/readiness").text
    assert [a[1] for a in audited(service)].count("survey.close") == 1
    assert (
        client.post(
            "/console/surveys/readiness/runs/7/close", data={"csrf": csrf, "sure": "yes"}
        ).status_code
        == 404
    )


def test_share_previews_then_sends_once_and_is_audited(
    client: Client, csrf: str, service: Service
) -> None:
    run_id = insert(service, rows(12, {}))
    form = client.get("/console/surveys/readiness/runs/1/share")
    assert form.status_code == 200 and 'name="note"' in form.text
    empty = client.post("/console/surveys/readiness/runs/1/share", data={"csrf": csrf, "note": " "})
    assert empty.status_code == 422 and "the note is empty" in empty.text
    note = "We heard you: more drop-in sessions from Monday."
    preview = client.post(
        "/console/surveys/readiness/runs/1/share", data={"csrf": csrf, "note": note}
    )
    assert preview.status_code == 200 and "12 people get this" in preview.text
    assert "You said, we did" in preview.text and "more drop-in sessions" in preview.text
    assert 'name="shared" value="0"' in preview.text
    with Session(service.db) as session:
        assert session.exec(select(SurveyShare)).all() == []
    sent = client.post(
        "/console/surveys/readiness/runs/1/share",
        data={"csrf": csrf, "note": note, "confirm": "yes", "shared": "0"},
    )
    assert sent.status_code == 303
    with Session(service.db) as session:
        shares = session.exec(select(SurveyShare)).all()
    assert [(s.run_id, s.note) for s in shares] == [(run_id, note)]
    assert audited(service)[-1] == (ADMIN, "survey.share", "readiness run 1 to 12 (console)")
    twice = client.post(
        "/console/surveys/readiness/runs/1/share",
        data={"csrf": csrf, "note": note, "confirm": "yes", "shared": "0"},
    )
    assert twice.status_code == 409 and "shared since you opened the preview" in twice.text
    with Session(service.db) as session:
        assert len(session.exec(select(SurveyShare)).all()) == 1


def test_share_refuses_an_open_run_and_shares_hidden_results_without_figures(
    client: Client, csrf: str, service: Service
) -> None:
    insert(service, rows(12, {}), state="open")
    insert(service, rows(3, {}), number=2)
    data = {"csrf": csrf, "note": "Thanks", "confirm": "yes", "shared": "0"}
    still_open = client.post("/console/surveys/readiness/runs/1/share", data=data)
    assert still_open.status_code == 409 and "still open; share it once it closes" in (
        still_open.text
    )
    with Session(service.db) as session:
        assert session.exec(select(SurveyShare)).all() == []
    assert not [a for a in audited(service) if a[1] == "survey.share"]
    # Too few answered: shared as the CLI shares it, saying so, with no figure in it.
    few = client.post(
        "/console/surveys/readiness/runs/2/share", data={"csrf": csrf, "note": "Thanks"}
    )
    assert few.status_code == 200 and "Too few people answered" in few.text
    preview = few.text.split("You said, we did", 1)[1].split("</main>", 1)[0]
    assert "mean" not in preview and "eNPS" not in preview


def test_a_non_admin_is_refused(
    client: Client, console: Console, service: Service, database_url: str, slack: FakeSlack
) -> None:
    csrf = sign_in(client, console)
    insert(service, rows(12, {}))
    service.settings = bot_settings(
        database_url=database_url,
        content_dir=service.settings.content_dir,
        slack=slack,
        MOBILIZE_ADMINS="U2",
    )
    service.admins.users = frozenset({"U2"})
    for path in (
        "/console/surveys",
        "/console/surveys/readiness",
        "/console/surveys/readiness/runs/1",
    ):
        refused = client.get(path)
        assert refused.status_code == 403 and "Not an admin" in refused.text
    start = client.post(
        "/console/surveys/readiness/start", data={"csrf": csrf, "to": "everyone", "confirm": "yes"}
    )
    assert start.status_code == 403 and len(runs_of(service.db, "readiness")) == 1


def test_the_quick_survey_without_adkar_has_no_heat_map(
    client: Client, csrf: str, service: Service
) -> None:
    survey = load_survey(service.settings.content_dir, QUICK, name="quick")
    assert service.surveys.load() == []
    answers: Rows = [({"ready": 4, "recommend": 9, "helped": ["Guides"]}, {}) for _ in range(4)]
    insert_run(service.db, survey, invitations=[{}] * 4, responses=answers)
    page = client.get("/console/surveys/quick/runs/1")
    assert page.status_code == 200 and "heatmap" not in page.text
    assert client.get("/console/surveys/quick").status_code == 200
    with Session(service.db) as session:
        assert session.exec(select(SurveyRun)).one().survey_id == "quick"


# --- export ---------------------------------------------------------------------------------


def test_the_csv_export_holds_published_figures_only_and_spreadsheet_safe_comments(
    client: Client, csrf: str, service: Service
) -> None:
    answered = rows(8, {"site": "Coventry DC"})
    for n in range(5):  # comments show once at least min_group people wrote one
        answered[n][0]["comment"] = f"More floorwalkers {n}"
    answered[0][0]["comment"] = '=HYPERLINK("http://evil.example","click")'
    answered += rows(2, {"site": "Head office"}, scores={"ability": 1})  # too few to show
    insert(service, answered)
    response = client.get("/console/surveys/readiness/runs/1/export.csv")
    assert response.status_code == 200 and response.mimetype == "text/csv"
    text = response.get_data(as_text=True)
    assert text.splitlines()[0] == "segment,group,question,value,count"
    assert ",everyone,responses,,10" in text and "Head office" not in text
    assert "'=HYPERLINK(" in text and "\n=HYPERLINK" not in text and ",=HYPERLINK" not in text
    rows_out = len(text.splitlines()) - 1
    assert (ADMIN, "console.survey.export", f"readiness run 1 ({rows_out} rows)") in audited(
        service
    )


def test_an_export_is_refused_while_open_or_when_everything_is_hidden(
    client: Client, csrf: str, service: Service
) -> None:
    insert(service, rows(8, {"site": "Coventry DC"}), state="open")
    insert(service, rows(2, {"site": "Coventry DC"}), number=2)
    still_open = client.get("/console/surveys/readiness/runs/1/export.csv")
    assert still_open.status_code == 409 and "still open" in still_open.text
    hidden = client.get("/console/surveys/readiness/runs/2/export.csv")
    assert hidden.status_code == 409 and "nothing to export" in hidden.text
