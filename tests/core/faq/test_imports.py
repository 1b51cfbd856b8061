"""What the serving process imports: the heavy libraries only where they are used."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
# torch: export subprocess only; scipy: survey reports (imported when one is computed);
# scikit-learn: tests and benchmarks only; the Teams SDK: only when Teams is configured.
HEAVY = ("torch", "sentence_transformers", "scipy", "sklearn", "microsoft_teams")

PROGRAM = """
import json, sys
import numpy as np
import bot.cli, bot.service
from bot.core.faq.matcher import Matcher
from bot.core.faq.policy import calibrate

class Embedder:
    name = "fake"
    def encode(self, texts):
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, len(text) % 8] = 1.0
        return out

entries = [(f"e{i}", [f"question {i} {j}" for j in range(6)]) for i in range(8)]
for embedder in (Embedder(), None):
    matcher = Matcher(entries, embedder=embedder)
    calibrate(entries, embedder=embedder, matcher=matcher)
    matcher.rank("question 3")
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_serving_imports_no_heavy_library() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for name in ("SLACK_BOT_TOKEN", "TEAMS_APP_ID"):
        env.pop(name, None)
    done = subprocess.run(
        [sys.executable, "-c", PROGRAM],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    loaded = set(json.loads(done.stdout.splitlines()[-1]))
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))
