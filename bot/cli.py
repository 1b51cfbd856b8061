"""The `mobilize` command line. Errors are printed as plain messages, never tracebacks."""

from __future__ import annotations

import csv
import json
import logging
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from bot.cli_announce import app as announce_app
from bot.cli_survey import app as survey_app
from bot.config import Settings, SettingsError, get_settings
from bot.core.content import ContentError, ContentErrors

app = typer.Typer(
    help="Mobilize: FAQ answers, announcements and pulse surveys for a rollout.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
faq_app = typer.Typer(
    help="The FAQ knowledge base: import, export, ask, evaluate, learn.", no_args_is_help=True
)
db_app = typer.Typer(help="The database.", no_args_is_help=True)
teams_app = typer.Typer(help="Microsoft Teams: the app package.", no_args_is_help=True)
app.add_typer(faq_app, name="faq")
app.add_typer(teams_app, name="teams")
app.add_typer(db_app, name="db")
app.add_typer(announce_app, name="announce")
app.add_typer(survey_app, name="survey")
console = Console()
err = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")


def main() -> None:
    """Entry point of `mobilize` and `python -m bot`."""
    try:
        app()
    except SettingsError as exc:
        err.print(f"[red]Settings problem:[/red]\n{exc}", highlight=False, markup=True)
        sys.exit(2)
    except ContentErrors as exc:
        for error in exc.errors:
            err.print(str(error), highlight=False, markup=False)
        err.print(f"[red]{len(exc.errors)} content error(s).[/red]")
        sys.exit(1)
    except OperationalError as exc:
        err.print(
            f"[red]Database problem:[/red] {exc.orig or exc}. Check DATABASE_URL.", markup=True
        )
        sys.exit(3)
    except KeyboardInterrupt:
        sys.exit(130)


def _settings() -> Settings:
    settings = get_settings()
    setup_logging(settings.log_level)
    return settings


# Libraries that log request and response bodies (survey clicks carry answers, updates carry
# the message with them) or SQL with its parameters: never below INFO, whatever the level.
# SQLAlchemy logs every statement at INFO, so it is held at WARNING.
PAYLOAD_LOGGERS = {
    "slack_sdk": logging.INFO,
    "slack_bolt": logging.INFO,
    "urllib3": logging.INFO,
    "websocket": logging.INFO,
    "sqlalchemy": logging.WARNING,
}


def setup_logging(level: str) -> None:
    """The bot's logging at `level`, with payload-logging libraries held above DEBUG."""
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name, floor in PAYLOAD_LOGGERS.items():
        logging.getLogger(name).setLevel(max(floor, logging.getLevelName(level)))


def _db(settings: Settings) -> Engine:
    from bot.service import connect

    return connect(settings)


def _desk(settings: Settings, *, semantic: bool = True) -> Any:
    from bot.core.faq.desk import FaqDesk
    from bot.core.faq.engine import FaqEngine
    from bot.service import make_embedder

    db = _db(settings)
    embedder = make_embedder(settings, db) if semantic else None
    engine = FaqEngine(
        content_dir=settings.content_dir,
        embedder=embedder,
        db=db,
        default_timezone=settings.timezone,
    )
    engine.load()
    return FaqDesk(engine=engine, db=db, support_channel=settings.support_channel)


@app.command()
def run(
    http: Annotated[
        bool, typer.Option("--http", help="Serve Slack's HTTP requests instead of Socket Mode.")
    ] = False,
    port: Annotated[int, typer.Option(help="Port for HTTP mode.")] = 3000,
    host: Annotated[str, typer.Option(help="Address to listen on in HTTP mode.")] = "0.0.0.0",
) -> None:
    """Run the bot: Socket Mode when SLACK_APP_TOKEN is set and --http is not given, else HTTP."""
    from bot.channels.slack.socket_mode import SlackStartError, SocketMode, check_bot_token
    from bot.service import Service, slack_client

    settings = _settings()
    teams_only = settings.teams_enabled and not settings.slack_enabled
    socket_mode = bool(settings.slack_app_token) and not http and not teams_only
    if not teams_only:
        settings.require_slack(socket_mode=socket_mode)
    if settings.teams_enabled:
        settings.require_teams()
    service: Service | None = None
    try:
        if not teams_only:
            check_bot_token(slack_client(settings, max_retries=1))
        service = Service(settings)
        link = SocketMode(service.app, app_token=settings.slack_app_token) if socket_mode else None
        if link is not None:
            link.connect()  # before anything is sent: a refused app token ends the run here
        service.watch_content()
        service.sync_learned()
        if not teams_only:  # announcements and surveys go out on Slack (Teams: not yet)
            service.start_announcements()
        if link is not None:
            service.ready.set()
            console.print("Mobilize is running in Socket Mode. Ctrl-C stops it.")
            try:
                link.serve_forever()
            finally:
                link.close()
        else:
            server = service.http_server(port=port, host=host)
            service.ready.set()
            paths = ([] if teams_only else ["/slack/events"]) + (
                ["/api/messages"] if settings.teams_enabled else []
            )
            console.print(
                f"Mobilize is listening on http://{host}:{server.port}{paths[0]} "
                f"(and {', '.join([*paths[1:], '/healthz', '/metrics'])})."
            )
            server.serve_forever()
    except SlackStartError as exc:
        err.print(f"[red]Slack problem:[/red] {escape(str(exc))}", highlight=False)
        raise typer.Exit(2) from None
    finally:
        if service is not None:
            service.stop()


@app.command()
def chat(
    lexical: Annotated[
        bool, typer.Option("--lexical", help="Skip the semantic model (faster start).")
    ] = False,
) -> None:
    """Chat with the bot in the terminal; reads questions from stdin when piped."""
    from bot.channels.console import run_chat
    from bot.core.conversation import Conversation

    settings = _settings()
    desk = _desk(settings, semantic=not lexical)
    run_chat(Conversation(desk=desk, support_channel=settings.support_channel))


@app.command()
def check() -> None:
    """Validate messages/ and schedules/; prints file:line: reason and exits non-zero on errors."""
    from bot.core.announcements.announcer import load_announcements
    from bot.core.faq.kb import load_content
    from bot.core.surveys.definitions import load_survey_schedules, load_surveys

    settings = get_settings()
    now = datetime.now(UTC)
    rollout, kb, errors = load_content(
        settings.content_dir, now=now, default_timezone=settings.timezone
    )
    announcements, more = load_announcements(
        settings.content_dir, now=now, default_timezone=settings.timezone
    )
    surveys, survey_errors = load_surveys(settings.content_dir)
    schedules, schedule_errors = load_survey_schedules(settings.content_dir, rollout, surveys)
    errors += more + survey_errors + schedule_errors
    if errors:
        raise ContentErrors(errors)
    console.print(
        f"OK: {len(kb)} FAQ entries, {len(rollout.milestones)} milestones, "
        f"{len(announcements.plan.announcements)} planned announcements, "
        f"{len(announcements.templates)} templates, {len(surveys)} surveys "
        f"({len(schedules)} scheduled) in {settings.content_dir.resolve()}"
    )


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """Check the Slack and Teams setup: tokens, secrets, scopes and permissions, channels and
    groups; exits non-zero when something needs fixing, and says how."""
    from bot.doctor import diagnose, render

    report = diagnose(_settings())
    if as_json:
        print(json.dumps(report.as_json(), indent=2))
    else:
        render(report, console)
    if not report.ok:
        raise typer.Exit(1)


@teams_app.command("package")
def teams_package(
    out: Annotated[Path, typer.Option("--out", help="Where to write the .zip.")] = Path(
        "mobilize-teams.zip"
    ),
    domain: Annotated[
        str, typer.Option(help="Your public host name, where /api/messages is served.")
    ] = "mobilize.example.com",
    version: Annotated[str, typer.Option(help="The app's version (raise it on each upload).")] = (
        "1.0.0"
    ),
) -> None:
    """Write the Teams app package (manifest.json and icons) for upload in Teams."""
    from bot.channels.teams.package import package

    settings = _settings()
    if not settings.teams_app_id:
        raise SettingsError(
            "TEAMS_APP_ID is not set: put the bot's Microsoft App ID there (env or .env)"
        )
    try:
        data = package(app_id=settings.teams_app_id, domain=domain, version=version)
    except ValueError as exc:
        err.print(f"[red]Cannot build the package:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    out.write_bytes(data)
    console.print(
        f"Wrote {escape(str(out))} ({len(data):,} bytes). Upload it in Teams: Apps → Manage "
        "your apps → Upload an app (or the Teams admin center → Manage apps → Upload)."
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (also done on every start)."""
    from bot.store.db import current_revision

    settings = _settings()
    engine = _db(settings)
    console.print(f"Database at revision {current_revision(engine)}.")


@faq_app.command("import")
def faq_import(
    file: Annotated[
        Path,
        typer.Argument(
            help="A QnA Maker / Custom Question Answering TSV export.", exists=True, dir_okay=False
        ),
    ],
    replace: Annotated[bool, typer.Option(help="Remove existing entry files first.")] = False,
) -> None:
    """Import a QnA Maker TSV export into messages/faq/ (the QnaId becomes the entry id)."""
    from bot.core.faq.kb import faq_dir, read_qna_tsv, write_entries

    settings = get_settings()
    entries, errors = read_qna_tsv(file)
    if errors:
        raise ContentErrors(errors)
    folder = faq_dir(settings.content_dir)
    if replace and folder.is_dir():
        for old in folder.glob("*.md"):
            old.unlink()
    written = write_entries(entries, folder)
    phrasings = sum(len(e.phrasings) for e in entries)
    console.print(f"Imported {len(written)} entries ({phrasings} phrasings) into {folder}.")


@faq_app.command("export")
def faq_export(
    output: Annotated[
        Path | None, typer.Argument(help="Output TSV file (default: stdout).")
    ] = None,
) -> None:
    """Export the knowledge base (with approved alternates) as a QnA Maker TSV."""
    from bot.core.faq.engine import FaqEngine
    from bot.core.faq.kb import load_content, write_qna_tsv

    settings = get_settings()
    _rollout, kb, errors = load_content(
        settings.content_dir, now=datetime.now(UTC), default_timezone=settings.timezone
    )
    if errors:
        raise ContentErrors(errors)
    extra = FaqEngine(
        content_dir=settings.content_dir, embedder=None, db=_db(settings)
    ).learned_alternates()
    if output is None:
        write_qna_tsv(kb, sys.stdout, extra=extra)
        return
    with output.open("w", encoding="utf-8", newline="") as handle:
        rows = write_qna_tsv(kb, handle, extra=extra)
    console.print(f"Wrote {rows} rows for {len(kb)} entries to {output}.")


@faq_app.command("ask")
def faq_ask(
    question: Annotated[str, typer.Argument(help="The question, as a user would type it.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show the ranking and the decision for one question."""
    settings = _settings()
    desk = _desk(settings)
    state = desk.engine.state
    ranked = state.matcher.rank(question, k=5)
    decision = state.policy.decide(ranked)
    if as_json:
        print(
            json.dumps(
                {
                    "decision": decision.kind,
                    "confidence": round(decision.confidence, 4),
                    "ranking": [
                        {
                            "id": c.entry_id,
                            "score": round(c.score, 4),
                            "question": state.kb.entries[c.entry_id].question,
                        }
                        for c in ranked
                        if c.entry_id in state.kb.entries
                    ],
                },
                indent=2,
            )
        )
        return
    table = Table("rank", "entry", "score", "question")
    for number, candidate in enumerate(ranked, start=1):
        entry = state.kb.entries.get(candidate.entry_id)
        table.add_row(
            str(number),
            candidate.entry_id,
            f"{candidate.score:.3f}",
            entry.question if entry else "?",
        )
    console.print(table)
    console.print(
        f"Decision: [bold]{decision.kind}[/bold] (confidence {decision.confidence:.2f}, "
        f"semantic={'on' if state.matcher.semantic else 'off'})"
    )


@faq_app.command("eval")
def faq_eval(
    cases_file: Annotated[
        Path,
        typer.Argument(
            help="CSV with columns question,expected_id (empty id = should not be answered).",
            exists=True,
            dir_okay=False,
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Batch-test the knowledge base, like QnA Maker's batch test."""
    from bot.core.faq.evaluate import EvalCase, evaluate

    cases = _read_cases(cases_file)
    settings = _settings()
    desk = _desk(settings)
    state = desk.engine.state
    unknown = sorted(
        {c.expected_id for c in cases if c.expected_id and c.expected_id not in state.kb.entries}
    )
    if unknown:
        raise ContentErrors(
            [
                ContentError(
                    cases_file,
                    1,
                    f"expected_id not in the knowledge base: {', '.join(unknown[:10])}",
                )
            ]
        )
    report = evaluate(
        [EvalCase(c.question, c.expected_id) for c in cases],
        matcher=state.matcher,
        policy=state.policy,
    )
    if as_json:
        print(json.dumps(report))
        return
    table = Table("metric", "value")
    for key, value in report.items():
        table.add_row(
            key,
            "—" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value)),
        )
    console.print(table)


def _read_cases(path: Path) -> list[Any]:
    from bot.core.faq.evaluate import EvalCase

    cases = []
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "question" not in reader.fieldnames:
            raise ContentErrors(
                [ContentError(path, 1, "expected a header row: question,expected_id")]
            )
        for row in reader:
            question = (row.get("question") or "").strip()
            if question:
                cases.append(EvalCase(question, (row.get("expected_id") or "").strip() or None))
    if not cases:
        raise ContentErrors([ContentError(path, 1, "no cases")])
    return cases


@faq_app.command("gaps")
def faq_gaps(limit: Annotated[int, typer.Option(help="Groups to show.")] = 20) -> None:
    """Unanswered and badly answered questions grouped by similarity, and phrasings to approve."""
    from bot.core.faq.gaps import gap_questions, group_gaps, picks

    settings = _settings()
    desk = _desk(settings)
    gaps = group_gaps(gap_questions(desk.db), embedder=desk.engine.embedder)
    if not gaps:
        console.print("No gaps: every question so far was answered and nobody said it didn't help.")
    else:
        table = Table("asked", "example", "why", "also asked as")
        for gap in gaps[:limit]:
            why = ", ".join(f"{reason} ×{count}" for reason, count in gap.reasons.items())
            table.add_row(str(len(gap.questions)), gap.example, why, "; ".join(gap.questions[1:4]))
        console.print(table)
    found = picks(desk.db)
    if found:
        table = Table(
            "picked", "entry", 'phrasing (approve with: mobilize faq approve ENTRY "PHRASING")'
        )
        for pick in found[:limit]:
            table.add_row(str(pick.count), pick.entry_id, pick.question)
        console.print(table)


@faq_app.command("approve")
def faq_approve(
    entry_id: Annotated[str, typer.Argument(help="The entry the phrasing belongs to.")],
    phrasing: Annotated[str, typer.Argument(help="The phrasing to add as an alternate.")],
    admin: Annotated[str, typer.Option(help="Who approves (recorded in the audit log).")] = "cli",
) -> None:
    """Approve a phrasing as a new alternate of an entry; a running bot picks it up within 30 s."""
    from bot.core.faq.curation import approve_phrasing

    settings = _settings()
    desk = _desk(settings, semantic=False)
    try:
        approve_phrasing(desk, entry_id=entry_id, text=phrasing, admin=admin)
    except KeyError:
        raise ContentErrors(
            [
                ContentError(
                    settings.content_dir / "messages" / "faq", 1, f"no FAQ entry {entry_id!r}"
                )
            ]
        ) from None
    console.print(f"Added {phrasing!r} to {entry_id}.")
