"""The knowledge base page: entries with owner and review date (overdue flagged) and the gap
report through the same core functions as `mobilize faq gaps`."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlmodel import Session
from werkzeug.test import Client

from bot.console.app import Console
from bot.core.faq.curation import with_alternate
from bot.core.faq.gaps import gap_questions, group_gaps
from bot.service import Service
from bot.store.models import Escalation, Feedback, QuestionLog
from tests.auxil.running import ADMIN
from tests.console.conftest import Shift, audited, git_in, git_repo, sign_in


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


# --- approving picked phrasings, drafts from escalations -----------------------------------


def git(root: Path, *args: str) -> str:
    return git_in(root)(*args)


def picked(service: Service, text: str, entry: str) -> int:
    """Someone asked `text`, got "did you mean" and picked `entry`; the Feedback id."""
    question = ask(service, text, "suggest")
    with Session(service.db) as session:
        row = Feedback(question_id=question, kind="pick", entry_id=entry, user_id="U2")
        session.add(row)
        session.commit()
        return int(row.id or 0)


def test_approving_a_picked_phrasing_writes_it_into_the_entry_file_and_commits(
    client: Client, console: Console, service: Service
) -> None:
    root = service.settings.content_dir
    git_repo(root)
    path = root / "messages/faq/reset-password.md"
    before = path.read_text(encoding="utf-8")
    phrasing = "cant get into compass: my pass word is refused"
    pick = picked(service, phrasing, "reset-password")
    csrf = sign_in(client, console)
    page = client.get("/console/knowledge")
    assert phrasing in page.text and f"/console/knowledge/picks/{pick}/approve" in page.text

    refused = client.post(f"/console/knowledge/picks/{pick}/approve")  # no CSRF token
    assert refused.status_code == 400 and path.read_text(encoding="utf-8") == before

    done = client.post(f"/console/knowledge/picks/{pick}/approve", data={"csrf": csrf})
    assert done.status_code == 303
    text = path.read_text(encoding="utf-8")
    # appended to the block list, the rest of the file as it was
    assert text == before.replace(
        "  - my password expired\n", f"  - my password expired\n  - '{phrasing}'\n"
    )
    assert git(root, "log", "-1", "--format=%an <%ae>|%s") == (
        "chika <chika@example.com>|Add a phrasing to FAQ entry reset-password (console)"
    )
    assert git(root, "status", "--porcelain") == ""
    entry = service.desk.engine.state.kb.entries["reset-password"]  # reloaded
    assert phrasing in entry.alternates
    assert service.desk.engine.decide(phrasing).candidates[0].entry_id == "reset-password"
    actor, action, detail = audited(service)[-1]
    assert (actor, action) == (ADMIN, "faq.approve_alternate")
    assert detail.startswith(f"reset-password: {phrasing} (console; messages/faq/reset-password.md")
    after = client.get(done.headers["Location"].split("#")[0])
    assert "Added “" in after.text and "Committed as" in after.text
    assert f"/console/knowledge/picks/{pick}/approve" not in after.text  # no longer to approve


def test_approving_a_gone_pick_or_a_phrasing_the_file_has_changes_no_file(
    client: Client, console: Console, service: Service
) -> None:
    path = service.settings.content_dir / "messages/faq/reset-password.md"
    before = path.read_text(encoding="utf-8")
    csrf = sign_in(client, console)
    gone = client.post("/console/knowledge/picks/99999/approve", data={"csrf": csrf})
    assert "that pick no longer exists" in client.get(gone.headers["Location"]).text
    pick = picked(service, "  Locked out of Compass ", "reset-password")
    done = client.post(f"/console/knowledge/picks/{pick}/approve", data={"csrf": csrf})
    assert "already a phrasing" in client.get(done.headers["Location"]).text
    assert path.read_text(encoding="utf-8") == before
    assert "/approve" not in client.get("/console/knowledge").text


def make_draft(service: Service, question: str, reply: str) -> Path:
    """What a supporter's "Save as FAQ" on an answered escalation makes (the desk's own code)."""
    with Session(service.db) as session:
        row = Escalation(
            asker_id="U2", asker_channel="D2", text=question, last_reply=reply, state="claimed"
        )
        session.add(row)
        session.commit()
        escalation = int(row.id or 0)
    service.desk.save_as_faq(str(escalation), "U9")
    path = service.settings.content_dir / f"messages/faq/drafts/draft-{escalation}.md"
    assert path.is_file()
    return path


def test_a_draft_with_an_error_shows_file_and_line_and_writes_nothing_then_publishes(
    client: Client, console: Console, service: Service
) -> None:
    root = service.settings.content_dir
    git_repo(root)
    draft = make_draft(service, "Can I use the kiosk in the canteen?", "Yes, any time.")
    csrf = sign_in(client, console)
    page = client.get("/console/knowledge")
    assert draft.stem in page.text and "Can I use the kiosk in the canteen?" in page.text
    assert 'value="can-i-use-the-kiosk-in-the-canteen"' in page.text  # an id from the question
    form = {
        "csrf": csrf,
        "id": "canteen-kiosk",
        "question": "Can I use the kiosk in the canteen?",
        "answer": "Yes: sign in to {{ rollout.name }} there.\n\nIt closes on {{ milestones.nope }}.",
        "owner": "IT Service Desk",
        "review_by": "2027-06-30",
    }
    target = root / "messages/faq/canteen-kiosk.md"
    action = f"/console/knowledge/drafts/{draft.stem}/publish"

    assert (
        client.post(action, data={k: v for k, v in form.items() if k != "csrf"}).status_code == 400
    )
    bad = client.post(action, data=form)
    assert bad.status_code == 422
    # ---, id, question, owner, review_by, source, ---, then the answer: its third line is 10
    assert "messages/faq/canteen-kiosk.md:10" in bad.text and "nope" in bad.text
    assert 'aria-invalid="true"' in bad.text and "{{ milestones.nope }}" in bad.text  # kept
    assert "Nothing was written" in bad.text
    assert not target.exists() and draft.is_file()

    taken = client.post(action, data={**form, "id": "reset-password"})
    assert taken.status_code == 409 and "exists already" in taken.text
    bad_date = client.post(action, data={**form, "answer": "Yes.", "review_by": "someday"})
    assert bad_date.status_code == 422 and "messages/faq/canteen-kiosk.md:5" in bad_date.text
    assert not target.exists()

    form["answer"] = "Yes: sign in to {{ rollout.name }} there."
    done = client.post(action, data=form)
    assert done.status_code == 303
    assert target.is_file() and not draft.exists()
    entry = service.desk.engine.state.kb.entries["canteen-kiosk"]
    assert entry.owner == "IT Service Desk" and str(entry.review_by) == "2027-06-30"
    assert entry.source.startswith("escalation #")
    assert git(root, "log", "-1", "--format=%an|%s") == (
        f"chika|Publish FAQ entry canteen-kiosk from {draft.stem} (console)"
    )
    assert git(root, "status", "--porcelain") == ""  # the draft was never in git: nothing left
    actor, action_name, detail = audited(service)[-1]
    assert (actor, action_name) == (ADMIN, "console.faq.publish")
    assert detail.startswith(f"messages/faq/canteen-kiosk.md from drafts/{draft.stem}.md (commit ")
    assert "Published messages/faq/canteen-kiosk.md" in client.get("/console/knowledge").text


def test_discarding_a_draft_needs_the_box_and_is_audited(
    client: Client, console: Console, service: Service
) -> None:
    draft = make_draft(service, "Where do I park?", "Car park B.")
    root = service.settings.content_dir
    git_repo(root)  # the draft is in git too: its removal is a commit
    csrf = sign_in(client, console)
    action = f"/console/knowledge/drafts/{draft.stem}/discard"
    client.post(action, data={"csrf": csrf})
    assert draft.is_file()
    done = client.post(action, data={"csrf": csrf, "sure": "yes"})
    assert done.status_code == 303 and not draft.exists()
    assert git(root, "log", "-1", "--format=%an|%s") == (
        f"chika|Discard FAQ draft {draft.stem} (console)"
    )
    assert git(root, "status", "--porcelain") == ""
    assert audited(service)[-1][:2] == (ADMIN, "console.faq.discard")
    assert client.post(action, data={"csrf": csrf, "sure": "yes"}).status_code == 404
    assert (
        client.post("/console/knowledge/drafts/..%2Fx/discard", data={"csrf": csrf}).status_code
        == 404
    )


def test_with_alternate_keeps_the_file_and_handles_every_shape() -> None:
    block = "---\nid: a\nquestion: Q?\nalternates:\n- one  # a comment\n---\nBody {{ x }}\n"
    assert with_alternate(block, "two: yes") == (
        "---\nid: a\nquestion: Q?\nalternates:\n- one  # a comment\n- 'two: yes'\n---\nBody {{ x }}\n"
    )
    none = "---\nid: a\nquestion: Q?\nowner: Me\n---\nBody\n"
    assert with_alternate(none, "two") == (
        "---\nid: a\nquestion: Q?\nowner: Me\nalternates:\n  - two\n---\nBody\n"
    )
    flow = "---\nid: a\nquestion: Q?\nalternates: [one]\ntags: [x]\n---\nBody\n"
    edited = with_alternate(flow, "two")
    assert "alternates:\n- one\n- two\n" in edited and edited.endswith("---\nBody\n")
    with pytest.raises(ValueError, match="already"):
        with_alternate(block, "ONE")
    with pytest.raises(ValueError, match="front matter"):
        with_alternate("no front matter", "two")
