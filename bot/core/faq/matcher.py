"""Ranks FAQ entries for a user question.

Typical use::

    matcher = Matcher([("reset", ["How do I reset my password?", "forgot password"]),
                       ("vpn", ["How do I connect to the VPN?"])], embedder=load_embedder())
    matcher.rank("i forgot my password", k=3)   # [Candidate("reset", 0.93, ...), ...]

The matcher puts three parts together: the lexical index (`bot.core.faq.lexical`, TF-IDF over
words and characters), the semantic model (`bot.core.faq.semantic`, over sentence embeddings,
when an embedder is given) and the combiner (`bot.core.faq.combine`), which turns their
per-entry signals into a probability-like `Candidate.score` in [0, 1]. Without an embedder
only the lexical signals are used, with their own weights.

Held-out evaluation (calibration, the benchmark) builds matchers on part of the phrasings
with `subset` and scores the rest with `score`/`signals`, passing their embeddings: nothing is
embedded twice.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bot.core.faq.combine import LEXICAL, SEMANTIC, Combiner
from bot.core.faq.embed import CachedEmbedder, Embedder, LruEmbedder, normalise_rows
from bot.core.faq.lexical import Doc, LexicalIndex, Vocabulary, analyse
from bot.core.faq.semantic import SemanticModel, segment_max

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

_BATCH = 256  # questions per block in rank_many (bounds the (batch, phrasings) matrices)


@dataclass(frozen=True)
class Candidate:
    """One ranked entry: `score` is the probability-like combined score (higher is better);
    `phrasing` is the entry's phrasing closest to the question (for debugging)."""

    entry_id: str
    score: float
    phrasing: str


@dataclass(frozen=True)
class _Scored:
    """Scores of a block of questions: probabilities over entries, and what finds the best
    phrasing of an entry afterwards."""

    probs: F32  # (questions, entries)
    vectors: F32 | None  # question embeddings, when semantic
    lexical_docs: F32  # (questions, phrasings) lexical cosines


@dataclass(frozen=True)
class _Parts:
    """What a matcher is built from: phrasings grouped by entry, their lexical docs over a
    shared vocabulary and, when semantic, their unit embeddings."""

    ids: tuple[str, ...]
    texts: tuple[str, ...]
    labels: I64  # entry index of each phrasing, non-decreasing
    docs: tuple[Doc, ...]
    vocabulary: Vocabulary
    vectors: F32 | None


