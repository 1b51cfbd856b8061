"""One worker process of the multi-process outbox test (tests/store/test_multiprocess.py)::

    python -m tests.auxil.outbox_worker DATABASE_URL SLACK_API_URL --expect 600 [--threads 2]
        [--rate 200] [--deadline 45]

Runs `--threads` outbox workers against the shared database and Slack, prints `ready` once
they run, and stops when the database holds `--expect` deliveries and none is pending or being
sent (or when the deadline passes). Then prints `posted N` (what this process posted) and
exits 0 when everything was settled, 1 otherwise.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time

from slack_sdk import WebClient
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from bot.channels.slack.sender import SlackSender, outbox_client
from bot.core.messages import Message
from bot.core.outbox import Limits, Outbox, SendResult
from bot.store.db import make_engine
from bot.store.models import Delivery
from tests.auxil.outbox import renderer


class CountingSender(SlackSender):
    """The real Slack sender, counting the posts Slack accepted from this process."""

    def __init__(self, client: WebClient) -> None:
        super().__init__(client)
        self.posted = 0
        self._lock = threading.Lock()

    def post(self, *, recipient: str, message: Message, delivery_id: int) -> SendResult:
        result = super().post(recipient=recipient, message=message, delivery_id=delivery_id)
        if result.ok:
            with self._lock:
                self.posted += 1
        return result


def settled(db: Engine, expect: int) -> bool:
    with Session(db) as session:
        total = session.exec(select(func.count()).select_from(Delivery)).one()
        open_rows = session.exec(
            select(func.count()).where(col(Delivery.state).in_(["pending", "sending"]))
        ).one()
    return total >= expect and open_rows == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("database_url")
    parser.add_argument("slack_url")
    parser.add_argument("--expect", type=int, required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--deadline", type=float, default=45.0)
    args = parser.parse_args(argv)

    db = make_engine(args.database_url)
    client = outbox_client(token="xoxb-test-token", base_url=args.slack_url)
    client.proxy = None  # loopback only, whatever the environment says
    sender = CountingSender(client)
    outbox = Outbox(
        db=db,
        senders={"slack": sender},
        renderers={"announcement": renderer(db)},
        limits=Limits(posts_per_second=args.rate, burst=args.rate / 10),
    )
    stop = threading.Event()
    workers = [
        threading.Thread(target=outbox.run, args=(stop,), kwargs={"idle": 0.05, "batch": 5})
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
    db.dispose()
    return 0 if done else 1


if __name__ == "__main__":
    sys.exit(main())
