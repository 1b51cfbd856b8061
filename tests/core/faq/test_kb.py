"""QnA Maker TSV import and export."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

from bot.core.content import Rollout
from bot.core.faq.kb import load_knowledge_base, read_qna_tsv, write_entries, write_qna_tsv

HEADER = "Question\tAnswer\tSource\tMetadata\tSuggestedQuestions\tIsContextOnly\tPrompts\tQnaId\n"
PROMPTS = '[{"DisplayOrder":1,"QnaId":2,"DisplayText":"Reset it"}]'
NOW = datetime(2027, 3, 1, tzinfo=UTC)


def tsv(tmp_path: Path, rows: str) -> Path:
    path = tmp_path / "kb.tsv"
    path.write_text(HEADER + rows, encoding="utf-8")
    return path


def test_rows_sharing_a_qnaid_become_one_entry_with_prompts(tmp_path: Path) -> None:
    path = tsv(
        tmp_path,
        f"How do I sign in?\tUse SSO.\\nThen MFA.\tEditorial\tcategory:login\t[]\tfalse\t{PROMPTS}\t1\n"
        f"cant log in\tUse SSO.\\nThen MFA.\tEditorial\tcategory:login\t[]\tfalse\t{PROMPTS}\t1\n"
        "Forgot password\tReset at {{ portal }}.\tEditorial\t\t[]\tfalse\t[]\t2\n",
    )
    entries, errors = read_qna_tsv(path)
    assert errors == []
    first, _second = entries
    assert (first.id, first.question, first.alternates) == (
        "1",
        "How do I sign in?",
        ("cant log in",),
    )
    assert first.answer == "Use SSO.\nThen MFA."
    assert first.tags == ("category:login",)
    assert [(r.entry_id, r.label) for r in first.related] == [("2", "Reset it")]

    write_entries(entries, tmp_path / "messages" / "faq")
    kb, errors = load_knowledge_base(tmp_path, Rollout(), now=NOW)
    assert errors == []
    # Imported answers that look like Jinja2 stay literal.
    assert kb.entries["2"].render(Rollout(), now=NOW) == "Reset at {{ portal }}."

    out = io.StringIO()
    rows = write_qna_tsv(kb, out, extra=[("1", "login broken")])
    lines = out.getvalue().splitlines()
    assert rows == 4 and lines[0] == HEADER.strip()
    assert lines[1].split("\t")[0] == "How do I sign in?" and lines[1].split("\t")[-1] == "1"
    assert lines[3].split("\t")[0] == "login broken"
    assert '"QnaId": 2' in lines[1]

    again = tmp_path / "again.tsv"
    again.write_text(out.getvalue(), encoding="utf-8")
    reread, errors = read_qna_tsv(again)
    assert errors == []
    assert [e.phrasings for e in reread] == [
        ("How do I sign in?", "cant log in", "login broken"),
        ("Forgot password",),
    ]


def test_bad_rows_are_reported_with_line_numbers(tmp_path: Path) -> None:
    path = tsv(
        tmp_path, "\tNo question\t\t\t[]\tfalse\t[]\t1\nOk?\tYes\t\t\t[]\tfalse\tnot json\t2\n"
    )
    _entries, errors = read_qna_tsv(path)
    assert [(e.line, e.reason) for e in errors] == [
        (2, "row has no Question"),
        (3, "Prompts is not valid JSON"),
    ]


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "kb.tsv"
    path.write_text("Q\tA\nx\ty\n")
    _entries, errors = read_qna_tsv(path)
    assert "missing column(s) Question, Answer" in errors[0].reason
