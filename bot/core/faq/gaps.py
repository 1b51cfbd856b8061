"""What the knowledge base is missing: unanswered and badly answered questions, grouped."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from bot.core.faq.embed import Embedder
from bot.store.models import Feedback, LearnedAlternate, QuestionLog

SIMILAR = 0.6  # cosine (or word-overlap) similarity that puts two questions in one group
_WORD = re.compile(r"\w+")


@dataclass
class Gap:
    """Questions that look alike and were not answered well."""

    questions: list[str] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    @property
    def example(self) -> str:
        return self.questions[0]


@dataclass(frozen=True)
class Pick:
    """A "did you mean" pick: a phrasing an admin may approve as an alternate of the entry."""

    question: str
    entry_id: str
    count: int
    feedback_id: int  # the latest pick, so a button can name it


def gap_questions(db: Engine) -> list[tuple[str, str]]:
    """(question, reason) for every unknown, "none of these" and "not helpful" question."""
    with Session(db) as session:
        unknown = session.exec(
            select(QuestionLog.text).where(QuestionLog.decision == "unknown")
        ).all()
        rows = session.exec(
            select(QuestionLog.text, Feedback.kind)
            .join(Feedback, col(Feedback.question_id) == col(QuestionLog.id))
            .where(col(Feedback.kind).in_(["none", "not_helpful"]))
        ).all()
    found = [(text, "unknown") for text in unknown]
    found += [(text, "none of these" if kind == "none" else "not helpful") for text, kind in rows]
    return found


def group_gaps(items: list[tuple[str, str]], *, embedder: Embedder | None) -> list[Gap]:
    """Greedy grouping by similarity to each group's first question; biggest groups first."""
    if not items:
        return []
    texts = [text for text, _reason in items]
    if embedder is not None:
        vectors = embedder.encode(texts)
        similarity = vectors @ vectors.T
    else:
        words = [set(_WORD.findall(text.lower())) for text in texts]
        similarity = np.array(
            [[len(a & b) / max(1, len(a | b)) for b in words] for a in words], dtype=np.float32
        )
    gaps: list[Gap] = []
    heads: list[int] = []
    for index, (text, reason) in enumerate(items):
        home = next(
            (g for g, h in zip(gaps, heads, strict=True) if similarity[index, h] >= SIMILAR), None
        )
        if home is None:
            home = Gap()
            gaps.append(home)
            heads.append(index)
        gap = home
        gap.questions.append(text)
        gap.reasons[reason] = gap.reasons.get(reason, 0) + 1
    return sorted(gaps, key=lambda g: -len(g.questions))


def picks(db: Engine) -> list[Pick]:
    """Phrasings people clarified by picking an entry and not yet approved, most frequent first."""
    with Session(db) as session:
        rows = session.exec(
            select(QuestionLog.text, Feedback.entry_id, Feedback.id)
            .join(Feedback, col(Feedback.question_id) == col(QuestionLog.id))
            .where(Feedback.kind == "pick", col(Feedback.entry_id).is_not(None))
        ).all()
        approved = {(a.entry_id, a.text) for a in session.exec(select(LearnedAlternate))}
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    for text, entry_id, feedback_id in rows:
        key = (text, str(entry_id))
        if (key[1], text) in approved:
            continue
        count, latest = counts.get(key, (0, 0))
        counts[key] = (count + 1, max(latest, int(feedback_id or 0)))
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1][0], -kv[1][1]))
    return [Pick(text, entry_id, count, latest) for (text, entry_id), (count, latest) in ordered]
