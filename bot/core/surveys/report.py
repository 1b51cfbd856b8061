"""The one query layer every survey figure leaves through: results, trends, the owner's DM,
the export and the "you said, we did" summary all call `run_results()` (or `trend_results()`,
which builds on it), so nothing can show what suppression hides.

**Suppression.** Every figure the bot publishes is a sum over the people of one group: the
whole run, or one segment value (a site, a team). A reader can add and subtract published
figures, across groups, across breakdowns and against the whole, so hiding small groups one by
one is not enough (Coventry 6 − Finance 5 can be one person's answer). The rule, applied per
question (an optional question has its own, smaller groups) and to the response counts:

- Respondents fall into *cells*: people with the same stored segment values. Every published
  group is a union of cells.
- Two cells are *told apart* by the published groups when some combination of published
  figures weighs them differently. Cells that no combination tells apart form one *block*;
  everything a reader can compute is a combination of block totals.
- Publish a set of groups only when every block the reader can see into holds 0 or at least
  `min_group` people who answered. Otherwise hide the smallest group still shown and check
  again (the whole run, once at least `min_group` answered, is always shown).

So whatever anyone computes from the published figures, by any number of additions and
subtractions, is a total over `min_group` or more people. `tests/core/surveys/test_attacks.py`
subtracts every pair of published figures to check it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import numpy as np
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

import bot.core.surveys.results as results
from bot.core.messages import Image, Message, say
from bot.core.surveys.definitions import Question, Survey
from bot.store.models import SurveyInvitation, SurveyResponse, SurveyRun

SUPPRESSED = "suppressed"
RESPONSES = "__responses__"  # the response counts, checked like a question


class ResultsNotReady(Exception):
    """The run's answers are still sealed: results of a non-named run wait for its close."""


def _answered(value: Any) -> bool:
    return value not in (None, "", [])


def _summary(
    question: Question, answers: Sequence[dict[str, Any]], population: int
) -> dict[str, Any]:
    values = [a[question.id] for a in answers if _answered(a.get(question.id))]
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


# ---------------------------------------------------------------------------- suppression


@dataclass(frozen=True)
class Group:
    """One publishable group: the whole run (`segment` None) or one segment value."""

    segment: str | None
    label: str
    cells: frozenset[str]


def leaks(weights: dict[str, int], shown: Iterable[frozenset[str]], *, min_group: int) -> bool:
    """Whether publishing sums over the `shown` unions of cells lets a reader compute a total
    over fewer than `min_group` (but more than 0) people; `weights` counts the people of each
    cell. Cells no combination of the shown sets tells apart form one block; a block the shown
    sets reach must hold 0 or at least `min_group` people."""
    cells = sorted(cell for cell, weight in weights.items() if weight > 0)
    rows = [[1.0 if cell in group else 0.0 for cell in cells] for group in shown]
    if not cells or not rows:
        return False
    matrix = np.array(rows)
    _u, singular, vt = np.linalg.svd(matrix, full_matrices=False)
    basis = vt[singular > 1e-9 * max(1.0, float(singular.max(initial=0.0)))]
    projector = basis.T @ basis  # onto the span of what can be computed
    blocks: dict[tuple[float, ...], int] = {}
    for index, cell in enumerate(cells):
        column = tuple(round(float(x), 6) + 0.0 for x in projector[:, index])
        if any(column):  # a cell no shown figure touches cannot be computed at all
            blocks[column] = blocks.get(column, 0) + weights[cell]
    return any(0 < total < min_group for total in blocks.values())


def _shown(
    groups: Sequence[Group], weights: dict[str, int], *, min_group: int, allowed: set[int]
) -> set[int]:
    """Indexes of `groups` (among `allowed`; index 0 is the whole run) whose sums may be
    published for one question with these cell `weights`."""

    def size(index: int) -> int:
        return sum(weights.get(cell, 0) for cell in groups[index].cells)

    if 0 not in allowed or size(0) < min_group:
        return set()
    shown = {index for index in allowed if size(index) >= min_group}
    while leaks(weights, [groups[i].cells for i in sorted(shown)], min_group=min_group):
        smaller = [i for i in shown if i != 0]
        if not smaller:  # cannot happen: the whole run alone is one block of size ≥ min_group
            return set()
        shown.discard(min(smaller, key=lambda i: (size(i), groups[i].segment, groups[i].label)))
    return shown


# ---------------------------------------------------------------------------- results


