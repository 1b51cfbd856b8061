"""Ranks FAQ entries for a user question.

Typical use::

    matcher = Matcher([("reset", ["How do I reset my password?", "forgot password"]),
                       ("vpn", ["How do I connect to the VPN?"])], embedder=load_embedder())
    matcher.rank("i forgot my password", k=3)   # [Candidate("reset", 0.93, ...), ...]

Each entry is scored by a weighted sum of five signals, and the sums go through a softmax over
the entries plus a constant "none of these" logit, so `Candidate.score` is a probability-like
number in [0, 1] whose level means the same across knowledge bases (the policy thresholds it).
A signal's weight depends on how many phrasings the entry has (best-phrasing similarity is
worth more for an entry with 100 phrasings than for one with 10; the entry mean, less):

- semantic (sentence embeddings, when an embedder is given):
  - `lr`: log-probability from a softmax-regression head fitted on the phrasings' embeddings
    (closed-form preconditioned gradient descent, ~1 s for 10,000 phrasings);
  - `lda`: cosine to the entry's mean in a within-entry-whitened space (a shrunk LDA);
  - `nn`: best raw cosine to one of the entry's phrasings;
- lexical (TF-IDF over word 1-2-grams and character 3-5-grams, both spaces averaged):
  - `tfmax`: best phrasing cosine; `tfcen`: cosine to the entry's centroid.

Without an embedder only the lexical signals are used, with their own weights.
"""

from __future__ import annotations

import functools
import itertools
import logging
import re
import threading
import unicodedata
import weakref
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bot.core.faq.embed import CachedEmbedder, Embedder, LruEmbedder, clip_text, normalise_rows

log = logging.getLogger(__name__)

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

# ---------------------------------------------------------------------------------------------
# Hyper-parameters, chosen by 5-fold cross-validation on the *training phrasings* of four
# knowledge bases (BANKING77 and HWU64 with 10 phrasings per entry and with all of them; each
# phrasing held out once and ranked against a matcher built from the other folds), never on the
# benchmark test questions. The signal set, LR_C, WHITEN_SHRINK, CHAR_NGRAMS and MAX_DF were
# compared that way (held-out top-1 moved by under half a point around the values kept; a
# whitened top-3 signal and LR heads on other features added nothing and were dropped). The
# weights are fitted by `python benchmarks/faq_matching.py --fit`.
# ---------------------------------------------------------------------------------------------

# Lexical input cap: the first 2,000 characters say what the question is about; n-gramming a
# 40,000-character paste would cost tens of milliseconds.
MAX_LEXICAL_CHARS = 2000
CHAR_NGRAMS = (3, 5)  # inclusive range, per word padded with spaces (like sklearn's char_wb)
MAX_DF = 0.5  # terms in more than this share of the phrasings are dropped...
MIN_PRUNED_DF = 50  # ...if they are also in more than this many (tiny KBs keep every term)

# Softmax-regression head: inverse L2 strength as in sklearn's `C` (penalty 1/(C·n)), and a
# fixed iteration budget (the preconditioned descent has converged by ~40 iterations).
LR_C = 10.0
LR_ITERS = 40
LR_WARM_ITERS = 12  # refit after adding a few phrasings, starting from the previous head
# Within-entry covariance shrinkage toward a scaled identity for the whitened signals; raised
# automatically when there are few phrasings per dimension (see `_whitening`).
WHITEN_SHRINK = 0.3

# Signal weights and the "none of these" logit, fitted by maximising the held-out softmax
# likelihood of the right entry (and of "none" for phrasings of the *other* dataset, to give
# the constant logit a meaning). An entry's weight for signal i is
#     WEIGHTS[i] + SLOPES[i] * log(clip(phrasings of the entry, *SIZE_RANGE) / 10),
# clipped to the sizes the fit saw, so it never extrapolates.
SEMANTIC_SIGNALS = ("lr", "lda", "nn", "tfmax", "tfcen")
SEMANTIC_WEIGHTS = (0.837, 5.509, 5.861, 1.618, 2.723)
SEMANTIC_SLOPES = (0.098, -2.358, 0.042, 0.888, 0.328)
SEMANTIC_NONE = 2.963
LEXICAL_SIGNALS = ("tfmax", "tfcen")
LEXICAL_WEIGHTS = (6.1, 18.485)
LEXICAL_SLOPES = (1.122, 0.137)
LEXICAL_NONE = 5.752
SIZE_RANGE = (8.0, 160.0)

