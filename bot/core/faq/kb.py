"""The FAQ knowledge base: one Markdown file per entry, and QnA Maker TSV import/export.

An entry file is YAML front matter (`id`, `question`, `alternates`, `tags`, `owner`,
`review_by`, `related`) and a Markdown answer that may use the rollout's Jinja2 variables.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

import jinja2
import yaml

from bot.core.content import (
    ENVIRONMENT,
    ContentError,
    Rollout,
    key_lines,
    load_rollout,
    parse_yaml,
    template_error,
    template_variables,
)

ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
TSV_COLUMNS = (
    "Question",
    "Answer",
    "Source",
    "Metadata",
    "SuggestedQuestions",
    "IsContextOnly",
    "Prompts",
    "QnaId",
)
KNOWN_KEYS = {"id", "question", "alternates", "tags", "owner", "review_by", "related", "source"}


@dataclass(frozen=True)
class Related:
    """A follow-up entry offered as a button under an answer."""

    entry_id: str
    label: str = ""


@dataclass(frozen=True)
class FaqEntry:
    """One question with its phrasings and its answer template."""

    id: str
    question: str
    answer: str  # the Markdown body, before Jinja2
    alternates: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    owner: str = ""
    review_by: date | None = None
    related: tuple[Related, ...] = ()
    source: str = ""
    path: Path | None = None
    body_line: int = 1
    template: jinja2.Template | None = field(default=None, compare=False, repr=False)

    @property
    def phrasings(self) -> tuple[str, ...]:
        return (self.question, *self.alternates)

    def render(self, rollout: Rollout, *, now: datetime) -> str:
        """The answer with the rollout's variables filled in."""
        template = self.template or ENVIRONMENT.from_string(self.answer)
        return template.render(template_variables(rollout, now=now)).strip()


@dataclass(frozen=True)
class KnowledgeBase:
    """Every entry, by id, in file order."""

    entries: dict[str, FaqEntry] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, entry_id: str) -> FaqEntry | None:
        return self.entries.get(entry_id)

    def phrasings(self, extra: Iterable[tuple[str, str]] = ()) -> list[tuple[str, list[str]]]:
        """(entry id, phrasings) for the matcher, with `extra` (entry id, text) appended."""
        table = {entry.id: list(entry.phrasings) for entry in self.entries.values()}
        for entry_id, text in extra:
            if entry_id in table and text not in table[entry_id]:
                table[entry_id].append(text)
        return list(table.items())


def split_front_matter(text: str) -> tuple[str, str, int] | None:
    """(front matter, body, line where the body starts) or None when there is no front matter."""
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return None
    for index in range(1, len(lines)):
        if lines[index].strip() == "---":
            return "".join(lines[1:index]), "".join(lines[index + 1 :]), index + 2
    return None


def _strings(value: Any) -> list[str] | None:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str | int | float) for item in value):
        return [str(item) for item in value]
    return None