class Matcher:
    """Ranks FAQ entries for a question by a weighted mix of lexical and semantic similarity.

    `entries` is a sequence of (entry_id, phrasings); phrasings[0] is the main question, the rest
    are alternates. With `embedder=None` (or when embedding the knowledge base fails) matching
    is lexical only. Building embeds every phrasing through `embedder` (wrap it in a
    CachedEmbedder so reloads re-encode nothing) and fits the semantic head (~1-2 s for 10,000
    phrasings). Questions are embedded through an in-memory LRU in front of the model.
    Instances are immutable and safe to share between threads.
    """

    def __init__(
        self, entries: Sequence[tuple[str, Sequence[str]]], *, embedder: Embedder | None
    ) -> None:
        ids: list[str] = []
        table: dict[str, dict[str, None]] = {}  # phrasings per entry, deduplicated, in order
        for entry_id, phrasings in entries:
            if entry_id not in table:
                ids.append(entry_id)
                table[entry_id] = {}
            for phrasing in phrasings:
                if text := phrasing.strip():
                    table[entry_id].setdefault(text, None)
        dropped = [entry_id for entry_id in ids if not table[entry_id]]
        if dropped:
            log.warning("FAQ entries without any phrasing are not matched: %s", dropped[:10])
        ids = [entry_id for entry_id in ids if table[entry_id]]
        texts = [text for entry_id in ids for text in table[entry_id]]
        labels = np.repeat(np.arange(len(ids), dtype=np.int64), [len(table[i]) for i in ids])
        vocabulary = Vocabulary()
        docs = tuple(vocabulary.add(text) for text in texts)
        vectors = _encode_kb(embedder, texts) if embedder is not None else None
        self._setup(
            _Parts(tuple(ids), tuple(texts), labels, docs, vocabulary, vectors),
            embedder=embedder if vectors is not None else None,
            query_encoder=_query_encoder(embedder) if vectors is not None else None,
        )

    def _setup(
        self,
        parts: _Parts,
        *,
        embedder: Embedder | None,
        query_encoder: Embedder | None,
        start: SemanticModel | None = None,
    ) -> None:
        self._parts = parts
        self._embedder = embedder
        self._query_encoder = query_encoder
        n_entries = len(parts.ids)
        self._sizes = np.bincount(parts.labels, minlength=n_entries).astype(np.int64)
        self._starts = (np.cumsum(self._sizes) - self._sizes).astype(np.int64)
        self._lexical = LexicalIndex.build(parts.docs, parts.labels, n_entries, parts.vocabulary)
        self._semantic: SemanticModel | None = None
        if parts.vectors is not None and n_entries:
            self._semantic = SemanticModel.fit(parts.vectors, parts.labels, n_entries, start=start)

    def _derived(self, parts: _Parts, *, start: SemanticModel | None = None) -> Matcher:
        """A matcher over `parts` with this one's embedder (nothing is embedded)."""
        matcher = Matcher.__new__(Matcher)
        matcher._setup(
            parts, embedder=self._embedder, query_encoder=self._query_encoder, start=start
        )
        return matcher

    # --- what the matcher holds ---------------------------------------------------------------

    @property
    def semantic(self) -> bool:
        """True when sentence embeddings take part in the ranking."""
        return self._semantic is not None

    @property
    def entry_ids(self) -> tuple[str, ...]:
        """The matched entries, in knowledge-base order."""
        return self._parts.ids

    @property
    def phrasings(self) -> tuple[str, ...]:
        """Every phrasing, grouped by entry in `entry_ids` order."""
        return self._parts.texts

    @property
    def phrasing_entries(self) -> I64:
        """The entry (index into `entry_ids`) of each phrasing: non-decreasing."""
        return self._parts.labels

    @property
    def phrasing_vectors(self) -> F32 | None:
        """The phrasings' unit embeddings, (phrasings, dim); None when lexical."""
        return self._semantic.vectors if self._semantic is not None else None

    @property
    def entry_sizes(self) -> I64:
        """Phrasings per entry."""
        return self._sizes

    @property
    def combiner(self) -> Combiner:
        """The weights in use: SEMANTIC or LEXICAL."""
        return SEMANTIC if self._semantic is not None else LEXICAL

    def __len__(self) -> int:
        """Number of phrasings."""
        return len(self._parts.texts)

    # --- ranking ------------------------------------------------------------------------------

    def rank(self, question: str, *, k: int = 5) -> list[Candidate]:
        """Up to `k` distinct entries for `question`, best first ([] for a blank question)."""
        if k <= 0 or not self._parts.ids or not question.strip():
            return []
        vectors: F32 | None = None
        if self._query_encoder is not None:
            try:
                vectors = self._query_encoder.encode([question])
            except Exception:
                # A model failure must not take the bot down: this question is matched
                # lexically, the next one tries the model again.
                log.exception("embedding the question failed; matching it lexically")
        try:
            scored = self._score([question], vectors)
        except Exception:
            if vectors is None:
                raise
            log.exception("semantic scoring failed; matching the question lexically")
            scored = self._score([question], None)
        return self._candidates(scored, k)[0]

    def rank_many(self, questions: Sequence[str], *, k: int = 5) -> list[list[Candidate]]:
        """`rank` for many questions, embedded in batches (for evaluation and calibration).

        Batch questions bypass the query LRU, so they do not evict live questions."""
        results: list[list[Candidate]] = []
        for begin in range(0, len(questions), _BATCH):
            block = list(questions[begin : begin + _BATCH])
            results.extend(self._rank_block(block, k))
        return results

    def score(self, questions: Sequence[str], vectors: F32 | None) -> F32:
        """(questions, entries) scores, as `Candidate.score`, for questions whose embeddings
        are given (`vectors`, one row each), or lexically when `vectors` is None. For held-out
        phrasings: pass their rows of the full matcher's `phrasing_vectors`."""
        return self._score(questions, vectors).probs

    def signals(self, questions: Sequence[str], vectors: F32 | None) -> F32:
        """(questions, entries, signals) before combining (signal names: `combiner.signals`,
        or LEXICAL's when `vectors` is None). For fitting the combiner."""
        return self._features(questions, vectors)[0]

    # --- matchers made from this one ------------------------------------------------------------

    def subset(self, keep: Bools) -> Matcher:
        """A matcher over the phrasings where `keep` (one flag per phrasing, in `phrasings`
        order) is True, for held-out folds. Entries keep their positions, so every entry must
        keep at least one phrasing. Nothing is analysed or embedded again."""
        parts = self._parts
        if keep.shape != (len(parts.texts),):
            raise ValueError(f"keep has shape {keep.shape}, expected ({len(parts.texts)},)")
        indices = np.flatnonzero(keep)
        if np.unique(parts.labels[indices]).size != len(parts.ids):
            raise ValueError("every entry must keep at least one phrasing")
        vectors = self.phrasing_vectors
        return self._derived(
            _Parts(
                parts.ids,
                tuple(parts.texts[i] for i in indices),
                parts.labels[indices],
                tuple(parts.docs[i] for i in indices),
                parts.vocabulary,
                None if vectors is None else vectors[indices],
            )
        )

    def with_phrasings(self, added: Sequence[tuple[str, str]]) -> Matcher:
        """A copy with extra (entry_id, phrasing) pairs, e.g. approved alternates.

        Only the new phrasings are embedded; the heads are refitted starting from this
        matcher's. Pairs for unknown entries, blank or already-present phrasings are ignored."""
        parts = self._parts
        position = {entry_id: index for index, entry_id in enumerate(parts.ids)}
        existing = set(zip(parts.labels.tolist(), parts.texts, strict=True))
        new: list[tuple[int, str]] = []
        for entry_id, phrasing in added:
            text = phrasing.strip()
            index = position.get(entry_id)
            if index is None:
                log.warning("ignoring a phrasing for unknown FAQ entry %r", entry_id)
                continue
            if text and (index, text) not in existing:
                existing.add((index, text))
                new.append((index, text))
        if not new:
            return self
        new_texts = [text for _, text in new]
        vocabulary = parts.vocabulary.copy()
        new_docs = [vocabulary.add(text) for text in new_texts]
        labels = np.concatenate([parts.labels, np.array([i for i, _ in new], dtype=np.int64)])
        order = np.argsort(labels, kind="stable")  # keep phrasings grouped by entry
        texts = [*parts.texts, *new_texts]
        docs = [*parts.docs, *new_docs]
        vectors: F32 | None = None
        model = self._semantic
        if model is not None and self._embedder is not None:
            fresh = _encode_kb(self._embedder, new_texts)
            if fresh is None or fresh.shape[1] != model.vectors.shape[1]:
                # Dropping to lexical matching would cost far more than the new phrasings
                # bring: keep serving this matcher.
                log.warning("cannot embed %d new phrasing(s); not adding them", len(new))
                return self
            vectors = np.concatenate([model.vectors, fresh])
        return self._derived(
            _Parts(
                parts.ids,
                tuple(texts[i] for i in order),
                labels[order],
                tuple(docs[i] for i in order),
                vocabulary,
                None if vectors is None else vectors[order],
            ),
            start=model,
        )

    # --- internals ----------------------------------------------------------------------------

    def _rank_block(self, block: list[str], k: int) -> list[list[Candidate]]:
        if k <= 0 or not self._parts.ids:
            return [[] for _ in block]
        vectors: F32 | None = None
        if self._embedder is not None:
            try:
                vectors = self._embedder.encode(block)
            except Exception:
                log.exception("embedding %d questions failed; matching them lexically", len(block))
        ranked = self._candidates(self._score(block, vectors), k)
        return [[] if not q.strip() else r for q, r in zip(block, ranked, strict=True)]

    def _features(self, questions: Sequence[str], vectors: F32 | None) -> tuple[F32, F32]:
        """(signals (questions, entries, signals), lexical phrasing cosines)."""
        lexical_docs, lexical_entries = self._lexical.scores_many(questions)
        tfmax = segment_max(lexical_docs, self._starts)
        model = self._semantic
        if vectors is None or model is None:
            return np.stack([tfmax, lexical_entries], axis=-1), lexical_docs
        lr, lda, nn = model.signals(vectors, self._starts)
        signals = np.stack([lr, lda, nn, tfmax, lexical_entries], axis=-1)
        return signals.astype(np.float32), lexical_docs

    def _score(self, questions: Sequence[str], vectors: F32 | None) -> _Scored:
        if vectors is not None and self._semantic is None:
            vectors = None
        signals, lexical_docs = self._features(questions, vectors)
        combiner = LEXICAL if vectors is None else SEMANTIC
        return _Scored(combiner.probabilities(signals, self._sizes), vectors, lexical_docs)

    def _candidates(self, scored: _Scored, k: int) -> list[list[Candidate]]:
        results: list[list[Candidate]] = []
        k = min(k, len(self._parts.ids))
        for row in range(scored.probs.shape[0]):
            probs = scored.probs[row]
            top = np.argpartition(-probs, k - 1)[:k] if k < probs.size else np.arange(probs.size)
            top = top[np.argsort(-probs[top], kind="stable")]
            query = None if scored.vectors is None else normalise_rows(scored.vectors[row])[0]
            results.append(
                [
                    Candidate(
                        self._parts.ids[entry],
                        float(probs[entry]),
                        self._best_phrasing(int(entry), query, scored.lexical_docs[row]),
                    )
                    for entry in top
                ]
            )
        return results

    def _best_phrasing(self, entry: int, query: F32 | None, lexical_docs: F32) -> str:
        start, size = int(self._starts[entry]), int(self._sizes[entry])
        model = self._semantic
        if query is not None and model is not None:
            sims = model.vectors[start : start + size] @ query
        else:
            sims = lexical_docs[start : start + size]
        return self._parts.texts[start + int(np.argmax(sims))]


def _encode_kb(embedder: Embedder, texts: Sequence[str]) -> F32 | None:
    """The phrasings' embeddings, or None (logged) when the model fails on them."""
    try:
        vectors = normalise_rows(embedder.encode(list(texts)))
    except Exception as error:
        log.warning(
            "semantic matching disabled: embedding the knowledge base failed (%s); "
            "falling back to lexical matching",
            error,
        )
        return None
    if vectors.shape[0] != len(texts) or not np.all(np.isfinite(vectors)):
        log.warning(
            "semantic matching disabled: the embedder returned %s for %d texts; "
            "falling back to lexical matching",
            vectors.shape,
            len(texts),
        )
        return None
    return vectors


def _query_encoder(embedder: Embedder | None) -> Embedder | None:
    if embedder is None:
        return None
    # Questions skip a persistent cache: it is for the knowledge base, not every question.
    inner = embedder.inner if isinstance(embedder, CachedEmbedder) else embedder
    return LruEmbedder(inner, maxsize=4096)


__all__ = ["Candidate", "Matcher", "analyse"]
