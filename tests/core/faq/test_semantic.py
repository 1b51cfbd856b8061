"""The semantic model's parts against their references."""

from __future__ import annotations

import numpy as np
import pytest

from bot.core.faq.embed import normalise_rows
from bot.core.faq.semantic import LR_C, SemanticModel, fit_softmax, segment_max


def synthetic(entries: int = 6, per_entry: int = 8, dim: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(entries, dim))
    vectors = np.concatenate([c + 0.9 * rng.normal(size=(per_entry, dim)) for c in centres])
    labels = np.repeat(np.arange(entries), per_entry).astype(np.int64)
    return normalise_rows(vectors), labels


def test_softmax_head_is_sklearns_logistic_regression() -> None:
    linear_model = pytest.importorskip("sklearn.linear_model")
    vectors, labels = synthetic()
    mean = vectors.mean(axis=0)
    weights, bias = fit_softmax(vectors, labels, 6, mean=mean, iters=200)
    reference = linear_model.LogisticRegression(C=LR_C, tol=1e-10, max_iter=10_000)
    reference.fit(vectors - mean, labels)
    logits = (vectors - mean) @ weights + bias
    ours = np.exp(logits - logits.max(axis=1, keepdims=True))
    ours /= ours.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(ours, reference.predict_proba(vectors - mean), atol=2e-3)


def test_signals_shapes_and_nearest_phrasing() -> None:
    vectors, labels = synthetic()
    starts = np.searchsorted(labels, np.arange(6)).astype(np.int64)
    model = SemanticModel.fit(vectors, labels, 6)
    lr, lda, nn = model.signals(vectors[[0, 20]], starts)
    assert lr.shape == lda.shape == nn.shape == (2, 6)
    np.testing.assert_allclose(np.exp(lr).sum(axis=1), 1.0, atol=1e-5)
    assert nn[0, 0] == pytest.approx(1.0, abs=1e-5) and nn[1, 2] == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_array_equal(
        segment_max(np.array([[1.0, 3.0, 2.0]]), np.array([0, 2])), [[3.0, 2.0]]
    )
