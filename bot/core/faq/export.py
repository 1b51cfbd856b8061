"""Export a sentence-transformers model to ONNX, in a process of its own (it imports torch).

    python -m bot.core.faq.export MODEL --cache-dir DIR     # prints the export's folder

The serving process never imports torch: when it finds no export of its model in the cache
folder it runs this module in a subprocess (see `bot.core.faq.onnx.ensure_export`). The export
is a folder `<cache>/<model slug>-<hash of the model's files>/` holding

- `model.onnx`: the transformer, (input_ids, attention_mask[, token_type_ids]) → token
  embeddings (batch, tokens, dim), float32, not quantised;
- `tokenizer.json`: the very tokenizer sentence-transformers uses for this model;
- `manifest.json`: how to turn token embeddings into a sentence vector, read from the model's
  sentence-transformers config (pooling mode, normalisation, max sequence length, lower-casing).

It is built in a temporary folder beside the target, checked against the PyTorch model on
probe sentences (it is not published when any cosine differs by more than `TOLERANCE`), then
renamed into place, so a reader never sees a half-written export and two processes exporting
at once leave one good copy.

Exit codes: 0 done (or already there), 3 torch/sentence-transformers not installed, 1 failed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Set before huggingface_hub is first imported: it reads these once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

from bot.core.faq.embed import clip_text
from bot.core.faq.onnx import (
    EXPORT_FORMAT,
    MANIFEST,
    MODEL_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    OnnxEmbedder,
    export_dir,
    prune_old_exports,
    read_st_config,
    resolve_model,
)

EXIT_NO_TORCH = 3
TOLERANCE = 1e-4  # largest allowed 1 - cosine(ONNX, PyTorch) on the probe sentences
OPSET = 17

PROBES = [
    "How do I reset my password?",
    "vpn",
    "",
    "   ",
    "Wann ist der Go-Live? Ça marche déjà ? ¿Dónde está el menú?",
    "我的工资单在哪里 · 給与明細 · 급여 명세서",
    "can't log in!!! 🙁🔒 help",
    "A" * 3000,
    " ".join(["the quick brown fox jumps over the lazy dog"] * 80),  # past 256 word pieces
    "where do i find my payslip for march 2024, ref #A-1193/7?",
]


def _export(model_name: str, source: str, target: Path) -> None:
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(1)
    config = read_st_config(Path(source))
    model = SentenceTransformer(source, device="cpu", local_files_only=True)
    model.eval()
    transformer: Any = model[0]
    # The live values win over the files where sentence-transformers has them.
    max_length = int(getattr(transformer, "max_seq_length", None) or config["max_seq_length"])
    config["max_seq_length"] = max_length
    prepare = getattr(transformer, "preprocess", None) or transformer.tokenize
    # Padded examples, so the traced graph keeps the attention mask.
    features = prepare(["a short one", "a somewhat longer example sentence to pad the first"])
    inputs = [
        name
        for name in ("input_ids", "attention_mask", "token_type_ids")
        if isinstance(features.get(name), torch.Tensor)
    ]
    auto_model = transformer.auto_model

    class Wrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = auto_model

        def forward(self, *args: torch.Tensor) -> torch.Tensor:
            output = self.inner(**dict(zip(inputs, args, strict=True)))
            hidden: torch.Tensor = output[0]  # last_hidden_state
            return hidden

    axes = {name: {0: "batch", 1: "tokens"} for name in [*inputs, "token_embeddings"]}
    import warnings

    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Wrapper().eval(),
            tuple(features[name] for name in inputs),
            str(target / MODEL_FILE),
            input_names=inputs,
            output_names=["token_embeddings"],
            dynamic_axes=axes,
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    import onnx

    graph = onnx.load(str(target / MODEL_FILE))  # weights out of the graph (see WEIGHTS_FILE)
    onnx.save_model(
        graph,
        str(target / MODEL_FILE),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=WEIGHTS_FILE,
        size_threshold=1024,
    )
    transformer.tokenizer.backend_tokenizer.save(str(target / TOKENIZER_FILE))
    manifest: dict[str, Any] = {
        "format": EXPORT_FORMAT,
        "model": model_name,
        "source": source,
        "inputs": inputs,
        **config,
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    # Check the export against the PyTorch model before anyone may use it.
    onnx_embedder = OnnxEmbedder.from_dir(target, name=model_name)
    reference = model.encode(
        [clip_text(text) for text in PROBES],
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    mine = np.vstack([onnx_embedder.encode(PROBES), onnx_embedder.encode(PROBES[:1])])
    reference = np.vstack([reference, reference[:1]])
    worst = float(np.max(1.0 - np.sum(mine * reference, axis=1)))
    if not worst <= TOLERANCE:
        raise RuntimeError(f"ONNX export differs from PyTorch: 1 - cosine = {worst:.2e}")
    manifest["probe_max_cosine_distance"] = worst
    (target / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")


def export(model_name: str, cache_dir: Path) -> Path:
    """The export folder of `model_name` under `cache_dir`, made now when missing."""
    source = resolve_model(model_name)
    if source is None:
        raise FileNotFoundError(f"model {model_name!r}: not a local path, not in the HF cache")
    final = export_dir(cache_dir, model_name, source)
    if (final / MANIFEST).exists():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=cache_dir))
    building.chmod(0o755)  # mkdtemp makes it private
    try:
        _export(model_name, str(source), building)
        try:
            os.rename(building, final)  # atomic; fails when another process got there first
        except OSError:
            if not (final / MANIFEST).exists():
                raise
    finally:
        shutil.rmtree(building, ignore_errors=True)
    prune_old_exports(cache_dir, keep=final)
    return final


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Export a sentence-transformers model to ONNX.")
    parser.add_argument("model", help="model name or local path")
    parser.add_argument("--cache-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        import sentence_transformers  # noqa: F401
        import torch  # noqa: F401
    except Exception as error:  # ImportError, or a broken torch install raising anything
        print(f"sentence-transformers/torch not available ({error})", file=sys.stderr)
        return EXIT_NO_TORCH
    try:
        path = export(args.model, args.cache_dir)
    except Exception as error:
        print(f"export failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
