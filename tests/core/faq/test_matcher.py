"""Matcher and embedders, with a tiny deterministic fake embedder (no model is loaded)."""

from __future__ import annotations

import logging
import re
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from bot.core.faq.embed import (
    CachedEmbedder,
    Embedder,
    LruEmbedder,
    MemoryEmbeddingCache,
    clip_text,
    load_embedder,
)
from bot.core.faq.matcher import Candidate, Matcher, analyse

DIM = 64


class HashEmbedder:
    """Hashed bag of words: texts sharing words get similar unit vectors. Records its calls."""

    name = "fake-hash"

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls.append(list(texts))
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                code = zlib.crc32(word.encode())
                out[row, code % DIM] += 1.0 if code & 1024 else -1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
        return out

    @property
    def encoded(self) -> list[str]:
        return [text for call in self.calls for text in call]


class BrokenEmbedder:
    name = "broken"

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise RuntimeError("model exploded")


ENTRIES: list[tuple[str, list[str]]] = [
    (
        "password",
        [
            "How do I reset my password?",
            "I forgot my password",
            "password reset link",
            "change my login password",
        ],
    ),
    (
        "vpn",
        [
            "How do I connect to the VPN?",
            "vpn is not connecting",
            "remote access from home",
            "vpn client download",
        ],
    ),
    (
        "laptop",
        [
            "When do I get my new laptop?",
            "laptop delivery date",
            "new computer shipping",
            "replacement notebook arrival",
        ],
    ),
    (
        "training",
        [
            "Where is the training schedule?",
            "training sessions calendar",
            "course dates for the new system",
            "sign up for a workshop",
        ],
    ),
]


@pytest.fixture(params=["semantic", "lexical"])
def matcher(request: pytest.FixtureRequest) -> Matcher:
    return Matcher(ENTRIES, embedder=HashEmbedder() if request.param == "semantic" else None)


def test_ranks_the_right_entry_first(matcher: Matcher) -> None:
    assert matcher.rank("i forgot the password, how to reset it")[0].entry_id == "password"
    assert matcher.rank("vpn not connecting from home")[0].entry_id == "vpn"
    assert matcher.rank("laptop delivery")[0].entry_id == "laptop"
    assert matcher.rank("training calendar")[0].entry_id == "training"


def test_ranking_shape(matcher: Matcher) -> None:
    ranked = matcher.rank("password reset", k=3)
    assert len(ranked) == 3
    assert len({c.entry_id for c in ranked}) == 3
    assert [c.score for c in ranked] == sorted((c.score for c in ranked), reverse=True)
    assert all(0.0 <= c.score <= 1.0 for c in ranked)
    assert sum(c.score for c in matcher.rank("password reset", k=10)) <= 1.0 + 1e-6
    assert len(matcher.rank("password reset", k=10)) == len(ENTRIES)
    assert matcher.rank("password reset", k=0) == []
    top = ranked[0]
    assert isinstance(top, Candidate)
    assert top.phrasing in dict(ENTRIES)[top.entry_id]


def test_semantic_flag() -> None:
    assert Matcher(ENTRIES, embedder=HashEmbedder()).semantic
    assert not Matcher(ENTRIES, embedder=None).semantic


@pytest.mark.parametrize(
    "question",
    [
        '"reset" *password* AND (vpn OR NOT laptop)',
        "?!?!...",
        "*",
        "AND",
        "🔑🔑 password 🙏",
        "Wie setze ich mein Passwort zurück?",
        "パスワードをリセットするには",
        "password " * 8000,  # 72,000 characters
        "\n\n\t" * 5000 + "vpn",
        "\x00\x1b[31m vpn \u202e",
    ],
)
def test_any_text_is_ranked_without_crashing(matcher: Matcher, question: str) -> None:
    ranked = matcher.rank(question)
    assert len(ranked) == len(ENTRIES)
    assert all(np.isfinite(c.score) for c in ranked)


@pytest.mark.parametrize("question", ["", "   ", "\n\t"])
def test_blank_question_ranks_nothing(matcher: Matcher, question: str) -> None:
    assert matcher.rank(question) == []
    assert matcher.rank_many([question, "vpn"])[0] == []


