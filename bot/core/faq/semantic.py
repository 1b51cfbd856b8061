"""Semantic similarity: what a knowledge base's phrasing embeddings say about a question.

    model = SemanticModel.fit(vectors, labels, n_entries)    # unit rows, grouped by entry
    lr, lda, nn = model.signals(question_vectors, starts)     # each (questions, entries)

Three signals per entry:
  - `lr`: log-probability from a softmax-regression head fitted on the phrasings' embeddings
    (L2-regularised like scikit-learn's `LogisticRegression(C=LR_C)`, solved by
    preconditioned gradient descent in ~1 s for 10,000 phrasings; numpy only, so the serving
    process does not pay scikit-learn's import);
  - `lda`: cosine to the entry's mean in a within-entry-whitened space (a shrunk LDA);
  - `nn`: best raw cosine to one of the entry's phrasings.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from bot.core.faq.embed import normalise_rows

F32 = npt.NDArray[np.float32]
I64 = npt.NDArray[np.int64]

SIGNALS = ("lr", "lda", "nn")
# Softmax-regression head: inverse L2 strength as in sklearn's `C` (penalty 1/(C·n)), and a
# fixed iteration budget (the preconditioned descent has converged by ~40 iterations).
LR_C = 10.0
LR_ITERS = 40
LR_WARM_ITERS = 12  # refit after adding a few phrasings, starting from the previous head
# Within-entry covariance shrinkage toward a scaled identity for the whitened signals; raised
# automatically when there are few phrasings per dimension (see `whitening`).
WHITEN_SHRINK = 0.3


def whitening(vectors: F32, labels: I64, n_entries: int) -> tuple[F32, F32, F32]:
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
    # Any W with W·Wᵀ = covariance⁻¹ gives the same whitened cosines; the inverse Cholesky
    # factor is ~10x cheaper than an eigendecomposition (the shrinkage keeps it well posed).
    whiten = np.linalg.inv(np.linalg.cholesky(covariance)).T
    return mean, whiten.astype(np.float32), means


def fit_softmax(
    vectors: F32,
    labels: I64,
    n_entries: int,
    *,
    mean: F32,
    iters: int = LR_ITERS,
    start: tuple[F32, F32] | None = None,
) -> tuple[F32, F32]:
    """(weights (dim, entries), bias) of an L2-regularised softmax regression on the centred
    vectors (penalty 1/(LR_C·n) on the weights, none on the bias).

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


def segment_max(matrix: F32, starts: I64) -> F32:
    """Per-entry maximum over the columns of a (rows, phrasings) matrix, phrasings grouped by
    entry from `starts`."""
    result: F32 = np.maximum.reduceat(matrix, starts, axis=1)
    return result


def log_softmax(logits: F32) -> F32:
    shifted = logits - logits.max(axis=1, keepdims=True)
    result: F32 = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return result


@dataclass(frozen=True)
class SemanticModel:
    """The fitted semantic side of a matcher. Immutable."""

    vectors: F32  # (n, dim) unit rows, grouped by entry
    mean: F32
    whiten: F32
    white_means: F32  # (entries, dim) whitened entry means, unit rows
    lr_weights: F32
    lr_bias: F32

    @staticmethod
    def fit(
        vectors: F32, labels: I64, n_entries: int, *, start: SemanticModel | None = None
    ) -> SemanticModel:
        """Fit on unit-row `vectors` grouped by entry (`labels`); `start` warm-starts the head
        (a matcher with a few more phrasings)."""
        mean, whiten, means = whitening(vectors, labels, n_entries)
        white_means = normalise_rows((means - mean) @ whiten)
        warm = None
        if start is not None and start.lr_weights.shape == (vectors.shape[1], n_entries):
            warm = (start.lr_weights, start.lr_bias)
        weights, bias = fit_softmax(
            vectors,
            labels,
            n_entries,
            mean=mean,
            iters=LR_WARM_ITERS if warm else LR_ITERS,
            start=warm,
        )
        return SemanticModel(vectors, mean, whiten, white_means, weights, bias)

    def signals(self, vectors: F32, starts: I64) -> tuple[F32, F32, F32]:
        """(lr, lda, nn), each (questions, entries), for question embeddings `vectors`;
        `starts` is where each entry's phrasings begin."""
        queries = normalise_rows(vectors)
        centred = queries - self.mean
        white = normalise_rows(centred @ self.whiten)
        lr = log_softmax((centred @ self.lr_weights + self.lr_bias).astype(np.float32))
        lda = white @ self.white_means.T
        nn = segment_max(queries @ self.vectors.T, starts)
        return lr, lda, nn


__all__ = ["SIGNALS", "SemanticModel", "fit_softmax", "segment_max", "whitening"]
