"""The announcement service: the last good plan and templates, the scheduler tick that
materialises due occurrences, the outbox workers, delivery reports, acknowledgements and
reminders."""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.core.announcements import sends
from bot.core.announcements.audience import INVITE_HINT, NOT_IN_CHANNEL, Directory
from bot.core.announcements.plan import Plan, load_plan
from bot.core.announcements.templates import (
    CHANNEL_AUDIENCE,
    Recipient,
    Template,
    load_templates,
    render,
)
from bot.core.content import ContentError, Rollout, load_rollout
from bot.core.messages import ANNOUNCE_ACK, Address, Chat, Message, Posted, say
from bot.core.outbox import (
    ANNOUNCEMENT,
    ANNOUNCEMENT_REMINDER,
    LEASE,
    Cancelled,
    Limits,
    Outbox,
    Sender,
    counts,
)
from bot.store.models import AnnouncementSend, Delivery, as_utc

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AnnouncementContent:
    rollout: Rollout
    plan: Plan
    templates: dict[str, Template]


def load_announcements(
    content_dir: Path, *, now: datetime, default_timezone: str = ""
) -> tuple[AnnouncementContent, list[ContentError]]:
    """The plan and templates, checked against each other. Rollout errors are left to the FAQ
    loader, which reads the same file, so they are not reported twice."""
    rollout, _rollout_errors = load_rollout(content_dir, default_timezone=default_timezone)
    plan, errors = load_plan(content_dir, rollout)
    templates, template_errors = load_templates(content_dir, rollout, now=now)
    errors += template_errors
    broken = {error.path.stem for error in template_errors}
    for announcement in plan.announcements:
        template = templates.get(announcement.template)
        if template is None and announcement.template not in broken:
            errors.append(
                ContentError(
                    announcement.path,
                    announcement.line,
                    f"template {announcement.template!r} not found: add "
                    f"messages/announcements/{announcement.template}.md",
                )
            )
        elif template is not None and announcement.ack and not template.ack:
            errors.append(
                ContentError(
                    announcement.path,
                    announcement.line,
                    f"ack: true but template {announcement.template!r} has no "
                    "acknowledgement button (add `- ack: I've read this` to its buttons)",
                )
            )
    return AnnouncementContent(rollout, plan, templates), errors


