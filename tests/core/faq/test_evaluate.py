"""Batch-evaluation metrics, on a stub matcher with fixed rankings."""

from __future__ import annotations

import json

import pytest

from bot.core.faq.evaluate import EvalCase, evaluate
from bot.core.faq.matcher import Candidate, Matcher
from bot.core.faq.policy import Policy

KEYS = [
    "cases",
    "top1",
    "top3",
    "mrr",
    "answer_rate",
    "answer_precision",
    "suggest_hit",
    "oos_rejection",
    "p50_ms",
    "p99_ms",
]


class StubMatcher(Matcher):
    """Returns a fixed ranking per question: {question: [(entry_id, score), ...]}."""

    def __init__(self, table: dict[str, list[tuple[str, float]]]) -> None:
        self.table = table

    def rank(self, question: str, *, k: int = 5) -> list[Candidate]:
        return [Candidate(e, s, question) for e, s in self.table.get(question, [])][:k]


POLICY = Policy(answer_threshold=0.8, suggest_threshold=0.3)

TABLE = {
    "q1": [("a", 0.9), ("b", 0.05)],  # answered, right
    "q2": [("b", 0.85), ("a", 0.1)],  # answered, wrong (expected a at rank 2)
    "q3": [("c", 0.5), ("a", 0.3), ("b", 0.1)],  # suggested, hit at rank 2
    "q4": [("c", 0.4), ("b", 0.3), ("d", 0.2), ("a", 0.05)],  # suggested, miss; rank 4
    "q5": [("b", 0.2), ("c", 0.1)],  # unknown; expected a not ranked at all
    "oos1": [("a", 0.95)],  # answered: not rejected
    "oos2": [("b", 0.1)],  # rejected
}
CASES = [
    EvalCase("q1", "a"),
    EvalCase("q2", "a"),
    EvalCase("q3", "a"),
    EvalCase("q4", "a"),
    EvalCase("q5", "a"),
    EvalCase("oos1", None),
    EvalCase("oos2", None),
]


def test_metrics() -> None:
    report = evaluate(CASES, matcher=StubMatcher(TABLE), policy=POLICY)
    assert list(report) == KEYS
    assert report["cases"] == 7
    assert report["top1"] == pytest.approx(1 / 5)
    assert report["top3"] == pytest.approx(3 / 5)
    assert report["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 2 + 1 / 4 + 0) / 5)
    assert report["answer_rate"] == pytest.approx(2 / 5)
    assert report["answer_precision"] == pytest.approx(1 / 2)
    assert report["suggest_hit"] == pytest.approx(1 / 2)
    assert report["oos_rejection"] == pytest.approx(1 / 2)
    p50, p99 = report["p50_ms"], report["p99_ms"]
    assert isinstance(p50, float) and isinstance(p99, float)
    assert 0.0 <= p50 <= p99


def test_empty_denominators_are_none_and_json_safe() -> None:
    report = evaluate([EvalCase("q5", "a")], matcher=StubMatcher(TABLE), policy=POLICY)
    assert report["answer_precision"] is None  # nothing answered
    assert report["suggest_hit"] is None  # nothing suggested
    assert report["oos_rejection"] is None  # no out-of-scope cases
    json.dumps(report, allow_nan=False)

    only_oos = evaluate([EvalCase("oos2", None)], matcher=StubMatcher(TABLE), policy=POLICY)
    assert only_oos["top1"] is None and only_oos["answer_rate"] is None
    assert only_oos["oos_rejection"] == 1.0

    nothing = evaluate([], matcher=StubMatcher(TABLE), policy=POLICY)
    assert nothing["cases"] == 0
    assert all(nothing[key] is None for key in KEYS[1:])
    json.dumps(nothing, allow_nan=False)


def test_with_a_real_matcher() -> None:
    matcher = Matcher(
        [("vpn", ["connect to the vpn", "vpn broken"]), ("pw", ["reset password", "forgot pw"])],
        embedder=None,
    )
    report = evaluate(
        [EvalCase("vpn is broken", "vpn"), EvalCase("password reset please", "pw")],
        matcher=matcher,
        policy=Policy(answer_threshold=1.0, suggest_threshold=0.0),
    )
    assert report["top1"] == 1.0
    assert report["suggest_hit"] == 1.0