_BATCH = 256  # questions per block in rank_many (bounds the (batch, phrasings) matrices)


@dataclass(frozen=True)
class Candidate:
    """One ranked entry: `score` is the probability-like combined score (higher is better);
    `phrasing` is the entry's phrasing closest to the question (for debugging)."""

    entry_id: str
    score: float
    phrasing: str


# --- lexical side -----------------------------------------------------------------------------

_WORD = re.compile(r"\w+")


def analyse(text: str) -> tuple[list[str], list[str]]:
    """(word terms, character terms) of a text: casefolded NFKC words and their bigrams; the
    character 3-5-grams of each space-padded word. Only the first MAX_LEXICAL_CHARS count."""
    clipped = clip_text(text, MAX_LEXICAL_CHARS)
    words = _WORD.findall(unicodedata.normalize("NFKC", clipped).casefold())
    word_terms = words + [f"{a} {b}" for a, b in itertools.pairwise(words)]
    char_terms: list[str] = []
    for word in words:
        char_terms.extend(_char_grams(word))
    return word_terms, char_terms


@functools.lru_cache(maxsize=1 << 16)
def _char_grams(word: str) -> tuple[str, ...]:
    # Cached: words repeat across phrasings and questions far more than they vary.
    low, high = CHAR_NGRAMS
    padded = f" {word} "
    if len(padded) <= low:
        return (padded,)
    return tuple(
        padded[i : i + n]
        for n in range(low, min(high, len(padded)) + 1)
        for i in range(len(padded) - n + 1)
    )


@dataclass(frozen=True)
class _Doc:
    """A phrasing's term ids and counts in each lexical space (ids index the matcher's vocab)."""

    word_ids: I64
    word_counts: F32
    char_ids: I64
    char_counts: F32


def _count(terms: Iterable[str], vocab: dict[str, int], *, grow: bool) -> tuple[I64, F32]:
    """(term ids, counts) of `terms`; unknown terms get new ids if `grow`, else are skipped."""
    counts = Counter(terms)
    if grow:
        ids = [vocab.setdefault(term, len(vocab)) for term in counts]
        values = list(counts.values())
    else:
        known = [(vocab[term], count) for term, count in counts.items() if term in vocab]
        ids = [index for index, _ in known]
        values = [count for _, count in known]
    return np.array(ids, dtype=np.int64), np.array(values, dtype=np.float32)


