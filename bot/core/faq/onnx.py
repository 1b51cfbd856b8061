"""The sentence embedder on ONNX Runtime: what the serving process runs (no torch in it).

    embedder = load_onnx_embedder("sentence-transformers/all-MiniLM-L6-v2", cache_dir)
    embedder.encode(["How do I reset my password?"])   # (1, 384) float32, unit rows

The ONNX file is made once per model by `python -m bot.core.faq.export` (a subprocess that
imports torch; see that module) and kept under `cache_dir` in a folder named after the model
and a hash of its files, so a changed model gets a new export. Here only onnxruntime, the
`tokenizers` library and numpy run: the tokenizer sentence-transformers uses, truncated to the
model's max sequence length, then pooling and L2 normalisation as the model's
sentence-transformers config says. The vectors match the PyTorch ones to within 1e-4 cosine
(checked by the export before it is published, and by the tests).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from bot.core.faq.embed import (
    DEFAULT_MODEL,
    bundled_model_path,
    clip_text,
    default_model_cache,
    normalise_rows,
    release_free_memory,
)

log = logging.getLogger(__name__)

EXPORT_FORMAT = 2  # bump when the export's layout or graph changes: every export is rebuilt
MANIFEST = "manifest.json"
MODEL_FILE = "model.onnx"
# The weights beside the graph, not inside it: ONNX Runtime maps an external data file
# instead of copying every initializer out of the parsed model (~40 MB less resident).
WEIGHTS_FILE = "model.onnx.data"
TOKENIZER_FILE = "tokenizer.json"
EXPORT_TIMEOUT_S = 900.0
TRIM_EVERY_S = 1.0  # how often question encoding hands free C heap back (release_free_memory)
POOLING_MODES = ("cls", "mean", "max", "mean_sqrt_len", "lasttoken")
_POOLING_FLAGS = {  # 1_Pooling/config.json's flags → mode
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_lasttoken": "lasttoken",
}
# Texts per forward pass when encoding many (the knowledge base), at most BATCH_SIZE and at
# most BATCH_TOKENS word pieces with padding. Small batches also keep the peak memory low.
BATCH_SIZE = 16
BATCH_TOKENS = 512


class ExportUnavailable(Exception):
    """No export exists and none can be made here (reason in the message)."""


# --- the model's files and where its export lives ---------------------------------------------


def resolve_model(model: str) -> Path | None:
    """The local folder of `model`: the bundled package for the default name, a local path, or
    its snapshot in the Hugging Face cache (offline). None when none of these exists."""
    bundled = bundled_model_path(model)
    if bundled is not None:
        return bundled
    if Path(model).is_dir():
        return Path(model).resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        return None


def _model_files(source: Path) -> Iterator[Path]:
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            yield path


def model_hash(source: Path) -> str:
    """A hash of the model's files (names and contents) and of the export format."""
    digest = hashlib.sha256(f"mobilize-onnx-export/{EXPORT_FORMAT}\n".encode())
    for path in _model_files(source):
        if path.name.lower() in {"readme.md"}:
            continue  # documentation does not change the vectors
        digest.update(f"{path.relative_to(source).as_posix()}\n".encode())
        with path.open("rb") as handle:
            digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()[:16]


def slug(model: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model.strip("/")).strip("_.")[:80] or "model"


def export_dir(cache_dir: Path, model: str, source: Path) -> Path:
    """Where the export of `model` (files in `source`) lives under `cache_dir`."""
    return cache_dir / f"{slug(model)}-{model_hash(source)}"


def prune_old_exports(cache_dir: Path, *, keep: Path) -> None:
    """Remove exports of the same model made from other versions of its files."""
    model = keep.name.rsplit("-", 1)[0]
    for other in cache_dir.iterdir():
        same_model = other.name.rsplit("-", 1)[0] == model and not other.name.startswith(".")
        if other != keep and same_model and (other / MANIFEST).exists():
            shutil.rmtree(other, ignore_errors=True)


