"""`mobilize survey …`: start, close, watch and read pulse surveys."""

from __future__ import annotations

import csv
import getpass
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session

from bot.config import get_settings
from bot.core.content import ContentErrors
from bot.core.surveys.actions import (
    Refused,
    check_closable,
    check_shareable,
    export_table,
    parse_audiences,
)
from bot.core.surveys.definitions import MAX_OPEN_DAYS, Survey
from bot.core.surveys.privacy import SecretMissing, create_secret_file
from bot.core.surveys.report import (
    SUPPRESSED,
    run_counts,
    run_results,
    runs_of,
    trend_results,
)
from bot.core.surveys.results import UNKNOWN
from bot.core.surveys.runner import SurveyRunner
from bot.store.audit import record
from bot.store.models import SurveyRun

app = typer.Typer(
    help="Pulse surveys: start, close, status, results, export, share.", no_args_is_help=True
)
console = Console()


def _runner() -> SurveyRunner:
    from bot.channels.slack.chat import SlackChat
    from bot.service import connect, connect_platforms, make_survey_runner, slack_client

    settings = get_settings()
    db = connect(settings)
    slack = SlackChat(slack_client(settings, max_retries=1)) if settings.slack_enabled else None
    runner = make_survey_runner(settings, db, connect_platforms(settings, db, slack_chat=slack))
    errors = runner.load()
    if errors:
        raise ContentErrors(errors)
    return runner


def _survey(runner: SurveyRunner, survey_id: str) -> Survey:
    survey = runner.surveys.get(survey_id)
    if survey is None:
        known = ", ".join(sorted(runner.surveys)) or "none"
        raise typer.BadParameter(f"no survey {survey_id!r}; known: {known}")
    return survey


def _run(db: Engine, survey_id: str, number: int | None) -> SurveyRun:
    runs = runs_of(db, survey_id)
    if not runs:
        raise typer.BadParameter(f"survey {survey_id!r} has no runs yet")
    if number is None:
        return runs[-1]
    for run in runs:
        if run.number == number:
            return run
    raise typer.BadParameter(f"survey {survey_id!r} has no run {number} (runs 1–{len(runs)})")


def _closed(target: SurveyRun, survey_id: str) -> None:
    """Results of a run that is not named wait for its close: watching them change while the
    participation ledger says who just answered would reveal that person's answers."""
    if target.anonymity != "named" and target.state != "closed":
        raise typer.BadParameter(
            f"run {target.number} of {survey_id} is still open; results of a "
            f"{target.anonymity} survey are shown once it closes "
            f"(mobilize survey close {survey_id})"
        )


@app.command("start")
def start_command(
    survey_id: Annotated[str, typer.Argument(help="Survey id (file name in messages/surveys/).")],
    to: Annotated[
        str, typer.Option("--to", help="Audience: everyone, members:C…, users:U1,U2 …")
    ] = "everyone",
    days: Annotated[
        int, typer.Option(min=1, max=MAX_OPEN_DAYS, help="Days the run stays open.")
    ] = 5,
    by: Annotated[
        str | None, typer.Option("--by", help="Your Slack user id: gets the results.")
    ] = None,
) -> None:
    """Start a run now; the running bot sends the invitations on its next tick."""
    runner = _runner()
    _survey(runner, survey_id)
    try:
        audience = parse_audiences(to)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    actor = by or f"cli:{getpass.getuser()}"
    try:
        run_id = runner.start_adhoc(
            survey_id=survey_id, audience=audience, by=actor, open_days=days
        )
    except SecretMissing as exc:
        raise typer.BadParameter(str(exc)) from None
    record(
        runner.db, actor=actor, action="survey.start", detail=f"{survey_id} run #{run_id} to {to}"
    )
    console.print(f"Started {survey_id} (run id {run_id}, open {days} days, to {to}).")


