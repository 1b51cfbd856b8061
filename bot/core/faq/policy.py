"""Turns a ranking into a decision: answer, suggest ("did you mean…"), or don't know.

Typical use::

    policy = calibrate(entries, embedder=embedder)        # on every knowledge-base (re)load
    decision = policy.decide(matcher.rank(question, k=5))
    if decision.kind == "answer": ...                     # decision.candidates[0] is the answer

The decision uses one feature, the matcher's top score: it is already a softmax probability
over the entries plus "none of these", so the margin to the runner-up is built in (adding the
margin as a second feature changed held-out coverage by under 1 point). `calibrate` maps that
score to a confidence fitted on held-out phrasings of this knowledge base (Platt scaling), and
picks the answer threshold as the lowest confidence at which held-out answers still reach the
target precision.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from bot.core.faq.embed import Embedder
from bot.core.faq.matcher import Candidate, Matcher

log = logging.getLogger(__name__)

Kind = Literal["answer", "suggest", "unknown"]

MAX_SUGGESTIONS = 3
# A suggestion this much less likely than the top one is noise, not help.
MIN_SUGGESTION_SHARE = 0.02
# Held-out phrasings are all in scope, so they cannot tell how off-topic questions score: these
# floors on the matcher's own score keep off-topic questions (which score ~0.1-0.3 by design of
# its "none of these" logit) from being answered however easy the knowledge base is.
ANSWER_MIN_SCORE = 0.5
SUGGEST_MIN_SCORE = 0.05
# A top score this close to certain is answered even when held-out precision never reaches the
# target (a small or lexical-only knowledge base): the matcher puts all but 2% of the
# probability on one entry, as when someone types an FAQ question as written. Only for a
# matcher that is right on most held-out phrasings; one that is not has scores that mean little.
ALWAYS_ANSWER_SCORE = 0.98
ALWAYS_ANSWER_ACCURACY = 0.5
# Suggest for every held-out question but the least confident SUGGEST_QUANTILE share.
SUGGEST_QUANTILE = 0.03
# Fewer held-out questions than MIN_HELDOUT cannot set thresholds. Folds stop being evaluated
# once ENOUGH_HELDOUT are in: more adds little precision and costs time (calibration runs on
# every reload), so a 10,000-phrasing knowledge base evaluates a single fold.
MIN_HELDOUT = 30
ENOUGH_HELDOUT = 1500
# Answers should be right at least this often: the product's floor for answer precision. The
# threshold is set on held-out phrasings of the knowledge base, never on real questions.
TARGET_PRECISION = 0.97
_CLIP = 1e-6


@dataclass(frozen=True)
class Decision:
    """What to do with a question. `candidates`: answer → the answer; suggest → up to 3;
    unknown → up to 3 weak ones (maybe none). `confidence`: estimated probability that the top
    candidate is right."""

    kind: Kind
    candidates: tuple[Candidate, ...]
    confidence: float


def _logit(p: float) -> float:
    p = min(max(p, _CLIP), 1.0 - _CLIP)
    return math.log(p / (1.0 - p))


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


@dataclass(frozen=True)
class Policy:
    """Thresholds on the confidence that the top candidate is right.

    confidence = sigmoid(slope · logit(top score) + offset); answer when it is at least
    `answer_threshold` (1.0 = never), suggest when at least `suggest_threshold`, else unknown.
    """

    answer_threshold: float
    suggest_threshold: float
    slope: float = 1.0
    offset: float = 0.0

    def confidence(self, score: float) -> float:
        """The calibrated confidence for a top score (below 1, so a threshold of 1.0 never
        answers)."""
        return min(_sigmoid(self.slope * _logit(score) + self.offset), 1.0 - _CLIP)

    def decide(self, ranked: Sequence[Candidate]) -> Decision:
        """Decide from a ranking (best first, as `Matcher.rank` returns it)."""
        if not ranked:
            return Decision("unknown", (), 0.0)
        top = ranked[0]
        confidence = self.confidence(top.score)
        if confidence >= self.answer_threshold:
            return Decision("answer", (top,), confidence)
        floor = top.score * MIN_SUGGESTION_SHARE
        shortlist = (top, *(c for c in ranked[1:MAX_SUGGESTIONS] if c.score >= floor))
        kind: Kind = "suggest" if confidence >= self.suggest_threshold else "unknown"
        return Decision(kind, shortlist, confidence)


# Used when a knowledge base is too small to hold phrasings out. With the bundled MiniLM, a
# 3- or 6-entry knowledge base (one phrasing each) scores paraphrases of its questions 0.9-1.0
# and off-topic questions ("what is the weather today", "hello", "???") under 0.2; calibrated
# benchmark knowledge bases with 10 phrasings per entry answer from 0.88-0.91 confidence.
DEFAULT_POLICY = Policy(answer_threshold=0.85, suggest_threshold=0.15)


@dataclass(frozen=True)
class HeldOut:
    """Held-out phrasings ranked against matchers built without them."""

    top_scores: npt.NDArray[np.float64]
    correct: npt.NDArray[np.bool_]  # the top entry is the phrasing's own
    in_top3: npt.NDArray[np.bool_]


def calibrate(
    entries: Sequence[tuple[str, Sequence[str]]],
    *,
    embedder: Embedder | None,
    target_precision: float = TARGET_PRECISION,
    folds: int = 5,
    seed: int = 0,
    matcher: Matcher | None = None,
) -> Policy:
    """Fit thresholds on the training phrasings only, by held-out folds.

    Each fold's phrasings are ranked against a matcher built without them (no re-encoding:
    the embeddings are reused). Folds are evaluated until ENOUGH_HELDOUT phrasings have been
    ranked, so a 10,000-phrasing knowledge base costs one fold (~2 s). Pass the serving
    `matcher` built from `entries` when you have it, else one is built (embedding `entries`
    through `embedder`); entries with a single phrasing are never held out. Too few held-out
    phrasings → DEFAULT_POLICY.
    """
    started = time.perf_counter()
    if matcher is None:
        matcher = Matcher(entries, embedder=embedder)
    held = held_out(matcher, folds=folds, seed=seed)
    if held.top_scores.size < MIN_HELDOUT:
        log.info(
            "calibration: %d held-out phrasings (< %d); using the default policy",
            held.top_scores.size,
            MIN_HELDOUT,
        )
        return DEFAULT_POLICY
    policy = fit_policy(held, target_precision=target_precision)
    log.info(
        "calibrated on %d held-out phrasings in %.1f s: top-1 %.3f, answer at >= %.3f, "
        "suggest at >= %.3f",
        held.top_scores.size,
        time.perf_counter() - started,
        float(held.correct.mean()),
        policy.answer_threshold,
        policy.suggest_threshold,
    )
    return policy


def fold_assignment(
    sizes: npt.NDArray[np.int64], folds: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(fold of each phrasing, -1 when never held out; the order to visit the folds in).

    Phrasings are grouped by entry with `sizes` phrasings each; an entry's phrasings are spread
    over the folds so that every fold leaves it at least one, and single phrasings stay in."""
    rng = np.random.default_rng(seed)
    assignment = np.full(int(sizes.sum()), -1, dtype=np.int64)
    start = 0
    for size in sizes.tolist():
        if size >= 2:
            offset = int(rng.integers(folds))
            assignment[start : start + size] = (rng.permutation(size) + offset) % folds
        start += size
    return assignment, rng.permutation(folds)


