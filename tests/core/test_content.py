"""The content loader: file:line errors for every kind of mistake."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import pytest

from bot.core.content import Rollout, load_rollout
from bot.core.faq.kb import load_content, load_knowledge_base

NOW = datetime(2027, 3, 1, 9, 0, tzinfo=UTC)
ROLLOUT = Rollout(
    name="Compass",
    timezone="Europe/London",
    milestones={"go_live": date(2027, 4, 6)},
    links={"portal": "https://compass.example/"},
)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / "messages" / "faq" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(folder: Path) -> list[str]:
    _kb, errors = load_knowledge_base(folder, ROLLOUT, now=NOW)
    return [f"{e.path.name}:{e.line}: {e.reason}" for e in errors]


def test_example_rollout_loads_without_errors() -> None:
    rollout, kb, errors = load_content(Path(__file__).resolve().parents[2], now=NOW)
    assert errors == []
    assert len(kb) >= 25
    assert "go_live" in rollout.milestones


def test_answer_renders_milestones_links_and_days_until(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a.md",
        "---\nid: a\nquestion: When?\n---\n"
        "On {{ milestones.go_live | longdate }}, in {{ days_until('go_live') }} days: {{ links.portal }}\n",
    )
    kb, errors = load_knowledge_base(tmp_path, ROLLOUT, now=NOW)
    assert errors == []
    assert kb.entries["a"].render(ROLLOUT, now=NOW) == (
        "On Tuesday 6 April 2027, in 36 days: https://compass.example/"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("no front matter\n", "a.md:1: missing front matter"),
        ("---\nid: a\nquestion: [oops\n---\nbody\n", "a.md:3: invalid YAML"),
        ("---\nid: a\n---\nbody\n", "a.md:2: missing question"),
        ("---\nquestion: Hi?\n---\nbody\n", "missing id"),
        (
            "---\nid: a\nquestion: Hi?\nalternates: 3\n---\nbody\n",
            "a.md:4: alternates must be a list",
        ),
        (
            "---\nid: a\nquestion: Hi?\nreview_by: soon\n---\nbody\n",
            "a.md:4: review_by must be a date",
        ),
        ("---\nid: a\nquestion: Hi?\ncolour: red\n---\nbody\n", "a.md:4: unknown key 'colour'"),
        ("---\nid: a\nquestion: Hi?\n---\n\n", "a.md:5: empty answer"),
        (
            "---\nid: a\nquestion: Hi?\n---\nline one\n{{ milestones.golive | longdate }}\n",
            "a.md:6: template: 'dict object' has no attribute 'golive'",
        ),
        ("---\nid: a\nquestion: Hi?\n---\n{% if %}\n", "a.md:5: template:"),
        (
            "---\nid: a\nquestion: Hi?\nrelated: [nowhere]\n---\nbody\n",
            "related entry 'nowhere' does not exist",
        ),
    ],
)
def test_malformed_entries_name_file_and_line(tmp_path: Path, text: str, expected: str) -> None:
    write(tmp_path, "a.md", text)
    found = errors_of(tmp_path)
    assert any(expected in error for error in found), found


def test_duplicate_ids_are_reported(tmp_path: Path) -> None:
    write(tmp_path, "a.md", "---\nid: same\nquestion: One?\n---\nbody\n")
    write(tmp_path, "b.md", "---\nid: same\nquestion: Two?\n---\nbody\n")
    assert any("duplicate id 'same'" in error for error in errors_of(tmp_path))


def test_drafts_are_not_served(tmp_path: Path) -> None:
    write(tmp_path, "drafts/draft-1.md", "---\nid: draft-1\nquestion: Draft?\n---\nbody\n")
    kb, errors = load_knowledge_base(tmp_path, ROLLOUT, now=NOW)
    assert errors == [] and len(kb) == 0


def test_rollout_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "schedules" / "rollout.yaml"
    path.parent.mkdir(parents=True)
    path.write_text("rollout:\n  name: X\n  timezone: Mars/Base\nmilestones:\n  go_live: someday\n")
    rollout, errors = load_rollout(tmp_path)
    assert [f"{e.line}: {e.reason}" for e in errors] == [
        "3: unknown time zone 'Mars/Base'",
        "5: milestone 'go_live' must be a date like 2027-02-15, not 'someday'",
    ]
    assert rollout.timezone == "UTC"
