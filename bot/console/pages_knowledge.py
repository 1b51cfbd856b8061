"""Console pages: knowledge (registered on the app by `create_app`).

The knowledge base page lists the entries (owner, review date, overdue first), the gap report
of `mobilize faq gaps`, the phrasings people picked (Approve writes the phrasing into the
entry's file and goes through the same core function as `mobilize faq approve`), and the
drafts supporters saved from escalations (edit, check as `mobilize check` does, publish or
discard). It also holds the "New template" action of the templates page. Every file change is
checked first, written atomically, committed when the content folder is a git repository, and
audited; the bot then reloads the content, as a template save does.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from flask import Flask, abort, flash, g, redirect, request, url_for
from sqlalchemy import func
from sqlmodel import Session, col, select
from werkzeug.wrappers.response import Response as Redirect

from bot.console.content import (
    Problem,
    check_content,
    check_template,
    remove_content_file,
    save_content_file,
    save_template,
    template_path,
)
from bot.core.announcements.templates import ID_PATTERN as TEMPLATE_ID
from bot.core.faq.curation import (
    Draft,
    approve_phrasing,
    clean_phrasing,
    draft_entry_text,
    draft_path,
    list_drafts,
    read_draft,
    with_alternate,
)
from bot.core.faq.gaps import gap_questions, group_gaps, picks
from bot.core.faq.kb import ID_PATTERN as ENTRY_ID
from bot.core.faq.kb import faq_dir, split_front_matter
from bot.store.audit import record
from bot.store.models import Feedback, QuestionLog

if TYPE_CHECKING:
    from bot.console.app import Console
    from bot.console.links import SignedIn

log = logging.getLogger(__name__)
Page = Callable[..., tuple[str, int]]
FIELDS = ("id", "question", "answer", "owner", "review_by")
MAX_FIELD = 20_000


@dataclass(frozen=True)
class DraftForm:
    """A draft as its editor holds it: the fields, and the errors beside them."""

    draft: Draft
    values: dict[str, str]
    problems: list[Problem]
    fields: dict[str, list[Problem]]  # field name → its problems
    refused: str = ""


def skeleton(owner: str) -> str:
    """A new template's starting text: it passes `check_template` in any content folder."""
    return (
        "---\n"
        'title: "A short title people see first"\n'
        f"owner: {json.dumps(owner or 'Rollout team', ensure_ascii=False)}\n"
        "---\n"
        "Hi {{ user.first_name }},\n\n"
        "Write the message here in Markdown: **bold**, _italics_, [links](https://example.com)"
        " and lists. Variables such as {{ rollout.name }} are filled in for each person.\n"
    )


