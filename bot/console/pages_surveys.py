"""Console pages: surveys (registered on the app by `create_app`).

Every figure on these pages is one `bot.core.surveys.report` published: `run_results` (the
suppression layer: small groups, complementary and difference suppression) and
`trend_results` (significance between consecutive runs). Nothing here reads an answer row.

- `/surveys`: every run; `/surveys/<id>`: one survey's runs, the trend of each Likert and eNPS
  question across its closed runs (mean or eNPS with its 95% interval as a band; a hidden run
  is a gap), and Start / Close.
- `/surveys/<id>/runs/<n>`: one run's results, the ADKAR heat map (groups × stages, the
  barrier point marked), and the barrier links.
- `/surveys/<id>/runs/<n>/barrier?segment=…&group=…`: what addresses a group's barrier stage.
  **The rule**: an FAQ entry addresses a stage when it is tagged with the stage's name (e.g.
  `tags: [knowledge]`: an explicit pin), or when the FAQ engine (`desk.engine`, the matcher
  that answers people) asked with the text of the survey question measuring that stage
  suggests it with a score of at least `MATCH_SCORE`. An announcement template addresses the
  stage when the same engine, asked with one paragraph of the template (rendered for the
  sample person; a whole message mixes topics and matches nothing well), suggests with at
  least `MATCH_SCORE` one of those entries or an entry of the same topic (an entry's first
  tag, e.g. `training`): template and stage land on the same part of the knowledge base.
  Scores are shown, so the comms lead can judge; tagging an entry pins it.
  A group of a `channel` or `group` segment is the audience `members:C…` or `group:S…`, so a
  targeted announcement is one click; a `profile` segment has no audience expression (the
  page says so); the whole run's group is the run's own audience.
- Start, Close and Share ("you said, we did") go through `SurveyRunner` and the checks of
  `bot.core.surveys.actions`, as `mobilize survey start|close|share` do; each asks for a
  confirmation, carries the CSRF token and is audited.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, abort, flash, g, redirect, request, url_for
from markupsafe import Markup
from sqlalchemy import func
from sqlmodel import Session, col, select
from werkzeug.wrappers.response import Response as Redirect

from bot.console import charts
from bot.console.render import message_html
from bot.core.announcements.templates import SAMPLE_USER, Template, TemplateRenderError, render
from bot.core.faq.kb import FaqEntry
from bot.core.surveys.actions import Refused, check_closable, check_shareable, export_table
from bot.core.surveys.definitions import LIKERT_LABELS, MAX_OPEN_DAYS, Segment, Survey
from bot.core.surveys.privacy import SecretMissing
from bot.core.surveys.report import (
    SUPPRESSED,
    ResultsNotReady,
    run_results,
    runs_of,
    trend_results,
)
from bot.core.surveys.results import UNKNOWN
from bot.store.audit import record
from bot.store.models import SurveyInvitation, SurveyRun, SurveyShare

if TYPE_CHECKING:
    from bot.console.app import Console
    from bot.console.links import SignedIn

log = logging.getLogger(__name__)
Page = Callable[..., tuple[str, int]]
MATCH_SCORE = 0.1  # the FAQ engine's score from which an entry or template counts as on topic
MAX_NOTE = 4000  # characters of a "you said, we did" note
ACTIVE = ("planned", "open")


@dataclass(frozen=True)
class Match:
    """An FAQ entry or a template that addresses a stage, and why."""

    id: str
    title: str
    why: str


def segment_audience(segment: Segment, label: str) -> str | None:
    """The audience of one group of a segment, or None when a segment cannot be one."""
    target = segment.values.get(label)
    if target is None:
        return None
    if segment.by == "channel":
        return f"members:{target}"
    if segment.by == "group":
        return f"group:{target}"
    return None


def register(app: Flask, console: Console, page: Page) -> None:
    """Add this area's routes to the console's app; `page(template, code, **values)`
    renders a page with the console's common values."""
    from bot.console.app import _survey_rows

    db = console.service.db

    def runner() -> Any:
        return console.service.surveys

    def _survey(survey_id: str) -> Survey:
        survey = runner().surveys.get(survey_id)
        if survey is None:
            abort(404, f"There is no survey {survey_id!r}.")
        return survey

    def _run(survey_id: str, number: int) -> SurveyRun:
        run = next((r for r in runs_of(db, survey_id) if r.number == number), None)
        if run is None or run.id is None:
            abort(404, f"Survey {survey_id!r} has no run {number}.")
        return run

    def _report(survey: Survey, run: SurveyRun) -> dict[str, Any] | None:
        """The published results, or None while a non-named run is open."""
        if run.anonymity != "named" and run.state != "closed":
            return None
        assert run.id is not None
        try:
            return run_results(db=db, survey=survey, run_id=run.id)
        except ResultsNotReady:
            return None

    # --- lists and trends -------------------------------------------------------------------

    @app.get("/surveys")
    def surveys() -> tuple[str, int]:
        known = runner().surveys
        return page("surveys.html", rows=_survey_rows(console), known=known)

    def _trends(survey: Survey, closed: list[SurveyRun]) -> list[dict[str, Any]]:
        """Per Likert and eNPS question, its published value in each closed run."""
        if not closed:
            return []
        reports = [run_results(db=db, survey=survey, run_id=int(r.id or 0)) for r in closed]
        changes = trend_results(db=db, survey=survey, run_ids=[int(r.id or 0) for r in closed])
        found: list[dict[str, Any]] = []
        for index, question in enumerate(survey.questions):
            if question.kind not in {"likert", "enps"}:
                continue
            points: list[dict[str, Any]] = []
            for at, (run, report) in enumerate(zip(closed, reports, strict=True)):
                overall = report["overall"]
                summary = (
                    {SUPPRESSED: True}
                    if overall.get(SUPPRESSED)
                    else overall["questions"][question.id]
                )
                change = changes[question.id][at - 1] if at else {}
                value_key = "mean" if question.kind == "likert" else "enps"
                point: dict[str, Any] = {"number": run.number}
                if summary.get(SUPPRESSED):
                    point["hidden"] = True
                else:
                    point["value"] = summary.get(value_key)
                    point["ci95"] = summary.get("ci95")
                    point["n"] = summary.get("n")
                    point["change"] = change.get("change")
                    point["significant"] = bool(change.get("significant"))
                points.append(point)
            min_group = max(r.min_group for r in closed)
            found.append(
                {
                    "question": question,
                    "points": points,
                    "min_group": min_group,
                    "chart": charts.trend(
                        f"trend{index}",
                        question.text,
                        points,
                        kind=question.kind,
                        min_group=min_group,
                    ),
                }
            )
        return found

    @app.get("/surveys/<survey_id>")
    def survey_page(survey_id: str) -> tuple[str, int]:
        survey = _survey(survey_id)
        runs = runs_of(db, survey_id)
        closed = [r for r in runs if r.state == "closed"]
        rows = [row for row in _survey_rows(console) if row["survey"] == survey_id]
        return page(
            "survey_page.html",
            survey=survey,
            rows=rows,
            trends=_trends(survey, closed),
            closed=len(closed),
            active=[r for r in runs if r.state in ACTIVE],
            max_days=MAX_OPEN_DAYS,
        )

    # --- one run ----------------------------------------------------------------------------

    def _heatmap(survey: Survey, run: SurveyRun, report: dict[str, Any]) -> dict[str, Any]:
        """Rows of the ADKAR heat map from the published report only: everyone, then every
        group of every segment; a hidden group keeps its label and nothing else."""
        stages = list(survey.adkar)
        rows: list[dict[str, Any]] = []
        groups: list[tuple[Segment | None, str, dict[str, Any]]] = [
            (None, "Everyone", report["overall"])
        ]
        for each in survey.segments:
            for label, group in report["segments"].get(each.id, {}).items():
                groups.append((each, label, group))
        for segment, label, group in groups:
            name = label if segment is None else f"{segment.label}: {label}"
            row: dict[str, Any] = {
                "label": name,
                "segment": segment.id if segment else "",
                "group": label if segment else "",
            }
            if group.get(SUPPRESSED):
                row["suppressed"] = True
                rows.append(row)
                continue
            cells: dict[str, float | None] = {}
            hidden: set[str] = set()
            for stage, question_id in survey.adkar.items():
                summary = group["questions"][question_id]
                if summary.get(SUPPRESSED):
                    hidden.add(stage)
                    cells[stage] = None
                else:
                    cells[stage] = summary.get("mean")
            row.update(cells=cells, hidden=hidden, barrier=group.get("adkar_barrier"))
            rows.append(row)
        chart = (
            charts.adkar_heatmap("adkar", f"ADKAR by group, run {run.number}", stages, rows)
            if stages
            else None
        )
        return {"stages": stages, "rows": rows, "chart": chart}

    @app.get("/surveys/<survey_id>/runs/<int:number>/export.csv")
    def survey_export(survey_id: str, number: int) -> Response:
        """`mobilize survey export` in the browser: published figures only (named runs: one
        row per person), spreadsheet-safe cells; refused while open or when all is hidden."""
        survey = _survey(survey_id)
        run = _run(survey_id, number)
        try:
            rows = export_table(db=db, survey=survey, run=run)
        except Refused as exc:
            abort(409, str(exc))
        out = io.StringIO()
        csv.writer(out).writerows(rows)
        signed: SignedIn = g.signed
        record(
            db,
            actor=signed.user_id,
            action="console.survey.export",
            detail=f"{survey_id} run {number} ({len(rows) - 1} rows)",
        )
        name = f"{survey_id}-run-{number}.csv"
        return Response(
            out.getvalue(),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get("/surveys/<survey_id>/runs/<int:number>")
    def results(survey_id: str, number: int) -> tuple[str, int]:
        survey = _survey(survey_id)
        run = _run(survey_id, number)
        report = _report(survey, run)
        waiting = report is None
        figures: list[dict[str, Any]] = []
        heat: dict[str, Any] | None = None
        if report is not None and not report["overall"].get(SUPPRESSED):
            for index, question in enumerate(survey.questions):
                summary = report["overall"]["questions"][question.id]
                figure: dict[str, Any] = {"question": question, "summary": summary}
                chart_id = f"q{index}"
                if summary.get(SUPPRESSED):
                    figure["hidden"] = True
                elif question.kind == "likert":
                    figure["labels"] = question.labels or LIKERT_LABELS
                    figure["chart"] = charts.likert(
                        chart_id, question.text, summary, question.labels
                    )
                elif question.kind == "enps":
                    figure["chart"] = charts.enps(chart_id, question.text, summary)
                elif question.kind in {"choice", "multi"}:
                    figure["chart"] = charts.bars(chart_id, question.text, summary)
                figures.append(figure)
            heat = _heatmap(survey, run, report)
        return page(
            "results.html",
            survey=survey,
            run=run,
            report=report,
            waiting=waiting,
            figures=figures,
            suppressed=SUPPRESSED,
            heat=heat,
            unknown=UNKNOWN,
        )

    # --- from a barrier to what addresses it ------------------------------------------------

    def _entries(stage: str, text: str) -> list[Match]:
        engine = console.service.desk.engine
        kb = engine.state.kb
        found: dict[str, Match] = {}
        for entry in kb.entries.values():
            if stage in entry.tags or f"adkar-{stage}" in entry.tags:
                found[entry.id] = Match(entry.id, entry.question, f"tagged {stage}")
        decision = engine.decide(text)
        if decision.kind != "unknown":
            for candidate in decision.candidates:
                entry_found: FaqEntry | None = kb.get(candidate.entry_id)
                if entry_found is None or candidate.score < MATCH_SCORE:
                    continue
                found.setdefault(
                    entry_found.id,
                    Match(
                        entry_found.id,
                        entry_found.question,
                        f"the FAQ engine matches the question ({candidate.score:.2f})",
                    ),
                )
        return list(found.values())

    def _template_text(template: Template) -> str:
        content = console.announcer.content
        try:
            message = render(template, content.rollout, user=SAMPLE_USER, now=console.clock())
        except TemplateRenderError:
            return f"{template.title}\n{template.body}"
        return message.plain

    topics_of: dict[str, list[tuple[str, float]]] = {}  # paragraph text → (entry, score)

    def _topics(text: str) -> list[tuple[str, float]]:
        """The FAQ entries the engine puts one paragraph on (cached: templates rarely change,
        and with the sentence model each question costs an embedding)."""
        if text not in topics_of:
            decision = console.service.desk.engine.decide(text)
            found = (
                []
                if decision.kind == "unknown"
                else [(c.entry_id, c.score) for c in decision.candidates if c.score >= MATCH_SCORE]
            )
            if len(topics_of) > 1000:
                topics_of.clear()
            topics_of[text] = found
        return topics_of[text]

    def _templates(entries: list[Match]) -> list[Match]:
        """Templates with a paragraph the FAQ engine puts on one of `entries`, or on an entry
        of the same topic (an entry's first tag)."""
        kb = console.service.desk.engine.state.kb
        topics = {e.tags[0] for m in entries if (e := kb.get(m.id)) is not None and e.tags}
        wanted = {m.id for m in entries} | {
            e.id for e in kb.entries.values() if e.tags and e.tags[0] in topics
        }
        if not wanted:
            return []
        found: list[Match] = []
        for template in sorted(console.announcer.content.templates.values(), key=lambda t: t.id):
            paragraphs = [p for p in _template_text(template).split("\n\n") if p.strip()]
            hits = [hit for p in paragraphs for hit in _topics(p.strip()) if hit[0] in wanted]
            if hits:
                entry_id, score = max(hits, key=lambda hit: hit[1])
                entry = kb.get(entry_id)
                topic = f", topic {entry.tags[0]}" if entry is not None and entry.tags else ""
                found.append(
                    Match(
                        template.id,
                        console.title(template),
                        f"a paragraph matches {entry_id!r} ({score:.2f}{topic})",
                    )
                )
        return found

    @app.get("/surveys/<survey_id>/runs/<int:number>/barrier")
    def survey_barrier(survey_id: str, number: int) -> tuple[str, int]:
        survey = _survey(survey_id)
        run = _run(survey_id, number)
        report = _report(survey, run)
        segment_id = request.args.get("segment", "")
        label = request.args.get("group", "")
        if report is None or report["overall"].get(SUPPRESSED):
            abort(404, "This run has no published results.")
        segment: Segment | None = None
        if segment_id:
            segment = next((s for s in survey.segments if s.id == segment_id), None)
            group = report["segments"].get(segment_id, {}).get(label) if segment else None
        else:
            group = report["overall"]
        # Only a published group with a known barrier has a page: asking for a hidden one
        # answers exactly as asking for one that does not exist.
        stage = group.get("adkar_barrier") if group and not group.get(SUPPRESSED) else None
        if not stage or stage == UNKNOWN or stage not in survey.adkar:
            abort(404, "That group has no barrier point to act on.")
        question = next(q for q in survey.questions if q.id == survey.adkar[stage])
        entries = _entries(stage, question.text)
        templates = _templates(entries)
        if segment is None:
            audience: str | None = "; ".join(json.loads(run.audience or "[]")) or "everyone"
            reason = ""
            name = "Everyone"
        else:
            audience = segment_audience(segment, label)
            name = f"{segment.label}: {label}"
            reason = (
                ""
                if audience
                else f"{segment.label} is read from a Slack profile field, which is not an "
                "audience the bot can send to (audiences are everyone, a channel's members, a "
                "user group or named people): pick the people some other way."
            )
        summary = group["questions"][question.id] if group else {}
        return page(
            "survey_barrier.html",
            survey=survey,
            run=run,
            stage=stage,
            question=question,
            mean=summary.get("mean"),
            name=name,
            entries=entries,
            templates=templates,
            audience=audience,
            reason=reason,
            segment=segment,
            match_score=MATCH_SCORE,
        )

    # --- start, close, share ----------------------------------------------------------------

    @app.post("/surveys/<survey_id>/start")
    def survey_start(survey_id: str) -> Redirect | tuple[str, int]:
        survey = _survey(survey_id)
        to = request.form.get("to", "").strip() or "everyone"
        days_text = request.form.get("days", "5").strip()
        errors: list[str] = []
        try:
            days = int(days_text)
            if not 1 <= days <= MAX_OPEN_DAYS:
                raise ValueError
        except ValueError:
            days = 5
            errors.append(f"Days open: a whole number from 1 to {MAX_OPEN_DAYS}.")
        active = [r for r in runs_of(db, survey_id) if r.state in ACTIVE]
        if active:
            errors.append(
                f"Run {active[-1].number} of this survey is still {active[-1].state}: close it "
                "before starting another, so people are not asked twice at once."
            )
        resolved = console.resolve_audience(to)
        if resolved.error:
            errors.append(f"Audience: {resolved.error}")
        if errors or request.form.get("confirm") != "yes":
            return page(
                "survey_start.html",
                422 if errors else 200,
                survey=survey,
                to=to,
                days=days_text,
                errors=errors,
                resolved=None if errors else resolved,
            )
        signed: SignedIn = g.signed
        try:
            run_id = runner().start_adhoc(
                survey_id=survey_id, audience=resolved.parts, by=signed.user_id, open_days=days
            )
        except SecretMissing as exc:
            return page(
                "survey_start.html",
                409,
                survey=survey,
                to=to,
                days=days_text,
                errors=[f"Not started: {exc}"],
                resolved=None,
            )
        record(
            db,
            actor=signed.user_id,
            action="survey.start",
            detail=f"{survey_id} run #{run_id} to {'; '.join(resolved.parts)} (console)",
        )
        flash(
            f"Started {survey.title} (open {days} days, to {'; '.join(resolved.parts)}); the "
            "running bot sends the invitations on its next tick."
        )
        return redirect(url_for("survey_page", survey_id=survey_id), 303)

    @app.post("/surveys/<survey_id>/runs/<int:number>/close")
    def survey_close(survey_id: str, number: int) -> Redirect:
        _survey(survey_id)
        run = _run(survey_id, number)
        back = redirect(url_for("survey_page", survey_id=survey_id), 303)
        if request.form.get("sure") != "yes":
            flash("Not closed: tick the box to confirm.", "error")
            return back
        if run.state == "closed":
            flash(f"Run {number} is already closed.", "error")
            return back
        try:
            check_closable(runner(), run)
        except Refused as exc:
            flash(f"Not closed: {exc}.", "error")
            return back
        assert run.id is not None
        if not runner().close(run.id):
            flash(f"Run {number} is already closed.", "error")
            return back
        signed: SignedIn = g.signed
        record(db, actor=signed.user_id, action="survey.close", detail=f"{survey_id} run {number}")
        flash(f"Closed run {number}; no more answers, and the results went to its owner.")
        return back

    def _shares(run_id: int) -> int:
        with Session(db) as work:
            return int(work.exec(select(func.count()).where(SurveyShare.run_id == run_id)).one())

    def _share_page(
        survey: Survey,
        run: SurveyRun,
        note: str,
        errors: list[str],
        status: int = 200,
        preview: Markup | None = None,
        people: int = 0,
    ) -> tuple[str, int]:
        return page(
            "survey_share.html",
            status,
            survey=survey,
            run=run,
            note=note,
            errors=errors,
            preview=preview,
            people=people,
            shared=_shares(int(run.id or 0)),
            max_note=MAX_NOTE,
        )

    def _share_refusal(survey: Survey, run: SurveyRun) -> str:
        """Why this run cannot be shared, or ""."""
        try:
            check_shareable(run)
        except Refused as exc:
            return f"Nothing to share yet: {exc}."
        # Hidden results are shared as `mobilize survey share` shares them: the message says
        # how few answered (no figure), then what the programme will do.
        with Session(db) as work:
            invited = work.exec(
                select(func.count()).where(col(SurveyInvitation.run_id) == run.id)
            ).one()
        if not invited:
            return "Nothing to share: this run invited nobody."
        return ""

    @app.get("/surveys/<survey_id>/runs/<int:number>/share")
    def survey_share_form(survey_id: str, number: int) -> tuple[str, int]:
        survey = _survey(survey_id)
        run = _run(survey_id, number)
        refusal = _share_refusal(survey, run)
        return _share_page(survey, run, "", [refusal] if refusal else [], 409 if refusal else 200)

    @app.post("/surveys/<survey_id>/runs/<int:number>/share")
    def survey_share(survey_id: str, number: int) -> Redirect | tuple[str, int]:
        survey = _survey(survey_id)
        run = _run(survey_id, number)
        assert run.id is not None
        note = request.form.get("note", "").replace("\r\n", "\n").replace("\r", "\n").strip()
        refusal = _share_refusal(survey, run)
        if refusal:
            return _share_page(survey, run, note, [refusal], 409)
        if not note:
            return _share_page(
                survey, run, note, ["Say what the programme will do: the note is empty."], 422
            )
        if len(note) > MAX_NOTE:
            return _share_page(
                survey,
                run,
                note,
                [f"The note is {len(note):,} characters; keep it under {MAX_NOTE:,}."],
                422,
            )
        message, people = runner().share_preview(run.id, note)
        shown = message_html(message)
        if request.form.get("confirm") != "yes":
            return _share_page(survey, run, note, [], 200, shown, len(people))
        # The count of shares when the preview was shown: a second click, or another admin
        # sharing meanwhile, does not send it twice unnoticed.
        if request.form.get("shared", "") != str(_shares(run.id)):
            return _share_page(
                survey,
                run,
                note,
                [
                    "Not sent: this run was shared since you opened the preview. Check below, "
                    "then send again if you mean to share it a second time."
                ],
                409,
                shown,
                len(people),
            )
        signed: SignedIn = g.signed
        sent = runner().share(run.id, note, by=signed.user_id)
        record(
            db,
            actor=signed.user_id,
            action="survey.share",
            detail=f"{survey_id} run {number} to {sent} (console)",
        )
        flash(f'Queued the "you said, we did" message for {sent} people; the running bot sends it.')
        return redirect(url_for("results", survey_id=survey_id, number=number), 303)
