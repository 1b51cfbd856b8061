"""FAQ matching benchmark: ranking quality, calibrated answer precision and latency.

Usage:
    python benchmarks/faq_matching.py [--dataset banking77|hwu64|all] [--kb 10shot|full|all]
                                      [--json] [--lexical] [--oos N] [--threads N] [--data DIR]
    python benchmarks/faq_matching.py --fit     # re-derive the matcher's signal weights

Data: shared/data/faq-benchmarks/ beside the repository (see its README.md): QnA Maker TSV
knowledge bases (kb-10shot.tsv, kb-full.tsv) and held-out test questions (cases.csv).

For each (dataset, kb) it builds the Matcher, calibrates the Policy on the knowledge base's
phrasings only (`calibrate`), then runs `evaluate` on cases.csv: every question is ranked and
decided one at a time, with its embedding computed live, so p50/p99 are serving latencies.

Knowledge-base and case embeddings are cached in benchmarks/.cache/embeddings-<model>.npz, so
only the first run pays for encoding (~70 s for both datasets on 2 cores); `--cache DIR` uses
another folder (a fresh one: every vector from the chosen `--backend`).

The encoder is the serving one, ONNX Runtime (its export kept in <cache>/models/); `--backend
torch` runs PyTorch instead.

Every figure has a baseline measured in the same run, so a ratio holds on a noisy machine:
  - top1 beside nn_top1: plain nearest-phrasing cosine over the same MiniLM vectors (no head,
    no lexical signal, no combiner); with `--lexical`, the nearest phrasing by TF-IDF cosine;
  - p50/p99 (from `evaluate`) beside enc_p50_ms/enc_p99_ms: the bare query encoder on the same
    questions. 500 questions are also timed interleaved, question by question, through a fresh
    matcher (cmp_p50_ms, cmp_p99_ms) and the bare encoder (enc_*), and, unless `--no-baseline`,
    through a fresh matcher on the PyTorch encoder (base_p50_ms, base_p99_ms).

`--fit` reproduces how bot/core/faq/combine.py's SEMANTIC/LEXICAL weights were chosen: every
training phrasing of the four knowledge bases is held out once (5 folds) and ranked against a
matcher built without it; the weights maximise the held-out likelihood of the right entry (and
of "none of these" for phrasings of the other dataset). The test questions are not used.
"""

from __future__ import annotations

import os

# Before numpy is imported: with torch on the same 2 cores, a multi-threaded BLAS makes the
# two fight and p99 latency explodes.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import csv
import json
import logging
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from bot.core.faq.combine import LEXICAL, SIZE_RANGE
from bot.core.faq.embed import (
    DEFAULT_MODEL,
    CachedEmbedder,
    Embedder,
    load_embedder,
    load_torch_embedder,
)
from bot.core.faq.evaluate import EvalCase, evaluate
from bot.core.faq.matcher import Matcher
from bot.core.faq.policy import Policy, calibrate

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "faq-benchmarks"
CACHE_DIR = Path(__file__).resolve().parent / ".cache"
DATASETS = ("banking77", "hwu64")
KBS = ("10shot", "full")
COLUMNS = (
    "top1",
    "nn_top1",
    "top3",
    "mrr",
    "answer_rate",
    "answer_precision",
    "suggest_hit",
    "oos_rejection",
    "p50_ms",
    "p99_ms",
    "cmp_p50_ms",
    "cmp_p99_ms",
    "enc_p50_ms",
    "enc_p99_ms",
    "base_p50_ms",
    "base_p99_ms",
)
BASELINE_QUESTIONS = 500  # questions timed for the ONNX-vs-PyTorch comparison, per row

Entries = list[tuple[str, list[str]]]
F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


# --- data -------------------------------------------------------------------------------------


def read_kb(path: Path) -> Entries:
    """(QnaId, phrasings) from a QnA Maker TSV export; the first row of an id is its question."""
    table: dict[str, list[str]] = {}
    with path.open(encoding="utf-8-sig", newline="") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            table.setdefault(row["QnaId"], []).append(row["Question"])
    return list(table.items())


def read_cases(path: Path) -> list[EvalCase]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        return [
            EvalCase(row["question"], row["expected_id"] or None) for row in csv.DictReader(handle)
        ]


# --- embedding cache on disk ------------------------------------------------------------------


