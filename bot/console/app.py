"""The comms lead's console: a Flask app mounted at /console in the bot's one WSGI web app.

Why Flask: the web app is WSGI on waitress (Bolt's handlers and the Teams endpoint are
synchronous on threads), so the console is WSGI too; Flask brings Jinja2 and signed sessions
(itsdangerous), and HTMX (vendored, no build step) makes the live parts. Every page checks the
admin rule again; every form carries the session's CSRF token; every change is in the audit
log; every action goes through the same core functions as `mobilize announce …` and
`mobilize survey …`; every survey figure comes from `bot.core.surveys.report`.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from flask import (
    Flask,
    Response,
    abort,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select
from werkzeug.exceptions import HTTPException
from werkzeug.wrappers.response import Response as Redirect

from bot.config import Settings
from bot.console import pages_files, pages_knowledge, pages_surveys, pages_timeline
from bot.console.content import Problem, check_template, save_template, template_path
from bot.console.links import ConsoleLinks, SignedIn
from bot.console.render import message_html
from bot.console.secret import console_key
from bot.core.announcements import sends
from bot.core.announcements.announcer import Announcer
from bot.core.announcements.audience import (
    BOT,
    DEACTIVATED,
    ELSEWHERE,
    GUEST,
    INVALID_EMAIL,
    INVITE_HINT,
    NO_APP,
    NOT_FOUND,
    NOT_IN_CHANNEL,
    REASONS,
    Audience,
    AudienceError,
    resolve,
)
from bot.core.announcements.plan import occurrences, parse_audience
from bot.core.announcements.templates import (
    SAMPLE_USER,
    Recipient,
    Template,
    TemplateRenderError,
    parse_template,
    render,
)
from bot.core.faq.desk import FaqDesk
from bot.core.faq.kb import FaqEntry
from bot.core.outbox import settle_unknown
from bot.core.surveys.report import run_counts, runs_of
from bot.core.surveys.runner import SurveyRunner
from bot.store.audit import record
from bot.store.models import (
    AnnouncementSend,
    Delivery,
)

log = logging.getLogger(__name__)
PREFIX = "/console"
COOKIE = "mobilize_console"
PUBLIC = frozenset({"static", "signin", "signin_post"})
ACTIVE = frozenset({"planned", "resolving", "sending"})
AUDIENCE_SECONDS = 60.0  # a resolved audience is reused this long (Slack's listing is Tier 2)
NAME_SECONDS = 600.0
GAP_GROUPS = 20  # groups of the gap report shown, as `mobilize faq gaps`

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

# Who is left out, and what to do about it.
LEFT_OUT_ADVICE: dict[str, str] = {
    BOT: "Bots never get announcements.",
    DEACTIVATED: "Deactivated accounts: nothing to do.",
    GUEST: "Guests are left out of everyone, members: and group:; add everyone+guests, or name "
    "them with users:, to include them.",
    NOT_FOUND: "No such person or address in the workspace: check the id or the email list.",
    INVALID_EMAIL: "Not an email address: fix the row in the CSV file.",
    NOT_IN_CHANNEL: f"The bot cannot post there: {INVITE_HINT}.",
    NO_APP: "They have not installed the Teams app.",
    ELSEWHERE: "They are reached on another platform (one message per person).",
}
# Why a delivery failed (Slack's and Teams' codes), and what to do.
FAILURE_ADVICE: dict[str, str] = {
    "not_in_channel": f"The bot is not in the channel: {INVITE_HINT}, then resend the failed.",
    "channel_not_found": "The channel is gone or private to the bot: invite the bot or fix the "
    "audience, then resend the failed.",
    "is_archived": "The channel is archived: pick another channel.",
    "user_not_found": "The person no longer exists: nothing to do.",
    "account_inactive": "The account was deactivated: nothing to do.",
    "cannot_dm_bot": "A bot was in the audience: nothing to do.",
    "user_disabled": "The account is disabled: nothing to do.",
    "restricted_action": "A workspace setting stops the bot posting there: ask a Slack admin.",
    "ratelimited": "Slack was busy: resend the failed.",
    "ConversationBlockedByUser": "The person blocked the bot in Teams: nothing to do.",
    "BotNotInConversationRoster": "The Teams app was removed for them: nothing to do.",
}
FAILURE_DEFAULT = "Resend the failed once the cause is fixed."


class ConsoleService(Protocol):
    """What the console needs of `bot.service.Service` (duck-typed)."""

    settings: Settings
    db: Engine
    announcer: Announcer
    surveys: SurveyRunner
    desk: FaqDesk


class AdminRule:
    """MOBILIZE_ADMINS, plus the Slack admin group when the service has one; asked again on
    every request."""

    def __init__(self, service: ConsoleService) -> None:
        self.service = service

    def __contains__(self, user_id: object) -> bool:
        if not isinstance(user_id, str) or not user_id:
            return False
        if user_id in self.service.settings.admin_ids:
            return True
        admins = getattr(self.service, "admins", None)
        return admins is not None and user_id in admins


@dataclass(frozen=True)
class Resolved:
    """An audience as the picker shows it: parts, the resolved audience or the error."""

    parts: list[str]
    audience: Audience | None
    error: str


@dataclass(frozen=True)
class EntryRow:
    """A knowledge-base entry as its page lists it."""

    entry: FaqEntry
    asked: int  # times it was the answer
    overdue: bool  # its review date has passed
    file: str  # its file, relative to the content folder


def _sanitize(value: str, limit: int = 100) -> str:
    return " ".join(re.sub(r"[\x00-\x1f\x7f<>]+", " ", value).split())[:limit]


class Console:
    """The console as a WSGI app mounted at /console; `links` makes the sign-in links."""

    def __init__(
        self,
        service: ConsoleService,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.service = service
        self.settings = service.settings
        self.clock = clock
        self.admins = AdminRule(service)
        self.links = ConsoleLinks(
            db=service.db,
            public_url=service.settings.public_url,
            admins=self.admins,
            session_hours=service.settings.console_session_hours,
            clock=clock,
        )
        self._audiences: dict[tuple[str, ...], tuple[float, Resolved]] = {}
        self._names: dict[str, tuple[float, str, str]] = {}
        self._lock = threading.Lock()
        self.flask = create_app(self)

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == PREFIX or path.startswith(PREFIX + "/"):
            environ = dict(environ)
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + PREFIX
            environ["PATH_INFO"] = path[len(PREFIX) :] or "/"
        return self.flask(environ, start_response)

    # --- helpers shared by the pages ---------------------------------------------------------

    @property
    def announcer(self) -> Announcer:
        return self.service.announcer

    @property
    def zone(self) -> ZoneInfo:
        return self.announcer.content.rollout.zone

    def reload_content(self, why: str) -> None:
        """Reload everything after a console save, so the next page is current (the running
        bot's file watcher reloads too); errors are logged, the last good content stays."""
        errors = [*self.announcer.load(), *self.service.surveys.load()]
        try:
            errors += self.service.desk.engine.load()
        except Exception:
            log.exception("console: reloading the knowledge base after %s failed", why)
        if errors:
            log.warning("console: content has errors after %s: %s", why, errors)

    def person(self, user_id: str) -> tuple[str, str]:
        """(name, email) of a person, from the directory (cached a few minutes)."""
        now = time.monotonic()
        with self._lock:
            cached = self._names.get(user_id)
        if cached is not None and now - cached[0] < NAME_SECONDS:
            return cached[1], cached[2]
        name, email = user_id, ""
        try:
            found = self.announcer.directory.person(user_id)
        except Exception:  # the directory is a remote service: a name is not worth a failure
            log.warning("console: looking up %s failed", user_id, exc_info=True)
            found = None
        if found is not None:
            name, email = _sanitize(found.name or found.first_name or user_id), found.email or ""
        with self._lock:
            self._names[user_id] = (now, name, email)
        return name, email

    def resolve_audience(self, text: str) -> Resolved:
        """Parse and resolve an audience (`;` or new lines between parts) through the core's
        `resolve()`, reusing a result for a minute."""
        raw = [part.strip() for part in re.split(r"[;\n]", text) if part.strip()]
        if not raw:
            return Resolved([], None, "Say who: everyone, members:C…, users:U1,U2, …")
        parts: list[str] = []
        for part in raw:
            try:
                parts.append(parse_audience(part))
            except ValueError as exc:
                return Resolved(raw, None, str(exc))
        key = tuple(parts)
        now = time.monotonic()
        with self._lock:
            cached = self._audiences.get(key)
        if cached is not None and now - cached[0] < AUDIENCE_SECONDS:
            return cached[1]
        try:
            audience = resolve(
                parts, self.announcer.directory, content_dir=self.settings.content_dir
            )
        except AudienceError as exc:
            return Resolved(parts, None, str(exc))
        result = Resolved(parts, audience, "")
        with self._lock:
            self._audiences[key] = (now, result)
        return result

    def title(self, template: Template) -> str:
        """A template's title as people see it (rendered for the sample person)."""
        try:
            message = render(
                template, self.announcer.content.rollout, user=SAMPLE_USER, now=self.clock()
            )
        except TemplateRenderError:
            return template.title
        return message.summary

    def recipient(self, user_id: str) -> tuple[Recipient, str]:
        """Who a preview is for, and a note when that person was not found."""
        user_id = user_id.strip()
        if not user_id:
            return SAMPLE_USER, ""
        try:
            found = self.announcer.directory.person(user_id)
        except Exception:
            log.warning("console: looking up %s failed", user_id, exc_info=True)
            found = None
        if found is None:
            return SAMPLE_USER, f"No person {user_id!r}: shown for the sample user instead."
        return Recipient(found.id, found.name, found.first_name, found.tz), ""


# --- the Flask app -------------------------------------------------------------------------


def create_app(console: Console) -> Flask:
    app = Flask(__name__, static_folder="static", template_folder="templates")
    settings = console.settings
    app.config.update(
        SECRET_KEY=console_key(settings),
        SESSION_COOKIE_NAME=COOKIE,
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.public_url.startswith("https://"),
        SESSION_COOKIE_PATH=PREFIX,
        PERMANENT_SESSION_LIFETIME=timedelta(hours=settings.console_session_hours),
        MAX_CONTENT_LENGTH=1024 * 1024,
        TEMPLATES_AUTO_RELOAD=False,
    )
    app.jinja_env.filters["when"] = lambda moment: _when(moment, console.zone)
    app.jinja_env.filters["count"] = lambda n: f"{int(n):,}"
    app.jinja_env.filters["heading"] = console.title
    db = console.service.db

    def is_htmx() -> bool:
        return request.headers.get("HX-Request") == "true"

    # --- every request ------------------------------------------------------------------

    @app.before_request
    def check_session() -> tuple[str, int] | None:
        g.signed = None
        g.name = ""
        if request.endpoint in PUBLIC:
            return None
        sid = session.get("sid")
        signed = console.links.session(sid) if isinstance(sid, str) else None
        if signed is None:
            session.clear()
            return page("signed_out.html", 401, expired=sid is not None)
        if signed.user_id not in console.admins:
            return page(
                "error.html",
                403,
                title="Not an admin",
                message="The console is for the rollout's admins (MOBILIZE_ADMINS or the "
                "admin group). Ask one of them to add you.",
            )
        g.signed = signed
        g.name = console.person(signed.user_id)[0]
        if request.method == "POST":
            sent = request.form.get("csrf") or request.headers.get("X-CSRF-Token") or ""
            if not hmac.compare_digest(sent.encode(), signed.csrf.encode()):
                return page(
                    "error.html",
                    400,
                    title="This form has expired",
                    message="The form did not carry this session's security token (it may "
                    "come from an older session or another site). Nothing was changed: go "
                    "back, reload the page and try again.",
                )
        return None

    @app.after_request
    def headers(response: Response) -> Response:
        response.headers["Content-Security-Policy"] = (
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
        )
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["X-Frame-Options"] = "DENY"
        if request.endpoint != "static":
            response.headers["Cache-Control"] = "no-store"
        return response

    @app.context_processor
    def common() -> dict[str, Any]:
        signed: SignedIn | None = g.get("signed")
        return {"csrf": signed.csrf if signed else "", "me": g.get("name", ""), "signed": signed}

    def page(template: str, code: int = 200, /, **values: Any) -> tuple[str, int]:
        return render_template(template, **values), code

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[str, int]:
        titles = {404: "Not found", 405: "Not allowed", 413: "Too large"}
        code = error.code or 500
        return page(
            "error.html",
            code,
            title=titles.get(code, error.name),
            message=error.description or "",
        )

    @app.errorhandler(Exception)
    def crash(error: Exception) -> tuple[str, int]:
        log.exception("console: %s %s failed", request.method, request.path)
        return page(
            "error.html",
            500,
            title="Something went wrong",
            message="The console could not finish this. Nothing you cannot see was changed; "
            "the details are in the bot's log.",
        )

    # --- signing in -------------------------------------------------------------------------

    @app.get("/signin/<token>")
    def signin(token: str) -> tuple[str, int]:
        user_id = console.links.pending(token)
        if user_id is None:
            return page("signin.html", 410, valid=False)
        return page("signin.html", valid=True, who=console.person(user_id)[0])

    @app.post("/signin/<token>")
    def signin_post(token: str) -> Redirect | tuple[str, int]:
        opened = console.links.exchange(token)
        if opened is None:
            return page("signin.html", 410, valid=False)
        session_id, signed = opened
        if signed.user_id not in console.admins:
            console.links.end(signed.id_hash)
            return page(
                "error.html",
                403,
                title="Not an admin",
                message="The console is for the rollout's admins.",
            )
        session.clear()
        session["sid"] = session_id
        session.permanent = True
        record(db, actor=signed.user_id, action="console.signin", detail="console session")
        return redirect(url_for("dashboard"), 303)

    @app.post("/signout")
    def signout() -> tuple[str, int]:
        signed: SignedIn = g.signed
        console.links.end(signed.id_hash)
        session.clear()
        record(db, actor=signed.user_id, action="console.signout", detail="console session")
        g.signed = None
        return page("signed_out.html", 200, expired=False, left=True)

    # --- overview ---------------------------------------------------------------------------

    @app.get("/")
    def dashboard() -> tuple[str, int]:
        content = console.announcer.content
        now = console.clock()
        upcoming = occurrences(
            content.plan, content.rollout, start=now, end=now + timedelta(days=14)
        )[:10]
        planned = [(o, content.plan.get(o.announcement_id)) for o in upcoming]
        recent = _recent_sends(console, limit=5)
        surveys = _survey_rows(console)
        open_runs = [row for row in surveys if row["state"] == "open"]
        return page("dashboard.html", planned=planned, recent=recent, open_runs=open_runs, now=now)

    # --- templates --------------------------------------------------------------------------

    @app.get("/templates")
    def templates() -> tuple[str, int]:
        content = console.announcer.content
        used: dict[str, list[str]] = {}
        for announcement in content.plan.announcements:
            used.setdefault(announcement.template, []).append(announcement.id)
        folder = template_path(settings.content_dir, "x").parent
        files = sorted(p.stem for p in folder.glob("*.md")) if folder.is_dir() else []
        rows = [
            {
                "id": stem,
                "template": content.templates.get(stem),
                "used": used.get(stem, []),
            }
            for stem in files
        ]
        return page("templates.html", rows=rows)

    def _source(template_id: str) -> str:
        try:
            path = template_path(settings.content_dir, template_id)
        except ValueError:
            abort(404, f"There is no template {template_id!r}.")
        if not path.is_file():
            abort(404, f"There is no template {template_id!r} in messages/announcements/.")
        return path.read_text(encoding="utf-8")

    def _preview(template_id: str, text: str, person: str) -> dict[str, Any]:
        """Problems with `text` (as `mobilize check` finds them) and, when there are none,
        the message rendered for `person`."""
        now = console.clock()
        problems = check_template(
            settings.content_dir, template_id, text, now=now, default_timezone=settings.timezone
        )
        values: dict[str, Any] = {"problems": problems, "preview": None, "note": ""}
        if problems:
            return values
        rollout = console.announcer.content.rollout
        path = template_path(settings.content_dir, template_id)
        parsed, errors = parse_template(path, text, rollout, now=now)
        if parsed is None:  # cannot happen after a clean check; say so rather than crash
            values["problems"] = [Problem(str(e.path), e.line, e.reason, True) for e in errors]
            return values
        recipient, values["note"] = console.recipient(person)
        values["recipient"] = recipient
        try:
            message = render(parsed, rollout, user=recipient, now=now, ack_value="preview")
        except TemplateRenderError as exc:
            values["note"] = f"It does not render for {recipient.name}: {exc.reason}"
            return values
        values["preview"] = message_html(message)
        values["summary"] = message.summary
        teams = getattr(getattr(console.service, "platforms", None), "teams", None)
        if teams is not None:  # Teams connected: the card its sender would post, drawn
            from bot.console.teams_card import card_html, card_json

            try:
                card = teams.chat.render(message).card
            except Exception:  # the sender would fail this row too; say so, do not crash
                log.exception("console: rendering the Teams card of %s failed", template_id)
                values["teams_error"] = "Teams could not be sent this message: see the bot's log."
            else:
                values["teams_card"] = card_html(card)
                values["teams_json"] = card_json(card)
        return values

    def _editor(
        template_id: str, text: str, person: str, status: int = 200, **extra: Any
    ) -> tuple[str, int]:
        values = _preview(template_id, text, person)
        base = extra.pop("base", None) or _digest(_source(template_id))
        return page(
            "editor.html",
            status,
            template_id=template_id,
            text=text,
            person=person,
            base=base,
            lines=text.count("\n") + 1,
            **values,
            **extra,
        )

    @app.get("/templates/<template_id>")
    def editor(template_id: str) -> tuple[str, int]:
        text = _source(template_id)
        person = request.args.get("person", g.signed.user_id)
        return _editor(template_id, text, person)

    @app.post("/templates/<template_id>/preview")
    def preview(template_id: str) -> tuple[str, int]:
        _source(template_id)
        text = _form_text()
        person = request.form.get("person", "").strip()
        if is_htmx():
            return page(
                "_preview.html", template_id=template_id, **_preview(template_id, text, person)
            )
        return _editor(template_id, text, person, base=request.form.get("base", ""))

    @app.post("/templates/<template_id>")
    def save(template_id: str) -> Redirect | tuple[str, int]:
        current = _source(template_id)
        text = _form_text()
        person = request.form.get("person", "").strip()
        base = request.form.get("base", "")
        if base and base != _digest(current):
            return _editor(
                template_id,
                text,
                person,
                409,
                base=base,
                refused="Not saved: someone changed this file since you opened it. Your "
                "text is kept below; copy what you need, then reload the page to see theirs.",
            )
        problems = check_template(
            settings.content_dir,
            template_id,
            text,
            now=console.clock(),
            default_timezone=settings.timezone,
        )
        if problems:
            return _editor(
                template_id,
                text,
                person,
                422,
                base=base,
                refused="Not saved: fix the errors below. Nothing was written.",
            )
        signed: SignedIn = g.signed
        name, email = console.person(signed.user_id)
        saved = save_template(
            settings.content_dir,
            template_id,
            text,
            author_name=_sanitize(name) or signed.user_id,
            author_email=_sanitize(email, 200) or f"{signed.user_id}@mobilize.invalid",
        )
        errors = console.announcer.load()  # the running bot reloads too; be current at once
        if errors:
            log.warning("console: content has errors after saving %s: %s", template_id, errors)
        relative = saved.path.relative_to(settings.content_dir)
        record(
            db,
            actor=signed.user_id,
            action="console.template.save",
            detail=f"{relative}" + (f" (commit {saved.commit})" if saved.commit else ""),
        )
        message = f"Saved {relative}."
        message += saved.outcome
        flash(message)
        return redirect(url_for("editor", template_id=template_id), 303)

    def _form_text() -> str:
        # Browsers send a textarea's line breaks as CRLF; the files use LF.
        return request.form.get("source", "").replace("\r\n", "\n").replace("\r", "\n")

    # --- audience and sending ---------------------------------------------------------------

    @app.get("/audience")
    def audience() -> tuple[str, int]:
        resolved = console.resolve_audience(request.args.get("to", ""))
        return page("_audience.html", resolved=resolved, **_left_out(resolved))

    @app.get("/send")
    def send_form() -> tuple[str, int]:
        template_id = request.args.get("template", "")
        return _send_page(template_id, request.args.get("to", ""), "now", "", [])

    def _send_page(
        template_id: str,
        to: str,
        when: str,
        at: str,
        errors: list[str],
        status: int = 200,
        confirm: dict[str, Any] | None = None,
    ) -> tuple[str, int]:
        content = console.announcer.content
        if not to and template_id:
            planned = [a for a in content.plan.announcements if a.template == template_id]
            to = "; ".join(planned[0].audience) if planned else ""
        suggestions = sorted(
            {"everyone", *("; ".join(a.audience) for a in content.plan.announcements)}
        )
        return page(
            "send.html",
            status,
            templates=sorted(content.templates.values(), key=lambda t: t.id),
            template_id=template_id,
            to=to,
            when=when,
            at=at,
            errors=errors,
            suggestions=suggestions,
            zone=content.rollout.timezone,
            confirm=confirm,
        )

    @app.post("/send")
    def send() -> Redirect | tuple[str, int]:
        template_id = request.form.get("template", "")
        to = request.form.get("to", "").strip()
        when = request.form.get("when", "now")
        at = request.form.get("at", "").strip()
        template = console.announcer.content.templates.get(template_id)
        errors: list[str] = []
        if template is None:
            errors.append("Pick a template (one without errors).")
        resolved = console.resolve_audience(to)
        if resolved.error:
            errors.append(f"Audience: {resolved.error}")
        due = console.clock()
        if when == "later":
            try:
                moment = datetime.fromisoformat(at)
            except ValueError:
                errors.append("When: give a date and time, e.g. 2027-02-15 09:00.")
            else:
                if moment.tzinfo is None:
                    moment = moment.replace(tzinfo=console.zone)
                due = moment.astimezone(UTC)
                if due < console.clock() - timedelta(minutes=1):
                    errors.append("When: that time has passed; pick a later one, or send now.")
        elif when != "now":
            errors.append("When: now or later.")
        if errors:
            return _send_page(template_id, to, when, at, errors, 422)
        assert template is not None and resolved.audience is not None
        if request.form.get("confirm") != "yes":
            return _send_page(
                template_id,
                to,
                when,
                at,
                [],
                confirm={
                    "template": template,
                    "resolved": resolved,
                    "due": due,
                    "budget": pages_timeline.budget_warning(console, resolved.audience, due),
                    **_left_out(resolved),
                },
            )
        signed: SignedIn = g.signed
        with Session(db) as work:
            send_id = sends.create_adhoc(
                session=work,
                template=template_id,
                audience=resolved.parts,
                at=due,
                by=signed.user_id,
                ack=template.ack,
            )
            work.commit()
        record(
            db,
            actor=signed.user_id,
            action="announce.send",
            detail=f"#{send_id} {template_id} to {'; '.join(resolved.parts)} at "
            f"{due:%Y-%m-%d %H:%M} UTC (console)",
        )
        flash(
            f"Queued announcement #{send_id}."
            if when == "now"
            else f"Scheduled announcement #{send_id} for {_when(due, console.zone)}."
        )
        return redirect(url_for("send_page", send_id=send_id), 303)

    # --- delivery ---------------------------------------------------------------------------

    @app.get("/sends")
    def sends_list() -> tuple[str, int]:
        return page("sends.html", rows=_recent_sends(console, limit=50))

    def _status(send_id: int) -> tuple[AnnouncementSend, dict[str, Any]]:
        with Session(db) as work:
            row = work.get(AnnouncementSend, send_id)
        if row is None:
            abort(404, f"There is no announcement #{send_id}.")
        return row, _progress(console, send_id)

    def _manage(send_id: int, status: dict[str, Any]) -> dict[str, str]:
        """What can be done to a send now: action → "" when it makes sense, else why not."""
        with Session(db) as work:
            rows = work.exec(
                select(Delivery.state, Delivery.op, func.count())
                .where(Delivery.send_id == send_id)
                .group_by(col(Delivery.state), col(Delivery.op))
            ).all()
        live = sum(int(n) for state, op, n in rows if state == "sent" and op != "delete")
        waiting = sum(int(n) for state, _op, n in rows if state == "pending")
        recalled = int(status["deleted"]) > 0 or any(op == "delete" for _s, op, _n in rows)
        state = str(status["state"])
        resend = "" if int(status["failed"]) else "nothing failed"
        if not resend and (recalled or state == "cancelled"):
            resend = "it was recalled or cancelled"
        why = {
            "resend": resend,
            "update": "" if live and not recalled else "no sent copies to update",
            "cancel": ""
            if state in {"planned", "resolving"} or (state == "sending" and waiting)
            else "nothing is left to send",
            "recall": "" if live else "no sent copies to recall",
        }
        return why

    @app.get("/sends/<int:send_id>")
    def send_page(send_id: int) -> tuple[str, int]:
        row, status = _status(send_id)
        manage = _manage(send_id, status)
        excluded = json.loads(row.excluded or "[]")
        left: dict[str, list[str]] = {}
        for who, reason in excluded:
            left.setdefault(str(reason), []).append(str(who))
        return page(
            "send_status.html",
            row=row,
            status=status,
            audience=json.loads(row.audience or "[]"),
            left=left,
            advice=LEFT_OUT_ADVICE,
            labels=REASONS,
            in_doubt=_in_doubt(db, send_id),
            can={action for action, why in manage.items() if not why},
        )

    @app.get("/sends/<int:send_id>/progress")
    def progress(send_id: int) -> tuple[str, int]:
        row, status = _status(send_id)
        return page("_progress.html", row=row, status=status)

    @app.get("/sends/<int:send_id>/export.csv")
    def export(send_id: int) -> Response:
        _status(send_id)
        out = io.StringIO()
        sends.write_csv(db=db, send_id=send_id, out=out)
        return Response(
            out.getvalue(),
            mimetype="text/csv",
            headers={"Content-Disposition": f'attachment; filename="announcement-{send_id}.csv"'},
        )

    @app.post("/sends/<int:send_id>/settle")
    def settle(send_id: int) -> Redirect | tuple[str, int]:
        """An admin's decision on deliveries in doubt, as `mobilize announce settle` takes it:
        the rows are re-read (and locked on PostgreSQL), settled and audited in one
        transaction, so two admins deciding at once cannot both act on a row."""
        _status(send_id)
        signed: SignedIn = g.signed
        decision = request.form.get("decision", "")
        if decision not in {"sent", "resend"}:
            flash("Not done: say whether it arrived (Record as sent) or not (Send again).", "error")
            return redirect(url_for("send_page", send_id=send_id), 303)
        chosen: list[int] = []
        for value in request.form.getlist("delivery"):
            try:
                chosen.append(int(value))
            except ValueError:
                continue
        resend = decision == "resend"
        if not chosen:  # none ticked: every delivery of this send in doubt
            with Session(db) as work:
                chosen = [
                    int(i)
                    for i in work.exec(
                        select(Delivery.id).where(
                            Delivery.send_id == send_id, col(Delivery.state) == "unknown"
                        )
                    ).all()
                    if i is not None
                ]
        with Session(db) as work:
            ours = set(
                work.exec(
                    select(Delivery.id).where(
                        col(Delivery.id).in_(chosen), Delivery.send_id == send_id
                    )
                ).all()
            )
            changed = len(
                settle_unknown(
                    session=work,
                    delivery_ids=[i for i in chosen if i in ours],
                    resend=resend,
                    actor=signed.user_id,
                    now=console.clock(),
                    note=" (console)",
                )
            )
            work.commit()
        if not changed:
            flash("Nothing to settle: those deliveries are no longer in doubt.", "error")
        elif resend:
            flash(f"{changed} in doubt of #{send_id} queued again; the running bot sends them.")
        else:
            flash(f"{changed} in doubt of #{send_id} recorded as sent; not sent again.")
        return redirect(url_for("send_page", send_id=send_id), 303)

    @app.post("/sends/<int:send_id>/<action>")
    def send_action(send_id: int, action: str) -> Redirect | tuple[str, int]:
        _row, status = _status(send_id)
        signed: SignedIn = g.signed
        now = console.clock()
        why = _manage(send_id, status)
        if action not in why:
            abort(404, f"There is no action {action!r}.")
        if why[action]:  # the page was older than the send's state
            flash(f"Not done: {why[action]} (the page was out of date).", "error")
            return redirect(url_for("send_page", send_id=send_id), 303)
        if action in {"recall", "cancel"} and request.form.get("sure") != "yes":
            flash(f"Not done: tick the box to confirm the {action}.", "error")
            return redirect(url_for("send_page", send_id=send_id), 303)
        with Session(db) as work:
            if action == "cancel":
                count = sends.cancel(session=work, send_id=send_id)
                done = f"#{send_id} cancelled; {count} pending deliveries will not be sent."
                audit, detail = "announce.cancel", f"#{send_id}: {count} pending"
            elif action == "resend":
                count = sends.resend_failed(session=work, send_id=send_id, now=now)
                done = f"{count} failed deliveries of #{send_id} queued again."
                audit, detail = "announce.resend", f"#{send_id}: {count} failed"
            elif action in {"update", "recall"}:
                op = "delete" if action == "recall" else "update"
                count = sends.request_edit(session=work, send_id=send_id, op=op, now=now)
                verb = "deleted" if op == "delete" else "re-rendered and edited"
                done = f"{count} sent copies of #{send_id} will be {verb} (Tier-3 pace)."
                audit, detail = f"announce.{action}", f"#{send_id}: {count} copies"
            else:
                abort(404, f"There is no action {action!r}.")
            work.commit()
        record(db, actor=signed.user_id, action=audit, detail=f"{detail} (console)")
        flash(done)
        return redirect(url_for("send_page", send_id=send_id), 303)

    pages_timeline.register(app, console, page)
    pages_surveys.register(app, console, page)
    pages_knowledge.register(app, console, page)
    pages_files.register(app, console, page)
    return app


# --- queries the pages share -------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _when(moment: datetime | None, zone: ZoneInfo) -> str:
    if moment is None:
        return "—"
    aware = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    return aware.astimezone(zone).strftime("%a %d %b %Y %H:%M")


def _progress(console: Console, send_id: int) -> dict[str, Any]:
    """The announcer's status of a send, with what the progress bar and the advice need."""
    status: dict[str, Any] = dict(console.announcer.status(send_id))
    total = int(status["total"])
    settled = sum(int(status[k]) for k in ("sent", "failed", "skipped", "deleted"))
    pending = int(status["pending"])
    status["in_doubt"] = max(0, total - settled - pending)
    status["settled"] = settled
    status["percent"] = round(100 * settled / total) if total else 0
    status["active"] = status["state"] in ACTIVE
    sent = int(status["sent"])
    status["ack_rate"] = round(100 * int(status["acknowledged"]) / sent) if sent else None
    failures = status["failures"]
    assert isinstance(failures, dict)
    status["failure_rows"] = [
        (code or "unknown", count, FAILURE_ADVICE.get(str(code), FAILURE_DEFAULT))
        for code, count in failures.items()
    ]
    return status


def _relative(path: Path | None, root: Path) -> str:
    if path is None:
        return ""
    try:
        return str(path.relative_to(root))
    except ValueError:
        return path.name


def _in_doubt(db: Engine, send_id: int, limit: int = 500) -> list[Delivery]:
    """A send's deliveries in doubt (`unknown`: posted on Teams, no answer), oldest first."""
    with Session(db) as work:
        return list(
            work.exec(
                select(Delivery)
                .where(Delivery.send_id == send_id, col(Delivery.state) == "unknown")
                .order_by(col(Delivery.id))
                .limit(limit)
            ).all()
        )


def _recent_sends(console: Console, *, limit: int) -> list[dict[str, Any]]:
    with Session(console.service.db) as work:
        rows = work.exec(
            select(AnnouncementSend).order_by(col(AnnouncementSend.id).desc()).limit(limit)
        ).all()
    return [{"row": row, "status": _progress(console, int(row.id or 0))} for row in rows]


def _survey_rows(console: Console) -> list[dict[str, Any]]:
    """Every run of every loaded survey: state, dates, invited and how many answered (never
    who), as `mobilize survey status` shows them."""
    db = console.service.db
    found: list[dict[str, Any]] = []
    with Session(db) as work:
        for survey_id in sorted(console.service.surveys.surveys):
            for run in reversed(runs_of(db, survey_id)):
                invited, answered = run_counts(work, run.id)
                found.append(
                    {
                        "survey": survey_id,
                        "run": run,
                        "state": run.state,
                        "invited": int(invited),
                        "answered": int(answered),
                        "rate": round(100 * int(answered) / int(invited)) if invited else None,
                    }
                )
    return found


def _left_out(resolved: Resolved) -> dict[str, Any]:
    """Who an audience leaves out, grouped by reason, with what to do."""
    groups: dict[str, list[str]] = {}
    if resolved.audience is not None:
        for excluded in resolved.audience.excluded:
            groups.setdefault(excluded.reason, []).append(excluded.who)
    return {"left": groups, "advice": LEFT_OUT_ADVICE, "labels": REASONS}
