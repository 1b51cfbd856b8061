"""Sentence embeddings cached in the database by model and text, so a restart recomputes none."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from bot.store.models import EmbeddingVector

_BATCH = 500


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class DbEmbeddingCache:
    """An EmbeddingCache (see bot.core.faq.embed) backed by the `embedding_vector` table."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get_many(self, model: str, texts: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        by_hash = {text_hash(text): text for text in texts}
        found: dict[str, npt.NDArray[np.float32]] = {}
        hashes = list(by_hash)
        with Session(self.engine) as session:
            for start in range(0, len(hashes), _BATCH):
                chunk = hashes[start : start + _BATCH]
                rows = session.exec(
                    select(EmbeddingVector).where(
                        EmbeddingVector.model == model, col(EmbeddingVector.text_hash).in_(chunk)
                    )
                )
                for row in rows:
                    found[by_hash[row.text_hash]] = np.frombuffer(
                        row.vector, dtype=np.float32
                    ).copy()
        return found

    def put_many(self, model: str, vectors: Mapping[str, npt.NDArray[np.float32]]) -> None:
        if not vectors:
            return
        with Session(self.engine) as session:
            items = {text_hash(text): vector for text, vector in vectors.items()}
            existing: set[str] = set()
            keys = list(items)
            for start in range(0, len(keys), _BATCH):
                chunk = keys[start : start + _BATCH]
                existing.update(
                    session.exec(
                        select(EmbeddingVector.text_hash).where(
                            EmbeddingVector.model == model,
                            col(EmbeddingVector.text_hash).in_(chunk),
                        )
                    )
                )
            for key, vector in items.items():
                if key in existing:
                    continue
                array = np.asarray(vector, dtype=np.float32)
                session.add(
                    EmbeddingVector(
                        model=model, text_hash=key, dim=array.shape[-1], vector=array.tobytes()
                    )
                )
            try:
                session.commit()
            except IntegrityError:  # another process cached the same texts first: theirs will do
                session.rollback()
