"""Template edits from the console: checked as `mobilize check` checks them, written
atomically, and committed when the content folder is a git repository."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

import yaml

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

    @property
    def outcome(self) -> str:
        """What to add to "Saved …": the commit, or why there is none ("" outside git)."""
        if self.commit:
            return f" Committed as {self.commit}."
        return f" ({self.note})" if self.note else ""


def save_template(
    content_dir: Path,
    template_id: str,
    text: str,
    *,
    author_name: str,
    author_email: str,
    message: str = "",
) -> Saved:
    """Write the template atomically (a temporary file in the same folder, then
    `os.replace`), then commit it with the admin as author when the content folder is a git
    repository. Check it first with `check_template`: this writes whatever it is given."""
    return save_content_file(
        content_dir,
        template_path(content_dir, template_id),
        text,
        message=message or f"Edit announcement template {template_id} (console)",
        author_name=author_name,
        author_email=author_email,
    )


def _git(content_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", str(content_dir), *args],
        capture_output=True,
        text=True,
        timeout=GIT_SECONDS,
        check=False,
        env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
    )


# --- other content files (the timeline's milestone moves) ---------------------------------


def content_path(content_dir: Path, relative: str) -> Path:
    """`relative` (e.g. `schedules/rollout.yaml`) inside the content folder; ValueError for a
    path that leaves it or is not a plain relative path."""
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or any(p in {"", ".", ".."} for p in parts):
        raise ValueError(f"{relative!r} is not a file of the content folder")
    return content_dir.joinpath(*parts)


def _mirror(content_dir: Path, root: Path, relative: str) -> Path:
    """Fill `root` with symbolic links to the content folder's files, except along the path of
    `relative`, whose folders are real (holding links to their other entries); returns where
    `relative` goes in `root`."""
    parts = Path(relative).parts
    source, target = content_dir, root
    for depth, part in enumerate(parts):
        target.mkdir(parents=True, exist_ok=True)
        for entry in sorted(source.iterdir()) if source.is_dir() else []:
            if entry.name != part:
                (target / entry.name).symlink_to(
                    entry.resolve(), target_is_directory=entry.is_dir()
                )
        source, target = source / part, target / part
        if depth == len(parts) - 1:
            return target
    raise ValueError(f"{relative!r} is not a file of the content folder")


def _all_errors(content_dir: Path, *, now: datetime, default_timezone: str) -> list[ContentError]:
    """Every error `mobilize check` reports, from the loaders the running bot uses (FAQ,
    announcements, surveys and their schedules)."""
    from bot.core.faq.kb import load_content
    from bot.core.surveys.definitions import load_survey_schedules, load_surveys

    rollout, _kb, errors = load_content(content_dir, now=now, default_timezone=default_timezone)
    _announcements, more = load_announcements(
        content_dir, now=now, default_timezone=default_timezone
    )
    surveys, survey_errors = load_surveys(content_dir)
    _schedules, schedule_errors = load_survey_schedules(content_dir, rollout, surveys)
    return errors + more + survey_errors + schedule_errors


def check_content(
    content_dir: Path,
    relative: str,
    text: str,
    *,
    now: datetime,
    default_timezone: str = "",
) -> list[Problem]:
    """The errors the bot's loaders would report with `text` as the file `relative`: every
    error in that file, and those it causes elsewhere (an announcement whose `from:` falls
    after its `until:` once a milestone moved); errors other files had before are left out.
    The loaders run on a copy of the folder in which only this file differs."""
    content_path(content_dir, relative)
    with tempfile.TemporaryDirectory(prefix="mobilize-check-") as scratch:
        root = Path(scratch) / "content"
        _mirror(content_dir, root, relative).write_text(text, encoding="utf-8")
        errors = _all_errors(root, now=now, default_timezone=default_timezone)
        shown = [_problem(error, root, content_dir, relative) for error in errors]
    before = _all_errors(content_dir, now=now, default_timezone=default_timezone)
    earlier = {str(_problem(error, content_dir, content_dir, relative)) for error in before}
    unique: list[Problem] = []
    for problem in shown:
        if (problem.in_this_file or str(problem) not in earlier) and problem not in unique:
            unique.append(problem)
    return unique


def save_file(
    content_dir: Path,
    relative: str,
    text: str,
    *,
    author_name: str,
    author_email: str,
    message: str,
) -> Saved:
    """`save_content_file` for a path relative to the content folder (e.g.
    `schedules/rollout.yaml`). Check it first (`check_content`): this writes whatever it is
    given."""
    return save_content_file(
        content_dir,
        content_path(content_dir, relative),
        text,
        message=message,
        author_name=author_name,
        author_email=author_email,
    )


def set_milestone(text: str, name: str, day: date) -> str:
    """`rollout.yaml`'s text with milestone `name` set to `day`: only that value changes (the
    rest of its line, its comment and every other line are kept as they are). ValueError
    says why when the file has no such milestone written as a one-line value."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ValueError(f"rollout.yaml is not valid YAML: {exc}") from None
    milestones = _mapping_value(node, "milestones")
    if milestones is None:
        raise ValueError("rollout.yaml has no milestones: mapping")
    value = _mapping_value(milestones, name)
    if value is None:
        raise ValueError(f"rollout.yaml has no milestone {name!r}")
    if not isinstance(value, yaml.ScalarNode) or value.start_mark.line != value.end_mark.line:
        raise ValueError(f"milestone {name!r} is not written as a date on its own line")
    start, end = value.start_mark.index, value.end_mark.index
    return text[:start] + day.isoformat() + text[end:]


