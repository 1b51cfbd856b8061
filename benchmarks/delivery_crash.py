"""Fan-out with the sending process killed (SIGKILL) three times and restarted: 0 duplicates,
0 lost.

The setup of benchmarks/delivery_fanout.py (a loopback Slack in this process with N users and
chat.postMessage limited to R/s; the real Service in a child process), but the child is killed
with SIGKILL at random moments while it is sending (seeded: --seed) and started again each
time; the last one runs until every delivery is settled. The loopback Slack lives in this
process, so it survives the kills and knows exactly what was posted.

Rows a kill leaves `sending` are in doubt: the restarted process waits for their lease to run
out (MOBILIZE_LEASE_SECONDS, 30 s here; 120 s by default), then looks for each one's message in
the recipient's conversation (message metadata carries the delivery id) before resending.
Run from the repository root:

    .venv/bin/python benchmarks/delivery_crash.py [--users 3000] [--rate 50] [--kills 3]
                                                  [--seed 1] [--database-url …]

Exits 1 unless every eligible person got exactly one message and every delivery is `sent`.
"""

from __future__ import annotations

import argparse
import functools
import random
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "benchmarks"):  # runnable as a script or with -m, from the root
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from delivery_fanout import (  # noqa: E402
    LEASE_SECONDS,
    Child,
    PostCounter,
    child_environment,
    child_main,
    delivery_states,
    queue_send,
    send_state,
    start_child,
    verdict,
    wait_until_done,
    workspace,
)
from sqlalchemy import Engine  # noqa: E402
from sqlmodel import Session, col, select  # noqa: E402

from bot.store.models import Delivery  # noqa: E402


@dataclass
class Kill:
    life: int
    after: float  # seconds after that life's first post
    sent: int  # messages Slack had accepted in all at the kill
    in_doubt: int  # rows left `sending`
    posted_unrecorded: int  # of those, already posted: a resend would be a duplicate


