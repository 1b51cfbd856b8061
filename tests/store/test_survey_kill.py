"""Survey invitations are exactly-once across kill -9: a child process (the running bot's
survey side and outbox worker, tests/auxil/survey_worker.py) is killed with SIGKILL at random
moments while it opens a run and sends its invitations, and started again; at the end every
invited person has exactly one invitation, and nobody of the audience was left out.

Opening a run (participation ledger, run state, outbox rows) is one transaction: a kill leaves
the run planned (opened again on restart) or open with all its invitations queued. A kill
between Slack storing a post and the worker recording it leaves the row in doubt: after its
lease (2 s here) the restarted worker finds the message by its metadata instead of resending."""

from __future__ import annotations

import functools
import random
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col
from sqlmodel import select as query

from bot.core.surveys.runs import start_run
from bot.store.models import Delivery, SurveyInvitation, SurveyRun
from tests.auxil.loopback import LoopbackSlack
from tests.auxil.processes import kill, wait_for_line
from tests.auxil.surveys import SECRET, load_survey

ROOT = Path(__file__).resolve().parents[2]
USERS = 100
KILLS = 3
SEED = 9


def run_state(db: Engine) -> tuple[str, int, Counter[str]]:
    with Session(db) as session:
        run = session.exec(query(SurveyRun)).one()
        invited = len(session.exec(query(SurveyInvitation.id)).all())
        states = Counter(
            session.exec(
                query(Delivery.state).where(col(Delivery.survey_send_id).is_not(None))
            ).all()
        )
    return run.state, invited, states


def test_survey_invitations_survive_sigkill_exactly_once(
    database_url: str, db: Engine, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    survey = load_survey(tmp_path)
    now = datetime.now(UTC)
    with Session(db) as session:
        start_run(
            session=session,
            survey=survey,
            key="pulse@kill-test",
            audience=["everyone"],
            starts_at=now - timedelta(seconds=1),
            closes_at=now + timedelta(days=5),
            by="U0OWNER",
            secret=SECRET,
        )
        session.commit()
    users = [f"U{n:05d}" for n in range(USERS)]
    figures: list[str] = []
    started = time.monotonic()
    slack = LoopbackSlack()
    with slack:
        for user in users:
            slack.add_user(user)

        def start(linger: float = 0.0) -> subprocess.Popen[str]:
            command = [sys.executable, "-m", "tests.auxil.survey_worker", database_url]
            command += [slack.url, str(tmp_path), f"--users={USERS}", "--lease=2"]
            command += ["--deadline=40", f"--linger={linger}"]
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert wait_for_line(process, timeout=30) == "ready"
            return process

        for life in range(KILLS):
            process = start(linger=0.3 if life == 0 else 0.0)
            try:
                if life == 0:
                    # Inside the transaction that opens the run: the ledger is written, the
                    # invitations not yet queued (the child lingers there 0.3 s).
                    assert wait_for_line(process, timeout=20) == "inviting"
                    time.sleep(rng.uniform(0.0, 0.25))
                    kill(process)
                elif life == 1:
                    # At a random moment: opening the run or sending its first invitations.
                    time.sleep(rng.uniform(0.0, 0.4))
                    kill(process)
                else:
                    # The worst moment: Slack stored the post, the worker has not heard back.
                    time.sleep(rng.uniform(0.0, 1.0))
                    slack.on_post = functools.partial(kill, process)
                    process.wait(timeout=30)
            finally:
                kill(process)
            state, invited, states = run_state(db)
            figures.append(f"kill {life + 1}: run {state}, {invited} invited, {dict(states)}")
        process = start()
        try:
            out, err = process.communicate(timeout=60)
        finally:
            kill(process)
        assert process.returncode == 0, err[-3000:]
        assert out.strip().endswith("done")

    accepted = [c for c in slack.calls_to("chat.postMessage") if c.ok]
    per_user = Counter(str(call.params["channel"]) for call in accepted)
    assert set(per_user) == set(users)  # zero lost
    assert max(per_user.values()) == 1  # zero duplicates
    state, invited, states = run_state(db)
    assert (state, invited, states) == ("open", USERS, Counter({"sent": USERS}))
    print(*figures, f"{time.monotonic() - started:.1f} s", sep="\n")
