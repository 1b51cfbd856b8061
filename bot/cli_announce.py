"""`mobilize announce …`: plan, preview, send, and manage announcements after sending; settle
deliveries in doubt (announcements and survey messages alike)."""

from __future__ import annotations

import getpass
import json
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markdown import Markdown
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot.config import Settings, get_settings
from bot.core.announcements import sends
from bot.core.announcements.announcer import Announcer
from bot.core.announcements.audience import INVITE_HINT, NOT_IN_CHANNEL, AudienceError, resolve
from bot.core.announcements.plan import occurrences, parse_audience
from bot.core.announcements.templates import (
    SAMPLE_USER,
    Recipient,
    TemplateRenderError,
)
from bot.core.content import ContentError, ContentErrors
from bot.store.audit import record
from bot.store.models import AnnouncementSend, Delivery

app = typer.Typer(help="Milestone announcements: plan, preview, send, track.", no_args_is_help=True)
console = Console()


def _announcer(settings: Settings) -> tuple[Announcer, Engine]:
    from bot.channels.slack.chat import SlackChat
    from bot.service import connect, connect_platforms, make_announcer, slack_client

    db = connect(settings)
    slack = SlackChat(slack_client(settings, max_retries=1)) if settings.slack_enabled else None
    announcer = make_announcer(settings, db, connect_platforms(settings, db, slack_chat=slack))
    errors = announcer.load()
    if errors:
        raise ContentErrors(errors)
    return announcer, db


def _actor(by: str | None) -> str:
    return by or f"cli:{getpass.getuser()}"


def _parse_when(value: str | None, zone: str) -> datetime:
    if not value:
        return datetime.now(UTC)
    from zoneinfo import ZoneInfo

    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r}: use a date and time like 2027-02-15T09:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=ZoneInfo(zone))
    return moment.astimezone(UTC)


@app.command("plan")
def plan_command(
    days: Annotated[int, typer.Option(help="How far ahead to look.")] = 120,
    sizes: Annotated[bool, typer.Option(help="Resolve each audience through Slack.")] = False,
) -> None:
    """Upcoming occurrences: time, template, audience and (with --sizes) its size."""
    settings = get_settings()
    announcer, _db = _announcer(settings)
    content = announcer.content
    now = datetime.now(UTC)
    found = occurrences(content.plan, content.rollout, start=now, end=now + timedelta(days=days))
    table = Table("due (rollout time)", "announcement", "template", "audience", "size")
    zone = content.rollout.zone
    cache: dict[tuple[str, ...], str] = {}
    outside: set[str] = set()
    for occurrence in found:
        announcement = content.plan.get(occurrence.announcement_id)
        assert announcement is not None
        size = "—"
        if sizes:
            key = announcement.audience
            if key not in cache:
                try:
                    audience = resolve(
                        list(key), announcer.directory, content_dir=settings.content_dir
                    )
                    cache[key] = audience.summary()
                    outside.update(e.who for e in audience.excluded if e.reason == NOT_IN_CHANNEL)
                except AudienceError as exc:
                    cache[key] = f"error: {exc}"
            size = cache[key]
        when = occurrence.due_utc.astimezone(zone).strftime("%a %d %b %Y %H:%M")
        if announcement.local_time:
            when = f"{occurrence.local:%a %d %b %Y %H:%M} local"
        table.add_row(
            when, announcement.id, announcement.template, ", ".join(announcement.audience), size
        )
    console.print(table if found else f"Nothing planned in the next {days} days.")
    if outside:
        console.print(
            f"[red]The bot is not in {', '.join(sorted(outside))}[/red]: nothing will be posted "
            f"there until someone {INVITE_HINT.removeprefix('type ')} (`/invite @Mobilize`)."
        )


