"""Looking after the knowledge base: approving phrasings people used, and the drafts supporters
save from escalations ("Save as FAQ").

The same functions serve `mobilize faq approve` and the console; writing files (atomically, with
a git commit) is the caller's business, these only work out the text and record the decision.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import yaml

from bot.core.faq.desk import FaqDesk
from bot.core.faq.kb import ID_PATTERN, faq_dir, split_front_matter
from bot.store.audit import record

log = logging.getLogger(__name__)
MAX_PHRASING = 500  # a phrasing is a question, not an essay
APPROVED = "faq.approve_alternate"


def approve_phrasing(
    desk: FaqDesk, *, entry_id: str, text: str, admin: str, where: str = ""
) -> None:
    """Approve `text` as a phrasing of an entry: stored, used by the matcher at once, and in the
    audit log (`where` is appended to the detail, e.g. " (console)"). KeyError for an unknown
    entry."""
    desk.approve_alternate(entry_id=entry_id, text=text, admin=admin)
    record(desk.db, actor=admin, action=APPROVED, detail=f"{entry_id}: {text}{where}")


def clean_phrasing(text: str) -> str:
    """A phrasing on one line, without surrounding space; ValueError when unusable."""
    cleaned = " ".join(text.split())
    if not cleaned:
        raise ValueError("the phrasing is empty")
    if len(cleaned) > MAX_PHRASING:
        raise ValueError(f"the phrasing is longer than {MAX_PHRASING} characters")
    return cleaned


def _scalar(value: str) -> str:
    """`value` as one YAML flow scalar (quoted when it must be)."""
    dumped = yaml.safe_dump([value], allow_unicode=True, width=1_000_000, default_style=None)
    return dumped.strip()[2:]  # "- value"


def _front(text: str) -> tuple[dict[str, Any], int] | None:
    """The front matter's mapping and the line (0-based) of its closing `---`."""
    parts = split_front_matter(text)
    if parts is None:
        return None
    front, _body, body_line = parts
    try:
        data = yaml.safe_load(front)
    except yaml.YAMLError:
        return None
    if not isinstance(data, dict):
        return None
    return data, body_line - 2


def with_alternate(text: str, phrasing: str) -> str:
    """An entry file's text with `phrasing` appended to its `alternates:`, the rest of the
    file as it was (comments, order, the answer). ValueError when the file has no readable
    front matter or the entry has that phrasing already."""
    found = _front(text)
    if found is None:
        raise ValueError("the entry file has no readable front matter")
    data, closing = found
    alternates = data.get("alternates")
    current = (
        [str(a) for a in alternates]
        if isinstance(alternates, list)
        else ([str(alternates)] if alternates else [])
    )
    known = {" ".join(str(p).split()).casefold() for p in [data.get("question") or "", *current]}
    if phrasing.casefold() in known:
        raise ValueError("the entry has that phrasing already")
    wanted = [*current, phrasing]
    lines = text.splitlines(keepends=True)
    edited = _insert_line(lines, closing, phrasing)
    if edited is not None:
        again = _front(edited)
        if again is not None and again[0].get("alternates") == wanted:
            rest = {k: v for k, v in again[0].items() if k != "alternates"}
            if rest == {k: v for k, v in data.items() if k != "alternates"}:
                return edited
    # Not a plain block list: write the front matter again (its comments are lost).
    data["alternates"] = wanted
    header = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=1000)
    return "---\n" + header + "---\n" + "".join(lines[closing + 1 :])


def _insert_line(lines: list[str], closing: int, phrasing: str) -> str | None:
    """Add the phrasing as a new `- item` line; None when `alternates:` is not a block list."""
    front = "".join(lines[1:closing])
    try:
        node = yaml.compose(front)
    except yaml.YAMLError:
        return None
    if not isinstance(node, yaml.MappingNode):
        return None
    value = next(
        (v for k, v in node.value if isinstance(k, yaml.ScalarNode) and k.value == "alternates"),
        None,
    )
    item = _scalar(phrasing)
    if value is None:  # no alternates yet: a new key at the end of the front matter
        return "".join([*lines[:closing], f"alternates:\n  - {item}\n", *lines[closing:]])
    if not isinstance(value, yaml.SequenceNode) or value.flow_style or not value.value:
        return None
    first = value.value[0].start_mark
    first_line = lines[1 + first.line]
    dash = first_line.rfind("-", 0, first.column)
    if dash < 0:
        return None
    last = value.value[-1].end_mark
    after = 1 + last.line + (1 if last.column > 0 else 0)  # the line after the last item
    new = f"{first_line[:dash]}- {item}\n"
    if after > 0 and not lines[after - 1].endswith("\n"):
        return None
    return "".join([*lines[:after], new, *lines[after:]])