def read_st_config(source: Path) -> dict[str, Any]:
    """Pooling, normalisation and max length from a sentence-transformers model folder.

    Supports the stack Transformer → Pooling [→ Normalize]; anything else (Dense layers, …)
    raises ValueError naming the module.
    """
    modules_file = source / "modules.json"
    modules = json.loads(modules_file.read_text()) if modules_file.exists() else []
    kinds = [str(module.get("type", "")).rsplit(".", 1)[-1] for module in modules]
    unsupported = [kind for kind in kinds if kind not in {"Transformer", "Pooling", "Normalize"}]
    if unsupported:
        raise ValueError(f"unsupported sentence-transformers module(s): {unsupported}")
    pooling_path = next(
        (source / m.get("path", "") for m in modules if str(m.get("type")).endswith("Pooling")),
        None,
    )
    pooling: dict[str, Any] = {}
    if pooling_path is not None and (pooling_path / "config.json").exists():
        pooling = json.loads((pooling_path / "config.json").read_text())
    mode = pooling.get("pooling_mode")  # sentence-transformers ≥ 5 may write one name
    if not mode:
        flags = [key for key, on in pooling.items() if key.startswith("pooling_mode_") and on]
        chosen = [_POOLING_FLAGS[key] for key in flags if key in _POOLING_FLAGS]
        if len(chosen) != len(flags) or len(chosen) > 1:
            raise ValueError(f"unsupported pooling {pooling!r}")
        mode = chosen[0] if chosen else "mean"  # sentence-transformers' default
    if mode not in POOLING_MODES:
        raise ValueError(f"unsupported pooling {pooling!r}")
    st_file = source / "sentence_bert_config.json"
    st_config = json.loads(st_file.read_text()) if st_file.exists() else {}
    return {
        "pooling": mode,
        "normalize": "Normalize" in kinds,
        "max_seq_length": int(st_config.get("max_seq_length") or 512),
        "do_lower_case": bool(st_config.get("do_lower_case", False)),
    }


# --- the embedder -------------------------------------------------------------------------------


