"""Console pages: every content file (registered on the app by `create_app`).

What the other pages do not cover — the announcement plan, survey definitions and schedules,
audience lists, FAQ entries — is edited here as text, under the same rules as a template:
checked as `mobilize check` checks it (`file:line` errors beside the text), refused with the
reason and nothing written when it would break the content, otherwise written atomically,
committed by the admin when the folder is a git repository, audited, and reloaded."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask, abort, flash, g, redirect, request, url_for
from werkzeug.wrappers.response import Response as Redirect

from bot.console.content import check_content, content_path, save_file
from bot.store.audit import record

if TYPE_CHECKING:
    from bot.console.app import Console
    from bot.console.links import SignedIn

log = logging.getLogger(__name__)
Page = Callable[..., tuple[str, int]]

FOLDERS = ("messages", "schedules")  # what the bot reads; nothing else is editable
SUFFIXES = frozenset({".md", ".yaml", ".yml", ".csv", ".txt"})
MAX_FILES = 500


@dataclass(frozen=True)
class ContentFile:
    relative: str
    size: int
    folder: str  # e.g. "messages/faq"


def editable(content_dir: Path, relative: str) -> Path:
    """The file `relative` names, if the console may edit it: under messages/ or schedules/,
    with a content suffix, not hidden, and (after symbolic links) inside the content folder.
    ValueError says why not."""
    path = content_path(content_dir, relative)
    parts = Path(relative).parts
    if parts[0] not in FOLDERS or len(parts) < 2:
        raise ValueError(f"{relative}: only files under {' or '.join(FOLDERS)}/ are content")
    if any(part.startswith(".") for part in parts):
        raise ValueError(f"{relative}: hidden files are not content")
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"{relative}: only {', '.join(sorted(SUFFIXES))} files are content")
    root = content_dir.resolve()
    target = path.resolve()
    if target != root and root not in target.parents:
        raise ValueError(f"{relative}: it points outside the content folder")
    return path


def content_files(content_dir: Path) -> list[ContentFile]:
    """Every editable file, by folder then name."""
    found: list[ContentFile] = []
    for folder in FOLDERS:
        base = content_dir / folder
        if not base.is_dir():
            continue
        for path in sorted(base.rglob("*")):
            relative = path.relative_to(content_dir).as_posix()
            if not path.is_file():
                continue
            try:
                editable(content_dir, relative)
            except ValueError:
                continue
            found.append(
                ContentFile(relative, path.stat().st_size, Path(relative).parent.as_posix())
            )
            if len(found) >= MAX_FILES:
                return found
    return found


def register(app: Flask, console: Console, page: Page) -> None:
    """Add the content-file routes: list, edit, check, save."""
    from bot.console.app import _digest, _sanitize

    settings = console.settings
    db = console.service.db

    def _path() -> tuple[str, Path]:
        relative = (request.values.get("path") or "").strip().lstrip("/")
        try:
            return relative, editable(settings.content_dir, relative)
        except ValueError as exc:
            abort(404, str(exc))

    def _text() -> str:
        return request.form.get("source", "").replace("\r\n", "\n").replace("\r", "\n")

    def _problems(relative: str, text: str) -> list[Any]:
        return check_content(
            settings.content_dir,
            relative,
            text,
            now=console.clock(),
            default_timezone=settings.timezone,
        )

    @app.get("/files")
    def files() -> tuple[str, int]:
        listed = content_files(settings.content_dir)
        return page("files.html", files=listed, folders=FOLDERS, suffixes=sorted(SUFFIXES))

    @app.get("/files/edit")
    def file_edit() -> tuple[str, int]:
        relative, path = _path()
        new = not path.exists()
        if new and request.args.get("new") != "1":
            abort(404, f"There is no {relative}.")
        text = "" if new else path.read_text(encoding="utf-8")
        return page(
            "file_edit.html",
            relative=relative,
            text=text,
            new=new,
            base=_digest(text) if not new else "",
            problems=[] if new else _problems(relative, text),
            lines=text.count("\n") + 1,
        )

    @app.post("/files/check")
    def file_check() -> tuple[str, int]:
        relative = _path()[0]
        return page("_problems.html", problems=_problems(relative, _text()))

    @app.post("/files/save")
    def file_save() -> Redirect | tuple[str, int]:
        relative, path = _path()
        text = _text()
        base = request.form.get("base", "")
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        values: dict[str, Any] = {
            "relative": relative,
            "text": text,
            "new": not path.exists(),
            "base": base,
            "lines": text.count("\n") + 1,
        }
        if path.exists() and base != _digest(current):
            why = "it was created meanwhile" if not base else "it changed since you opened it"
            values["refused"] = (
                f"Not saved: {relative} on disk differs ({why}). Copy your text, reload the "
                "page, and apply your change again."
            )
            values["problems"] = []
            return page("file_edit.html", 409, **values)
        problems = _problems(relative, text)
        if problems:
            values["problems"] = problems
            values["refused"] = "Not saved: fix the errors below. Nothing was written."
            return page("file_edit.html", 422, **values)
        signed: SignedIn = g.signed
        name, email = console.person(signed.user_id)
        verb = "Create" if values["new"] else "Edit"
        saved = save_file(
            settings.content_dir,
            relative,
            text,
            author_name=_sanitize(name) or signed.user_id,
            author_email=_sanitize(email, 200) or f"{signed.user_id}@mobilize.invalid",
            message=f"{verb} {relative} (console)",
        )
        console.reload_content(relative)
        record(
            db,
            actor=signed.user_id,
            action="console.file.save",
            detail=f"{relative}" + (f" (commit {saved.commit})" if saved.commit else ""),
        )
        message = f"Saved {relative}."
        message += saved.outcome
        flash(message)
        return redirect(url_for("file_edit", path=relative), 303)