def _mapping_value(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value in node.value:
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == key:
            return value
    return None


# --- knowledge base files (entries under messages/faq/) ------------------------------------


def save_content_file(
    content_dir: Path,
    path: Path,
    text: str,
    *,
    message: str,
    author_name: str,
    author_email: str,
    remove: tuple[Path, ...] = (),
) -> Saved:
    """Write a content file atomically (as `save_template` does), delete the files in `remove`
    (a published draft), then commit all of it as one commit by the admin when the content
    folder is a git repository. Check the text first: this writes whatever it is given."""
    _write_atomically(path, text)
    return _finish(content_dir, (path, *remove), remove, message, author_name, author_email)


def remove_content_file(
    content_dir: Path, path: Path, *, message: str, author_name: str, author_email: str
) -> Saved:
    """Delete a content file (a discarded draft), committed when it was in git."""
    return _finish(content_dir, (path,), (path,), message, author_name, author_email)


def _write_atomically(path: Path, text: str) -> None:
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


def _finish(
    content_dir: Path,
    paths: tuple[Path, ...],
    remove: tuple[Path, ...],
    message: str,
    name: str,
    email: str,
) -> Saved:
    for gone in remove:
        gone.unlink(missing_ok=True)
    commit, note = _commit_paths(content_dir, paths, message, name, email)
    return Saved(paths[0], commit, note)


def _commit_paths(
    content_dir: Path, paths: tuple[Path, ...], message: str, name: str, email: str
) -> tuple[str, str]:
    """(commit hash, "") after one commit of the files (written or deleted); ("", why not)
    otherwise. Never raises."""
    if shutil.which("git") is None:
        return "", "not committed: git is not installed"
    try:
        inside = _git(content_dir, "rev-parse", "--is-inside-work-tree")
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return "", ""  # not a repository: nothing to commit to
        staged: list[str] = []
        for path in paths:
            relative = os.path.relpath(path, content_dir)
            if path.exists():
                done = _git(content_dir, "add", "--", relative)
            elif _git(content_dir, "ls-files", "--error-unmatch", "--", relative).returncode == 0:
                done = _git(content_dir, "rm", "--cached", "--quiet", "--", relative)
            else:
                continue  # deleted, and never in git: nothing to record
            if done.returncode != 0:
                return "", f"not committed: git failed: {done.stderr.strip()[:200]}"
            staged.append(relative)
        if (
            not staged
            or _git(content_dir, "diff", "--cached", "--quiet", "--", *staged).returncode == 0
        ):
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
            message,
            "--",
            *staged,
        )
        if done.returncode != 0:
            return "", f"not committed: git commit failed: {done.stderr.strip()[:200]}"
        head = _git(content_dir, "rev-parse", "--short", "HEAD")
        return head.stdout.strip(), ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        log.warning("committing %s failed: %s", ", ".join(map(str, paths)), exc)
        return "", f"not committed: {exc}"
