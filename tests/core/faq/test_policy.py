"""Decision policy and its calibration, with a fake embedder (no model is loaded)."""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import pytest

from bot.core.faq.matcher import Candidate, Matcher
from bot.core.faq.policy import (
    ANSWER_MIN_SCORE,
    DEFAULT_POLICY,
    HeldOut,
    Policy,
    calibrate,
    fit_policy,
)


class HashEmbedder:
    name = "fake-hash"

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.encoded.extend(texts)
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in re.findall(r"\w+", text.lower()):
                code = zlib.crc32(word.encode())
                out[row, code % 64] += 1.0 if code & 1024 else -1.0
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), np.float32(1e-12))
        return out


def synthetic_kb(entries: int = 12, phrasings: int = 6) -> list[tuple[str, list[str]]]:
    """Entries with their own keywords plus shared filler, so some held-out phrasings fail."""
    rng = np.random.default_rng(7)
    filler = ["how", "do", "i", "the", "my", "please", "help", "with", "system", "access"]
    kb = []
    for e in range(entries):
        own = [f"topic{e}", f"thing{e}", f"word{e}", f"term{(e + 1) % entries}"]
        texts = [
            " ".join(
                list(rng.choice(own, size=2, replace=False)) + list(rng.choice(filler, size=3))
            )
            for _ in range(phrasings)
        ]
        kb.append((f"e{e}", texts))
    return kb


def candidates(*scores: float) -> list[Candidate]:
    return [Candidate(f"e{i}", s, f"phrasing {i}") for i, s in enumerate(scores)]


POLICY = Policy(answer_threshold=0.8, suggest_threshold=0.3)


def test_decide_answer_suggest_unknown() -> None:
    answer = POLICY.decide(candidates(0.9, 0.05, 0.01))
    assert answer.kind == "answer"
    assert [c.entry_id for c in answer.candidates] == ["e0"]
    assert answer.confidence == pytest.approx(0.9)

    suggest = POLICY.decide(candidates(0.5, 0.3, 0.1, 0.05))
    assert suggest.kind == "suggest"
    assert [c.entry_id for c in suggest.candidates] == ["e0", "e1", "e2"]

    unknown = POLICY.decide(candidates(0.2, 0.1))
    assert unknown.kind == "unknown"
    assert [c.entry_id for c in unknown.candidates] == ["e0", "e1"]

    empty = POLICY.decide([])
    assert (empty.kind, empty.candidates, empty.confidence) == ("unknown", (), 0.0)


def test_suggestions_drop_negligible_candidates() -> None:
    decision = POLICY.decide(candidates(0.6, 0.3, 0.0001))
    assert [c.entry_id for c in decision.candidates] == ["e0", "e1"]


def test_confidence_is_monotone_and_bounded() -> None:
    policy = Policy(answer_threshold=1.0, suggest_threshold=0.2, slope=1.7, offset=0.4)
    scores = [0.0, 1e-9, 0.1, 0.5, 0.9, 1.0]
    values = [policy.confidence(s) for s in scores]
    assert values == sorted(values)
    assert all(0.0 <= v < 1.0 for v in values)
    assert policy.decide(candidates(1.0)).kind == "suggest"  # threshold 1.0 never answers


def test_tiny_kb_gets_the_default_policy() -> None:
    kb = [("a", ["alpha"]), ("b", ["beta"]), ("c", ["gamma"])]
    assert calibrate(kb, embedder=HashEmbedder()) == DEFAULT_POLICY
    assert calibrate(kb, embedder=None) == DEFAULT_POLICY
    assert calibrate([], embedder=None) == DEFAULT_POLICY


@pytest.mark.parametrize("semantic", [True, False])
def test_calibrate_synthetic_kb(semantic: bool) -> None:
    kb = synthetic_kb()
    embedder = HashEmbedder() if semantic else None
    policy = calibrate(kb, embedder=embedder, target_precision=0.9)
    assert 0.0 <= policy.suggest_threshold <= policy.answer_threshold <= 1.0
    assert policy.answer_threshold >= policy.confidence(ANSWER_MIN_SCORE) - 1e-9
    assert policy.slope > 0
    # Deterministic for a seed.
    assert calibrate(kb, embedder=embedder, target_precision=0.9) == policy


def test_calibrate_reuses_embeddings() -> None:
    kb = synthetic_kb()
    embedder = HashEmbedder()
    matcher = Matcher(kb, embedder=embedder)
    encoded = len(embedder.encoded)
    assert encoded == sum(len(p) for _, p in kb)
    calibrate(kb, embedder=embedder, matcher=matcher)
    assert len(embedder.encoded) == encoded


def test_calibrate_without_a_built_matcher_encodes_the_kb_once() -> None:
    kb = synthetic_kb(entries=5, phrasings=4)
    embedder = HashEmbedder()
    calibrate(kb, embedder=embedder)
    assert sorted(embedder.encoded) == sorted(p for _, ps in kb for p in ps)


def held(scores: list[float], correct: list[bool]) -> HeldOut:
    flags = np.array(correct, dtype=np.bool_)
    return HeldOut(np.array(scores, dtype=np.float64), flags, flags)


def test_fit_policy_meets_the_target_on_held_out_data() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, 2000)
    correct = rng.uniform(0, 1, 2000) < scores  # right with probability = score
    policy = fit_policy(held(list(scores), list(correct)), target_precision=0.95)
    answered = np.array([policy.confidence(s) >= policy.answer_threshold for s in scores])
    assert answered.any()
    assert correct[answered].mean() >= 0.95
    # Calibrated: the mapping stays close to the identity for an honest score.
    assert policy.confidence(0.7) == pytest.approx(0.7, abs=0.08)


def test_fit_policy_when_everything_is_right_keeps_the_floor() -> None:
    policy = fit_policy(held([0.2, 0.3, 0.6, 0.9] * 20, [True] * 80), target_precision=0.96)
    assert policy.answer_threshold >= policy.confidence(ANSWER_MIN_SCORE) - 1e-9
    assert policy.decide(candidates(0.25)).kind != "answer"


def test_fit_policy_when_nothing_is_right_never_answers() -> None:
    policy = fit_policy(held([0.2, 0.5, 0.9] * 20, [False] * 60), target_precision=0.96)
    assert policy.answer_threshold == 1.0
    assert policy.decide(candidates(0.99)).kind != "answer"