def held_out(matcher: Matcher, *, folds: int = 5, seed: int = 0) -> HeldOut:
    """Rank held-out phrasings of `matcher`'s knowledge base against matchers without them."""
    labels = matcher.phrasing_entries
    vectors = matcher.phrasing_vectors
    texts = matcher.phrasings
    folds = max(2, folds)
    assignment, order = fold_assignment(matcher.entry_sizes, folds, seed)
    scores: list[npt.NDArray[np.float64]] = []
    correct: list[npt.NDArray[np.bool_]] = []
    in_top3: list[npt.NDArray[np.bool_]] = []
    total = 0
    for fold in order:
        if total >= ENOUGH_HELDOUT:
            break
        held = np.flatnonzero(assignment == fold)
        if held.size == 0:
            continue
        sub = matcher.subset(assignment != fold)
        probs = sub.score([texts[i] for i in held], None if vectors is None else vectors[held])
        top = np.argsort(-probs, axis=1)[:, :3]
        truth = labels[held]
        scores.append(probs[np.arange(held.size), top[:, 0]].astype(np.float64))
        correct.append(top[:, 0] == truth)
        in_top3.append((top == truth[:, None]).any(axis=1))
        total += held.size
    if not scores:
        empty = np.zeros(0, dtype=np.bool_)
        return HeldOut(np.zeros(0), empty, empty)
    return HeldOut(np.concatenate(scores), np.concatenate(correct), np.concatenate(in_top3))


def fit_policy(held: HeldOut, *, target_precision: float) -> Policy:
    """Thresholds from held-out results (see `calibrate`)."""
    slope, offset = _platt(held.top_scores, held.correct)
    base = Policy(1.0, 0.0, slope, offset)
    confidence = np.array([base.confidence(float(s)) for s in held.top_scores])
    order = np.argsort(-confidence, kind="stable")
    hits = np.cumsum(held.correct[order])
    # Precision of answering the top n, shrunk for small n: hits / (n + 1).
    precision = hits / (np.arange(1, order.size + 1) + 1.0)
    good = np.flatnonzero(precision >= target_precision)
    answer = float(confidence[order[good[-1]]]) if good.size else 1.0
    answer = max(answer, base.confidence(ANSWER_MIN_SCORE))
    if held.correct.size and float(held.correct.mean()) >= ALWAYS_ANSWER_ACCURACY:
        answer = min(answer, base.confidence(ALWAYS_ANSWER_SCORE))
    suggest = float(np.quantile(confidence, SUGGEST_QUANTILE))
    suggest = min(max(suggest, base.confidence(SUGGEST_MIN_SCORE)), answer)
    return Policy(answer, suggest, slope, offset)


def _platt(scores: npt.NDArray[np.float64], correct: npt.NDArray[np.bool_]) -> tuple[float, float]:
    """(slope, offset) of a logistic fit of correctness on logit(score), by Newton's method with
    a weak prior toward (1, 0) so that a knowledge base where every held-out phrasing is right
    (or wrong) still gets a sane, increasing mapping."""
    x = np.log(np.clip(scores, _CLIP, 1 - _CLIP) / np.clip(1 - scores, _CLIP, 1))
    y = correct.astype(np.float64)
    features = np.stack([x, np.ones_like(x)], axis=1)
    prior = np.array([1.0, 0.0])
    strength = 1.0  # worth about one observation
    theta = prior.copy()
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(features @ theta)))
        gradient = features.T @ (p - y) + strength * (theta - prior)
        hessian = (features * (p * (1 - p))[:, None]).T @ features + strength * np.eye(2)
        step = np.linalg.solve(hessian, gradient)
        theta -= step
        if float(np.abs(step).max()) < 1e-8:
            break
    slope, offset = float(theta[0]), float(theta[1])
    if not (math.isfinite(slope) and math.isfinite(offset)) or slope < 0.2:
        # A flat or inverted fit means the score carries no signal here; keep it as is.
        return 1.0, 0.0
    return slope, offset