def parse_entry(
    path: Path, text: str, rollout: Rollout, *, now: datetime
) -> tuple[FaqEntry | None, list[ContentError]]:
    """Parse and validate one entry file; the entry is None when it has errors."""
    parts = split_front_matter(text)
    if parts is None:
        return None, [
            ContentError(
                path, 1, "missing front matter: start the file with --- and close it with ---"
            )
        ]
    front, body, body_line = parts
    data, errors = parse_yaml(front, path, offset=1)
    if errors:
        return None, errors
    if not isinstance(data, dict):
        return None, [ContentError(path, 2, "front matter must be a mapping of keys to values")]
    lines = key_lines(front, offset=1)

    def error(key: str, reason: str) -> None:
        errors.append(ContentError(path, lines.get(key, 2), reason))

    for key in data:
        if key not in KNOWN_KEYS:
            error(str(key), f"unknown key {key!r} (known: {', '.join(sorted(KNOWN_KEYS))})")
    entry_id = str(data.get("id") or "").strip()
    if not entry_id:
        error("id", "missing id: give the entry a short unique id such as reset-password")
    elif not ID_PATTERN.match(entry_id):
        error("id", f"id {entry_id!r} may hold only letters, digits, '-', '_' and '.'")
    question = data.get("question")
    if not isinstance(question, str) or not question.strip():
        error("question", "missing question: the main way people ask this")
        question = ""
    alternates = _strings(data.get("alternates"))
    if alternates is None:
        error("alternates", "alternates must be a list of phrasings")
        alternates = []
    tags = _strings(data.get("tags"))
    if tags is None:
        error("tags", "tags must be a list of words")
        tags = []
    owner = data.get("owner") or ""
    if not isinstance(owner, str):
        error("owner", "owner must be a name or team")
        owner = ""
    review_by = data.get("review_by")
    if isinstance(review_by, datetime):
        review_by = review_by.date()
    if review_by is not None and not isinstance(review_by, date):
        error("review_by", f"review_by must be a date like 2027-03-31, not {review_by!r}")
        review_by = None
    related: list[Related] = []
    for item in data.get("related") or []:
        if isinstance(item, str | int):
            related.append(Related(str(item)))
        elif isinstance(item, dict) and "id" in item:
            related.append(Related(str(item["id"]), str(item.get("label") or "")))
        else:
            error("related", "related must list entry ids (or {id, label})")
    if not body.strip():
        errors.append(
            ContentError(path, body_line, "empty answer: write the answer below the front matter")
        )
    template = None
    try:
        template = ENVIRONMENT.from_string(body)
        template.render(template_variables(rollout, now=now))
    except Exception as exc:  # any template failure is a content error, never a crash
        errors.append(template_error(exc, path=path, body=body, first_line=body_line))
    if errors:
        return None, errors
    entry = FaqEntry(
        id=entry_id,
        question=question.strip(),
        answer=body.strip(),
        alternates=tuple(a.strip() for a in alternates if a.strip()),
        tags=tuple(tags),
        owner=owner,
        review_by=review_by,
        related=tuple(related),
        source=str(data.get("source") or ""),
        path=path,
        body_line=body_line,
        template=template,
    )
    return entry, []


def faq_dir(content_dir: Path) -> Path:
    return content_dir / "messages" / "faq"


def load_knowledge_base(
    content_dir: Path, rollout: Rollout, *, now: datetime
) -> tuple[KnowledgeBase, list[ContentError]]:
    """Load every `messages/faq/*.md` (drafts/ is skipped) and check ids and links between them."""
    folder = faq_dir(content_dir)
    entries: dict[str, FaqEntry] = {}
    errors: list[ContentError] = []
    for path in sorted(folder.glob("*.md")) if folder.is_dir() else []:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(ContentError(path, 1, f"cannot read: {exc}"))
            continue
        entry, problems = parse_entry(path, text, rollout, now=now)
        errors.extend(problems)
        if entry is None:
            continue
        if entry.id in entries:
            first = entries[entry.id].path
            errors.append(ContentError(path, 2, f"duplicate id {entry.id!r}, also in {first}"))
            continue
        entries[entry.id] = entry
    for entry in entries.values():
        for item in entry.related:
            if item.entry_id not in entries:
                errors.append(
                    ContentError(
                        entry.path or folder, 2, f"related entry {item.entry_id!r} does not exist"
                    )
                )
    return KnowledgeBase(entries), errors


# --- QnA Maker / Custom Question Answering TSV -------------------------------------------


def read_qna_tsv(path: Path) -> tuple[list[FaqEntry], list[ContentError]]:
    """Entries from a QnA Maker TSV export: rows sharing a QnaId are phrasings of one entry."""
    errors: list[ContentError] = []
    grouped: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(reader, None)
        if header is None:
            return [], [ContentError(path, 1, "empty file")]
        columns = {name.strip(): index for index, name in enumerate(header)}
        missing = [name for name in ("Question", "Answer") if name not in columns]
        if missing:
            return [], [
                ContentError(
                    path,
                    1,
                    f"missing column(s) {', '.join(missing)}; expected {', '.join(TSV_COLUMNS)}",
                )
            ]

        def cell(row: list[str], name: str) -> str:
            index = columns.get(name)
            return row[index].strip() if index is not None and index < len(row) else ""

        for number, row in enumerate(reader, start=2):
            if not any(part.strip() for part in row):
                continue
            question = _unescape_tsv(cell(row, "Question"))
            if not question:
                errors.append(ContentError(path, number, "row has no Question"))
                continue
            qna_id = cell(row, "QnaId") or str(len(grouped) + 1)
            if not ID_PATTERN.match(qna_id):
                errors.append(ContentError(path, number, f"QnaId {qna_id!r} is not a usable id"))
                continue
            group = grouped.setdefault(
                qna_id,
                {
                    "phrasings": [],
                    "answer": _unescape_tsv(cell(row, "Answer")),
                    "source": cell(row, "Source"),
                    "metadata": cell(row, "Metadata"),
                    "prompts": cell(row, "Prompts"),
                    "line": number,
                },
            )
            if question not in group["phrasings"]:
                group["phrasings"].append(question)
    entries = []
    for qna_id, group in grouped.items():
        related = []
        try:
            prompts = json.loads(group["prompts"]) if group["prompts"] else []
        except json.JSONDecodeError:
            errors.append(ContentError(path, group["line"], "Prompts is not valid JSON"))
            prompts = []
        for prompt in sorted(
            prompts, key=lambda p: p.get("DisplayOrder", 0) if isinstance(p, dict) else 0
        ):
            if isinstance(prompt, dict) and prompt.get("QnaId") is not None:
                related.append(Related(str(prompt["QnaId"]), str(prompt.get("DisplayText") or "")))
        tags = tuple(part for part in group["metadata"].split("|") if part)
        entries.append(
            FaqEntry(
                id=qna_id,
                question=group["phrasings"][0],
                alternates=tuple(group["phrasings"][1:]),
                answer=group["answer"] or "(no answer)",
                tags=tags,
                source=group["source"],
                related=tuple(related),
            )
        )
    return entries, errors


