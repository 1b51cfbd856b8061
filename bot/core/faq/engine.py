"""The serving knowledge base: the last good content, its matcher and calibrated policy.

A reload builds everything aside and swaps it in whole; a bad edit leaves the last good
knowledge base serving and reports the errors.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, select

from bot.core.content import ContentError, ContentErrors, Rollout
from bot.core.faq.embed import Embedder, release_free_memory
from bot.core.faq.kb import KnowledgeBase, load_content
from bot.core.faq.matcher import Matcher
from bot.core.faq.policy import Decision, Policy, calibrate
from bot.store.models import LearnedAlternate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FaqState:
    rollout: Rollout
    kb: KnowledgeBase
    matcher: Matcher
    policy: Policy
    loaded_at: datetime
    learned: frozenset[tuple[str, str]] = frozenset()  # approved alternates in the matcher


class FaqEngine:
    """Answers questions from the last good knowledge base. Thread-safe: reads see one state."""

    def __init__(
        self,
        *,
        content_dir: Path,
        embedder: Embedder | None,
        db: Engine | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        default_timezone: str = "",
    ) -> None:
        self.default_timezone = default_timezone
        self.content_dir = content_dir
        self.embedder = embedder
        self.db = db
        self.clock = clock
        self._lock = threading.Lock()
        self._state: FaqState | None = None

    @property
    def state(self) -> FaqState:
        if self._state is None:
            self.load()
        assert self._state is not None
        return self._state

    def load(self) -> list[ContentError]:
        """(Re)load content. The first load raises ContentErrors on bad content; later loads keep
        the last good state and return the errors (the caller reports them)."""
        now = self.clock()
        rollout, kb, errors = load_content(
            self.content_dir, now=now, default_timezone=self.default_timezone
        )
        if errors:
            if self._state is None:
                raise ContentErrors(errors)
            log.warning(
                "content has %d error(s); still serving the last good knowledge base", len(errors)
            )
            for error in errors:
                log.warning("%s", error)
            return errors
        state = self._build(rollout, kb, now)
        with self._lock:
            # Alternates approved while this state was being built must not be lost.
            if self._state is not None:
                extra = {
                    pair
                    for pair in self._state.learned - state.learned
                    if pair[0] in state.kb.entries
                }
                if extra:
                    state = replace(
                        state,
                        matcher=state.matcher.with_phrasings(sorted(extra)),
                        learned=state.learned | extra,
                    )
            self._state = state
        release_free_memory()  # what building and calibrating the matcher needed for a while
        log.info("knowledge base loaded: %d entries, semantic=%s", len(kb), state.matcher.semantic)
        return []

    def _build(self, rollout: Rollout, kb: KnowledgeBase, now: datetime) -> FaqState:
        learned = self.learned_alternates()
        phrasings = kb.phrasings(learned)
        matcher = Matcher(phrasings, embedder=self.embedder)
        policy = calibrate(phrasings, embedder=self.embedder, matcher=matcher)
        return FaqState(rollout, kb, matcher, policy, now, frozenset(learned))

    def learned_alternates(self) -> list[tuple[str, str]]:
        if self.db is None:
            return []
        with Session(self.db) as session:
            rows = session.exec(select(LearnedAlternate).order_by(LearnedAlternate.id))  # type: ignore[arg-type]
            return [(row.entry_id, row.text) for row in rows]

    def add_alternate(self, entry_id: str, text: str) -> None:
        """Use an approved phrasing at once, without re-embedding the knowledge base."""
        self.state  # noqa: B018  (loads the knowledge base on first use, outside the lock)
        with self._lock:
            state = self._state
            assert state is not None
            if entry_id not in state.kb.entries:
                raise KeyError(entry_id)
            if (entry_id, text) in state.learned:
                return
            matcher = state.matcher.with_phrasings([(entry_id, text)])
            learned = state.learned | {(entry_id, text)}
            self._state = FaqState(
                state.rollout, state.kb, matcher, state.policy, state.loaded_at, learned
            )

    def sync_learned(self) -> int:
        """Pick up alternates approved elsewhere (another process, the CLI); returns how many."""
        state = self.state
        new = [
            pair
            for pair in self.learned_alternates()
            if pair not in state.learned and pair[0] in state.kb.entries
        ]
        for entry_id, text in new:
            self.add_alternate(entry_id, text)
        return len(new)

    def decide(self, question: str) -> Decision:
        state = self.state
        return state.policy.decide(state.matcher.rank(question, k=5))