@app.command("preview")
def preview_command(
    template: Annotated[
        str, typer.Argument(help="Template id (file name in messages/announcements/).")
    ],
    user: Annotated[
        str | None, typer.Option("--user", help="Render for this Slack user id.")
    ] = None,
) -> None:
    """Show a template rendered: text, Block Kit JSON and a Block Kit Builder link."""
    from bot.channels.slack.render import preview_blocks_url, to_payload

    settings = get_settings()
    announcer, _db = _announcer(settings)
    recipient = SAMPLE_USER
    if user:
        person = announcer.directory.person(user)
        if person is None:
            raise typer.BadParameter(f"no Slack user {user}")
        recipient = Recipient(person.id, person.name, person.first_name, person.tz)
    try:
        message = announcer.preview(template, recipient)
    except KeyError:
        known = ", ".join(sorted(announcer.content.templates))
        raise typer.BadParameter(f"no template {template!r}; known: {known}") from None
    except TemplateRenderError as exc:
        raise typer.BadParameter(
            f"{template} does not render for {recipient.id}: {exc.reason}"
        ) from None
    for part in message.parts:
        console.print(Markdown(part.body))
    for line in message.context:
        console.print(f"[dim]{line}[/dim]")
    payload = to_payload(message)
    console.print_json(json.dumps(payload["blocks"]))
    console.print(f"Block Kit Builder: {preview_blocks_url(payload['blocks'])}", soft_wrap=True)


@app.command("send")
def send_command(
    template: Annotated[str, typer.Argument(help="Template id.")],
    to: Annotated[str, typer.Option("--to", help="Audience: everyone, members:C…, users:U1,U2, …")],
    at: Annotated[
        str | None, typer.Option("--at", help="When, e.g. 2027-02-15T09:00 (rollout time).")
    ] = None,
    by: Annotated[
        str | None, typer.Option("--by", help="Your Slack user id: gets the report.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Resolve and show, do not queue.")
    ] = False,
) -> None:
    """Queue an ad-hoc send for the running bot to deliver; prints its id."""
    settings = get_settings()
    announcer, db = _announcer(settings)
    template_obj = announcer.content.templates.get(template)
    if template_obj is None:
        known = ", ".join(sorted(announcer.content.templates))
        raise typer.BadParameter(f"no template {template!r}; known: {known}")
    parts = []
    for part in to.split(";"):
        try:
            parts.append(parse_audience(part.strip()))
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    if settings.slack_bot_token:
        try:
            audience = resolve(parts, announcer.directory, content_dir=settings.content_dir)
        except AudienceError as exc:
            raise ContentErrors(
                [ContentError(settings.content_dir, 1, f"audience: {exc}")]
            ) from None
        console.print(f"Audience: {audience.summary()}")
        if audience.excluded:
            shown = ", ".join(f"{e.who} ({e.reason})" for e in audience.excluded[:10])
            console.print(f"Left out: {shown}{' …' if len(audience.excluded) > 10 else ''}")
        if any(e.reason == NOT_IN_CHANNEL for e in audience.excluded):
            console.print(f"To post in those channels, {INVITE_HINT}.")
    if dry_run:
        return
    when = _parse_when(at, announcer.content.rollout.timezone)
    actor = _actor(by)
    with Session(db) as session:
        send_id = sends.create_adhoc(
            session=session,
            template=template,
            audience=parts,
            at=when,
            by=actor,
            ack=template_obj.ack,
        )
        session.commit()
    record(
        db,
        actor=actor,
        action="announce.send",
        detail=f"#{send_id} {template} to {to} at {when:%Y-%m-%d %H:%M} UTC",
    )
    console.print(
        f"Queued announcement #{send_id} ({template} to {to}, {when:%Y-%m-%d %H:%M} UTC)."
    )
    print(send_id)


def _load_send(db: Engine, send_id: int) -> AnnouncementSend:
    with Session(db) as session:
        send = session.get(AnnouncementSend, send_id)
    if send is None:
        raise typer.BadParameter(f"no announcement #{send_id}")
    return send


