"""The child process of the Teams kill test (tests/store/test_teams_kill.py)::

    python -m tests.auxil.teams_worker DATABASE_URL --expect 1000 [--threads 4] [--rate 45]
        [--lease 2] [--batch 1] [--deadline 60]

The running bot's outbox on Teams: `connect_teams` builds the Teams parts from the TEAMS_*
settings in the environment (the parent's loopback Teams), and `--threads` outbox workers
drain the `platform="teams"` rows through its real `TeamsSender`, under `teams_limits` at
TEAMS_SEND_RATE=`--rate`. Prints `ready` once they run, and stops when the database holds
`--expect` deliveries and every one is settled (sent, failed, unknown…: none pending or being
sent). Then prints `posted N` (the posts the connector accepted from this process) and exits 0,
or 1 when the deadline passed first. The test kills it with SIGKILL and starts it again.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from datetime import datetime, timedelta

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from bot.channels.teams.platform import connect_teams
from bot.config import load_settings
from bot.core.messages import Message
from bot.core.outbox import Outbox, Sender, SendResult
from bot.core.platforms import TEAMS
from bot.store.db import make_engine
from bot.store.models import Delivery
from tests.auxil.outbox import renderer


class CountingSender:
    """A `Sender` in front of the real one, counting the posts Teams accepted from it."""

    def __init__(self, inner: Sender) -> None:
        self.inner = inner
        self.posted = 0
        self._lock = threading.Lock()

    def post(self, *, recipient: str, message: Message, delivery_id: int) -> SendResult:
        result = self.inner.post(recipient=recipient, message=message, delivery_id=delivery_id)
        if result.ok:
            with self._lock:
                self.posted += 1
        return result

    def update(self, *, channel: str, ts: str, message: Message) -> SendResult:
        return self.inner.update(channel=channel, ts=ts, message=message)

    def delete(self, *, channel: str, ts: str) -> SendResult:
        return self.inner.delete(channel=channel, ts=ts)

    def find(
        self, *, recipient: str, channel: str, delivery_id: int, since: datetime
    ) -> SendResult:
        return self.inner.find(
            recipient=recipient, channel=channel, delivery_id=delivery_id, since=since
        )


def settled(db: Engine, expect: int) -> bool:
    """The database holds `expect` rows and none is pending or being sent."""
    with Session(db) as session:
        total = session.exec(select(func.count()).select_from(Delivery)).one()
        open_rows = session.exec(
            select(func.count()).where(col(Delivery.state).in_(["pending", "sending"]))
        ).one()
    return total >= expect and open_rows == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("database_url")
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--rate", type=float, default=45.0, help="TEAMS_SEND_RATE")
    parser.add_argument("--lease", type=float, default=2.0, help="seconds")
    parser.add_argument(
        "--batch", type=int, default=1, help="rows each worker claims at a time (the bot: 10)"
    )
    parser.add_argument("--deadline", type=float, default=60.0)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    settings = load_settings(DATABASE_URL=args.database_url, TEAMS_SEND_RATE=args.rate)
    db = make_engine(args.database_url)
    teams = connect_teams(settings, db)
    sender = CountingSender(teams.sender)
    outbox = Outbox(
        db=db,
        senders={TEAMS: sender},
        renderers={"announcement": renderer(db)},
        platform_limits={TEAMS: teams.limits},
        lease=timedelta(seconds=args.lease),
    )
    stop = threading.Event()
    workers = [
        threading.Thread(
            target=outbox.run, args=(stop,), kwargs={"idle": 0.05, "batch": args.batch}
        )
        for _ in range(args.threads)
    ]
    for worker in workers:
        worker.start()
    print("ready", flush=True)
    deadline = time.monotonic() + args.deadline
    done = False
    while not done and time.monotonic() < deadline:
        time.sleep(0.05)
        done = settled(db, args.expect)
    stop.set()
    for worker in workers:
        worker.join(timeout=20)
    print(f"posted {sender.posted}", flush=True)
    teams.close()
    db.dispose()
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
