"""Template edits from the console: checked as `mobilize check` checks them, written
atomically, and committed when the content folder is a git repository."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bot.core.announcements.announcer import load_announcements
from bot.core.announcements.templates import ID_PATTERN, announcements_dir
from bot.core.content import ContentError

log = logging.getLogger(__name__)
GIT_SECONDS = 20


@dataclass(frozen=True)
class Problem:
    """One error to show beside the text: where (relative to the content folder) and why."""

    file: str
    line: int
    reason: str
    in_this_file: bool

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.reason}"


def template_path(content_dir: Path, template_id: str) -> Path:
    """The file of a template id; ValueError for an id that is not a plain file name."""
    if not ID_PATTERN.match(template_id):
        raise ValueError(f"{template_id!r} is not a template id")
    return announcements_dir(content_dir) / f"{template_id}.md"


def _shown(path: Path, root: Path, real_root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        try:
            return str(path.relative_to(real_root))
        except ValueError:
            return str(path)


def check_template(
    content_dir: Path,
    template_id: str,
    text: str,
    *,
    now: datetime,
    default_timezone: str = "",
) -> list[Problem]:
    """The errors `mobilize check` would report with `text` as the template's file: the
    template's own, and those the edit causes elsewhere (a plan entry with `ack: true` whose
    template lost its ack button). The announcement loader runs on a copy of the folder in
    which only this file differs; errors other files had before are left out."""
    target = template_path(content_dir, template_id)
    relative = target.relative_to(content_dir)
    with tempfile.TemporaryDirectory(prefix="mobilize-check-") as scratch:
        root = Path(scratch)
        folder = announcements_dir(root)
        folder.mkdir(parents=True)
        schedules = content_dir / "schedules"
        if schedules.is_dir():
            (root / "schedules").symlink_to(schedules.resolve(), target_is_directory=True)
        real_folder = announcements_dir(content_dir)
        for other in sorted(real_folder.glob("*.md")) if real_folder.is_dir() else []:
            if other.name != target.name:
                (folder / other.name).symlink_to(other.resolve())
        (root / relative).write_text(text, encoding="utf-8")
        _content, errors = load_announcements(root, now=now, default_timezone=default_timezone)
        shown = [_problem(error, root, content_dir, str(relative)) for error in errors]
    _content, before = load_announcements(content_dir, now=now, default_timezone=default_timezone)
    earlier = {str(_problem(error, content_dir, content_dir, str(relative))) for error in before}
    return [p for p in shown if p.in_this_file or str(p) not in earlier]


def _problem(error: ContentError, root: Path, real_root: Path, relative: str) -> Problem:
    file = _shown(error.path, root, real_root)
    return Problem(file, error.line, error.reason, file == relative)


@dataclass(frozen=True)
class Saved:
    """What a save did: the file written, and the commit (or why there is none)."""

    path: Path
    commit: str = ""
    note: str = ""


def save_template(
    content_dir: Path,
    template_id: str,
    text: str,
    *,
    author_name: str,
    author_email: str,
) -> Saved:
    """Write the template atomically (a temporary file in the same folder, then
    `os.replace`), then commit it with the admin as author when the content folder is a git
    repository. Check it first with `check_template`: this writes whatever it is given."""
    path = template_path(content_dir, template_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not text.endswith("\n"):
        text += "\n"
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        if path.exists():
            shutil.copymode(path, temporary)
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    commit, note = _commit(content_dir, path, template_id, author_name, author_email)
    return Saved(path, commit, note)


def _git(content_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(content_dir), *args],
        capture_output=True,
        text=True,
        timeout=GIT_SECONDS,
        check=False,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )


def _commit(
    content_dir: Path, path: Path, template_id: str, name: str, email: str
) -> tuple[str, str]:
    """(commit hash, "") after a commit; ("", why not) otherwise. Never raises."""
    if shutil.which("git") is None:
        return "", "not committed: git is not installed"
    try:
        inside = _git(content_dir, "rev-parse", "--is-inside-work-tree")
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return "", ""  # not a repository: nothing to commit to
        relative = os.path.relpath(path, content_dir)
        added = _git(content_dir, "add", "--", relative)
        if added.returncode != 0:
            return "", f"not committed: git add failed: {added.stderr.strip()[:200]}"
        if _git(content_dir, "diff", "--cached", "--quiet", "--", relative).returncode == 0:
            return "", "no change to commit"
        done = _git(
            content_dir,
            "-c",
            f"user.name={name}",
            "-c",
            f"user.email={email}",
            "commit",
            "--quiet",
            "-m",
            f"Edit announcement template {template_id} (console)",
            "--",
            relative,
        )
        if done.returncode != 0:
            return "", f"not committed: git commit failed: {done.stderr.strip()[:200]}"
        head = _git(content_dir, "rev-parse", "--short", "HEAD")
        return head.stdout.strip(), ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("committing %s failed: %s", path, exc)
        return "", f"not committed: {exc}"
