"""`mobilize announce …`: plan, preview, send, and manage announcements after sending."""

from __future__ import annotations

import csv
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
    from bot.service import connect, make_announcer, slack_client

    db = connect(settings)
    announcer = make_announcer(settings, db, SlackChat(slack_client(settings, max_retries=1)))
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
    handle: Any = output or sys.stdout
    writer = csv.writer(handle)
    writer.writerow(
        [
            "recipient",
            "kind",
            "name",
            "state",
            "error",
            "channel",
            "ts",
            "updated_at",
            "acknowledged_at",
        ]
    )
    with Session(db) as session:
        for row in session.exec(
            select(Delivery).where(Delivery.send_id == send_id).order_by(col(Delivery.id))
        ):
            writer.writerow(
                [
                    row.recipient,
                    row.target,
                    row.name,
                    row.state,
                    row.error,
                    row.channel,
                    row.ts,
                    row.updated_at.isoformat(),
                    row.acked_at.isoformat() if row.acked_at else "",
                ]
            )


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
