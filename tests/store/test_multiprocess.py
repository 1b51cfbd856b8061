"""Several processes drain one outbox on PostgreSQL: every recipient gets exactly one message.

Three OS processes (tests/auxil/outbox_worker.py), two worker threads each, share one
PostgreSQL schema and one loopback Slack. Runs only when TEST_DATABASE_URL is set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.auxil.outbox import deliveries, make_send
from tests.auxil.processes import wait_for_line
from tests.slack.fake_slack import FakeSlack

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 3
THREADS = 2
RECIPIENTS = 400
# Messages per second across every process: under the loopback Slack's workspace-wide cap
# (50/s), so the only 429 is the one the test injects.
RATE = 45

pytestmark = pytest.mark.skipif(
    not os.environ.get("TEST_DATABASE_URL"), reason="needs PostgreSQL: set TEST_DATABASE_URL"
)


def test_three_processes_deliver_one_large_send_exactly_once(database_url: str, db: Engine) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("several processes share the work on PostgreSQL only")
    users = [f"U{n:05d}" for n in range(RECIPIENTS)]
    processes: list[subprocess.Popen[str]] = []
    with FakeSlack() as slack:
        for user in users:
            slack.add_user(user)
        slack.rate_limit("chat.postMessage", retry_after=1)  # one 429: every process waits
        try:
            for _ in range(PROCESSES):
                processes.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "tests.auxil.outbox_worker",
                            database_url,
                            slack.url,
                            f"--expect={RECIPIENTS}",
                            f"--threads={THREADS}",
                            f"--rate={RATE}",
                            "--deadline=45",
                        ],
                        cwd=ROOT,
                        stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE,
                        text=True,
                    )
                )
            for process in processes:
                assert wait_for_line(process, timeout=30) == "ready"
            # Every worker of every process is polling before the first row exists.
            send_id, ids = make_send(db, users, now=datetime.now(UTC) - timedelta(seconds=1))
            outputs = [process.communicate(timeout=60) for process in processes]
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()

    for process, (_out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err[-3000:]
    posted = [int(re.findall(r"posted (\d+)", out)[-1]) for out, _err in outputs]
    assert sum(posted) == RECIPIENTS
    assert all(count > 0 for count in posted), posted  # the work really was shared

    accepted = [c for c in slack.calls_to("chat.postMessage") if c.ok]
    per_channel = Counter(str(call.params["channel"]) for call in accepted)
    assert set(per_channel) == set(users)
    assert max(per_channel.values()) == 1  # nobody got a second copy
    delivery_ids = Counter(
        int(call.params["metadata"]["event_payload"]["delivery_id"]) for call in accepted
    )
    assert sorted(delivery_ids) == sorted(ids) and max(delivery_ids.values()) == 1

    rows = deliveries(db, send_id)
    assert Counter(row.state for row in rows) == {"sent": RECIPIENTS}
    assert len({row.ts for row in rows}) == RECIPIENTS

    # The 429's Retry-After held every process: only posts already in flight when it came
    # back (at most about one per worker) landed in the second after it.
    (limited,) = [c for c in slack.calls_to("chat.postMessage") if c.status == 429]
    during = [c for c in accepted if limited.at < c.at < limited.at + 0.9]
    assert len(during) <= 2 * PROCESSES * THREADS, len(during)
