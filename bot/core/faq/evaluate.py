"""Batch evaluation of a matcher and policy on labelled questions (like QnA Maker's batch test).

Typical use::

    report = evaluate([EvalCase("how do i reset my password", "reset"),
                       EvalCase("what's for lunch?", None)], matcher=matcher, policy=policy)
    report["top1"], report["answer_precision"], report["p99_ms"]

Every question goes through `matcher.rank` and `policy.decide` one at a time, as in serving,
so the latencies are the real per-question ones (including the question's embedding, unless
the matcher's query cache has seen the question before).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bot.core.faq.matcher import Matcher
from bot.core.faq.policy import Policy

RANK_DEPTH = 5  # candidates ranked per question, as the bot does


@dataclass(frozen=True)
class EvalCase:
    """A question and the entry that should answer it (None: it should not be answered)."""

    question: str
    expected_id: str | None


def _share(numerator: int, denominator: int) -> float | None:
    # None, not NaN, when there is nothing to measure: the report is dumped as JSON.
    return numerator / denominator if denominator else None


def evaluate(
    cases: Sequence[EvalCase], *, matcher: Matcher, policy: Policy
) -> dict[str, float | int | None]:
    """Metrics over `cases`, keys in this order:

    - cases: number of cases;
    - top1, top3, mrr: ranking quality over in-scope cases (expected_id set);
    - answer_rate: share of in-scope cases answered; answer_precision: share of those answers
      that are right; suggest_hit: share of in-scope "suggest" decisions whose suggestions
      include the expected entry;
    - oos_rejection: share of out-of-scope cases (expected_id None) not answered;
    - p50_ms, p99_ms: per-question wall-clock latency of rank() + decide().

    A share whose denominator is 0 (e.g. oos_rejection without out-of-scope cases) is None.
    """
    in_scope = hits1 = hits3 = answered = answered_right = suggested = suggested_hit = 0
    out_of_scope = rejected = 0
    reciprocal = 0.0
    latencies = np.zeros(len(cases), dtype=np.float64)
    for index, case in enumerate(cases):
        started = time.perf_counter()
        ranked = matcher.rank(case.question, k=RANK_DEPTH)
        decision = policy.decide(ranked)
        latencies[index] = (time.perf_counter() - started) * 1000.0
        if case.expected_id is None:
            out_of_scope += 1
            rejected += decision.kind != "answer"
            continue
        in_scope += 1
        ids = [candidate.entry_id for candidate in ranked]
        if case.expected_id in ids:
            position = ids.index(case.expected_id)
            reciprocal += 1.0 / (position + 1)
            hits1 += position == 0
            hits3 += position < 3
        if decision.kind == "answer":
            answered += 1
            answered_right += decision.candidates[0].entry_id == case.expected_id
        elif decision.kind == "suggest":
            suggested += 1
            suggested_hit += any(c.entry_id == case.expected_id for c in decision.candidates)
    return {
        "cases": len(cases),
        "top1": _share(hits1, in_scope),
        "top3": _share(hits3, in_scope),
        "mrr": reciprocal / in_scope if in_scope else None,
        "answer_rate": _share(answered, in_scope),
        "answer_precision": _share(answered_right, answered),
        "suggest_hit": _share(suggested_hit, suggested),
        "oos_rejection": _share(rejected, out_of_scope),
        "p50_ms": float(np.percentile(latencies, 50)) if len(cases) else None,
        "p99_ms": float(np.percentile(latencies, 99)) if len(cases) else None,
    }
