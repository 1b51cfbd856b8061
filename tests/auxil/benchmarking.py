"""What the benchmarks that run `mobilize run --http` in a child process share: a free port,
the child's settings against the loopback Slack, its health, percentiles."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.request import ProxyHandler, build_opener

from tests.slack.fake_slack import BOT_TOKEN
from tests.slack.signing import SIGNING_SECRET

_OPENER = build_opener(ProxyHandler({}))  # loopback only, whatever the environment says


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def healthy(port: int) -> bool:
    """Whether the child on `port` answers /healthz with 200 (it is ready)."""
    try:
        with _OPENER.open(f"http://127.0.0.1:{port}/healthz", timeout=1) as response:
            return int(response.status) == 200
    except OSError:
        return False


def bot_environment(slack_url: str, folder: Path) -> dict[str, str]:
    """The child's settings: the loopback Slack, a SQLite file and the example content in
    `folder`, the default model, no proxies, no Teams."""
    env = dict(os.environ)
    env.update(
        {
            "SLACK_API_URL": slack_url,
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "DATABASE_URL": f"sqlite:///{folder / 'mobilize.db'}",
            "MOBILIZE_CONTENT_DIR": str(folder / "content"),
            "MOBILIZE_SURVEY_SECRET": "benchmark",
            "MOBILIZE_LOG_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    for name in ("SLACK_APP_TOKEN", "MOBILIZE_EMBEDDING_MODEL", "TEAMS_APP_ID"):
        env.pop(name, None)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env.pop(name, None)
    return env


def percentile(values: list[float], share: float) -> float:
    """The value at `share` (0–1) of the sorted values, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]