def register(app: Flask, console: Console, page: Page) -> None:
    """Add this area's routes to the console's app; `page(template, code, **values)`
    renders a page with the console's common values."""
    from bot.console.app import GAP_GROUPS, EntryRow, _relative, _sanitize

    settings = console.settings
    db = console.service.db
    root: Path = settings.content_dir
    writing = threading.Lock()  # one read-check-write of an entry file at a time

    def author() -> tuple[str, str, str]:
        """(user id, name, email) of the admin, for commits and the audit log."""
        signed: SignedIn = g.signed
        name, email = console.person(signed.user_id)
        return (
            signed.user_id,
            _sanitize(name) or signed.user_id,
            _sanitize(email, 200) or f"{signed.user_id}@mobilize.invalid",
        )

    def reload_faq(why: str) -> None:
        errors = console.service.desk.engine.load()  # the running bot reloads too
        if errors:
            log.warning("console: content has errors after %s: %s", why, errors)

    # --- the page -------------------------------------------------------------------------

    def knowledge_page(status: int = 200, form: DraftForm | None = None) -> tuple[str, int]:
        desk = console.service.desk
        kb = desk.engine.state.kb
        today = console.clock().astimezone(console.zone).date()
        with Session(db) as work:
            asked = {
                str(entry_id): int(count)
                for entry_id, count in work.exec(
                    select(QuestionLog.entry_id, func.count())
                    .where(col(QuestionLog.entry_id).is_not(None))
                    .group_by(QuestionLog.entry_id)
                ).all()
            }
        entries = [
            EntryRow(
                entry=entry,
                asked=asked.get(entry.id, 0),
                overdue=entry.review_by is not None and entry.review_by < today,
                file=_relative(entry.path, root),
            )
            for entry in kb.entries.values()
        ]
        entries.sort(
            key=lambda e: (
                not e.overdue,
                e.entry.review_by is None,
                e.entry.review_by or today,
                e.entry.id,
            )
        )
        gaps = group_gaps(gap_questions(db), embedder=desk.engine.embedder)[:GAP_GROUPS]
        forms = [
            form if form is not None and form.draft.name == draft.name else _form_of(draft)
            for draft in list_drafts(root)
        ]
        return page(
            "knowledge.html",
            status,
            entries=entries,
            overdue=sum(1 for e in entries if e.overdue),
            unowned=sum(1 for e in entries if not e.entry.owner),
            gaps=gaps,
            picked=picks(db)[:GAP_GROUPS],
            drafts=forms,
            today=today,
        )

    @app.get("/knowledge")
    def knowledge() -> tuple[str, int]:
        """The FAQ entries with owner and review date (overdue first), the gap report of
        `mobilize faq gaps` through the same core functions, phrasings to approve and drafts."""
        return knowledge_page()

    # --- phrasings people picked ----------------------------------------------------------

    @app.post("/knowledge/picks/<int:feedback_id>/approve")
    def knowledge_approve(feedback_id: int) -> Redirect:
        with writing:
            return _knowledge_approve(feedback_id)

    def _knowledge_approve(feedback_id: int) -> Redirect:
        back = redirect(url_for("knowledge") + "#picked", 303)
        with Session(db) as work:
            feedback = work.get(Feedback, feedback_id)
            question = work.get(QuestionLog, feedback.question_id) if feedback else None
        if feedback is None or question is None or feedback.kind != "pick":
            flash("Not approved: that pick no longer exists. Reload the page.", "error")
            return back
        entry_id = str(feedback.entry_id or "")
        entry = console.service.desk.engine.state.kb.get(entry_id)
        if entry is None or entry.path is None:
            flash(f"Not approved: the entry {entry_id!r} is no longer in the FAQ.", "error")
            return back
        try:
            phrasing = clean_phrasing(question.text)
        except ValueError as exc:
            flash(f"Not approved: {exc}.", "error")
            return back
        user_id, name, email = author()
        relative = _relative(entry.path, root)
        try:
            current = entry.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            flash(f"Not approved: {relative} cannot be read ({exc}).", "error")
            return back
        try:
            text = with_alternate(current, phrasing)
        except ValueError as exc:
            if "already" not in str(exc):
                flash(f"Not approved: {relative}: {exc}.", "error")
                return back
            # The file has it (someone added it by hand): record the approval only.
            approve_phrasing(
                console.service.desk,
                entry_id=entry_id,
                text=question.text,
                admin=user_id,
                where=f" (console; already in {relative})",
            )
            flash(f"“{phrasing}” was already a phrasing of {entry_id}; marked as approved.")
            return back
        problems = check_content(
            root, relative, text, now=console.clock(), default_timezone=settings.timezone
        )
        if problems:
            listed = "; ".join(str(p) for p in problems[:5])
            flash(f"Not approved: the entry would not pass mobilize check: {listed}", "error")
            return back
        saved = save_content_file(
            root,
            entry.path,
            text,
            message=f"Add a phrasing to FAQ entry {entry_id} (console)",
            author_name=name,
            author_email=email,
        )
        try:
            approve_phrasing(
                console.service.desk,
                entry_id=entry_id,
                text=question.text,
                admin=user_id,
                where=f" (console; {relative}"
                + (f", commit {saved.commit})" if saved.commit else ")"),
            )
        except KeyError:  # the entry went while the file was written: the file has it anyway
            record(
                db, actor=user_id, action="faq.approve_alternate", detail=f"{entry_id}: {phrasing}"
            )
        reload_faq(f"approving a phrasing of {entry_id}")
        flash(f"Added “{phrasing}” to {relative}." + saved.outcome)
        return back

    # --- drafts saved from escalations ----------------------------------------------------

    def _draft(name: str) -> Draft:
        try:
            path = draft_path(root, name)
        except ValueError:
            abort(404, f"There is no draft {name!r}.")
        if not path.is_file():
            abort(
                404,
                f"There is no draft {name!r} under messages/faq/drafts/ (already "
                "published or discarded?).",
            )
        return read_draft(path)

    def _field_of(problem: Problem, text: str) -> str:
        """Which field of the form a problem of the composed file is about."""
        parts = split_front_matter(text)
        if parts is not None and problem.line >= parts[2]:
            return "answer"
        lines = text.splitlines()
        line = lines[problem.line - 1] if 0 < problem.line <= len(lines) else ""
        key = line.split(":", 1)[0].strip()
        return key if key in FIELDS else ("id" if "id" in problem.reason else "question")

    @app.post("/knowledge/drafts/<name>/publish")
    def knowledge_publish(name: str) -> Redirect | tuple[str, int]:
        with writing:
            return _knowledge_publish(name)

    def _knowledge_publish(name: str) -> Redirect | tuple[str, int]:
        draft = _draft(name)
        values = {
            field: request.form.get(field, "").replace("\r\n", "\n")[:MAX_FIELD] for field in FIELDS
        }
        values = {k: (v if k == "answer" else " ".join(v.split())) for k, v in values.items()}
        entry_id = values["id"]

        def refuse(reason: str, located: list[_Located], status: int = 422) -> tuple[str, int]:
            fields: dict[str, list[Problem]] = {}
            for item in located:
                fields.setdefault(item.field, []).append(item.problem)
            problems = [item.problem for item in located]
            return knowledge_page(status, DraftForm(draft, values, problems, fields, reason))

        relative = f"messages/faq/{entry_id}.md"
        if not ENTRY_ID.match(entry_id):
            problem = Problem(
                relative,
                2,
                "the id may hold only letters, digits, '-', '_' and "
                "'.', and must start with a letter or digit",
                True,
            )
            return refuse(
                "Not published: fix the errors below. Nothing was written.",
                [_Located("id", problem)],
            )
        path = faq_dir(root) / f"{entry_id}.md"
        text = draft_entry_text(
            entry_id=entry_id,
            question=values["question"],
            answer=values["answer"],
            owner=values["owner"],
            review_by=values["review_by"],
            source=draft.source,
        )
        if path.exists():
            problem = Problem(
                relative, 2, f"an entry file {relative} exists already: pick another id", True
            )
            return refuse(
                "Not published: fix the errors below. Nothing was written.",
                [_Located("id", problem)],
                409,
            )
        problems = check_content(
            root, relative, text, now=console.clock(), default_timezone=settings.timezone
        )
        if problems:
            return refuse(
                "Not published: fix the errors below. Nothing was written.",
                [_Located(_field_of(p, text) if p.in_this_file else "id", p) for p in problems],
            )
        user_id, author_name, email = author()
        saved = save_content_file(
            root,
            path,
            text,
            message=f"Publish FAQ entry {entry_id} from {draft.name} (console)",
            author_name=author_name,
            author_email=email,
            remove=(draft.path,),
        )
        record(
            db,
            actor=user_id,
            action="console.faq.publish",
            detail=f"{relative} from drafts/{draft.name}.md"
            + (f" (commit {saved.commit})" if saved.commit else ""),
        )
        reload_faq(f"publishing {relative}")
        flash(f"Published {relative}; the draft is removed." + saved.outcome)
        return redirect(url_for("knowledge") + "#entries", 303)

    @app.post("/knowledge/drafts/<name>/discard")
    def knowledge_discard(name: str) -> Redirect:
        with writing:
            return _knowledge_discard(name)

    def _knowledge_discard(name: str) -> Redirect:
        draft = _draft(name)
        if request.form.get("sure") != "yes":
            flash("Not discarded: tick the box to confirm.", "error")
            return redirect(url_for("knowledge") + "#drafts", 303)
        user_id, author_name, email = author()
        saved = remove_content_file(
            root,
            draft.path,
            message=f"Discard FAQ draft {draft.name} (console)",
            author_name=author_name,
            author_email=email,
        )
        record(
            db,
            actor=user_id,
            action="console.faq.discard",
            detail=f"messages/faq/drafts/{draft.name}.md"
            + (f" (commit {saved.commit})" if saved.commit else ""),
        )
        flash(f"Discarded the draft {draft.name}." + saved.outcome)
        return redirect(url_for("knowledge") + "#drafts", 303)

    # --- a new announcement template ------------------------------------------------------

    @app.post("/templates/new")
    def template_new() -> Redirect | tuple[str, int]:
        template_id = request.form.get("id", "").strip()
        existing = (
            sorted(p.stem for p in template_path(root, "x").parent.glob("*.md"))
            if template_path(root, "x").parent.is_dir()
            else []
        )

        def refuse(reason: str) -> Redirect:
            flash(f"Not created: {reason}", "error")
            return redirect(url_for("templates") + "#new", 303)

        if not TEMPLATE_ID.match(template_id) or len(template_id) > 100:
            return refuse(
                f"{template_id!r} is not a template id: use lower-case letters, digits, '-' "
                "and '_', starting with a letter or digit (e.g. payroll-reminder)."
            )
        path = template_path(root, template_id)
        if path.exists() or template_id in existing:
            return refuse(f"a template {template_id!r} exists already: open it instead.")
        user_id, name, email = author()
        text = skeleton(name)
        problems = check_template(
            root, template_id, text, now=console.clock(), default_timezone=settings.timezone
        )
        if problems:  # the content folder itself is broken in a way the skeleton meets
            return refuse("; ".join(str(p) for p in problems[:3]))
        saved = save_template(
            root,
            template_id,
            text,
            author_name=name,
            author_email=email,
            message=f"Create announcement template {template_id} (console)",
        )
        errors = console.announcer.load()
        if errors:
            log.warning("console: content has errors after creating %s: %s", template_id, errors)
        relative = saved.path.relative_to(root)
        record(
            db,
            actor=user_id,
            action="console.template.create",
            detail=f"{relative}" + (f" (commit {saved.commit})" if saved.commit else ""),
        )
        flash(
            f"Created {relative} from a starting text: write the message, then Save."
            + saved.outcome
        )
        return redirect(url_for("editor", template_id=template_id), 303)


@dataclass(frozen=True)
class _Located:
    """A problem and the form field it belongs to."""

    field: str
    problem: Problem


def _form_of(draft: Draft) -> DraftForm:
    values = {
        "id": draft.suggested_id,
        "question": draft.question,
        "answer": draft.answer,
        "owner": draft.owner,
        "review_by": draft.review_by,
    }
    return DraftForm(draft, values, [], {}, draft.problem)