class Announcer:
    """Runs announcements for one workspace; safe to run in several processes at once."""

    def __init__(
        self,
        *,
        db: Engine,
        content_dir: Path,
        directory: Directory,
        senders: Mapping[str, Sender],
        chat: Chat,
        admins: frozenset[str] = frozenset(),
        limits: Limits = Limits(),
        platform_limits: Mapping[str, Limits] | None = None,
        grace: timedelta = timedelta(hours=6),
        default_timezone: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        lease: timedelta = LEASE,
    ) -> None:
        self.db = db
        self.content_dir = content_dir
        self.directory = directory
        self.chat = chat
        self.admins = admins
        self.grace = grace
        self.default_timezone = default_timezone
        self.clock = clock
        # Announcements go through the outbox as two kinds; other parts of the core (surveys)
        # register their own kinds on the same outbox (`outbox.register`).
        self.outbox = Outbox(
            db=db,
            senders=senders,
            renderers={
                ANNOUNCEMENT: self.render_delivery,
                ANNOUNCEMENT_REMINDER: self.render_delivery,
            },
            limits=limits,
            platform_limits=platform_limits,
            clock=clock,
            lease=lease,
        )
        self._content: AnnouncementContent | None = None
        self._tick_lock = threading.Lock()
        self._reported: dict[int, str] = {}  # the report text last shown, by send

    # --- content ------------------------------------------------------------------------

    @property
    def content(self) -> AnnouncementContent:
        if self._content is None:
            self.load()
        assert self._content is not None
        return self._content

    def load(self) -> list[ContentError]:
        """(Re)load plan and templates; on errors the last good content stays (the first load
        keeps going with what loaded without errors)."""
        content, errors = load_announcements(
            self.content_dir, now=self.clock(), default_timezone=self.default_timezone
        )
        if not errors or self._content is None:
            self._content = content
        return errors

    # --- rendering ----------------------------------------------------------------------

    def render_delivery(self, delivery: Delivery) -> Message:
        with Session(self.db) as session:
            send = session.get(AnnouncementSend, delivery.send_id)
        if send is None:
            raise KeyError(f"announcement send {delivery.send_id} is gone")
        if send.state == "cancelled":
            raise Cancelled(send.key)
        content = self.content
        template = content.templates.get(send.template)
        if template is None:
            raise KeyError(f"template {send.template!r} is not loaded")
        if delivery.target == "channel":
            user = CHANNEL_AUDIENCE
        else:
            user = Recipient(
                delivery.recipient, delivery.name, delivery.first_name, delivery.tz or None
            )
        root = send.reminder_of or send.id
        message = render(
            template,
            content.rollout,
            user=user,
            now=self.clock(),
            ack_value=str(root) if template.ack and delivery.target == "dm" else "",
            acknowledged=delivery.acked_at is not None,
        )
        if delivery.target == "channel" and template.ack:
            # A click in a channel cannot say whose acknowledgement it is: only DMs ask.
            kept = tuple(b for b in message.buttons if b.action_id != ANNOUNCE_ACK)
            message = Message(message.parts, message.context, kept, message.summary)
        if send.reminder_of:
            message = Message(
                (
                    say("*Reminder:* please read this and press the button.").parts[0],
                    *message.parts,
                ),
                context=message.context,
                buttons=message.buttons,
                summary=f"Reminder: {message.summary}",
            )
        return message

    def preview(self, template_id: str, user: Recipient) -> Message:
        template = self.content.templates.get(template_id)
        if template is None:
            raise KeyError(template_id)
        return render(
            template, self.content.rollout, user=user, now=self.clock(), ack_value="preview"
        )

    # --- the scheduler's tick -------------------------------------------------------------

    def tick(self) -> None:
        """Materialise due occurrences, resolve audiences, finish sends, report, remind.
        Idempotent: every process may run it; unique keys and leases keep work single."""
        if not self._tick_lock.acquire(blocking=False):
            return  # the previous tick of this process is still running
        try:
            now = self.clock()
            content = self.content
            report = sends.materialise(
                db=self.db, plan=content.plan, rollout=content.rollout, now=now, grace=self.grace
            )
            for send_id in report.missed:
                self._tell_admins_missed(send_id)
            sends.resolve_due(
                db=self.db,
                plan=content.plan,
                rollout=content.rollout,
                directory=self.directory,
                content_dir=self.content_dir,
                now=now,
            )
            with Session(self.db) as session:
                finished = sends.complete(session=session, now=now)
                session.commit()
            for send_id in finished:
                self.report(send_id)
            self.refresh_reports()
            self.remind(now)
        finally:
            self._tick_lock.release()

    # --- reports --------------------------------------------------------------------------

    def status(self, send_id: int) -> dict[str, object]:
        """The JSON status of a send: id, state, total, pending, sent, failed, skipped,
        acknowledged, deleted, unknown (in doubt), failures by the platform's error code."""
        with Session(self.db) as session:
            send = session.get(AnnouncementSend, send_id)
            if send is None:
                raise KeyError(send_id)
            failures = Counter(
                session.exec(
                    select(Delivery.error).where(
                        col(Delivery.send_id) == send_id, col(Delivery.state) == "failed"
                    )
                ).all()
            )
        found = counts(self.db, send_id)
        total = sum(v for k, v in found.items() if k != "acknowledged")
        excluded = json.loads(send.excluded or "[]")
        return {
            "id": send_id,
            "state": send.state,
            "template": send.template,
            "total": total,
            "pending": found.get("pending", 0) + found.get("sending", 0),
            "sent": found.get("sent", 0),
            "failed": found.get("failed", 0),
            "skipped": found.get("skipped", 0) + found.get("cancelled", 0),
            "acknowledged": found["acknowledged"],
            "deleted": found.get("deleted", 0),
            "unknown": found.get("unknown", 0),  # in doubt: `mobilize announce unknown`
            "failures": dict(failures.most_common()),
            "excluded": len(excluded),
            "outside": [str(who) for who, reason in excluded if reason == NOT_IN_CHANNEL],
        }

    def report_message(self, send_id: int) -> Message:
        status = self.status(send_id)
        template = self.content.templates.get(str(status["template"]))
        title = template.title if template else str(status["template"])
        if "{" in title:  # the title is written per person: name the template instead
            title = f"`{status['template']}`"
        sent, failed = int(str(status["sent"])), int(str(status["failed"]))
        acked = int(str(status["acknowledged"]))
        failures = status["failures"]
        assert isinstance(failures, dict)
        lines = [
            f"*Delivery report: {title}* (#{send_id}, {status['state']})",
            f"• Sent: {sent:,} · Failed: {failed:,} · Skipped: {int(str(status['skipped'])):,} "
            f"· Left out of the audience: {int(str(status['excluded'])):,}",
        ]
        if failures:
            lines.append(
                "• Failures: " + ", ".join(f"`{code}` ×{n}" for code, n in failures.items())
            )
        outside = status.get("outside")
        if isinstance(outside, list) and outside:
            channels = ", ".join(f"<#{channel}>" for channel in outside)
            lines.append(f"• Not posted in {channels}: the bot is not in it; {INVITE_HINT}.")
        if template and template.ack:
            share = f"{100 * acked / sent:.0f}%" if sent else "—"
            lines.append(f"• Acknowledged: {acked:,} of {sent:,} ({share})")
        lines.append(
            f"Details: `mobilize announce status {send_id}` · `mobilize announce export {send_id}`"
        )
        return say("\n".join(lines), summary=f"Delivery report: {title}")

    def _report_to(self, send: AnnouncementSend) -> list[str]:
        if send.owner:
            return [send.owner]
        return sorted(self.admins)

    def report(self, send_id: int) -> None:
        """DM the owner (or the admins) the delivery report; kept up to date as acks come in."""
        with Session(self.db) as session:
            send = session.get(AnnouncementSend, send_id)
        if send is None or send.reminder_of:
            return
        message = self.report_message(send_id)
        first: Posted | None = None
        for user in self._report_to(send):
            posted = self.chat.post(Address(user), message)
            first = first or posted
        with Session(self.db) as session:
            session.execute(
                update(AnnouncementSend)
                .where(col(AnnouncementSend.id) == send_id)
                .values(
                    reported_at=self.clock(),
                    report_channel=first.channel if first else "",
                    report_ts=first.ts if first else "",
                )
            )
            session.commit()

    def refresh_reports(self) -> None:
        """Update the first report of recent acknowledged sends (the rate grows after sending)."""
        since = self.clock() - timedelta(days=14)
        with Session(self.db) as session:
            rows = session.exec(
                select(AnnouncementSend).where(
                    col(AnnouncementSend.ack) == True,  # noqa: E712
                    col(AnnouncementSend.report_ts) != "",
                    col(AnnouncementSend.completed_at) >= since,
                )
            ).all()
        for send in rows:
            assert send.id is not None
            message = self.report_message(send.id)
            if self._reported.get(send.id) == message.plain:
                continue  # nothing changed since this process last edited it
            self._reported[send.id] = message.plain
            self.chat.update(Posted(send.report_channel, send.report_ts), message)

    def _tell_admins_missed(self, send_id: int) -> None:
        with Session(self.db) as session:
            send = session.get(AnnouncementSend, send_id)
        if send is None:
            return
        for admin in sorted(self.admins):
            self.chat.post(
                Address(admin),
                say(
                    f"*Missed announcement:* `{send.key}` was due {send.due_at:%Y-%m-%d %H:%M} UTC "
                    "while the bot was not running, beyond the grace window, so it was not sent. "
                    f"Send it now with `mobilize announce send {send.template} --to …`."
                ),
            )

    # --- acknowledgements and reminders -----------------------------------------------------

    def acknowledge(self, *, send_id: int, user_id: str) -> Message | None:
        """Record a person's acknowledgement of a send; returns their updated copy."""
        now = self.clock()
        with Session(self.db) as session:
            delivery = session.exec(
                select(Delivery).where(
                    col(Delivery.send_id) == send_id, col(Delivery.recipient) == user_id
                )
            ).first()
            send = session.get(AnnouncementSend, send_id)
        if delivery is None or send is None or delivery.id is None:
            return None
        with Session(self.db, expire_on_commit=False) as session:
            updated = sends.acknowledge(
                session=session, delivery_id=delivery.id, user_id=user_id, now=now
            )
            session.commit()
        if updated is None:
            return None
        return self.render_delivery(updated)

    def remind(self, now: datetime) -> list[int]:
        """Send one reminder to those who have not acknowledged, N days after the send."""
        created: list[int] = []
        with Session(self.db) as session:
            due = session.exec(
                select(AnnouncementSend).where(
                    col(AnnouncementSend.ack) == True,  # noqa: E712
                    col(AnnouncementSend.remind_after_days).is_not(None),
                    col(AnnouncementSend.reminded_at).is_(None),
                    col(AnnouncementSend.reminder_of).is_(None),
                    col(AnnouncementSend.state) == "done",
                )
            ).all()
        for send in due:
            assert send.id is not None and send.completed_at is not None
            when = as_utc(send.completed_at) + timedelta(days=send.remind_after_days or 0)
            if when > now:
                continue
            with Session(self.db) as session:  # one operation, one transaction
                waiting = sends.unacknowledged(session=session, send_id=send.id)
                try:
                    child = sends.create_reminder(
                        session=session, parent=send, recipients=waiting, now=now
                    )
                    session.commit()
                except IntegrityError:  # another process wrote it at the same moment
                    session.rollback()
                    child = None
            if child is not None:
                created.append(child)
        return created

    # --- workers ----------------------------------------------------------------------------

    def start_workers(self, stop: threading.Event, *, count: int = 4) -> list[threading.Thread]:
        threads = []
        for number in range(count):
            thread = threading.Thread(
                target=self.outbox.run, args=(stop,), name=f"outbox-{number}", daemon=True
            )
            thread.start()
            threads.append(thread)
        return threads