def _unescape_tsv(value: str) -> str:
    return value.replace("\\n", "\n").replace("\\t", "\t")


def _escape_tsv(value: str) -> str:
    return value.replace("\t", "\\t").replace("\r", "").replace("\n", "\\n")


def entry_file_text(entry: FaqEntry) -> str:
    """The Markdown file for an entry; imported answers that look like Jinja2 are kept literal."""
    front: dict[str, Any] = {"id": entry.id, "question": entry.question}
    if entry.alternates:
        front["alternates"] = list(entry.alternates)
    if entry.tags:
        front["tags"] = list(entry.tags)
    if entry.owner:
        front["owner"] = entry.owner
    if entry.review_by:
        front["review_by"] = entry.review_by
    if entry.related:
        front["related"] = [
            {"id": item.entry_id, "label": item.label} if item.label else item.entry_id
            for item in entry.related
        ]
    if entry.source:
        front["source"] = entry.source

    body = entry.answer
    if ("{{" in body or "{%" in body) and entry.template is None and entry.path is None:
        body = "{% raw %}" + body + "{% endraw %}"
    header = yaml.safe_dump(front, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{header}---\n{body.strip()}\n"


def write_entries(entries: Sequence[FaqEntry], folder: Path) -> list[Path]:
    """Write entries as `<id>.md` files into `folder` (created if needed)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for entry in entries:
        path = folder / f"{entry.id}.md"
        path.write_text(entry_file_text(entry), encoding="utf-8")
        written.append(path)
    return written


def write_qna_tsv(kb: KnowledgeBase, handle: Any, *, extra: Iterable[tuple[str, str]] = ()) -> int:
    """Write the knowledge base as a QnA Maker TSV export; returns the number of rows."""
    # Plain tab-joined lines: QnA Maker's TSV has no quoting, tabs and newlines are escaped.
    handle.write("\t".join(TSV_COLUMNS) + "\n")
    rows = 0
    phrasings = dict(kb.phrasings(extra))
    for entry in kb.entries.values():
        metadata = "|".join(tag if ":" in tag else f"tag:{tag}" for tag in entry.tags)
        prompts = json.dumps(
            [
                {
                    "DisplayOrder": order,
                    "QnaId": _maybe_int(item.entry_id),
                    "DisplayText": item.label or _label(kb, item.entry_id),
                }
                for order, item in enumerate(entry.related, start=1)
            ]
        )
        for question in phrasings[entry.id]:
            cells = [question, entry.answer, entry.source or "mobilize", metadata, "[]", "false"]
            handle.write("\t".join([*map(_escape_tsv, cells), prompts, entry.id]) + "\n")
            rows += 1
    return rows


def _label(kb: KnowledgeBase, entry_id: str) -> str:
    entry = kb.get(entry_id)
    return entry.question if entry else entry_id


def _maybe_int(value: str) -> int | str:
    return int(value) if value.isdigit() else value


def load_content(
    content_dir: Path, *, now: datetime, default_timezone: str = ""
) -> tuple[Rollout, KnowledgeBase, list[ContentError]]:
    """Rollout and knowledge base from files, with every error found."""
    rollout, errors = load_rollout(content_dir, default_timezone=default_timezone)
    kb, kb_errors = load_knowledge_base(content_dir, rollout, now=now)
    return rollout, kb, errors + kb_errors