@app.command("close")
def close_command(
    survey_id: Annotated[str, typer.Argument(help="Survey id.")],
    run: Annotated[
        int | None, typer.Option("--run", help="Run number (default: the latest).")
    ] = None,
    by: Annotated[str | None, typer.Option("--by", help="Who (for the audit log).")] = None,
) -> None:
    """Close a run now: no more answers; anonymous answers lose their link key; results go out."""
    runner = _runner()
    target = _run(runner.db, survey_id, run)
    assert target.id is not None
    if target.state == "closed":
        console.print(f"Run {target.number} of {survey_id} is already closed.")
        return
    try:
        check_closable(runner, target)
    except Refused as exc:
        raise typer.BadParameter(str(exc)) from None
    if not runner.close(target.id):
        console.print(f"Run {target.number} of {survey_id} is already closed.")
        return
    record(
        runner.db,
        actor=by or f"cli:{getpass.getuser()}",
        action="survey.close",
        detail=f"{survey_id} run {target.number}",
    )
    console.print(f"Closed run {target.number} of {survey_id}; results sent to its owner.")


@app.command("status")
def status_command(
    survey_id: Annotated[str, typer.Argument(help="Survey id.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every run: state, dates, invited, answered (how many, never who or what)."""
    runner = _runner()
    _survey(runner, survey_id)
    rows: list[dict[str, Any]] = []
    with Session(runner.db) as session:
        for run in runs_of(runner.db, survey_id):
            invited, answered = run_counts(session, run.id)
            rows.append(
                {
                    "run": run.number,
                    "state": run.state,
                    "anonymity": run.anonymity,
                    "starts_at": run.starts_at.isoformat(),
                    "closes_at": run.closes_at.isoformat(),
                    "invited": int(invited),
                    "answered": int(answered),
                }
            )
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("run", "state", "opens", "closes", "invited", "answered", "rate")
    for row in rows:
        rate = f"{100 * row['answered'] / row['invited']:.0f}%" if row["invited"] else "—"
        table.add_row(
            str(row["run"]),
            row["state"],
            row["starts_at"][:16],
            row["closes_at"][:16],
            str(row["invited"]),
            str(row["answered"]),
            rate,
        )
    console.print(table if rows else f"{survey_id} has no runs yet.")


@app.command("results")
def results_command(
    survey_id: Annotated[str, typer.Argument(help="Survey id.")],
    run: Annotated[
        int | None, typer.Option("--run", help="Run number (default: the latest).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per question: responses, rate, distribution, mean / eNPS with a 95% interval; per segment
    where groups are big enough; the trend against earlier runs; the ADKAR barrier point."""
    runner = _runner()
    survey = _survey(runner, survey_id)
    target = _run(runner.db, survey_id, run)
    _closed(target, survey_id)
    assert target.id is not None
    report = run_results(db=runner.db, survey=survey, run_id=target.id)
    earlier = [r.id for r in runs_of(runner.db, survey_id) if r.number <= target.number and r.id]
    report["trend"] = trend_results(db=runner.db, survey=survey, run_ids=earlier[-2:])
    if as_json:
        print(json.dumps(report, default=str))
        return
    overall = report["overall"]
    console.print(
        f"[bold]{survey.title}[/bold], run {target.number} ({target.state}, {target.anonymity})"
    )
    if overall.get(SUPPRESSED):
        console.print(
            f"{overall['responses']} responses: fewer than {target.min_group}, nothing is shown."
        )
        return
    console.print(f"{overall['responses']} of {overall['population']} answered.")
    table = Table("question", "n", "result", "95% interval", "change")
    for question in survey.questions:
        summary = overall["questions"][question.id]
        change = (report["trend"].get(question.id) or [{}])[-1] if report["trend"] else {}
        flag = ""
        if change.get("change") is not None:
            flag = f"{change['change']:+.2f}" + (
                " (significant)" if change.get("significant") else " (noise)"
            )
        mean, enps = summary.get("mean"), summary.get("enps")  # None when nobody answered
        if summary.get(SUPPRESSED):
            result, interval = "hidden: too few answers to show safely", None
        elif question.kind == "likert":
            result = f"mean {mean:.2f}" if mean is not None else "no answers"
            interval = summary.get("ci95")
        elif question.kind == "enps":
            result = f"eNPS {enps:+.0f}" if enps is not None else "no answers"
            interval = summary.get("ci95")
        elif question.kind == "text":
            result, interval = f"{len(summary.get('comments', []))} comments", None
        else:
            result, interval = json.dumps(summary.get("counts", {})), None
        shown = f"{interval[0]:.2f} – {interval[1]:.2f}" if interval else ""
        table.add_row(question.text[:60], str(summary.get("n", "")), result, shown, flag)
    console.print(table)
    if overall.get("adkar_barrier") == UNKNOWN:
        console.print("ADKAR barrier point: unknown (an earlier element is hidden)")
    elif overall.get("adkar_barrier"):
        console.print(f"ADKAR barrier point: [bold]{overall['adkar_barrier']}[/bold]")
    for segment_id, groups in report["segments"].items():
        for label, group in groups.items():
            if group.get(SUPPRESSED):
                console.print(f"{segment_id} = {label}: suppressed (small group)")
            else:
                barrier = group.get("adkar_barrier") or "none"
                console.print(
                    f"{segment_id} = {label}: {group['responses']} responses, "
                    f"ADKAR barrier {barrier}"
                )


@app.command("export")
def export_command(
    survey_id: Annotated[str, typer.Argument(help="Survey id.")],
    run: Annotated[
        int | None, typer.Option("--run", help="Run number (default: the latest).")
    ] = None,
) -> None:
    """CSV. Anonymous and confidential surveys: the published figures only, in long form
    (segment, group, question, value, count; a comment is a row), exactly what `results`
    shows after suppression; never one row per person, which a rare answer could single out.
    Named surveys: one row per person, with the user id."""
    runner = _runner()
    survey = _survey(runner, survey_id)
    target = _run(runner.db, survey_id, run)
    _closed(target, survey_id)
    try:
        rows = export_table(db=runner.db, survey=survey, run=target)
    except Refused as exc:
        console.print(str(exc))
        return
    csv.writer(sys.stdout).writerows(rows)


@app.command("share")
def share_command(
    survey_id: Annotated[str, typer.Argument(help="Survey id.")],
    note: Annotated[
        Path,
        typer.Option("--note", exists=True, dir_okay=False, help="What you will do (Markdown)."),
    ],
    run: Annotated[
        int | None, typer.Option("--run", help="Run number (default: the latest).")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Send it (without: preview only).")] = False,
    by: Annotated[str | None, typer.Option("--by", help="Who (for the audit log).")] = None,
) -> None:
    """ "You said, we did": the results of a closed run that passed suppression, and your note,
    to everyone the run asked. Shows a preview; sends through the outbox with --yes."""
    runner = _runner()
    _survey(runner, survey_id)
    target = _run(runner.db, survey_id, run)
    assert target.id is not None
    try:
        check_shareable(target)
    except Refused as exc:
        raise typer.BadParameter(str(exc)) from None
    text = note.read_text(encoding="utf-8").strip()
    if not text:
        raise typer.BadParameter(f"{note} is empty: say what the programme will do")
    message, people = runner.share_preview(target.id, text)
    console.print(message.plain, markup=False, highlight=False)
    if not yes:
        console.print(f"\nPreview only: {len(people)} people would get this. Add --yes to send it.")
        return
    sent = runner.share(target.id, text, by=by or f"cli:{getpass.getuser()}")
    record(
        runner.db,
        actor=by or f"cli:{getpass.getuser()}",
        action="survey.share",
        detail=f"{survey_id} run {target.number} to {sent}",
    )
    console.print(f"\nQueued for {sent} people; the running bot sends it.")


@app.command("secret")
def secret_command(
    path: Annotated[Path, typer.Argument(help="Where to keep it: an absolute path.")],
) -> None:
    """Create the survey secret file (random, readable by its owner only). Keep it out of the
    database's folder and its backups; point MOBILIZE_SURVEY_SECRET_FILE at it everywhere."""
    if not path.is_absolute():
        raise typer.BadParameter("give an absolute path")
    try:
        create_secret_file(path)
    except FileExistsError:
        raise typer.BadParameter(f"{path} exists; a new secret would lock open runs") from None
    console.print(f"Created {path}. Set MOBILIZE_SURVEY_SECRET_FILE={path} for every process.")