@app.command("status")
def status_command(
    send_id: Annotated[
        int | None, typer.Argument(help="Announcement id; none lists recent ones.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    watch: Annotated[bool, typer.Option(help="Show a progress bar until sending ends.")] = True,
) -> None:
    """Progress of one send (failures grouped by Slack's error code), or the recent sends."""
    settings = get_settings()
    announcer, db = _announcer(settings)
    if send_id is None:
        with Session(db) as session:
            rows = session.exec(
                select(AnnouncementSend).order_by(col(AnnouncementSend.id).desc()).limit(20)
            ).all()
        statuses = [announcer.status(int(row.id or 0)) for row in rows]
        if as_json:
            print(json.dumps(statuses))
            return
        table = Table(
            "id", "template", "state", "due (UTC)", "total", "sent", "failed", "acknowledged"
        )
        for row, status in zip(rows, statuses, strict=True):
            table.add_row(
                str(row.id),
                row.template,
                row.state,
                f"{row.due_at:%Y-%m-%d %H:%M}",
                str(status["total"]),
                str(status["sent"]),
                str(status["failed"]),
                str(status["acknowledged"]),
            )
        console.print(table)
        return
    _load_send(db, send_id)
    status = announcer.status(send_id)
    if as_json:
        print(json.dumps(status))
        return
    if watch and status["state"] in {"planned", "resolving", "sending"} and sys.stdout.isatty():
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
        ) as bar:
            task = bar.add_task(f"#{send_id}", total=int(str(status["total"])) or None)
            while status["state"] in {"planned", "resolving", "sending"}:
                done = sum(int(str(status[k])) for k in ("sent", "failed", "skipped"))
                bar.update(task, completed=done, total=int(str(status["total"])) or None)
                time.sleep(1)
                status = announcer.status(send_id)
    console.print(announcer.report_message(send_id).plain)


@app.command("export")
def export_command(
    send_id: Annotated[int, typer.Argument(help="Announcement id.")],
    output: Annotated[
        typer.FileTextWrite | None,
        typer.Option("--output", "-o", help="CSV file (default stdout)."),
    ] = None,
) -> None:
    """One CSV row per recipient: state, Slack error code, when, acknowledged."""
    settings = get_settings()
    _announcer_obj, db = _announcer(settings)
    _load_send(db, send_id)
    sends.write_csv(db=db, send_id=send_id, out=output or sys.stdout)


def _edit(send_id: int, op: str, by: str | None) -> None:
    settings = get_settings()
    _announcer_obj, db = _announcer(settings)
    _load_send(db, send_id)
    with Session(db) as session:
        copies = sends.request_edit(session=session, send_id=send_id, op=op, now=datetime.now(UTC))
        session.commit()
    record(
        db,
        actor=_actor(by),
        action=f"announce.{'recall' if op == 'delete' else 'update'}",
        detail=f"#{send_id}: {copies} copies",
    )
    verb = "deleted" if op == "delete" else "re-rendered and edited"
    console.print(
        f"{copies} sent copies of #{send_id} will be {verb} by the running bot (Tier-3 pace)."
    )


@app.command("update")
def update_command(
    send_id: Annotated[int, typer.Argument(help="Announcement id.")],
    by: Annotated[str | None, typer.Option("--by", help="Who (for the audit log).")] = None,
) -> None:
    """Re-render the template and edit every sent copy."""
    _edit(send_id, "update", by)


@app.command("recall")
def recall_command(
    send_id: Annotated[int, typer.Argument(help="Announcement id.")],
    by: Annotated[str | None, typer.Option("--by", help="Who (for the audit log).")] = None,
) -> None:
    """Delete every sent copy (and cancel what has not gone yet)."""
    _edit(send_id, "delete", by)


@app.command("resend")
def resend_command(
    send_id: Annotated[int, typer.Argument(help="Announcement id.")],
    failed: Annotated[
        bool, typer.Option("--failed", help="Resend to those it failed for.")
    ] = False,
    by: Annotated[str | None, typer.Option("--by", help="Who (for the audit log).")] = None,
) -> None:
    """Queue the failed deliveries again."""
    if not failed:
        raise typer.BadParameter("say what to resend: --failed")
    settings = get_settings()
    _announcer_obj, db = _announcer(settings)
    _load_send(db, send_id)
    with Session(db) as session:
        count = sends.resend_failed(session=session, send_id=send_id, now=datetime.now(UTC))
        session.commit()
    record(db, actor=_actor(by), action="announce.resend", detail=f"#{send_id}: {count} failed")
    console.print(f"{count} failed deliveries of #{send_id} queued again.")


@app.command("cancel")
def cancel_command(
    send_id: Annotated[int, typer.Argument(help="Announcement id.")],
    by: Annotated[str | None, typer.Option("--by", help="Who (for the audit log).")] = None,
) -> None:
    """Stop a send: what has not gone yet is cancelled."""
    settings = get_settings()
    _announcer_obj, db = _announcer(settings)
    _load_send(db, send_id)
    with Session(db) as session:
        count = sends.cancel(session=session, send_id=send_id)
        session.commit()
    record(db, actor=_actor(by), action="announce.cancel", detail=f"#{send_id}: {count} pending")
    console.print(f"#{send_id} cancelled; {count} pending deliveries will not be sent.")


# --- deliveries in doubt ---------------------------------------------------------------------

SETTLE_HINT = (
    "Each post got no answer, and the platform (Teams) cannot be asked whether it arrived. "
    "Ask the recipient or look in the chat, then run `mobilize announce settle ID… "
    "--mark-sent` (it arrived) or `--resend` (it did not)."
)


def _in_doubt(
    session: Session,
    *,
    ids: list[int] | None = None,
    send_id: int | None = None,
    survey: str | None = None,
) -> list[tuple[Delivery, str]]:
    """`unknown` deliveries of every kind (announcements, reminders, survey messages), each
    with what it belongs to."""
    from bot.store.models import SurveyRun, SurveySend

    query = (
        select(Delivery, AnnouncementSend, SurveySend, SurveyRun)
        .outerjoin(AnnouncementSend, col(Delivery.send_id) == col(AnnouncementSend.id))
        .outerjoin(SurveySend, col(Delivery.survey_send_id) == col(SurveySend.id))
        .outerjoin(SurveyRun, col(SurveySend.run_id) == col(SurveyRun.id))
        .where(col(Delivery.state) == "unknown")
        .order_by(col(Delivery.id))
    )
    if ids is not None:
        query = query.where(col(Delivery.id).in_(ids))
    if send_id is not None:
        query = query.where(col(Delivery.send_id) == send_id)
    if survey is not None:
        query = query.where(col(SurveyRun.survey_id) == survey)
    found: list[tuple[Delivery, str]] = []
    for delivery, send, survey_send, run in session.exec(query).all():
        if send is not None:
            what = f"announcement #{send.id} ({send.template})"
        elif survey_send is not None and run is not None:
            what = f"survey {run.survey_id} run {run.number} ({survey_send.kind})"
        else:
            what = "—"
        found.append((delivery, what))
    return found


def _row(delivery: Delivery, what: str) -> dict[str, Any]:
    tried = delivery.claimed_at or delivery.updated_at
    return {
        "id": delivery.id,
        "for": what,
        "recipient": delivery.recipient,
        "name": delivery.name,
        "platform": delivery.platform,
        "kind": delivery.kind,
        "tried_at": f"{tried:%Y-%m-%d %H:%M:%S}",
        "attempts": delivery.attempts,
    }


def _table(rows: list[dict[str, Any]]) -> Table:
    table = Table("delivery", "for", "recipient", "platform", "kind", "tried (UTC)", "attempts")
    for row in rows:
        name, recipient = row["name"], row["recipient"]
        who = f"{name} ({recipient})" if name and name != recipient else recipient
        table.add_row(
            str(row["id"]),
            row["for"],
            who,
            row["platform"],
            row["kind"],
            row["tried_at"],
            str(row["attempts"]),
        )
    return table


@app.command("unknown")
def unknown_command(
    send_id: Annotated[
        int | None, typer.Option("--send", help="Only this announcement's deliveries.")
    ] = None,
    survey: Annotated[
        str | None, typer.Option("--survey", help="Only this survey's messages (every run).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Deliveries in doubt (`unknown`): posted on a platform that cannot say whether they
    arrived (Teams). Announcements, reminders and survey messages alike; decide with `settle`."""
    from bot.service import connect

    db = connect(get_settings())
    with Session(db) as session:
        rows = [_row(*found) for found in _in_doubt(session, send_id=send_id, survey=survey)]
    if as_json:
        print(json.dumps(rows))
        return
    if not rows:
        console.print("No deliveries in doubt.")
        return
    console.print(_table(rows))
    console.print(f"{len(rows)} in doubt. {SETTLE_HINT}", highlight=False, soft_wrap=True)


@app.command("settle")
def settle_command(
    delivery_ids: Annotated[
        list[int] | None, typer.Argument(help="Delivery ids, from `mobilize announce unknown`.")
    ] = None,
    resend: Annotated[
        bool, typer.Option("--resend", help="It did not arrive: send it again.")
    ] = False,
    mark_sent: Annotated[
        bool, typer.Option("--mark-sent", help="It arrived: record it as sent.")
    ] = False,
    every: Annotated[
        bool, typer.Option("--all", help="Every delivery in doubt of --send or --survey.")
    ] = False,
    send_id: Annotated[int | None, typer.Option("--send", help="Announcement id.")] = None,
    survey: Annotated[str | None, typer.Option("--survey", help="Survey id.")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    by: Annotated[str | None, typer.Option("--by", help="Who (for the audit log).")] = None,
) -> None:
    """Settle deliveries in doubt: resend them, or record them as sent. Never both, never
    silently: the rows are listed and confirmed first, and the audit log says who decided."""
    from bot.core.outbox import settle_unknown
    from bot.service import connect

    if resend == mark_sent:
        raise typer.BadParameter(
            "say what happened: --mark-sent (it arrived) or --resend (it did not)"
        )
    ids = sorted(set(delivery_ids or []))
    if every == bool(ids):
        raise typer.BadParameter("give delivery ids, or --all with --send ID or --survey ID")
    if every and (send_id is None) == (survey is None):
        raise typer.BadParameter("--all needs one of --send ID and --survey ID")
    if not every and (send_id is not None or survey is not None):
        raise typer.BadParameter("--send and --survey go with --all")
    db = connect(get_settings())
    with Session(db) as session:
        found = _in_doubt(session, ids=ids or None, send_id=send_id, survey=survey)
        rows = [_row(*one) for one in found]
        if ids:
            states = dict(
                session.exec(
                    select(Delivery.id, Delivery.state).where(col(Delivery.id).in_(ids))
                ).all()
            )
    if ids:
        others = [
            f"#{i} ({states[i]})" if i in states else f"#{i} (no such delivery)"
            for i in ids
            if i not in {row["id"] for row in rows}
        ]
        if others:
            console.print(f"Not in doubt, left alone: {', '.join(others)}", highlight=False)
    if not rows:
        console.print("Nothing to settle.")
        raise typer.Exit(1)
    console.print(_table(rows))
    these = "this delivery" if len(rows) == 1 else f"these {len(rows)} deliveries"
    if resend:
        question = f"Send {these} again? Whoever did get a message will have it twice."
    else:
        question = f"Record {these} as sent? Nothing will be sent again."
    if not yes and not typer.confirm(question):
        console.print("Nothing changed.")
        raise typer.Exit(1)
    actor = _actor(by)
    chosen_ids = [int(row["id"]) for row in rows]
    now = datetime.now(UTC)
    with Session(db) as session:
        locked = settle_unknown(
            session=session, delivery_ids=chosen_ids, resend=resend, actor=actor, now=now
        )
        session.commit()
    changed = len(locked)
    gone = sorted(set(chosen_ids) - set(locked))
    if gone:
        console.print(
            f"Settled meanwhile by someone else, left alone: {', '.join(f'#{i}' for i in gone)}",
            highlight=False,
        )
    for delivery_id in locked:
        after = "pending: the running bot sends it again" if resend else "sent (not sent again)"
        console.print(f"#{delivery_id}: unknown → {after}", highlight=False)
    deliveries = "delivery" if changed == 1 else "deliveries"
    if resend:
        console.print(f"{changed} {deliveries} queued again for the running bot to send.")
    else:
        console.print(f"{changed} {deliveries} recorded as sent.")
