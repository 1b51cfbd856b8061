"""The support desk conversation: question → answer, "did you mean", or a person.

Every function takes what it needs and returns `Message`s; platforms only translate.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from bot.core.faq.engine import FaqEngine
from bot.core.faq.kb import FaqEntry, entry_file_text
from bot.core.faq.policy import Decision
from bot.core.messages import (
    FAQ_HELPFUL,
    FAQ_HUMAN,
    FAQ_NONE,
    FAQ_NOT_HELPFUL,
    FAQ_PICK,
    FAQ_RELATED,
    SUPPORT_CLAIM,
    SUPPORT_RESOLVE,
    SUPPORT_SAVE,
    Address,
    Button,
    Chat,
    Mention,
    Message,
    Posted,
    Span,
    markdown_of,
    say,
    user_text,
)
from bot.store.audit import record
from bot.store.models import Escalation, Feedback, LearnedAlternate, QuestionLog, utcnow

log = logging.getLogger(__name__)
MAX_QUESTION = 4000  # what we keep of a question; longer text is cut, never refused


@dataclass(frozen=True)
class Asker:
    """Who asked, and where the conversation is."""

    user_id: str
    channel_id: str
    thread_ts: str = ""
    platform: str = "slack"


@dataclass(frozen=True)
class Reply:
    question_id: int
    decision: Decision
    message: Message


class FaqDesk:
    """Answers questions, records feedback, and hands questions to people."""

    def __init__(
        self,
        *,
        engine: FaqEngine,
        db: Engine,
        support_channel: str = "",
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.db = db
        self.support_channel = support_channel
        self.clock = clock

    # --- asking -----------------------------------------------------------------------

    def ask(self, text: str, asker: Asker) -> Reply:
        question = clean_question(text)
        if not question:
            return Reply(
                0,
                Decision("unknown", (), 0.0),
                say(
                    "Ask me anything about the rollout, for example "
                    "*How do I sign in for the first time?*"
                ),
            )
        decision = self.engine.decide(question)
        top = decision.candidates[0] if decision.candidates else None
        with Session(self.db) as session:
            row = QuestionLog(
                platform=asker.platform,
                user_id=asker.user_id,
                channel_id=asker.channel_id,
                thread_ts=asker.thread_ts,
                text=question,
                decision=decision.kind,
                entry_id=top.entry_id if decision.kind == "answer" and top else None,
                score=float(top.score) if top else 0.0,
                suggestions=json.dumps([c.entry_id for c in decision.candidates]),
            )
            session.add(row)
            session.commit()
            question_id = int(row.id or 0)
        return Reply(question_id, decision, self._message_for(question_id, decision))

    def _message_for(self, question_id: int, decision: Decision) -> Message:
        state = self.engine.state
        if decision.kind == "answer":
            entry = state.kb.entries[decision.candidates[0].entry_id]
            return self.answer_message(question_id, entry)
        if decision.kind == "suggest":
            kb = state.kb.entries
            picks = [
                Button(_short(kb[c.entry_id].question), FAQ_PICK, f"{question_id}:{c.entry_id}")
                for c in decision.candidates[:3]
                if c.entry_id in kb
            ]
            buttons = (*picks, Button("None of these", FAQ_NONE, str(question_id)))
            return say("I'm not sure I understood. Did you mean one of these?", buttons=buttons)
        return say(
            "I don't have an answer to that yet. A person from the support team can help.",
            buttons=(Button("Ask a person", FAQ_HUMAN, str(question_id), style="primary"),),
        )

    def answer_message(self, question_id: int, entry: FaqEntry) -> Message:
        state = self.engine.state
        body = entry.render(state.rollout, now=self.clock())
        context = [f"From the FAQ: _{entry.question}_"]
        if entry.owner:
            context[0] += f" · {entry.owner}"
        reviewed = entry.review_by
        if reviewed:
            context.append(f"Review due {reviewed:%d %b %Y}")
        buttons = [
            Button("Helpful", FAQ_HELPFUL, f"{question_id}:{entry.id}"),
            Button("Not helpful", FAQ_NOT_HELPFUL, f"{question_id}:{entry.id}"),
            Button("Ask a person", FAQ_HUMAN, str(question_id)),
        ]
        for item in entry.related[:3]:
            related = state.kb.get(item.entry_id)
            if related:
                buttons.append(
                    Button(
                        _short(item.label or related.question),
                        FAQ_RELATED,
                        f"{question_id}:{related.id}",
                    )
                )
        return say(
            body,
            context=tuple(context),
            buttons=tuple(buttons),
            summary=_short(entry.question, 150),
        )

    # --- clicks -----------------------------------------------------------------------

    def pick(self, value: str, user_id: str) -> Message:
        """A "did you mean" pick or a related-entry click: store it and answer that entry."""
        question_id, entry_id = _split(value)
        entry = self.engine.state.kb.get(entry_id)
        if entry is None:
            return say("That answer is no longer in the FAQ. Try asking again in other words.")
        self._feedback(question_id, FAQ_PICK.split(".")[1], user_id, entry_id)
        return self.answer_message(question_id, entry)

    def none_of_these(self, value: str, user_id: str) -> Message:
        question_id = _int(value)
        self._feedback(question_id, "none", user_id, None)
        return say(
            "Sorry about that. A person from the support team can help.",
            buttons=(Button("Ask a person", FAQ_HUMAN, str(question_id), style="primary"),),
        )

    def vote(self, value: str, user_id: str, *, helpful: bool) -> Message:
        question_id, entry_id = _split(value)
        self._feedback(question_id, "helpful" if helpful else "not_helpful", user_id, entry_id)
        if helpful:
            return say("Thanks, glad that helped.")
        return say(
            "Thanks for telling me. Want a person to look at it?",
            buttons=(Button("Ask a person", FAQ_HUMAN, str(question_id), style="primary"),),
        )

    def _feedback(self, question_id: int, kind: str, user_id: str, entry_id: str | None) -> None:
        with Session(self.db) as session:
            if session.get(QuestionLog, question_id) is None:
                return
            session.add(
                Feedback(question_id=question_id, kind=kind, user_id=user_id, entry_id=entry_id)
            )
            session.commit()

    # --- people -----------------------------------------------------------------------

    def escalate(self, value: str, user_id: str, chat: Chat) -> Message:
        """Post the question to the support channel with Claim / Resolve buttons."""
        question_id = _int(value)
        with Session(self.db) as session:
            question = session.get(QuestionLog, question_id)
            if question is None:
                return say("I couldn't find that question any more. Please ask it again.")
            existing = session.exec(
                select(Escalation).where(Escalation.question_id == question_id)
            ).first()
            if existing is not None:
                return say("Your question is already with the support team; you'll hear back here.")
            if not self.support_channel:
                return say(
                    "No support channel is set up yet. Please ask in your team's help channel."
                )
            escalation = Escalation(
                question_id=question_id,
                asker_id=user_id,
                asker_channel=question.channel_id,
                asker_thread_ts=question.thread_ts,
                text=question.text,
                support_channel=self.support_channel,
            )
            session.add(escalation)
            session.commit()
            link = (
                chat.permalink(question.channel_id, question.thread_ts)
                if question.thread_ts
                else None
            )
            posted = chat.post(Address(self.support_channel), self._ticket(escalation, link))
            if posted is None:
                session.delete(escalation)
                session.commit()
                return say(
                    "I couldn't reach the support team just now. Please try again in a minute."
                )
            escalation.support_ts = posted.ts
            session.add(escalation)
            session.commit()
        return say(
            "I've passed your question to the support team. Their reply will come to you here."
        )

    def _ticket(self, escalation: Escalation, link: str | None = None) -> Message:
        # People are Mention spans: each platform's renderer writes its own mention.
        state: tuple[Span, ...] = {
            "open": ("Open",),
            "claimed": ("Claimed by ", Mention(escalation.claimed_by)),
            "resolved": ("Resolved by ", Mention(escalation.resolved_by)),
        }[escalation.state]
        status = user_text(
            ("Asked by ", Mention(escalation.asker_id), f" · #{escalation.id} · ", *state)
        )
        context = []
        if link:
            context.append(f"<{link}|Open the conversation>")
        buttons: list[Button] = []
        if escalation.state == "open":
            buttons.append(Button("Claim", SUPPORT_CLAIM, str(escalation.id), style="primary"))
        if escalation.state != "resolved":
            buttons.append(Button("Resolve", SUPPORT_RESOLVE, str(escalation.id)))
        buttons.append(Button("Save as FAQ", SUPPORT_SAVE, str(escalation.id)))
        return say(
            "*Question for a person.* Reply in this thread to answer them.",
            user_text(escalation.text),
            status,
            context=tuple(context),
            buttons=tuple(buttons),
            summary="A question for a person",
        )

    def claim(self, value: str, user_id: str, chat: Chat) -> None:
        self._set_state(value, user_id, chat, state="claimed")

    def resolve(self, value: str, user_id: str, chat: Chat) -> None:
        escalation = self._set_state(value, user_id, chat, state="resolved")
        if escalation is not None:
            chat.post(
                Address(escalation.asker_channel, escalation.asker_thread_ts or None),
                say(
                    user_text(
                        (
                            Mention(user_id),
                            " from the support team marked your question as resolved. "
                            "Ask me again any time.",
                        )
                    ),
                    summary="Your question was marked as resolved",
                ),
            )

    def _set_state(self, value: str, user_id: str, chat: Chat, *, state: str) -> Escalation | None:
        with Session(self.db) as session:
            escalation = session.get(Escalation, _int(value))
            if escalation is None or escalation.state == "resolved":
                return None
            escalation.state = state
            if state == "claimed":
                escalation.claimed_by = user_id
            else:
                escalation.resolved_by = user_id
            escalation.updated_at = utcnow()
            session.add(escalation)
            session.commit()
            session.refresh(escalation)
        chat.update(
            Posted(escalation.support_channel, escalation.support_ts), self._ticket(escalation)
        )
        return escalation

    def relay_reply(
        self,
        *,
        channel: str,
        thread_ts: str,
        user_id: str,
        text: str | tuple[Span, ...],
        chat: Chat,
    ) -> bool:
        """A supporter's reply in a ticket thread goes to the asker, links and mentions kept;
        False when not a ticket."""
        spans: tuple[Span, ...] = (text,) if isinstance(text, str) else text
        with Session(self.db) as session:
            escalation = session.exec(
                select(Escalation).where(
                    Escalation.support_channel == channel, Escalation.support_ts == thread_ts
                )
            ).first()
            if escalation is None:
                return False
            escalation.last_reply = markdown_of(spans)
            if escalation.state == "open":
                escalation.state, escalation.claimed_by = "claimed", user_id
            escalation.updated_at = utcnow()
            session.add(escalation)
            session.commit()
            session.refresh(escalation)
        chat.post(
            Address(escalation.asker_channel, escalation.asker_thread_ts or None),
            say(
                user_text((Mention(user_id), " from the support team replied:")),
                user_text(spans),
                summary="The support team replied",
            ),
        )
        chat.update(
            Posted(escalation.support_channel, escalation.support_ts), self._ticket(escalation)
        )
        return True

    def save_as_faq(self, value: str, user_id: str) -> Message:
        """Turn the question and the last reply into a draft entry under messages/faq/drafts/."""
        with Session(self.db) as session:
            escalation = session.get(Escalation, _int(value))
            if escalation is None:
                return say("That ticket no longer exists.")
            if not escalation.last_reply:
                return say("Reply in the thread first; the reply becomes the draft answer.")
            entry = FaqEntry(
                id=f"draft-{escalation.id}",
                question=_short(escalation.text, 200),
                answer=escalation.last_reply,
                owner=user_id,
                source=f"escalation #{escalation.id}",
            )
        folder = self.engine.content_dir / "messages" / "faq" / "drafts"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{entry.id}.md"
        path.write_text(entry_file_text(entry), encoding="utf-8")
        return say(
            f"Saved a draft FAQ entry as `{_relative(path, self.engine.content_dir)}`. "
            "Review it and move it into messages/faq/ to publish it."
        )

    # --- learning -----------------------------------------------------------------------

    def approve_alternate(self, *, entry_id: str, text: str, admin: str) -> None:
        """Add a phrasing to an entry: stored, and used by the matcher at once."""
        if self.engine.state.kb.get(entry_id) is None:
            raise KeyError(f"no FAQ entry {entry_id!r}")
        with Session(self.db) as session:
            exists = session.exec(
                select(LearnedAlternate).where(
                    LearnedAlternate.entry_id == entry_id, LearnedAlternate.text == text
                )
            ).first()
            if exists is None:
                session.add(LearnedAlternate(entry_id=entry_id, text=text, approved_by=admin))
                session.commit()
        self.engine.add_alternate(entry_id, text)

    def approve_pick(self, value: str, admin: str) -> str:
        """Approve the phrasing of a "did you mean" pick (a Feedback id) as an alternate."""
        with Session(self.db) as session:
            feedback = session.get(Feedback, _int(value))
            question = session.get(QuestionLog, feedback.question_id) if feedback else None
        if feedback is None or question is None or not feedback.entry_id:
            return "That pick no longer exists."
        try:
            self.approve_alternate(entry_id=feedback.entry_id, text=question.text, admin=admin)
        except KeyError:
            return f"The entry {feedback.entry_id} is no longer in the FAQ."
        record(
            self.db,
            actor=admin,
            action="faq.approve_alternate",
            detail=f"{feedback.entry_id}: {question.text}",
        )
        return f"Added “{question.text}” as a phrasing of {feedback.entry_id}."

    def most_asked(self, limit: int = 5) -> list[tuple[FaqEntry, int]]:
        """The entries answered most often."""
        with Session(self.db) as session:
            rows = session.exec(
                select(QuestionLog.entry_id, func.count())
                .where(col(QuestionLog.entry_id).is_not(None))
                .group_by(QuestionLog.entry_id)
                .order_by(func.count().desc())
                .limit(limit * 2)
            ).all()
        kb = self.engine.state.kb
        found = [
            (kb.entries[entry_id], int(count)) for entry_id, count in rows if entry_id in kb.entries
        ]
        return found[:limit]


_MENTION = re.compile(r"<@[UW][A-Z0-9]+>")


def clean_question(text: str) -> str:
    """The question without bot mentions and surrounding space, cut to a sane length."""
    return _MENTION.sub(" ", text or "").strip()[:MAX_QUESTION]


def _short(text: str, limit: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _int(value: str) -> int:
    try:
        return int(value.split(":", 1)[0])
    except ValueError:
        return 0


def _split(value: str) -> tuple[int, str]:
    head, _, tail = value.partition(":")
    return _int(head), tail


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)
