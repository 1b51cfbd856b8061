"""The checks `mobilize survey start|close|share` and the console both make before calling the
`SurveyRunner`, in one place so both refuse the same things with the same words."""

from __future__ import annotations

import json

from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.core.announcements.plan import parse_audience
from bot.core.surveys.definitions import Survey
from bot.core.surveys.privacy import SecretMissing, WrongSecret
from bot.core.surveys.report import SUPPRESSED, export_rows, run_results
from bot.core.surveys.runner import SurveyRunner
from bot.store.models import SurveyResponse, SurveyRun


class Refused(ValueError):
    """A survey action that cannot be done; the message says why, in plain words."""


def parse_audiences(to: str) -> list[str]:
    """`;`-separated audience parts in their normal form; ValueError names a bad part."""
    return [parse_audience(part.strip()) for part in to.split(";")]


def check_closable(runner: SurveyRunner, run: SurveyRun) -> None:
    """Refused when this process cannot close `run`: an anonymous or confidential run needs
    the secret it was started with (closing erases the link key with that secret)."""
    if run.anonymity != "named":
        try:
            runner.desk.run_key(run)
        except (SecretMissing, WrongSecret) as exc:
            raise Refused(f"cannot close: {exc}") from None


def check_shareable(run: SurveyRun) -> None:
    """Refused while `run` is open: "you said, we did" shares a closed run's results only."""
    if run.state != "closed":
        raise Refused(f"run {run.number} of {run.survey_id} is still open; share it once it closes")


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what a spreadsheet would run as a formula


def cell(value: object) -> str:
    """A CSV cell that a spreadsheet shows as text: a comment starting like a formula
    (`=HYPERLINK(…)`) gets a leading apostrophe instead of running when the file is opened."""
    text = str(value)
    return "'" + text if text.startswith(FORMULA_START) else text


def export_table(*, db: Engine, survey: Survey, run: SurveyRun) -> list[list[str]]:
    """The CSV rows of `mobilize survey export`. Anonymous and confidential runs: the published
    figures only, in long form (segment, group, question, value, count; a comment is a row),
    exactly what the results show after suppression; never one row per person, which a rare
    answer could single out. Named runs: one row per person, with the user id. Refused while
    the run is open, or when too few answered for anything to be shown."""
    if run.state != "closed":
        raise Refused(
            f"run {run.number} of {run.survey_id} is still open; export it once it closes"
        )
    assert run.id is not None
    if run.anonymity != "named":
        report = run_results(db=db, survey=survey, run_id=run.id)
        if report["overall"].get(SUPPRESSED):
            raise Refused(
                f"Only {report['overall']['responses']} responses: fewer than "
                f"{run.min_group}, nothing to export."
            )
        return [[cell(value) for value in row] for row in export_rows(survey, report)]
    with Session(db) as session:
        responses = session.exec(
            select(SurveyResponse).where(SurveyResponse.run_id == run.id)
        ).all()
    rows = [["user"] + [q.id for q in survey.questions]]
    for response in sorted(responses, key=lambda r: r.user_id or ""):
        answers = json.loads(response.answers)
        cells = [
            ";".join(v) if isinstance(v := answers.get(q.id, ""), list) else str(v)
            for q in survey.questions
        ]
        rows.append([cell(value) for value in [response.user_id or "", *cells]])
    return rows
