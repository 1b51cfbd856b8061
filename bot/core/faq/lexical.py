"""Lexical similarity: TF-IDF over word 1-2-grams and character 3-5-grams, numpy only.

    vocabulary = Vocabulary()
    docs = [vocabulary.add(text) for text in phrasings]        # grows the vocabulary
    index = LexicalIndex.build(docs, labels, n_entries, vocabulary)
    per_phrasing, per_entry = index.scores("i forgot my password")

The weighting is scikit-learn's `TfidfVectorizer(sublinear_tf=True)` (smooth idf, L2 rows;
words as `analyzer="word", ngram_range=(1, 2)`, characters as `analyzer="char_wb",
ngram_range=(3, 5)`, both with a `max_df` cut), and the tests check the cosines against it.
It is written out here rather than imported because importing scikit-learn costs the serving
process ~1.4 s and ~90 MB (with scipy), over a third of its memory floor, for a few lines of
numpy; a matcher built on a subset of the phrasings (held-out folds) also shares the
vocabulary instead of re-analysing every phrasing, which a fitted vectorizer cannot do.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from bot.core.faq.embed import clip_text

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]

# Lexical input cap: the first 2,000 characters say what the question is about; n-gramming a
# 40,000-character paste would cost tens of milliseconds.
MAX_LEXICAL_CHARS = 2000
CHAR_NGRAMS = (3, 5)  # inclusive range, per word padded with spaces (like sklearn's char_wb)
MAX_DF = 0.5  # terms in more than this share of the phrasings are dropped...
MIN_PRUNED_DF = 50  # ...if they are also in more than this many (tiny KBs keep every term)

_WORD = re.compile(r"\w+")


def words_of(text: str) -> list[str]:
    """Casefolded NFKC words of the first MAX_LEXICAL_CHARS characters of `text`."""
    return _WORD.findall(
        unicodedata.normalize("NFKC", clip_text(text, MAX_LEXICAL_CHARS)).casefold()
    )


def word_terms(words: Sequence[str]) -> list[str]:
    """Words and their bigrams."""
    return [*words, *(f"{a} {b}" for a, b in itertools.pairwise(words))]


def char_grams(word: str) -> tuple[str, ...]:
    """The character 3-5-grams of a word padded with one space each side."""
    low, high = CHAR_NGRAMS
    padded = f" {word} "
    if len(padded) <= low:
        return (padded,)
    return tuple(
        padded[i : i + n]
        for n in range(low, min(high, len(padded)) + 1)
        for i in range(len(padded) - n + 1)
    )


def analyse(text: str) -> tuple[list[str], list[str]]:
    """(word terms, character terms) of a text: casefolded NFKC words and their bigrams; the
    character 3-5-grams of each space-padded word. Only the first MAX_LEXICAL_CHARS count."""
    words = words_of(text)
    chars: list[str] = []
    for word in words:
        chars.extend(char_grams(word))
    return word_terms(words), chars


@dataclass(frozen=True)
class Doc:
    """A phrasing's term ids and counts in each lexical space (ids index a Vocabulary)."""

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


@dataclass
class Vocabulary:
    """Term ids of both spaces, and the character grams of the words seen so far (words repeat
    across phrasings and questions far more than they vary). Grown only while a matcher is
    built; a matcher with more phrasings works on a copy, its subsets on the same one."""

    words: dict[str, int] = field(default_factory=dict)
    chars: dict[str, int] = field(default_factory=dict)
    grams: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def copy(self) -> Vocabulary:
        return Vocabulary(dict(self.words), dict(self.chars), dict(self.grams))

    def _char_terms(self, words: Sequence[str], *, grow: bool) -> list[str]:
        terms: list[str] = []
        for word in words:
            grams = self.grams.get(word)
            if grams is None:
                grams = char_grams(word)
                if grow:
                    self.grams[word] = grams
            terms.extend(grams)
        return terms

    def add(self, text: str) -> Doc:
        """The phrasing's Doc, adding its unknown terms."""
        words = words_of(text)
        word_ids, word_counts = _count(word_terms(words), self.words, grow=True)
        char_ids, char_counts = _count(self._char_terms(words, grow=True), self.chars, grow=True)
        return Doc(word_ids, word_counts, char_ids, char_counts)

    def lookup(self, text: str) -> Doc:
        """A question's Doc: terms the vocabulary does not know are left out."""
        words = words_of(text)
        word_ids, word_counts = _count(word_terms(words), self.words, grow=False)
        char_ids, char_counts = _count(self._char_terms(words, grow=False), self.chars, grow=False)
        return Doc(word_ids, word_counts, char_ids, char_counts)


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
    weights: F64


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
class LexicalIndex:
    """TF-IDF of a knowledge base's phrasings over words and characters. Both spaces live in
    one sparse matrix (character term ids after the word ones, rows scaled by 1/2), so one
    product gives the mean of the two cosines. Immutable."""

    vocabulary: Vocabulary  # not grown once the index is built
    idf_words: F32
    idf_chars: F32
    docs: _Postings
    centroids: _Postings

    @staticmethod
    def build(
        docs: Sequence[Doc], labels: I64, n_entries: int, vocabulary: Vocabulary
    ) -> LexicalIndex:
        """The index of `docs` (phrasings, `labels` their entry indices in 0..n_entries)."""
        n_words, n_chars = len(vocabulary.words), len(vocabulary.chars)
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

        return LexicalIndex(
            vocabulary,
            idf_words,
            idf_chars,
            join(word_docs, char_docs, len(docs)),
            join(word_centroids, char_centroids, n_entries),
        )

    def scores(self, text: str) -> tuple[F32, F32]:
        """(per-phrasing cosine, per-entry centroid cosine), each the mean over both spaces."""
        doc = self.vocabulary.lookup(text)
        w_ids, w_weights = _query_weights(doc.word_ids, doc.word_counts, self.idf_words)
        c_ids, c_weights = _query_weights(doc.char_ids, doc.char_counts, self.idf_chars)
        ids = np.concatenate([w_ids, c_ids + len(self.vocabulary.words)])
        weights = np.concatenate([w_weights, c_weights])
        return self.docs.dot(ids, weights), self.centroids.dot(ids, weights)

    def scores_many(self, texts: Sequence[str]) -> tuple[F32, F32]:
        """`scores` of each text as rows: (texts, phrasings) and (texts, entries)."""
        docs = np.zeros((len(texts), self.docs.n_rows), dtype=np.float32)
        entries = np.zeros((len(texts), self.centroids.n_rows), dtype=np.float32)
        for row, text in enumerate(texts):
            docs[row], entries[row] = self.scores(text)
        return docs, entries


__all__ = ["Doc", "LexicalIndex", "Vocabulary", "analyse"]