# --- drafts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Draft:
    """A draft entry under messages/faq/drafts/, as its editor shows it."""

    name: str  # the file's stem, e.g. draft-12
    path: Path
    question: str
    answer: str
    owner: str
    review_by: str  # as written (YYYY-MM-DD), or ""
    source: str
    problem: str = ""  # why the file could not be read as an entry, if so

    @property
    def suggested_id(self) -> str:
        """An entry id made from the question (the draft's own name as a fallback)."""
        return slug(self.question) or self.name


def drafts_dir(content_dir: Path) -> Path:
    return faq_dir(content_dir) / "drafts"


def draft_path(content_dir: Path, name: str) -> Path:
    """The file of a draft; ValueError for a name that is not a plain file name."""
    if not ID_PATTERN.match(name):
        raise ValueError(f"{name!r} is not a draft name")
    return drafts_dir(content_dir) / f"{name}.md"


def read_draft(path: Path) -> Draft:
    """A draft file, leniently: a draft may be unfinished, its problems are shown, not raised."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return Draft(path.stem, path, "", "", "", "", "", f"cannot read: {exc}")
    parts = split_front_matter(text)
    if parts is None:
        return Draft(path.stem, path, "", text.strip(), "", "", "", "no front matter")
    front, body, _line = parts
    try:
        data = yaml.safe_load(front)
    except yaml.YAMLError as exc:
        return Draft(path.stem, path, "", body.strip(), "", "", "", f"bad front matter: {exc}")
    if not isinstance(data, dict):
        data = {}
    review = data.get("review_by")
    shown = review.isoformat() if isinstance(review, date | datetime) else str(review or "")
    return Draft(
        name=path.stem,
        path=path,
        question=str(data.get("question") or ""),
        answer=body.strip(),
        owner=str(data.get("owner") or ""),
        review_by=shown[:10] if isinstance(review, datetime) else shown,
        source=str(data.get("source") or ""),
    )


def list_drafts(content_dir: Path) -> list[Draft]:
    """Every draft, oldest file name first."""
    folder = drafts_dir(content_dir)
    if not folder.is_dir():
        return []
    return [read_draft(path) for path in sorted(folder.glob("*.md")) if ID_PATTERN.match(path.stem)]


def draft_entry_text(
    *, entry_id: str, question: str, answer: str, owner: str, review_by: str, source: str
) -> str:
    """The entry file a draft publishes as. `review_by` is written as given, so a bad date is
    reported by the checker at its line rather than silently dropped."""
    front: list[str] = [
        f"id: {_scalar(entry_id)}",
        f"question: {_scalar(' '.join(question.split()))}",
    ]
    if owner.strip():
        front.append(f"owner: {_scalar(' '.join(owner.split()))}")
    if review_by.strip():
        front.append(
            f"review_by: {review_by.strip() if _is_date(review_by) else _scalar(review_by.strip())}"
        )
    if source.strip():
        front.append(f"source: {_scalar(' '.join(source.split()))}")
    body = answer.replace("\r\n", "\n").replace("\r", "\n").strip()
    return "---\n" + "\n".join(front) + "\n---\n" + body + "\n"


def _is_date(value: str) -> bool:
    try:
        date.fromisoformat(value.strip())
    except ValueError:
        return False
    return True


def slug(text: str, limit: int = 60) -> str:
    """A file-name-safe id from words: "How do I sign in?" → "how-do-i-sign-in"."""
    words = "".join(c if c.isascii() and c.isalnum() else " " for c in text.lower()).split()
    found = ""
    for word in words:
        candidate = f"{found}-{word}" if found else word
        if len(candidate) > limit:
            break
        found = candidate
    return found
