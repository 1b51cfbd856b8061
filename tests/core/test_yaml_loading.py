"""Content YAML is parsed by libyaml when PyYAML has it, with PyYAML's values, line marks and
error messages (bot.core.content: load_yaml, compose_yaml, parse_yaml)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bot.core import content
from bot.core.content import compose_yaml, key_lines, load_yaml, parse_yaml

ROOT = Path(__file__).resolve().parents[2]


def documents() -> list[tuple[str, str]]:
    """The repository's example content: every YAML file, and every Markdown front matter."""
    found = []
    for path in sorted([*ROOT.glob("messages/**/*.yaml"), *ROOT.glob("schedules/*.yaml")]):
        found.append((path.name, path.read_text(encoding="utf-8")))
    for path in sorted(ROOT.glob("messages/**/*.md")):
        text = path.read_text(encoding="utf-8")
        if text.startswith("---\n") and "\n---" in text[4:]:
            found.append((path.name, text[4:].split("\n---", 1)[0]))
    return found


def test_the_fast_loader_is_libyaml_when_pyyaml_has_it() -> None:
    if hasattr(yaml, "CSafeLoader"):
        assert content._FAST_LOADER is yaml.CSafeLoader


def test_values_and_line_marks_are_pyyamls() -> None:
    docs = documents()
    assert len(docs) > 10
    for name, text in docs:
        assert load_yaml(text) == yaml.safe_load(text), name
        fast, slow = compose_yaml(text), yaml.compose(text, Loader=yaml.SafeLoader)
        assert (fast is None) == (slow is None), name
        if isinstance(slow, yaml.MappingNode):
            assert isinstance(fast, yaml.MappingNode)
            assert [(k.value, k.start_mark.line) for k, _ in fast.value] == [
                (k.value, k.start_mark.line) for k, _ in slow.value
            ], name


@pytest.mark.parametrize(
    "text",
    [
        "title: [oops\nowner: X\n",
        "questions: [\n  {id: q}\n",
        "a: b\n  c: d\n",
        "url: {{ links.portal }}\n",
        "- a\nb: c\n",
        "key: 'unclosed\n",
        "\tkey: tab\n",
    ],
)
def test_errors_are_reported_as_pyyaml_reports_them(text: str, tmp_path: Path) -> None:
    path = tmp_path / "a.yaml"
    data, errors = parse_yaml(text, path, offset=2)
    try:
        expected = yaml.safe_load(text)
    except yaml.YAMLError:
        assert data is None and len(errors) == 1
        assert errors[0].reason.startswith("invalid YAML")
        # the same message and line as with PyYAML's own loader
        lines = key_lines(text)
        slow = content._FAST_LOADER
        try:
            content._FAST_LOADER = yaml.SafeLoader
            assert parse_yaml(text, path, offset=2) == (None, errors)
            assert key_lines(text) == lines
        finally:
            content._FAST_LOADER = slow
    else:
        assert (data, errors) == (expected, [])
