"""The knowledge base page: entries with owner and review date (overdue flagged) and the gap
report through the same core functions as `mobilize faq gaps`."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlmodel import Session
from werkzeug.test import Client

from bot.console.app import Console
from bot.core.faq.gaps import gap_questions, group_gaps
from bot.service import Service
from bot.store.models import Feedback, QuestionLog
from tests.console.conftest import Shift, sign_in


def ask(service: Service, text: str, decision: str, entry: str | None = None) -> int:
    with Session(service.db) as session:
        row = QuestionLog(user_id="U1", text=text, decision=decision, entry_id=entry)
        session.add(row)
        session.commit()
        return int(row.id or 0)


def test_entries_show_owner_and_review_date_with_the_overdue_first(
    client: Client, console: Console, service: Service, clock: Shift
) -> None:
    kb = service.desk.engine.state.kb
    due = sorted({e.review_by for e in kb.entries.values() if e.review_by})
    assert len(due) >= 2, "the example content has review dates"
    first = due[0]
    # the day after the earliest review date, at noon in the rollout's zone
    zone = service.announcer.content.rollout.zone
    moment = datetime(first.year, first.month, first.day, 12, tzinfo=zone).astimezone(UTC)
    clock.advance(seconds=(moment - clock()).total_seconds() + 86400)
    sign_in(client, console)
    page = client.get("/console/knowledge")
    assert page.status_code == 200
    overdue = [e for e in kb.entries.values() if e.review_by == first]
    later = next(e for e in kb.entries.values() if e.review_by and e.review_by > first)
    assert f"{len(overdue)} overdue for review" in page.text
    assert page.text.count('class="overdue"') == len(overdue)
    assert page.text.index(overdue[0].id) < page.text.index(later.id)  # overdue first
    owned = next(e for e in kb.entries.values() if e.owner)
    assert owned.owner.replace("&", "&amp;") in page.text
    assert f"{first:%d %b %Y}" in page.text


def test_the_gap_report_groups_unanswered_and_unhelpful_questions(
    client: Client, console: Console, service: Service
) -> None:
    sign_in(client, console)
    empty = client.get("/console/knowledge")
    assert "No gaps" in empty.text

    ask(service, "can I expense my home broadband", "unknown")
    ask(service, "can I expense home broadband", "unknown")
    ask(service, "where is the parking for visitors", "unknown")
    entry = next(iter(service.desk.engine.state.kb.entries))
    helped = ask(service, "who approves my overtime claims", "answer", entry)
    with Session(service.db) as session:
        session.add(Feedback(question_id=helped, kind="not_helpful", entry_id=entry, user_id="U1"))
        session.commit()

    page = client.get("/console/knowledge")
    assert page.status_code == 200 and "No gaps" not in page.text
    gaps = group_gaps(gap_questions(service.db), embedder=service.desk.engine.embedder)
    assert len(gaps) == 3 and len(gaps[0].questions) == 2  # the core's own grouping
    assert gaps[0].example in page.text and "unknown ×2" in page.text
    assert "not helpful ×1" in page.text and "who approves my overtime claims" in page.text
    assert page.text.index(gaps[0].example) < page.text.index("where is the parking")


def test_the_knowledge_base_needs_a_session(client: Client) -> None:
    assert client.get("/console/knowledge").status_code == 401