@dataclass(frozen=True)
class _Postings:
    """Term-major sparse matrix (CSC-like): rows holding term t are rows[indptr[t]:indptr[t+1]]."""

    indptr: I64
    rows: I64
    weights: F32
    n_rows: int

    @staticmethod
    def build(rows: I64, terms: I64, weights: F32, *, n_terms: int, n_rows: int) -> _Postings:
        order = np.argsort(terms, kind="stable")
        indptr = np.zeros(n_terms + 1, dtype=np.int64)
        np.cumsum(np.bincount(terms, minlength=n_terms), out=indptr[1:])
        return _Postings(indptr, rows[order], weights[order], n_rows)

    def dot(self, term_ids: I64, term_weights: F32) -> F32:
        """Dot product of every row with a sparse query (term ids, weights)."""
        if term_ids.size == 0:
            return np.zeros(self.n_rows, dtype=np.float32)
        starts = self.indptr[term_ids]
        lengths = self.indptr[term_ids + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(self.n_rows, dtype=np.float32)
        # Positions of all postings of all query terms, without a Python loop.
        offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(total)
        values = self.weights[offsets] * np.repeat(term_weights, lengths)
        return np.bincount(self.rows[offsets], weights=values, minlength=self.n_rows).astype(
            np.float32
        )


@dataclass(frozen=True)
class _Weighted:
    """Sparse rows as (row, term, weight) triplets."""

    rows: I64
    terms: I64
    weights: npt.NDArray[np.float64]


def _normalise_triplets(part: _Weighted, n_rows: int) -> _Weighted:
    norms = np.sqrt(np.bincount(part.rows, weights=part.weights**2, minlength=n_rows))
    weights = part.weights / np.maximum(norms, 1e-12)[part.rows]
    kept = weights > 0
    return _Weighted(part.rows[kept], part.terms[kept], weights[kept])


def _space(
    ids: Sequence[I64], counts: Sequence[F32], labels: I64, *, n_terms: int, n_entries: int
) -> tuple[F32, _Weighted, _Weighted]:
    """One TF-IDF space (words or characters): sublinear tf, smooth idf, L2-normalised rows.

    Returns (idf, phrasing rows, entry centroid rows), centroids being the normalised sum of
    their phrasings' rows."""
    n_docs = len(ids)
    lengths = np.array([len(i) for i in ids], dtype=np.int64)
    all_ids = np.concatenate(ids) if n_docs else np.zeros(0, dtype=np.int64)
    all_counts = np.concatenate(counts) if n_docs else np.zeros(0, dtype=np.float32)
    doc_of = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
    df = np.bincount(all_ids, minlength=n_terms).astype(np.float64)
    # Terms no phrasing here uses (vocabulary shared with a bigger matcher) get idf 0, so a
    # question's unknown words drop out exactly as with a vocabulary built from these docs.
    idf = np.where(df > 0, np.log((1.0 + n_docs) / (1.0 + df)) + 1.0, 0.0).astype(np.float32)
    # Terms in most phrasings ("the", " th") say little and cost the most to score (their
    # postings are the longest): like sklearn's max_df they are left out altogether.
    idf[(df > MAX_DF * n_docs) & (df > MIN_PRUNED_DF)] = 0.0
    raw = (1.0 + np.log(np.maximum(all_counts, 1.0))) * idf[all_ids]
    docs = _normalise_triplets(_Weighted(doc_of, all_ids, raw.astype(np.float64)), n_docs)
    keys = labels[docs.rows] * n_terms + docs.terms
    unique, inverse = np.unique(keys, return_inverse=True)
    sums = np.bincount(inverse, weights=docs.weights, minlength=unique.size).astype(np.float64)
    centroids = _normalise_triplets(_Weighted(unique // n_terms, unique % n_terms, sums), n_entries)
    return idf, docs, centroids


def _query_weights(ids: I64, counts: F32, idf: F32) -> tuple[I64, F32]:
    raw = (1.0 + np.log(np.maximum(counts, 1.0))) * idf[ids]
    keep = raw > 0
    weights: F32 = raw[keep].astype(np.float32)
    weights /= np.float32(max(float(np.sqrt(np.dot(weights, weights))), 1e-12))
    return ids[keep], weights


@dataclass(frozen=True)
class _Lexical:
    """TF-IDF over words and characters. Both spaces live in one sparse matrix (character term
    ids after the word ones, rows scaled by 1/2), so one product gives the mean of the two
    cosines."""

    vocab_words: dict[str, int]  # never mutated once built; a bigger matcher copies it
    vocab_chars: dict[str, int]
    idf_words: F32
    idf_chars: F32
    docs: _Postings
    centroids: _Postings

    @staticmethod
    def build(
        docs: Sequence[_Doc],
        labels: I64,
        n_entries: int,
        *,
        vocab_words: dict[str, int],
        vocab_chars: dict[str, int],
    ) -> _Lexical:
        n_words, n_chars = len(vocab_words), len(vocab_chars)
        idf_words, word_docs, word_centroids = _space(
            [d.word_ids for d in docs],
            [d.word_counts for d in docs],
            labels,
            n_terms=n_words,
            n_entries=n_entries,
        )
        idf_chars, char_docs, char_centroids = _space(
            [d.char_ids for d in docs],
            [d.char_counts for d in docs],
            labels,
            n_terms=n_chars,
            n_entries=n_entries,
        )

        def join(words: _Weighted, chars: _Weighted, n_rows: int) -> _Postings:
            weights = 0.5 * np.concatenate([words.weights, chars.weights])
            return _Postings.build(
                np.concatenate([words.rows, chars.rows]),
                np.concatenate([words.terms, chars.terms + n_words]),
                weights.astype(np.float32),
                n_terms=n_words + n_chars,
                n_rows=n_rows,
            )

        return _Lexical(
            vocab_words,
            vocab_chars,
            idf_words,
            idf_chars,
            join(word_docs, char_docs, len(docs)),
            join(word_centroids, char_centroids, n_entries),
        )

    def scores(self, text: str) -> tuple[F32, F32]:
        """(per-phrasing cosine, per-entry centroid cosine), each the mean over both spaces."""
        word_terms, char_terms = analyse(text)
        w_ids, w_weights = _query_weights(
            *_count(word_terms, self.vocab_words, grow=False), self.idf_words
        )
        c_ids, c_weights = _query_weights(
            *_count(char_terms, self.vocab_chars, grow=False), self.idf_chars
        )
        ids = np.concatenate([w_ids, c_ids + len(self.vocab_words)])
        weights = np.concatenate([w_weights, c_weights])
        return self.docs.dot(ids, weights), self.centroids.dot(ids, weights)


# --- semantic side ----------------------------------------------------------------------------


def _whitening(vectors: F32, labels: I64, n_entries: int) -> tuple[F32, F32, F32]:
    """(mean, whitening matrix, entry means) from the within-entry covariance.

    The covariance is shrunk toward a scaled identity; with few phrasings per dimension the
    estimate is poor, so the shrinkage rises to near 1 (plain centred cosine)."""
    n, dim = vectors.shape
    mean = vectors.mean(axis=0)
    if n and bool(np.all(labels[1:] >= labels[:-1])):  # grouped by entry, as matchers keep them
        starts = np.searchsorted(labels, np.arange(n_entries))
        sums = np.add.reduceat(vectors.astype(np.float64), starts, axis=0)
    else:
        sums = np.zeros((n_entries, dim), dtype=np.float64)
        np.add.at(sums, labels, vectors)
    sizes = np.bincount(labels, minlength=n_entries).astype(np.float64)
    means = (sums / np.maximum(sizes, 1.0)[:, None]).astype(np.float32)
    residual = vectors - means[labels]
    scatter = (residual.T @ residual).astype(np.float64) / max(n, 1)
    scale = float(np.trace(scatter)) / dim
    if scale < 1e-8:  # every entry has one phrasing (or identical ones): nothing to whiten
        return mean, np.eye(dim, dtype=np.float32), means
    dof = n - n_entries
    shrink = max(WHITEN_SHRINK, 1.0 - dof / (2.0 * dim))
    covariance = (1.0 - shrink) * scatter + shrink * scale * np.eye(dim)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    whiten = eigenvectors / np.sqrt(np.maximum(eigenvalues, 1e-12 * scale))
    return mean, whiten.astype(np.float32), means


def _fit_softmax(
    vectors: F32,
    labels: I64,
    n_entries: int,
    *,
    mean: F32,
    iters: int,
    start: tuple[F32, F32] | None = None,
) -> tuple[F32, F32]:
    """(weights (dim, entries), bias) of an L2-regularised softmax regression.

    Gradient descent preconditioned with the inverse feature covariance (a bound on the
    Hessian's feature part) with heavy-ball momentum: converges in tens of iterations where
    plain gradient descent needs thousands, and stays deterministic and numpy-only."""
    n, dim = vectors.shape
    z = vectors - mean
    targets = np.zeros((n, n_entries), dtype=np.float32)
    targets[np.arange(n), labels] = 1.0
    lam = 1.0 / (LR_C * max(n, 1))
    covariance = (z.T @ z) / max(n, 1)
    precondition = np.linalg.inv(0.5 * covariance + (lam + 1e-4) * np.eye(dim)).astype(np.float32)
    if start is None:
        weights = np.zeros((dim, n_entries), dtype=np.float32)
        bias = np.zeros(n_entries, dtype=np.float32)
    else:
        weights, bias = start[0].copy(), start[1].copy()
    velocity_w = np.zeros_like(weights)
    velocity_b = np.zeros_like(bias)
    for _ in range(iters):
        logits = z @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        probs -= targets
        grad_w = (z.T @ probs) / n + lam * weights
        grad_b = probs.mean(axis=0)
        velocity_w = 0.5 * velocity_w - precondition @ grad_w
        velocity_b = 0.5 * velocity_b - 2.0 * grad_b  # bias curvature is at most 1/4
        weights += velocity_w
        bias += velocity_b
    return weights.astype(np.float32), bias.astype(np.float32)


@dataclass(frozen=True)
class _Semantic:
    vectors: F32  # (n, dim) unit rows, grouped by entry
    mean: F32
    whiten: F32
    white_means: F32  # (entries, dim) whitened entry means, unit rows
    lr_weights: F32
    lr_bias: F32

    @staticmethod
    def fit(
        vectors: F32, labels: I64, n_entries: int, *, start: _Semantic | None = None
    ) -> _Semantic:
        mean, whiten, means = _whitening(vectors, labels, n_entries)
        white_means = normalise_rows((means - mean) @ whiten)
        warm = None
        if start is not None and start.lr_weights.shape == (vectors.shape[1], n_entries):
            warm = (start.lr_weights, start.lr_bias)
        weights, bias = _fit_softmax(
            vectors,
            labels,
            n_entries,
            mean=mean,
            iters=LR_WARM_ITERS if warm else LR_ITERS,
            start=warm,
        )
        return _Semantic(vectors, mean, whiten, white_means, weights, bias)


def _segment_max(matrix: F32, starts: I64) -> F32:
    result: F32 = np.maximum.reduceat(matrix, starts, axis=1)
    return result


def _log_softmax(logits: F32) -> F32:
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: F32 = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


# --- the matcher ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Scored:
    """Scores of a block of questions: probabilities over entries, and what finds the best
    phrasing of an entry afterwards."""

    probs: F32  # (questions, entries)
    vectors: F32 | None  # question embeddings, when semantic
    lexical_docs: F32  # (questions, phrasings) lexical cosines


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

        vocab_words: dict[str, int] = {}
        vocab_chars: dict[str, int] = {}
        docs = [_analyse_doc(text, vocab_words, vocab_chars) for text in texts]

        vectors: F32 | None = None
        if embedder is not None:
            vectors = _encode_kb(embedder, texts)
        self._key = _recent_key(entries, embedder)
        self._setup(
            embedder=embedder if vectors is not None else None,
            query_encoder=_query_encoder(embedder) if vectors is not None else None,
            ids=tuple(ids),
            texts=tuple(texts),
            labels=labels,
            docs=tuple(docs),
            vectors=vectors,
            vocab_words=vocab_words,
            vocab_chars=vocab_chars,
        )
        with _RECENT_LOCK:
            _RECENT[self._key] = self

    @classmethod
    def reuse(
        cls, entries: Sequence[tuple[str, Sequence[str]]], *, embedder: Embedder | None
    ) -> Matcher:
        """`Matcher(entries, embedder=embedder)`, or the live one already built from exactly
        these arguments (building is deterministic, so they are interchangeable)."""
        key = _recent_key(entries, embedder)
        with _RECENT_LOCK:
            found = _RECENT.get(key)
        return found if found is not None else cls(entries, embedder=embedder)

    def _setup(
        self,
        *,
        embedder: Embedder | None,
        query_encoder: Embedder | None,
        ids: tuple[str, ...],
        texts: tuple[str, ...],
        labels: I64,
        docs: tuple[_Doc, ...],
        vectors: F32 | None,
        vocab_words: dict[str, int],
        vocab_chars: dict[str, int],
        start: _Semantic | None = None,
    ) -> None:
        self._embedder = embedder
        self._query_encoder = query_encoder
        self._ids = ids
        self._texts = texts
        self._labels = labels
        self._docs = docs
        n_entries = len(ids)
        self._sizes = np.bincount(labels, minlength=n_entries).astype(np.int64)
        self._starts = (np.cumsum(self._sizes) - self._sizes).astype(np.int64)
        self._lexical = _Lexical.build(
            docs, labels, n_entries, vocab_words=vocab_words, vocab_chars=vocab_chars
        )
        self._semantic_model: _Semantic | None = None
        if vectors is not None and n_entries:
            self._semantic_model = _Semantic.fit(vectors, labels, n_entries, start=start)

    @classmethod
    def _from_parts(
        cls,
        base: Matcher,
        *,
        ids: tuple[str, ...],
        texts: tuple[str, ...],
        labels: I64,
        docs: tuple[_Doc, ...],
        vectors: F32 | None,
        vocab_words: dict[str, int],
        vocab_chars: dict[str, int],
        start: _Semantic | None = None,
    ) -> Matcher:
        matcher = cls.__new__(cls)
        matcher._setup(
            embedder=base._embedder,
            query_encoder=base._query_encoder,
            ids=ids,
            texts=texts,
            labels=labels,
            docs=docs,
            vectors=vectors,
            vocab_words=vocab_words,
            vocab_chars=vocab_chars,
            start=start,
        )
        return matcher

    # --- public API ---------------------------------------------------------------------------

    @property
    def semantic(self) -> bool:
        """True when sentence embeddings take part in the ranking."""
        return self._semantic_model is not None

    @property
    def entry_ids(self) -> tuple[str, ...]:
        """The matched entries, in knowledge-base order."""
        return self._ids

    def __len__(self) -> int:
        """Number of phrasings."""
        return len(self._texts)

    def rank(self, question: str, *, k: int = 5) -> list[Candidate]:
        """Up to `k` distinct entries for `question`, best first ([] for a blank question)."""
        if k <= 0 or not self._ids or not question.strip():
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

    def with_phrasings(self, added: Sequence[tuple[str, str]]) -> Matcher:
        """A copy with extra (entry_id, phrasing) pairs, e.g. approved alternates.

        Only the new phrasings are embedded; the heads are refitted starting from this
        matcher's. Pairs for unknown entries, blank or already-present phrasings are ignored."""
        position = {entry_id: index for index, entry_id in enumerate(self._ids)}
        existing = set(zip(self._labels.tolist(), self._texts, strict=True))
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
        vocab_words = dict(self._lexical.vocab_words)
        vocab_chars = dict(self._lexical.vocab_chars)
        new_docs = [_analyse_doc(text, vocab_words, vocab_chars) for text in new_texts]
        labels = np.concatenate([self._labels, np.array([i for i, _ in new], dtype=np.int64)])
        order = np.argsort(labels, kind="stable")  # keep phrasings grouped by entry
        texts = [*self._texts, *new_texts]
        docs = [*self._docs, *new_docs]
        vectors: F32 | None = None
        model = self._semantic_model
        if model is not None and self._embedder is not None:
            fresh = _encode_kb(self._embedder, new_texts)
            if fresh is None or fresh.shape[1] != model.vectors.shape[1]:
                # Dropping to lexical matching would cost far more than the new phrasings
                # bring: keep serving this matcher.
                log.warning("cannot embed %d new phrasing(s); not adding them", len(new))
                return self
            vectors = np.concatenate([model.vectors, fresh])
        return Matcher._from_parts(
            self,
            ids=self._ids,
            texts=tuple(texts[i] for i in order),
            labels=labels[order],
            docs=tuple(docs[i] for i in order),
            vectors=None if vectors is None else vectors[order],
            vocab_words=vocab_words,
            vocab_chars=vocab_chars,
            start=model,
        )

    # --- internals (also used by calibration and the benchmark) -------------------------------

    def _rank_block(self, block: list[str], k: int) -> list[list[Candidate]]:
        if k <= 0 or not self._ids:
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
        n_entries = len(self._ids)
        lexical_docs = np.zeros((len(questions), len(self._texts)), dtype=np.float32)
        lexical_entries = np.zeros((len(questions), n_entries), dtype=np.float32)
        for row, question in enumerate(questions):
            lexical_docs[row], lexical_entries[row] = self._lexical.scores(question)
        tfmax = _segment_max(lexical_docs, self._starts)
        model = self._semantic_model
        if vectors is None or model is None:
            return np.stack([tfmax, lexical_entries], axis=-1), lexical_docs
        queries = normalise_rows(vectors)
        white = normalise_rows((queries - model.mean) @ model.whiten)
        lr = _log_softmax(
            ((queries - model.mean) @ model.lr_weights + model.lr_bias).astype(np.float32)
        )
        lda = white @ model.white_means.T
        nn = _segment_max(queries @ model.vectors.T, self._starts)
        signals = np.stack([lr, lda, nn, tfmax, lexical_entries], axis=-1)
        return signals.astype(np.float32), lexical_docs

    def _score(self, questions: Sequence[str], vectors: F32 | None) -> _Scored:
        if vectors is not None and self._semantic_model is None:
            vectors = None
        signals, lexical_docs = self._features(questions, vectors)
        weights: tuple[float, ...]
        slopes: tuple[float, ...]
        if vectors is None:
            weights, slopes, none = LEXICAL_WEIGHTS, LEXICAL_SLOPES, LEXICAL_NONE
        else:
            weights, slopes, none = SEMANTIC_WEIGHTS, SEMANTIC_SLOPES, SEMANTIC_NONE
        # (entries, signals) weight matrix: see SIZE_RANGE.
        size = np.log(np.clip(self._sizes, *SIZE_RANGE) / 10.0).astype(np.float32)
        per_entry = np.asarray(weights, np.float32) + size[:, None] * np.asarray(slopes, np.float32)
        logits = np.einsum("qes,es->qe", signals, per_entry)
        return _Scored(_probabilities(logits, none), vectors, lexical_docs)

    def _candidates(self, scored: _Scored, k: int) -> list[list[Candidate]]:
        results: list[list[Candidate]] = []
        k = min(k, len(self._ids))
        for row in range(scored.probs.shape[0]):
            probs = scored.probs[row]
            top = np.argpartition(-probs, k - 1)[:k] if k < probs.size else np.arange(probs.size)
            top = top[np.argsort(-probs[top], kind="stable")]
            query = None if scored.vectors is None else normalise_rows(scored.vectors[row])[0]
            results.append(
                [
                    Candidate(
                        self._ids[entry],
                        float(probs[entry]),
                        self._best_phrasing(int(entry), query, scored.lexical_docs[row]),
                    )
                    for entry in top
                ]
            )
        return results

    def _best_phrasing(self, entry: int, query: F32 | None, lexical_docs: F32) -> str:
        start, size = int(self._starts[entry]), int(self._sizes[entry])
        model = self._semantic_model
        if query is not None and model is not None:
            sims = model.vectors[start : start + size] @ query
        else:
            sims = lexical_docs[start : start + size]
        return self._texts[start + int(np.argmax(sims))]

    def _subset(self, keep: npt.NDArray[np.bool_]) -> Matcher:
        """A matcher over the phrasings where `keep` is True (entries keep their positions, so
        every entry must keep at least one phrasing). Nothing is re-embedded."""
        model = self._semantic_model
        indices = np.flatnonzero(keep)
        return Matcher._from_parts(
            self,
            ids=self._ids,
            texts=tuple(self._texts[i] for i in indices),
            labels=self._labels[indices],
            docs=tuple(self._docs[i] for i in indices),
            vectors=None if model is None else model.vectors[indices],
            vocab_words=self._lexical.vocab_words,
            vocab_chars=self._lexical.vocab_chars,
        )

    def _phrasing_vectors(self) -> F32 | None:
        model = self._semantic_model
        return None if model is None else model.vectors


_RecentKey = tuple[int, tuple[tuple[str, tuple[str, ...]], ...]]
# Matchers built lately, by (embedder identity, entries): `calibrate` right after a build reuses
# the fitted matcher instead of fitting it again. Weak: a matcher nobody holds is not kept.
_RECENT: weakref.WeakValueDictionary[_RecentKey, Matcher] = weakref.WeakValueDictionary()
_RECENT_LOCK = threading.Lock()


def _recent_key(
    entries: Sequence[tuple[str, Sequence[str]]], embedder: Embedder | None
) -> _RecentKey:
    # id() is safe here: a live matcher holds its embedder, so the id cannot be reused.
    return (
        0 if embedder is None else id(embedder),
        tuple((entry_id, tuple(phrasings)) for entry_id, phrasings in entries),
    )


def _probabilities(logits: F32, none_logit: float) -> F32:
    """Softmax over the entries plus a constant "none of these" logit (left out of the result,
    so a row sums to less than 1 when nothing matches well)."""
    top = np.maximum(logits.max(axis=1, keepdims=True), none_logit)
    exp = np.exp(logits - top)
    total = exp.sum(axis=1, keepdims=True) + np.exp(none_logit - top)
    result: F32 = (exp / total).astype(np.float32)
    return result


def _analyse_doc(text: str, vocab_words: dict[str, int], vocab_chars: dict[str, int]) -> _Doc:
    word_terms, char_terms = analyse(text)
    word_ids, word_counts = _count(word_terms, vocab_words, grow=True)
    char_ids, char_counts = _count(char_terms, vocab_chars, grow=True)
    return _Doc(word_ids, word_counts, char_ids, char_counts)


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