class OnnxEmbedder:
    """A sentence-transformers model exported to ONNX, as an Embedder (thread-safe)."""

    def __init__(
        self, session: Any, tokenizer: Any, manifest: dict[str, Any], *, name: str
    ) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.name = name
        self.inputs: list[str] = [i.name for i in session.get_inputs()]
        self.pooling: str = manifest["pooling"]
        self.do_lower_case = bool(manifest.get("do_lower_case"))
        self.max_length = int(manifest["max_seq_length"])
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=self.max_length)
        self.dim = int(session.get_outputs()[0].shape[-1])
        self._trimmed = time.monotonic()

    @classmethod
    def from_dir(cls, folder: Path, *, name: str, threads: int | None = None) -> OnnxEmbedder:
        import onnxruntime as ort  # type: ignore[import-untyped]
        from tokenizers import Tokenizer

        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        if manifest.get("format") != EXPORT_FORMAT:
            raise ValueError(f"export format {manifest.get('format')}, expected {EXPORT_FORMAT}")
        options = ort.SessionOptions()
        # One thread, as with torch before: a second one cuts the median a little, but any
        # other busy thread on the 2 cores then stalls it and p99 explodes.
        options.intra_op_num_threads = threads or 1
        options.inter_op_num_threads = 1
        # Idle pool threads would spin for the next run, stealing the other core.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # No CPU memory arena: an arena keeps the largest buffers any run needed (a batch of
        # the knowledge base) for the life of the process, ~22 MB here; without it a question
        # runs as fast (p50 3.5 vs 3.3 ms, one thread) and the process stays ~22 MB smaller.
        options.enable_cpu_mem_arena = False
        session = ort.InferenceSession(
            str(folder / MODEL_FILE), sess_options=options, providers=["CPUExecutionProvider"]
        )
        tokenizer = Tokenizer.from_file(str(folder / TOKENIZER_FILE))
        embedder = cls(session, tokenizer, manifest, name=name)
        # Loading parsed the whole model file into memory and freed it: ~20 MB that the C
        # allocator keeps unless asked to return it.
        release_free_memory()
        return embedder

    def encode(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        clipped = [clip_text(text) for text in texts]
        if self.do_lower_case:
            clipped = [text.lower() for text in clipped]
        if len(clipped) == 1:
            vector = self._forward([self.tokenizer.encode(clipped[0])])
            now = time.monotonic()
            if now - self._trimmed >= TRIM_EVERY_S:
                # Questions run on several threads, each with its own C heap arena that keeps
                # what a run freed; handing it back now and then keeps the process at what it
                # uses (~40 MB less after a few hundred questions; a trim takes ~1 ms).
                self._trimmed = now
                release_free_memory()
            return vector
        encodings = self.tokenizer.encode_batch(clipped)
        # Longest first, batched by tokens: little padding, and long texts in small batches
        # (attention grows with the square of the length; big batches of them ran slower).
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        out = np.empty((len(clipped), self.dim), dtype=np.float32)
        start = 0
        while start < len(order):
            width = max(len(encodings[order[start]].ids), 1)
            rows = order[start : start + max(1, min(BATCH_SIZE, BATCH_TOKENS // width))]
            out[rows] = self._forward([encodings[i] for i in rows])
            start += len(rows)
        release_free_memory()
        return out

    def _forward(self, encodings: Sequence[Any], options: Any = None) -> npt.NDArray[np.float32]:
        width = max(len(e.ids) for e in encodings)
        feeds = {
            name: np.zeros((len(encodings), width), dtype=np.int64)
            for name in ("input_ids", "attention_mask", "token_type_ids")
        }
        for row, encoding in enumerate(encodings):
            size = len(encoding.ids)
            feeds["input_ids"][row, :size] = encoding.ids
            feeds["attention_mask"][row, :size] = encoding.attention_mask
            feeds["token_type_ids"][row, :size] = encoding.type_ids
        tokens = self.session.run(None, {name: feeds[name] for name in self.inputs}, options)[0]
        return normalise_rows(pool(tokens, feeds["attention_mask"], self.pooling))


def pool(tokens: npt.NDArray[Any], mask: npt.NDArray[np.int64], mode: str) -> npt.NDArray[Any]:
    """Sentence vectors from token embeddings (batch, tokens, dim), as sentence-transformers'
    Pooling module computes them."""
    weights = mask[:, :, None].astype(tokens.dtype)
    if mode == "cls":
        return tokens[:, 0]
    if mode == "lasttoken":
        last = np.maximum(mask.sum(axis=1) - 1, 0)
        return tokens[np.arange(len(tokens)), last]
    if mode == "max":
        return np.where(weights > 0, tokens, np.float32(-1e9)).max(axis=1)
    summed = (tokens * weights).sum(axis=1)
    counts = np.maximum(weights.sum(axis=1), np.float32(1e-9))
    if mode == "mean_sqrt_len":
        return summed / np.sqrt(counts)
    return summed / counts  # mean


# --- making sure an export exists ---------------------------------------------------------------


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` across processes (waits for the holder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_export_lock = threading.Lock()


def ensure_export(model: str, cache_dir: Path) -> Path:
    """The export folder of `model` under `cache_dir`, made in a subprocess when missing.

    Raises ExportUnavailable with the reason when there is none and none can be made (torch
    not installed, the model not found, the export failing).
    """
    source = resolve_model(model)
    if source is None:
        raise ExportUnavailable(f"cannot find model {model!r} (not a local path, not cached)")
    try:
        read_st_config(source)
    except ValueError as error:
        raise ExportUnavailable(f"model {model!r}: {error}") from error
    folder = export_dir(cache_dir, model, source)
    if (folder / MANIFEST).exists():
        return folder
    # One export at a time, across threads and processes; the others wait and then use it.
    with _export_lock, _locked(cache_dir / f".{folder.name}.lock"):
        if (folder / MANIFEST).exists():
            return folder
        for module in ("torch", "sentence_transformers"):
            if importlib.util.find_spec(module) is None:
                raise ExportUnavailable(
                    f"no ONNX export of {model!r} in {cache_dir}, and {module} (the `semantic`"
                    " extra) is not installed to make one"
                )
        log.info("exporting %s to ONNX in %s (once per model, in a subprocess)", model, folder)
        started = time.monotonic()
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        try:
            done = subprocess.run(
                [sys.executable, "-m", "bot.core.faq.export", model, "--cache-dir", str(cache_dir)],
                capture_output=True,
                text=True,
                timeout=EXPORT_TIMEOUT_S,
                env=env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise ExportUnavailable(f"ONNX export of {model!r} failed: {error}") from error
        if done.returncode != 0 or not (folder / MANIFEST).exists():
            detail = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise ExportUnavailable(f"ONNX export of {model!r} failed: {detail}")
        log.info("exported %s to ONNX in %.1f s", model, time.monotonic() - started)
    return folder


def load_onnx_embedder(
    model: str = DEFAULT_MODEL, cache_dir: Path | None = None, *, threads: int | None = None
) -> OnnxEmbedder:
    """The ONNX embedder of `model`, exporting it first when needed. Raises ExportUnavailable
    (or an onnxruntime/tokenizers error) when it cannot be had."""
    folder = ensure_export(model, cache_dir or default_model_cache())
    return OnnxEmbedder.from_dir(folder, name=model, threads=threads)