def _load(db: Engine, run_id: int) -> tuple[SurveyRun, list[dict[str, Any]], list[str], list[str]]:
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
    if any(stored.startswith("sealed:") for stored, _segments in responses):
        raise ResultsNotReady(f"run {run.number} of {run.survey_id} is still open")
    answers = [json.loads(stored) for stored, _segments in responses]
    canonical: dict[str, str] = {}
    cells = [_cell(segments, canonical) for _answers, segments in responses]
    return run, answers, cells, [_cell(s, canonical) for s in invitations]


def _cell(stored: str | None, canonical: dict[str, str]) -> str:
    """The stored segments as a cell's name (one spelling per combination)."""
    key = stored or "{}"
    if key not in canonical:
        canonical[key] = json.dumps(json.loads(key), sort_keys=True)
    return canonical[key]


def _groups(survey: Survey, cells: Iterable[str]) -> list[Group]:
    known = set(cells)
    found = [Group(None, "", frozenset(known))]
    for segment in survey.segments:
        labels = sorted({json.loads(cell).get(segment.id) for cell in known} - {None})
        for label in labels:
            members = frozenset(c for c in known if json.loads(c).get(segment.id) == label)
            found.append(Group(segment.id, label, members))
    return found


def run_results(*, db: Engine, survey: Survey, run_id: int) -> dict[str, Any]:
    """Results of one run, overall and per segment value, with every figure that could single
    out fewer than `min_group` people hidden (see the module docstring)."""
    return _published(db, survey, run_id)[0]


def _published(
    db: Engine, survey: Survey, run_id: int, *, overall_only: bool = False
) -> tuple[dict[str, Any], list[dict[str, Any]], int]:
    """The report, and the answers and min_group it was computed from (for trends, which
    need only the whole run: `overall_only`, whose figures are the same either way)."""
    run, answers, cells, invited_cells = _load(db, run_id)
    min_group = run.min_group
    groups = _groups(survey, [*cells, *invited_cells])
    if overall_only:
        groups = groups[:1]
    counts: dict[str, int] = {}
    for cell in cells:
        counts[cell] = counts.get(cell, 0) + 1
    everyone = set(range(len(groups)))
    group_shown = _shown(groups, counts, min_group=min_group, allowed=everyone)
    question_shown: dict[str, set[int]] = {}
    for question in survey.questions:
        weights: dict[str, int] = {}
        for cell, given in zip(cells, answers, strict=True):
            if _answered(given.get(question.id)):
                weights[cell] = weights.get(cell, 0) + 1
        question_shown[question.id] = _shown(
            groups, weights, min_group=min_group, allowed=group_shown
        )
    population = run.population or len(invited_cells)

    def publish(index: int) -> dict[str, Any]:
        group = groups[index]
        if index not in group_shown:
            return (
                {"responses": len(answers), SUPPRESSED: True} if index == 0 else {SUPPRESSED: True}
            )
        rows = [a for a, cell in zip(answers, cells, strict=True) if cell in group.cells]
        invited = population if index == 0 else sum(1 for c in invited_cells if c in group.cells)
        per_question = {
            q.id: _summary(q, rows, invited)
            if index in question_shown[q.id]
            else {SUPPRESSED: True}
            for q in survey.questions
        }
        return {
            "responses": len(rows),
            "population": invited,
            "response_rate": round(len(rows) / invited, 4) if invited else None,
            "questions": per_question,
            "adkar_barrier": _barrier(survey, per_question),
        }

    report: dict[str, Any] = {
        "run": run_id,
        "number": run.number,
        "survey": survey.id,
        "state": run.state,
        "anonymity": run.anonymity,
        "min_group": min_group,
        "overall": publish(0),
        "segments": {segment.id: {} for segment in survey.segments},
    }
    present = set(cells)
    for index, group in enumerate(groups):  # (with overall_only, the segments stay empty)
        if group.segment is not None and group.cells & present:
            report["segments"][group.segment][group.label] = publish(index)
    return report, answers, min_group


def _barrier(survey: Survey, per_question: dict[str, dict[str, Any]]) -> str | None:
    tagged = survey.adkar
    if not tagged:
        return None
    means = {
        element: None
        if per_question[question_id].get(SUPPRESSED)
        else per_question[question_id].get("mean")
        for element, question_id in tagged.items()
    }
    return results.adkar_barrier(means)