class NpzEmbeddingCache:
    """An EmbeddingCache kept in one .npz file per model (loaded whole, saved by `save`)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._vectors: dict[str, dict[str, F32]] = {}
        self._dirty: set[str] = set()

    def _path(self, model: str) -> Path:
        return self.directory / f"embeddings-{re.sub(r'[^A-Za-z0-9._-]+', '_', model)}.npz"

    def _table(self, model: str) -> dict[str, F32]:
        if model not in self._vectors:
            table: dict[str, F32] = {}
            path = self._path(model)
            if path.exists():
                with np.load(path, allow_pickle=False) as data:
                    vectors = data["vectors"].astype(np.float32)
                    table = {str(t): vectors[i] for i, t in enumerate(data["texts"])}
            self._vectors[model] = table
        return self._vectors[model]

    def get_many(self, model: str, texts: Sequence[str]) -> dict[str, F32]:
        table = self._table(model)
        return {text: table[text] for text in texts if text in table}

    def put_many(self, model: str, vectors: Mapping[str, F32]) -> None:
        if vectors:
            self._table(model).update(vectors)
            self._dirty.add(model)

    def save(self) -> None:
        for model in sorted(self._dirty):
            table = self._vectors[model]
            self.directory.mkdir(parents=True, exist_ok=True)
            texts = list(table)
            np.savez(
                self._path(model),
                texts=np.array(texts, dtype=np.str_),
                vectors=np.stack([table[t] for t in texts]).astype(np.float32),
            )
        self._dirty.clear()


# --- benchmark --------------------------------------------------------------------------------


def run_one(
    data: Path,
    dataset: str,
    kb: str,
    *,
    embedder: Embedder | None,
    oos: int = 0,
    baseline: Embedder | None = None,
) -> dict[str, float | int | str | None]:
    entries = read_kb(data / dataset / f"kb-{kb}.tsv")
    cases = read_cases(data / dataset / "cases.csv")
    if oos:
        # The other dataset's test questions stand in for off-topic questions.
        other = next(d for d in DATASETS if d != dataset)
        pool = read_cases(data / other / "cases.csv")
        picked = np.random.default_rng(0).permutation(len(pool))[:oos]
        cases += [EvalCase(pool[i].question, None) for i in picked]
    phrasings = [p.strip() for _, ps in entries for p in ps]
    embed_s = 0.0
    if embedder is not None:
        started = time.perf_counter()
        embedder.encode(phrasings)  # through the disk cache: only new texts are encoded
        embed_s = time.perf_counter() - started
    started = time.perf_counter()
    matcher = Matcher(entries, embedder=embedder)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    policy = calibrate(entries, embedder=embedder, matcher=matcher)  # its vectors reused
    calibrate_s = time.perf_counter() - started
    load_before = os.getloadavg()[0]
    report = evaluate(cases, matcher=matcher, policy=policy)
    # Latencies are only meaningful on an otherwise idle machine: this process alone keeps
    # the 1-minute load near 1.
    load = max(load_before, os.getloadavg()[0])
    compared: dict[str, float] = {}
    if embedder is not None and matcher.semantic:
        compared = compare_latency(entries, cases, policy, embedder, baseline)
    return {
        "dataset": dataset,
        "kb": kb,
        "semantic": int(matcher.semantic),
        "entries": len(entries),
        "phrasings": len(phrasings),
        **report,
        "nn_top1": nearest_phrasing_top1(matcher, cases, embedder),
        "kb_embed_s": round(embed_s, 2),
        "build_s": round(build_s, 2),
        "calibrate_s": round(calibrate_s, 2),
        "answer_threshold": policy.answer_threshold,
        "load_1m": round(load, 2),
        **compared,
    }


def nearest_phrasing_top1(
    matcher: Matcher, cases: Sequence[EvalCase], embedder: Embedder | None
) -> float | None:
    """Top-1 of the plain baseline: the entry of the phrasing with the highest MiniLM cosine,
    or, for a lexical matcher, the highest TF-IDF cosine."""
    scoped = [case for case in cases if case.expected_id is not None]
    if not scoped:
        return None
    questions = [case.question for case in scoped]
    vectors = matcher.phrasing_vectors
    if vectors is not None and embedder is not None:
        inner = embedder.inner if isinstance(embedder, CachedEmbedder) else embedder
        queries = inner.encode(questions)  # batched: not a latency
        best = matcher.phrasing_entries[np.argmax(queries @ vectors.T, axis=1)]
    else:
        tfmax = LEXICAL.signals.index("tfmax")
        best = np.argmax(matcher.signals(questions, None)[:, :, tfmax], axis=1)
    hits = sum(
        matcher.entry_ids[entry] == case.expected_id
        for entry, case in zip(best.tolist(), scoped, strict=True)
    )
    return round(hits / len(scoped), 4)


def compare_latency(
    entries: Entries,
    cases: Sequence[EvalCase],
    policy: Policy,
    embedder: Embedder,
    baseline: Embedder | None,
) -> dict[str, float]:
    """Per-question latency, on the same questions, interleaved so that machine noise hits all
    alike: rank + decide through a fresh matcher (query embedding included; cmp_*), the bare
    query encoder alone (enc_*), and, when `baseline` (the PyTorch encoder) is given, rank +
    decide through a fresh matcher over the same knowledge-base vectors with it (base_*)."""
    inner = embedder.inner if isinstance(embedder, CachedEmbedder) else embedder
    matcher = Matcher(entries, embedder=embedder)
    runs: dict[str, Callable[[str], object]] = {
        "cmp": lambda q: policy.decide(matcher.rank(q, k=5)),
        "enc": lambda q: inner.encode([q]),
    }
    if baseline is not None:
        if isinstance(embedder, CachedEmbedder):
            baseline = CachedEmbedder(baseline, embedder.cache)
        base_matcher = Matcher(entries, embedder=baseline)
        runs["base"] = lambda q: policy.decide(base_matcher.rank(q, k=5))
    names = list(runs)
    picked = np.random.default_rng(1).permutation(len(cases))[:BASELINE_QUESTIONS]
    times: dict[str, list[float]] = {name: [] for name in names}
    for turn, index in enumerate(picked.tolist()):
        question = cases[index].question
        for name in names[turn % len(names) :] + names[: turn % len(names)]:
            started = time.perf_counter()
            runs[name](question)
            times[name].append((time.perf_counter() - started) * 1000.0)
    result: dict[str, float] = {}
    for name in names:
        result[f"{name}_p50_ms"] = round(float(np.percentile(times[name], 50)), 2)
        result[f"{name}_p99_ms"] = round(float(np.percentile(times[name], 99)), 2)
    return result


def print_table(rows: Sequence[Mapping[str, float | int | str | None]]) -> None:
    headers = (
        "dataset",
        "kb",
        "phrasings",
        *COLUMNS,
        "kb_embed_s",
        "build_s",
        "calibrate_s",
        "load_1m",
    )

    def cell(value: float | int | str | None) -> str:
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    table = [[cell(row.get(h)) for h in headers] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in table)) for i, h in enumerate(headers)]
    print("  ".join(h.rjust(w) for h, w in zip(headers, widths, strict=True)))
    for r in table:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


# --- weight fitting (--fit) -------------------------------------------------------------------


@dataclass
class HeldOutSignals:
    signals: F64  # (questions, entries, signals)
    sizes: F64  # (questions, entries): phrasings per entry in the matcher that ranked it
    labels: npt.NDArray[np.int64]  # right entry, or -1 for "none of these"


def held_out_signals(
    matcher: Matcher,
    oos: Sequence[str],
    oos_vectors: F32 | None,
    *,
    semantic: bool,
    folds: int = 5,
    seed: int = 0,
) -> tuple[HeldOutSignals, HeldOutSignals]:
    """Signals of every phrasing ranked against a matcher built without its fold, and of the
    out-of-scope questions ranked against the first fold's matcher (lexical signals only
    unless `semantic`)."""
    labels = matcher.phrasing_entries
    vectors = matcher.phrasing_vectors if semantic else None
    oos_vectors = oos_vectors if semantic else None
    texts = matcher.phrasings
    rng = np.random.default_rng(seed)
    assign = np.empty(labels.size, dtype=np.int64)
    start = 0
    for size in matcher.entry_sizes.tolist():
        assign[start : start + size] = rng.permutation(size) % folds
        start += size
    parts: list[tuple[F32, F64, npt.NDArray[np.int64]]] = []
    oos_part: HeldOutSignals | None = None
    for fold in range(folds):
        held = np.flatnonzero(assign == fold)
        sub = matcher.subset(assign != fold)
        sizes = np.repeat(sub.entry_sizes[None, :].astype(np.float64), held.size, axis=0)
        signals = sub.signals([texts[i] for i in held], None if vectors is None else vectors[held])
        parts.append((signals, sizes, labels[held]))
        if oos_part is None:
            oos_signals = sub.signals(oos, oos_vectors)
            oos_part = HeldOutSignals(
                oos_signals.astype(np.float64),
                np.repeat(sub.entry_sizes[None, :].astype(np.float64), len(oos), axis=0),
                np.full(len(oos), -1, dtype=np.int64),
            )
    assert oos_part is not None
    return (
        HeldOutSignals(
            np.concatenate([p[0] for p in parts]).astype(np.float64),
            np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]),
        ),
        oos_part,
    )


def _design(part: HeldOutSignals) -> F64:
    """Per (question, class) features for the conditional-logit fit: [signals, signals·g, 0]
    for entries, [0, 0, 1] for the extra "none of these" class."""
    low, high = SIZE_RANGE
    g = np.log(np.clip(part.sizes, low, high) / 10.0)[:, :, None]
    n, e, k = part.signals.shape
    design = np.zeros((n, e + 1, 2 * k + 1))
    design[:, :e, :k] = part.signals
    design[:, :e, k : 2 * k] = part.signals * g
    design[:, e, 2 * k] = 1.0
    return design


def fit_weights(
    groups: Sequence[tuple[HeldOutSignals, HeldOutSignals]],
    *,
    oos_weight: float = 0.1,
    l2: float = 1e-4,
) -> F64:
    """Newton's method on the (convex) mean held-out cross-entropy over the groups."""
    designs = [(_design(a), a.labels, _design(b), b.labels) for a, b in groups]
    dim = designs[0][0].shape[2]
    theta = np.zeros(dim)
    theta[: (dim - 1) // 2] = 1.0

    def objective(theta: F64) -> tuple[float, F64, F64]:
        loss, grad, hess = 0.0, np.zeros(dim), np.zeros((dim, dim))
        for design, labels, oos_design, oos_labels in designs:
            for x, y, weight in ((design, labels, 1.0), (oos_design, oos_labels, oos_weight)):
                logits = x @ theta
                logits -= logits.max(axis=1, keepdims=True)
                p = np.exp(logits)
                p /= p.sum(axis=1, keepdims=True)
                target = np.where(y < 0, x.shape[1] - 1, y)
                rows = np.arange(len(y))
                scale = weight / (len(y) * len(designs))
                loss -= scale * float(np.log(p[rows, target] + 1e-300).sum())
                mean = np.einsum("nc,ncd->nd", p, x)
                grad += scale * (mean - x[rows, target]).sum(axis=0)
                hess += scale * (
                    np.einsum("nc,ncd,nce->de", p, x, x) - np.einsum("nd,ne->de", mean, mean)
                )
        loss += l2 * float(theta @ theta)
        return loss, grad + 2 * l2 * theta, hess + 2 * l2 * np.eye(dim)

    loss, grad, hess = objective(theta)
    for _ in range(50):
        step = np.linalg.solve(hess, grad)
        size = 1.0
        while size > 1e-4:
            candidate = theta - size * step
            new_loss, new_grad, new_hess = objective(candidate)
            if new_loss <= loss:
                break
            size /= 2
        else:
            break
        theta, loss, grad, hess = candidate, new_loss, new_grad, new_hess
        if float(np.abs(size * step).max()) < 1e-6:
            break
    return theta


def run_fit(data: Path, embedder: Embedder | None) -> None:
    other = {"banking77": "hwu64", "hwu64": "banking77"}
    semantic: list[tuple[HeldOutSignals, HeldOutSignals]] = []
    lexical: list[tuple[HeldOutSignals, HeldOutSignals]] = []
    for dataset in DATASETS:
        rng = np.random.default_rng(0)
        oos_all = [p for _, ps in read_kb(data / other[dataset] / "kb-10shot.tsv") for p in ps]
        oos = [oos_all[i] for i in rng.permutation(len(oos_all))[:400]]
        oos_vectors = None if embedder is None else embedder.encode(oos)
        for kb in KBS:
            started = time.perf_counter()
            matcher = Matcher(read_kb(data / dataset / f"kb-{kb}.tsv"), embedder=embedder)
            if matcher.semantic:
                semantic.append(held_out_signals(matcher, oos, oos_vectors, semantic=True))
            lexical.append(held_out_signals(matcher, oos, None, semantic=False))
            print(f"{dataset} {kb}: signals in {time.perf_counter() - started:.1f} s", flush=True)
    for name, groups in (("SEMANTIC", semantic), ("LEXICAL", lexical)):
        if not groups:
            continue
        theta = fit_weights(groups)
        k = (theta.size - 1) // 2
        weights, slopes, none = theta[:k], theta[k : 2 * k], float(theta[-1])
        print(f"{name} = Combiner(")
        print(f"    weights={tuple(round(float(v), 3) for v in weights)},")
        print(f"    slopes={tuple(round(float(v), 3) for v in slopes)},")
        print(f"    none={round(none, 3)},")
        print(")")
        for (part, _), (dataset, kb) in zip(
            groups, [(d, b) for d in DATASETS for b in KBS], strict=True
        ):
            logits = _design(part)[:, :-1, :] @ theta
            top1 = float((logits.argmax(axis=1) == part.labels).mean())
            print(f"  held-out top-1 {dataset} {kb}: {top1:.3f}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dataset", choices=[*DATASETS, "all"], default="all")
    parser.add_argument("--kb", choices=[*KBS, "all"], default="all")
    parser.add_argument("--json", action="store_true", help="print JSON lines")
    parser.add_argument("--lexical", action="store_true", help="no embedder (lexical fallback)")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--threads", type=int, default=None, help="encoder threads (1)")
    parser.add_argument(
        "--backend",
        choices=["onnx", "torch"],
        default="onnx",
        help="the encoder: ONNX Runtime as served (default), or PyTorch",
    )
    parser.add_argument(
        "--no-baseline",
        action="store_true",
        help="skip timing the PyTorch encoder beside ONNX (base_p50_ms/base_p99_ms)",
    )
    parser.add_argument(
        "--cache", type=Path, default=CACHE_DIR, help=f"embedding cache folder ({CACHE_DIR})"
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--fit", action="store_true", help="re-derive the signal weights")
    parser.add_argument(
        "--oos",
        type=int,
        default=0,
        metavar="N",
        help="add N of the other dataset's questions as out-of-scope cases",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    cache = NpzEmbeddingCache(args.cache)
    embedder: Embedder | None = None
    baseline: Embedder | None = None
    load_s = base_load_s = 0.0
    if not args.lexical:
        started = time.perf_counter()
        if args.backend == "onnx":  # the export is kept beside the embedding cache
            inner = load_embedder(args.model, threads=args.threads, cache_dir=args.cache / "models")
        else:
            inner = load_torch_embedder(args.model, threads=args.threads)
        load_s = time.perf_counter() - started
        embedder = CachedEmbedder(inner, cache) if inner else None
        if inner is not None and args.backend == "onnx" and not args.no_baseline and not args.fit:
            started = time.perf_counter()
            baseline = load_torch_embedder(args.model, threads=args.threads)
            base_load_s = time.perf_counter() - started
    try:
        if args.fit:
            run_fit(args.data, embedder)
            return 0
        datasets = DATASETS if args.dataset == "all" else (args.dataset,)
        kbs = KBS if args.kb == "all" else (args.kb,)
        rows = []
        for dataset in datasets:
            for kb in kbs:
                rows.append(
                    run_one(
                        args.data, dataset, kb, embedder=embedder, oos=args.oos, baseline=baseline
                    )
                )
                if args.json:
                    print(json.dumps({**rows[-1], "model_load_s": round(load_s, 2)}), flush=True)
    finally:
        cache.save()
    if not args.json:
        model = "lexical only" if embedder is None else f"{args.model} on {args.backend}"
        print(f"model: {model}; load {load_s:.1f} s; cache: {args.cache}")
        if baseline is not None:
            print(
                f"baseline: PyTorch (load {base_load_s:.1f} s); cmp_* = {args.backend} and base_* ="
                f" PyTorch, the same {BASELINE_QUESTIONS} questions per row, interleaved"
            )
        print_table(rows)
        if any(float(row["load_1m"] or 0) > 1.6 for row in rows):
            print("note: the machine was busy (load_1m > 1.6): latencies are inflated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
