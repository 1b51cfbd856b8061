"""The child process of the survey kill test (tests/store/test_survey_kill.py)::

    python -m tests.auxil.survey_worker DATABASE_URL SLACK_API_URL CONTENT_DIR --users N
        [--lease 2] [--rate 45] [--deadline 60]

The running bot's survey side and its outbox worker: ticks (which opens the due run: audience,
participation ledger, invitations queued) and drains the outbox to the loopback Slack, until
the run is open and every invitation is settled. Prints `ready` before the first tick and
`done` at the end; exits 0 when everything was settled in time, 1 otherwise. The test kills
it with SIGKILL at random moments and starts it again.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from bot.channels.slack.sender import SlackSender, outbox_client
from bot.core.outbox import SLACK, Limits, Outbox
from bot.core.surveys import runner as runner_module
from bot.core.surveys.runner import SurveyRunner
from bot.store.db import make_engine
from bot.store.models import Delivery, SurveyInvitation, SurveyRun
from tests.auxil.surveys import SECRET, FakeDirectory, RecordingChat, person


def settled(db: Engine) -> bool:
    with Session(db) as session:
        run = session.exec(select(SurveyRun)).first()
        if run is None or run.state != "open":
            return False
        invited = session.exec(select(func.count()).select_from(SurveyInvitation)).one()
        rows = session.exec(
            select(func.count()).where(col(Delivery.survey_send_id).is_not(None))
        ).one()
        open_rows = session.exec(
            select(func.count()).where(col(Delivery.state).in_(["pending", "sending"]))
        ).one()
    return rows == invited and open_rows == 0


def linger(seconds: float) -> None:
    """Make the runner pause inside open_run's transaction, after `invite` (the moment a kill
    used to leave an open run without invitations)."""
    original = runner_module.invite

    def invite(**arguments: Any) -> Any:
        result = original(**arguments)
        print("inviting", flush=True)
        time.sleep(seconds)
        return result

    runner_module.invite = invite


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("database_url")
    parser.add_argument("slack_url")
    parser.add_argument("content_dir", type=Path)
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--lease", type=float, default=2.0)
    parser.add_argument("--rate", type=float, default=45.0)
    parser.add_argument("--deadline", type=float, default=60.0)
    parser.add_argument(
        "--linger",
        type=float,
        default=0.0,
        help="seconds to stay inside the opening transaction, between writing the ledger and "
        "queueing the invitations (printing `inviting`), so a kill can land there",
    )
    args = parser.parse_args(argv)
    if args.linger:
        linger(args.linger)

    db = make_engine(args.database_url)
    directory = FakeDirectory([person(f"U{n:05d}") for n in range(args.users)])
    runner = SurveyRunner(
        db=db,
        content_dir=args.content_dir,
        directory=directory,
        chat=RecordingChat(),
        secret=SECRET,
    )
    assert runner.load() == []
    client = outbox_client(token="xoxb-test-token", base_url=args.slack_url)
    client.proxy = None  # loopback only, whatever the environment says
    outbox = Outbox(
        db=db,
        senders={SLACK: SlackSender(client)},
        renderers=runner.renderers(),
        limits=Limits(posts_per_second=args.rate, burst=max(2.0, args.rate / 10)),
        lease=timedelta(seconds=args.lease),
    )
    print("ready", flush=True)
    deadline = time.monotonic() + args.deadline
    done = False
    while not done and time.monotonic() < deadline:
        runner.tick()
        if not outbox.drain_once(batch=5):
            time.sleep(0.05)
        done = settled(db)
    print("done" if done else "unsettled", flush=True)
    db.dispose()
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
