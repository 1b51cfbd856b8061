"""The lexical index against scikit-learn's TF-IDF (the reference it writes out)."""

from __future__ import annotations

import numpy as np
import pytest

from bot.core.faq.lexical import LexicalIndex, Vocabulary, analyse, char_grams

ENTRIES = [
    ["How do I reset my password?", "I forgot my password", "password reset link"],
    ["How do I connect to the VPN?", "vpn is not connecting", "VPN from home, again"],
    ["When do I get my new laptop?", "laptop delivery date", "new laptop, new me"],
]
QUESTIONS = ["forgot the password again", "vpn at home", "Laptop?", "nothing known here"]


def build() -> tuple[LexicalIndex, list[str], np.ndarray]:
    texts = [t for phrasings in ENTRIES for t in phrasings]
    labels = np.repeat(np.arange(len(ENTRIES)), [len(p) for p in ENTRIES]).astype(np.int64)
    vocabulary = Vocabulary()
    docs = [vocabulary.add(t) for t in texts]
    return LexicalIndex.build(docs, labels, len(ENTRIES), vocabulary), texts, labels


def test_scores_equal_sklearn_tfidf() -> None:
    text = pytest.importorskip("sklearn.feature_extraction.text")
    index, texts, labels = build()
    cosines = []
    centroids = []
    for part in (0, 1):  # words, characters: same weighting as TfidfVectorizer(sublinear_tf)
        vectorizer = text.TfidfVectorizer(
            analyzer=lambda t, part=part: analyse(t)[part], sublinear_tf=True
        )
        docs = vectorizer.fit_transform(texts).toarray()
        queries = vectorizer.transform(QUESTIONS).toarray()
        cosines.append(queries @ docs.T)
        sums = np.stack([docs[labels == e].sum(axis=0) for e in range(len(ENTRIES))])
        sums /= np.linalg.norm(sums, axis=1, keepdims=True)
        centroids.append(queries @ sums.T)
    for row, question in enumerate(QUESTIONS):
        per_phrasing, per_entry = index.scores(question)
        np.testing.assert_allclose(per_phrasing, (cosines[0][row] + cosines[1][row]) / 2, atol=1e-5)
        np.testing.assert_allclose(
            per_entry, (centroids[0][row] + centroids[1][row]) / 2, atol=1e-5
        )


def test_scores_many_stacks_scores() -> None:
    index, _, _ = build()
    docs, entries = index.scores_many(QUESTIONS)
    for row, question in enumerate(QUESTIONS):
        np.testing.assert_array_equal(docs[row], index.scores(question)[0])
        np.testing.assert_array_equal(entries[row], index.scores(question)[1])


def test_lookup_leaves_the_vocabulary_alone() -> None:
    index, _, _ = build()
    vocabulary = index.vocabulary
    before = (len(vocabulary.words), len(vocabulary.chars), len(vocabulary.grams))
    index.scores("entirely unseen words zyxwv")
    assert (len(vocabulary.words), len(vocabulary.chars), len(vocabulary.grams)) == before


def test_analysis() -> None:
    words, chars = analyse("Reset  PASSWORD")
    assert words == ["reset", "password", "reset password"]
    assert chars[:3] == [" re", "res", "ese"]
    assert char_grams("a") == (" a ",)