def test_long_input_is_clipped() -> None:
    assert len(clip_text("word " * 10_000)) == 2000
    assert clip_text("\n" * 5_000 + "vpn") == "vpn"
    words, chars = analyse("x" * 40_000)
    assert len(words) == 1 and len(chars) < 10_000


def test_rank_many_matches_rank(matcher: Matcher) -> None:
    questions = ["password reset", "vpn at home", "new laptop when", "workshop sign up"]
    batched = matcher.rank_many(questions, k=2)
    for question, ranked in zip(questions, batched, strict=True):
        single = matcher.rank(question, k=2)
        assert [c.entry_id for c in ranked] == [c.entry_id for c in single]
        assert [c.score for c in ranked] == pytest.approx([c.score for c in single], abs=1e-5)


def test_messy_entries() -> None:
    entries = [
        ("a", ["  alpha question  ", "alpha question", ""]),
        ("b", []),
        ("a", ["another alpha"]),
        ("c", ["gamma question"]),
    ]
    matcher = Matcher(entries, embedder=HashEmbedder())
    assert matcher.entry_ids == ("a", "c")
    assert len(matcher) == 3  # duplicates and blanks dropped, the two "a" merged
    assert matcher.rank("another alpha")[0].entry_id == "a"


def test_empty_and_tiny_knowledge_bases() -> None:
    assert Matcher([], embedder=HashEmbedder()).rank("anything") == []
    single = Matcher([("only", ["the only question"])], embedder=HashEmbedder())
    assert [c.entry_id for c in single.rank("question")] == ["only"]
    tiny = Matcher([("a", ["alpha"]), ("b", ["beta"]), ("c", ["gamma"])], embedder=HashEmbedder())
    assert tiny.rank("beta", k=1)[0].entry_id == "b"


def test_with_phrasings_embeds_only_new_text() -> None:
    embedder = HashEmbedder()
    matcher = Matcher(ENTRIES, embedder=embedder)
    question = "my badge does not open the door"
    embedder.calls.clear()
    grown = matcher.with_phrasings(
        [("training", "badge door access"), ("nope", "ignored entry"), ("vpn", "  ")]
    )
    assert embedder.encoded == ["badge door access"]
    assert grown is not matcher
    assert grown.rank(question)[0].entry_id == "training"
    assert grown.rank(question)[0].phrasing == "badge door access"
    assert len(grown) == len(matcher) + 1
    # The original is unchanged, and adding nothing new returns the same matcher.
    assert len(matcher) == sum(len(p) for _, p in ENTRIES)
    assert grown.with_phrasings([("training", "badge door access")]) is grown
    assert grown.rank("vpn not connecting")[0].entry_id == "vpn"


def test_with_phrasings_lexical() -> None:
    matcher = Matcher(ENTRIES, embedder=None)
    grown = matcher.with_phrasings([("training", "zyxwv badge")])
    assert grown.rank("zyxwv")[0].entry_id == "training"