def kill_and_reap(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait()


def posted_delivery_ids(counter: PostCounter) -> set[int]:
    """Delivery ids of every message Slack accepted (from the message metadata)."""
    ids = set()
    with counter.fake._cond:
        calls = list(counter.fake.calls)
    for call in calls:
        if call.method == "chat.postMessage" and call.ok:
            payload = (call.params.get("metadata") or {}).get("event_payload") or {}
            if "delivery_id" in payload:
                ids.add(int(payload["delivery_id"]))
    return ids


def sending_ids(db: Engine, send_id: int) -> set[int]:
    with Session(db) as session:
        rows = session.exec(
            select(Delivery.id).where(
                col(Delivery.send_id) == send_id, col(Delivery.state) == "sending"
            )
        ).all()
    return {int(row or 0) for row in rows}


def wait_for_posts(counter: PostCounter, above: int, child: Child, timeout: float) -> bool:
    """Until Slack has accepted more than `above` messages (this life has started sending)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.alive():
        if counter.update() > above:
            return True
        time.sleep(0.05)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3_000, help="active humans (3,000)")
    parser.add_argument(
        "--rate", type=float, default=50.0, help="chat.postMessage/s for the workspace (50)"
    )
    parser.add_argument("--workers", type=int, default=4, help="MOBILIZE_WORKERS (4)")
    parser.add_argument("--kills", type=int, default=3, help="SIGKILLs (3)")
    parser.add_argument("--seed", type=int, default=1, help="for the kill moments (1)")
    parser.add_argument(
        "--database-url", default="", help="a scratch database (default: a temporary SQLite file)"
    )
    parser.add_argument(
        "--lease", type=float, default=LEASE_SECONDS, help="MOBILIZE_LEASE_SECONDS (30)"
    )
    parser.add_argument(
        "--anywhere",
        action="store_true",
        help="kill at the random moment itself, not in the next post's answer",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main()

    rng = random.Random(args.seed)
    expected_seconds = args.users / args.rate
    # Each life is killed within its share of the expected sending time, so all the kills
    # land while messages are going out and the last life still has work to do.
    latest = max(1.0, expected_seconds / (args.kills + 1))
    kills: list[Kill] = []
    with workspace(args) as (fake, expected, db, url, content, folder):
        send_id = queue_send(db)
        env = child_environment(
            slack_url=fake.url,
            database_url=url,
            content_dir=content,
            rate=args.rate,
            workers=args.workers,
            lease=args.lease,
        )
        print(
            f"{args.users:,} users, chat.postMessage limited to {args.rate:g}/s, "
            f"{args.workers} workers, lease {args.lease:g} s, "
            f"{'SQLite' if url.startswith('sqlite') else url.split(':')[0]}; "
            f"{args.kills} SIGKILLs, each 0–{latest:.0f} s into a life's sending (seed {args.seed})"
        )
        counter = PostCounter(fake)
        started = time.monotonic()
        log_path = folder / "child.log"
        script = Path(__file__).resolve()
        problems: list[str] = []
        in_doubt: set[int] = set()  # rows a kill left `sending`
        unrecorded: set[int] = set()  # of those, posted before the kill
        for life in range(args.kills):
            child = start_child(script, env, log_path)
            before = counter.update()
            if not wait_for_posts(counter, before, child, timeout=120 + args.lease):
                problems.append(f"life {life + 1} sent nothing")
                child.terminate()
                break
            after = rng.uniform(0.0, latest)
            time.sleep(after)
            if args.anywhere:
                child.kill()
            else:
                # The worst moment: Slack has stored a message, its sender has not heard back.
                fake.on_post = functools.partial(kill_and_reap, child.process)
                child.process.wait()
            counter.update()
            doubtful = sending_ids(db, send_id) - in_doubt
            posted = posted_delivery_ids(counter)
            in_doubt |= doubtful
            unrecorded |= doubtful & posted
            kills.append(Kill(life + 1, after, counter.ok, len(doubtful), len(doubtful & posted)))
            print(
                f"kill {life + 1}: {after:5.1f} s into sending, at {time.monotonic() - started:5.1f} s; "
                f"{counter.ok:,} sent so far; {len(doubtful)} more rows left `sending`, "
                f"{len(doubtful & posted)} of them already posted"
            )
        child = start_child(script, env, log_path)
        deadline = time.monotonic() + 180 + 3 * args.users / args.rate + 2 * args.lease
        states = wait_until_done(db, send_id, len(expected), deadline, child)
        finished = time.monotonic() - started
        # Let a scheduler tick mark the send done.
        for _ in range(20):
            if send_state(db, send_id) == "done":
                break
            time.sleep(0.5)
        ended_state = send_state(db, send_id)
        child.terminate()
        counter.update()
        states = delivery_states(db, send_id)
        log_tail = child.log_tail()

    duplicates, lost = counter.duplicates_and_lost(expected)
    all_sent = states.get("sent", 0) == len(expected) and len(states) == 1
    posted_unrecorded = len(unrecorded)
    ok = duplicates == 0 and lost == 0 and all_sent and not problems and len(kills) == args.kills
    print()
    print(f"{'kills':<26} {len(kills)} (SIGKILL), restarted each time")
    print(
        f"{'in doubt after the kills':<26} {len(in_doubt)} rows `sending`, "
        f"{posted_unrecorded} already posted (reconciled from message metadata, not resent)"
    )
    print(
        f"{'Slack calls':<26} chat.postMessage {counter.requests:,} "
        f"({counter.ok:,} ok, {counter.rejected} × 429); "
        + ", ".join(f"{name} {n}" for name, n in sorted(counter.other_calls.items()))
    )
    print(
        f"{'whole run':<26} {finished:.1f} s (no kills: about {expected_seconds:.0f} s of sending)"
    )
    print(f"{'database':<26} {states}; send {ended_state}")
    print(
        f"{'duplicates / lost':<26} {duplicates} / {lost} of {len(expected):,} eligible  [{verdict(ok)}]"
    )
    if problems:
        print("problems: " + "; ".join(problems))
    if not ok:
        if log_tail:
            print("sending process log (tail):\n" + log_tail)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
