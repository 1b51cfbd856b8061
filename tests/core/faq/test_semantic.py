"""The semantic model's parts against their references."""

from __future__ import annotations

import sys

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


def test_head_is_deterministic_and_needs_no_scikit_learn(monkeypatch: pytest.MonkeyPatch) -> None:
    # The serving process never imports scikit-learn: the head is fitted with numpy alone, so
    # it fits the same (bit for bit) whether or not scikit-learn is installed.
    vectors, labels = synthetic()
    first = SemanticModel.fit(vectors, labels, 6)
    monkeypatch.setitem(sys.modules, "sklearn", None)  # `import sklearn` now fails
    with pytest.raises(ImportError):
        import sklearn  # noqa: F401
    second = SemanticModel.fit(vectors, labels, 6)
    np.testing.assert_array_equal(first.lr_weights, second.lr_weights)
    np.testing.assert_array_equal(first.lr_bias, second.lr_bias)
    starts = np.searchsorted(labels, np.arange(6)).astype(np.int64)
    for a, b in zip(first.signals(vectors, starts), second.signals(vectors, starts), strict=True):
        np.testing.assert_array_equal(a, b)


def test_head_is_fitted_on_the_given_phrasings_only() -> None:
    # A head fitted without entry 0's first phrasing does not depend on it: changing that
    # phrasing's vector leaves the fit unchanged, while it changes a head that includes it.
    vectors, labels = synthetic()
    keep = np.ones(len(labels), dtype=np.bool_)
    keep[0] = False
    moved = vectors.copy()
    moved[0] = -moved[0]
    held_out = SemanticModel.fit(vectors[keep], labels[keep], 6)
    held_out_moved = SemanticModel.fit(moved[keep], labels[keep], 6)
    np.testing.assert_array_equal(held_out.lr_weights, held_out_moved.lr_weights)
    with_it = SemanticModel.fit(vectors, labels, 6)
    with_moved = SemanticModel.fit(moved, labels, 6)
    assert not np.allclose(with_it.lr_weights, with_moved.lr_weights)