def test_kb_embedding_failure_falls_back_to_lexical(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        matcher = Matcher(ENTRIES, embedder=BrokenEmbedder())
    assert not matcher.semantic
    assert "semantic matching disabled" in caplog.text
    assert matcher.rank("vpn not connecting")[0].entry_id == "vpn"


def test_query_embedding_failure_falls_back_to_lexical(monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = HashEmbedder()
    matcher = Matcher(ENTRIES, embedder=embedder)

    def explode(texts: Sequence[str]) -> npt.NDArray[np.float32]:
        raise RuntimeError("boom")

    monkeypatch.setattr(embedder, "encode", explode)
    assert matcher.rank("vpn not connecting")[0].entry_id == "vpn"
    assert matcher.rank_many(["vpn not connecting"])[0][0].entry_id == "vpn"


def test_questions_use_an_lru_not_the_persistent_cache() -> None:
    inner = HashEmbedder()
    cache = MemoryEmbeddingCache()
    matcher = Matcher(ENTRIES, embedder=CachedEmbedder(inner, cache))
    stored = len(cache)
    assert stored == sum(len(p) for _, p in ENTRIES)
    inner.calls.clear()
    matcher.rank("vpn at home")
    matcher.rank("vpn at home")
    assert inner.calls == [["vpn at home"]]  # encoded once, then from the LRU
    assert len(cache) == stored  # questions are not written to the persistent cache


@pytest.mark.parametrize("semantic", [True, False])
def test_subset_is_a_matcher_on_part_of_the_phrasings(semantic: bool) -> None:
    embedder = HashEmbedder() if semantic else None
    matcher = Matcher(ENTRIES, embedder=embedder)
    keep = np.ones(len(matcher), dtype=np.bool_)
    keep[[0, 5]] = False  # "How do I reset my password?", "vpn is not connecting"
    if embedder is not None:
        embedder.calls.clear()
    sub = matcher.subset(keep)
    assert embedder is None or embedder.calls == []  # nothing is embedded again
    assert sub.entry_ids == matcher.entry_ids
    assert len(sub) == len(matcher) - 2
    assert sub.phrasings == tuple(t for t, k in zip(matcher.phrasings, keep, strict=True) if k)
    assert sub.entry_sizes.tolist() == [3, 3, 4, 4]
    # The same as a matcher built from those phrasings alone.
    left_out = {"How do I reset my password?", "vpn is not connecting"}
    rebuilt = Matcher(
        [(e, [p for p in ps if p not in left_out]) for e, ps in ENTRIES],
        embedder=HashEmbedder() if semantic else None,
    )
    held = [matcher.phrasings[0], matcher.phrasings[5]]
    vectors = None if matcher.phrasing_vectors is None else matcher.phrasing_vectors[[0, 5]]
    np.testing.assert_allclose(sub.score(held, vectors), rebuilt.score(held, vectors), atol=1e-5)
    assert sub.score(held, vectors).argmax(axis=1).tolist() == [0, 1]
    assert sub.signals(held, vectors).shape == (2, len(ENTRIES), len(matcher.combiner.signals))


def test_subset_keeps_every_entry() -> None:
    matcher = Matcher(ENTRIES, embedder=None)
    keep = np.ones(len(matcher), dtype=np.bool_)
    keep[matcher.phrasing_entries == 1] = False
    with pytest.raises(ValueError, match="at least one phrasing"):
        matcher.subset(keep)
    with pytest.raises(ValueError, match="shape"):
        matcher.subset(keep[:3])


def test_matchers_share_no_state() -> None:
    # Two matchers over the same entries are built separately, and neither sees the other's
    # added phrasings (no process-wide cache between them).
    embedder = HashEmbedder()
    first = Matcher(ENTRIES, embedder=embedder)
    second = Matcher(ENTRIES, embedder=embedder)
    assert first is not second
    grown = first.with_phrasings([("training", "zyxwv badge")])
    assert grown.rank("zyxwv")[0].entry_id == "training"
    assert first.rank("zyxwv", k=1)[0].score == pytest.approx(second.rank("zyxwv", k=1)[0].score)
    assert "zyxwv badge" not in first.phrasings


def test_cached_embedder_encodes_only_missing_texts() -> None:
    inner = HashEmbedder()
    cache = MemoryEmbeddingCache()
    cached: Embedder = CachedEmbedder(inner, cache)
    first = cached.encode(["a b", "c d", "a b"])
    assert inner.calls == [["a b", "c d"]]
    second = cached.encode(["c d", "e f"])
    assert inner.calls[-1] == ["e f"]
    np.testing.assert_allclose(first[1], second[0])
    assert first.shape == (3, DIM) and first.dtype == np.float32
    assert cached.encode([]).shape == (0, DIM)
    assert set(cache.get_many("fake-hash", ["a b", "zzz"])) == {"a b"}
    assert cache.get_many("other-model", ["a b"]) == {}


def test_lru_embedder_evicts_oldest() -> None:
    inner = HashEmbedder()
    lru = LruEmbedder(inner, maxsize=2)
    lru.encode(["one"])
    lru.encode(["two"])
    lru.encode(["one"])  # hit: "one" becomes the newest
    lru.encode(["three"])  # evicts "two"
    lru.encode(["one", "two"])
    assert inner.encoded == ["one", "two", "three", "two"]


def test_load_embedder_without_sentence_transformers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    # None in sys.modules makes the import fail, as if the package were not installed.
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    monkeypatch.setitem(sys.modules, "torch", None)
    with caplog.at_level(logging.WARNING):
        assert load_embedder(cache_dir=tmp_path) is None  # and no ONNX export there
    assert "semantic matching disabled:" in caplog.text
    assert "falling back to lexical matching" in caplog.text
