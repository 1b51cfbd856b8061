"""Survey results from the database, with the anonymity rules applied before anything leaves:
no group smaller than the run's `min_group` is shown (not a score, not a comment, not a
segment), and the next-smallest segment is hidden too so nobody can subtract to reveal one."""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import pairwise
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

import bot.core.surveys.results as results
from bot.core.messages import Message, say
from bot.core.surveys.definitions import ADKAR, Question, Survey
from bot.store.models import SurveyInvitation, SurveyResponse, SurveyRun

SUPPRESSED = "suppressed"


def _answered(question: Question, answers: Sequence[dict[str, Any]]) -> int:
    return sum(1 for a in answers if a.get(question.id) not in (None, "", []))


def _summary(
    question: Question, answers: Sequence[dict[str, Any]], population: int
) -> dict[str, Any]:
    values = [a[question.id] for a in answers if a.get(question.id) not in (None, "", [])]
    if question.kind == "likert":
        return results.likert_summary([int(v) for v in values], population=population)
    if question.kind == "enps":
        return results.enps_summary([int(v) for v in values], population=population)
    if question.kind == "choice":
        return results.choice_summary(
            [str(v) for v in values], question.options, population=population
        )
    if question.kind == "multi":
        return results.multi_summary(
            [list(v) for v in values], question.options, population=population
        )
    return results.text_summary([str(v) for v in values])


def group_results(
    survey: Survey, answers: Sequence[dict[str, Any]], *, population: int, min_group: int
) -> dict[str, Any]:
    """Every question for one group, or a suppression notice when it is too small."""
    if len(answers) < min_group:
        return {"responses": len(answers), SUPPRESSED: True}
    per_question = {
        q.id: _summary(q, answers, population)
        if _answered(q, answers) >= min_group
        # A question fewer than min_group people answered is a small group of its own.
        else {"n": _answered(q, answers), SUPPRESSED: True}
        for q in survey.questions
    }
    means = {q.adkar: per_question[q.id].get("mean") for q in survey.questions if q.adkar in ADKAR}
    return {
        "responses": len(answers),
        "population": population,
        "response_rate": round(len(answers) / population, 4) if population else None,
        "questions": per_question,
        "adkar_barrier": results.adkar_barrier(means) if means else None,
    }


def run_results(*, db: Engine, survey: Survey, run_id: int) -> dict[str, Any]:
    """Results of one run: overall and per allowed segment, with small groups suppressed."""
    with Session(db) as session:
        run = session.get(SurveyRun, run_id)
        if run is None:
            raise KeyError(run_id)
        # Columns, not ORM objects: building 1,000s of instances was most of the time.
        responses = session.exec(
            select(SurveyResponse.answers, SurveyResponse.segments).where(
                SurveyResponse.run_id == run_id
            )
        ).all()
        invitations = session.exec(
            select(SurveyInvitation.segments).where(SurveyInvitation.run_id == run_id)
        ).all()
    answers = [json.loads(stored) for stored, _segments in responses]
    segments_of = [json.loads(segments or "{}") for _answers, segments in responses]
    population = run.population or len(invitations)
    report: dict[str, Any] = {
        "run": run_id,
        "number": run.number,
        "survey": survey.id,
        "state": run.state,
        "anonymity": run.anonymity,
        "min_group": run.min_group,
        "overall": group_results(survey, answers, population=population, min_group=run.min_group),
        "segments": {},
    }
    invited_segments = [json.loads(s or "{}") for s in invitations]
    for segment in survey.segments:
        groups: dict[str, list[dict[str, Any]]] = {}
        for segs, answer in zip(segments_of, answers, strict=True):
            if segment.id in segs:
                groups.setdefault(segs[segment.id], []).append(answer)
        sizes = {label: len(rows) for label, rows in groups.items()}
        hidden = results.suppress(sizes, min_group=run.min_group, total=len(answers))
        shown: dict[str, Any] = {}
        for label, rows in sorted(groups.items()):
            if label in hidden:
                shown[label] = {SUPPRESSED: True}
                continue
            invited = sum(1 for s in invited_segments if s.get(segment.id) == label)
            shown[label] = group_results(survey, rows, population=invited, min_group=run.min_group)
        report["segments"][segment.id] = shown
    return report


def trend_results(*, db: Engine, survey: Survey, run_ids: Sequence[int]) -> dict[str, Any]:
    """Change between consecutive runs for Likert and eNPS questions, flagged only when it is
    beyond noise (see results.trend)."""
    raw: list[list[dict[str, Any]]] = []
    with Session(db) as session:
        for run_id in run_ids:
            run = session.get(SurveyRun, run_id)
            rows = session.exec(
                select(SurveyResponse.answers).where(SurveyResponse.run_id == run_id)
            ).all()
            # A run below min_group shows nothing, so it takes no part in a trend either.
            small = run is None or len(rows) < run.min_group
            raw.append([] if small else [json.loads(stored) for stored in rows])
    changes: dict[str, list[dict[str, Any]]] = {}
    for question in survey.questions:
        if question.kind not in {"likert", "enps"}:
            continue
        series = []
        for before, after in pairwise(raw):
            a = [int(x[question.id]) for x in before if question.id in x]
            b = [int(x[question.id]) for x in after if question.id in x]
            if len(a) < 2 or len(b) < 2:  # too few (or suppressed) to compare
                series.append({"change": None, "significant": False})
                continue
            series.append(results.trend(a, b, kind=question.kind))
        changes[question.id] = series
    return changes


def results_message(*, db: Engine, survey: Survey, run_id: int) -> Message:
    """The owner's results DM for one run."""
    report = run_results(db=db, survey=survey, run_id=run_id)
    overall = report["overall"]
    lines = [f"*{survey.title}: results of run {report['number']}*"]
    if overall.get(SUPPRESSED):
        lines.append(
            f"Only {overall['responses']} responses: fewer than {report['min_group']}, so no "
            "results are shown (that is the anonymity promise)."
        )
        return say("\n".join(lines), summary=lines[0])
    rate = overall.get("response_rate")
    lines.append(
        f"{overall['responses']} of {overall['population']} answered"
        + (f" ({100 * rate:.0f}%)" if rate is not None else "")
    )
    for question in survey.questions:
        summary = overall["questions"][question.id]
        if question.kind == "likert" and summary.get("mean") is not None:
            lines.append(f"• {question.text} — mean *{summary['mean']:.2f}* / 5")
        elif question.kind == "enps" and summary.get("enps") is not None:
            lines.append(f"• {question.text} — eNPS *{summary['enps']:+.0f}*")
    if overall.get("adkar_barrier"):
        lines.append(
            f"ADKAR barrier point: *{overall['adkar_barrier']}* (the first element at 3 or below)"
        )
    lines.append(f"Full results: `mobilize survey results {survey.id} --run {report['number']}`")
    return say("\n".join(lines), summary=lines[0])


def runs_of(db: Engine, survey_id: str) -> list[SurveyRun]:
    with Session(db) as session:
        return list(
            session.exec(
                select(SurveyRun)
                .where(SurveyRun.survey_id == survey_id)
                .order_by(col(SurveyRun.number))
            ).all()
        )