def trend_results(*, db: Engine, survey: Survey, run_ids: Sequence[int]) -> dict[str, Any]:
    """Change between consecutive runs for Likert and eNPS questions, from the same published
    figures as the results: a question hidden in either run has no trend, and a test is only
    made between runs of at least `min_group` answers each with some spread (results.trend)."""
    raw: list[tuple[dict[str, Any], list[dict[str, Any]], int]] = []
    for run_id in run_ids:
        report, answers, min_group = _published(db, survey, run_id, overall_only=True)
        raw.append((report["overall"], answers, min_group))
    changes: dict[str, list[dict[str, Any]]] = {}
    for question in survey.questions:
        if question.kind not in {"likert", "enps"}:
            continue
        series = []
        for (before, a_rows, a_min), (after, b_rows, b_min) in pairwise(raw):
            shown = all(
                not g.get(SUPPRESSED) and not g["questions"][question.id].get(SUPPRESSED)
                for g in (before, after)
            )
            a = [int(x[question.id]) for x in a_rows if _answered(x.get(question.id))]
            b = [int(x[question.id]) for x in b_rows if _answered(x.get(question.id))]
            if not shown:
                series.append({"change": None, "significant": False})
                continue
            series.append(results.trend(a, b, kind=question.kind, min_group=max(a_min, b_min)))
        changes[question.id] = series
    return changes


# ---------------------------------------------------------------------------- summaries


def summary_lines(survey: Survey, report: dict[str, Any]) -> list[str]:
    """The headline figures of a run in plain words, only from what `run_results` published."""
    overall = report["overall"]
    if overall.get(SUPPRESSED):
        return [
            f"Only {overall['responses']} responses: fewer than {report['min_group']}, so no "
            "results are shown (that is the anonymity promise)."
        ]
    rate = overall.get("response_rate")
    lines = [
        f"{overall['responses']} of {overall['population']} answered"
        + (f" ({100 * rate:.0f}%)" if rate is not None else "")
    ]
    for question in survey.questions:
        summary = overall["questions"][question.id]
        if summary.get(SUPPRESSED):
            continue
        if question.kind == "likert" and summary.get("mean") is not None:
            lines.append(f"• {question.text} — mean *{summary['mean']:.2f}* / 5")
        elif question.kind == "enps" and summary.get("enps") is not None:
            lines.append(f"• {question.text} — eNPS *{summary['enps']:+.0f}*")
    barrier = overall.get("adkar_barrier")
    if barrier == results.UNKNOWN:
        lines.append("ADKAR barrier point: unknown (an earlier element is hidden: too few answers)")
    elif barrier:
        lines.append(f"ADKAR barrier point: *{barrier}* (the first element at 3 or below)")
    return lines


def results_message(*, db: Engine, survey: Survey, run_id: int) -> Message:
    """The owner's results DM for one run."""
    report = run_results(db=db, survey=survey, run_id=run_id)
    lines = [f"*{survey.title}: results of run {report['number']}*"]
    lines += summary_lines(survey, report)
    images: tuple[Image, ...] = ()
    if not report["overall"].get(SUPPRESSED):
        lines.append(
            f"Full results: `mobilize survey results {survey.id} --run {report['number']}` "
            "or the console's Surveys page"
        )
        from bot.core.surveys.chart_image import results_alt, results_png

        png = results_png(survey, report)
        if png is not None:
            name = f"{survey.id}-run-{report['number']}.png"
            images = (Image(png, results_alt(survey, report), name),)
    message = say("\n".join(lines), summary=lines[0])
    return replace(message, images=images)


def export_rows(survey: Survey, report: dict[str, Any]) -> list[list[str]]:
    """The published figures in long form (`segment, group, question, value, count`): what
    `run_results` shows, nothing else. A comment is a row of its own with a count of 1."""
    rows: list[list[str]] = [["segment", "group", "question", "value", "count"]]
    groups = [("", "everyone", report["overall"])] + [
        (segment, label, group)
        for segment, by_label in report["segments"].items()
        for label, group in by_label.items()
    ]
    for segment, label, group in groups:
        if group.get(SUPPRESSED):
            continue
        rows.append([segment, label, "responses", "", str(group["responses"])])
        for question in survey.questions:
            summary = group["questions"][question.id]
            if summary.get(SUPPRESSED):
                continue
            if question.kind == "text":
                rows += [[segment, label, question.id, c, "1"] for c in summary["comments"]]
                continue
            counts = summary.get("distribution") or summary.get("counts") or {}
            rows += [[segment, label, question.id, str(v), str(n)] for v, n in counts.items()]
    return rows


def runs_of(db: Engine, survey_id: str) -> list[SurveyRun]:
    with Session(db) as session:
        return list(
            session.exec(
                select(SurveyRun)
                .where(SurveyRun.survey_id == survey_id)
                .order_by(col(SurveyRun.number))
            ).all()
        )


def run_counts(session: Session, run_id: int | None) -> tuple[int, int]:
    """(invited, answered) for a run: how many, never who or what."""
    invited = session.exec(select(func.count()).where(SurveyInvitation.run_id == run_id)).one()
    answered = session.exec(select(func.count()).where(SurveyResponse.run_id == run_id)).one()
    return int(invited), int(answered)
