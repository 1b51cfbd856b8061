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
                                                  [--platform teams]

Exits 1 unless every eligible person got exactly one message and every delivery is `sent`.

With `--platform teams` the same fan-out and kills run against the loopback Teams
(tests/teams/: Bot Connector, Graph, identity) as well, after a Slack run with the same users,
rate, kills and seed as the baseline, and the figures are printed side by side. Everyone has
the app and a known 1:1 chat (their References rows are written first); the Service runs with
the TEAMS_* settings only (TEAMS_SEND_RATE=R; the loopback Teams allows the app 50 requests a
second per tenant, so R defaults to 40 there). Teams cannot read back what the bot sent: a row
a kill leaves in doubt becomes `unknown`, never resent silently. Once nothing is pending or
being sent, the benchmark settles those rows as an operator would (`resolve_unknown`: marked
sent when the person has the card, else resent) and waits for the resends.
"""

from __future__ import annotations

import argparse
import functools
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for folder in (ROOT, ROOT / "benchmarks"):  # runnable as a script or with -m, from the root
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from delivery_fanout import (  # noqa: E402
    LEASE_SECONDS,
    TERMINAL,
    Child,
    PostCounter,
    child_environment,
    child_main,
    database,
    delivery_states,
    prepare_content,
    prepare_database,
    queue_send,
    send_state,
    start_child,
    verdict,
    wait_until_done,
    workspace,
)
from sqlalchemy import Engine  # noqa: E402
from sqlmodel import Session, col, select  # noqa: E402

from bot.channels.teams.refs import Person, save_person  # noqa: E402
from bot.core.outbox import resolve_unknown  # noqa: E402
from bot.store.models import Delivery  # noqa: E402
from tests.teams.fake_connector import TENANT_ID, FakeTeams  # noqa: E402
from tests.teams.server import Answer, Request  # noqa: E402

TEAMS_RATE = 40.0  # the default rate with --platform teams: under the tenant's 50 requests/s


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


@dataclass
class Outcome:
    """One crash run's figures (the same for both platforms)."""

    platform: str
    expected: int  # eligible people
    kills: list[Kill]
    in_doubt: int  # rows the kills left `sending`
    posted_unrecorded: int  # of those, already posted
    requests: int  # post requests (chat.postMessage / SendToConversation)
    accepted: int
    rejected: int  # 429s
    throughput: float  # sustained posts per second (the best 5 s)
    settle_seconds: float  # from the first start until no row was pending or being sent
    duplicates: int  # at that moment
    lost: int
    unknown: int  # rows left `unknown` for an operator
    unknown_arrived: int  # of those, the person had the message
    final_duplicates: int  # after the operator settled the unknown rows (Slack: as above)
    final_lost: int
    finished: float  # the whole run, the operator's resends included
    states: dict[str, int]
    send_state: str
    other_calls: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    log_tail: str = ""

    @property
    def ok(self) -> bool:
        return (
            self.final_duplicates == 0
            and self.final_lost == 0
            and self.duplicates == 0
            and self.states.get("sent", 0) == self.expected
            and len(self.states) == 1
            and not self.problems
        )


def throughput(times: list[float], *, window: float = 5.0) -> float:
    """The sustained posting rate: the most posts accepted in any `window` seconds, per
    second (restarts, lease waits and the one-by-one resends after them do not dilute it)."""
    times = sorted(times)
    best, first = 0, 0
    for last, at in enumerate(times):
        while at - times[first] >= window:
            first += 1
        best = max(best, last - first + 1)
    return best / window


def settled_states(
    db: Engine, send_id: int, total: int, deadline: float, child: Child
) -> dict[str, int]:
    """Poll until no delivery of the send is pending or being sent (`unknown` counts as
    settled: it waits for an operator), the child died, or the deadline passed."""
    states: dict[str, int] = {}
    while time.monotonic() < deadline and child.alive():
        states = delivery_states(db, send_id)
        if sum(states.values()) >= total and not {"pending", "sending"} & set(states):
            break
        time.sleep(0.25)
    return states


def run_slack(args: argparse.Namespace, *, report: bool = True) -> Outcome:
    """The crash run on the loopback Slack (`report`: print each kill as it happens)."""
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
            f"Slack: {args.users:,} users, chat.postMessage limited to {args.rate:g}/s, "
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
            if report:
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
        with fake._cond:
            times = [c.at for c in fake.calls if c.method == "chat.postMessage" and c.ok]

    duplicates, lost = counter.duplicates_and_lost(expected)
    if len(kills) != args.kills:
        problems.append(f"{len(kills)} of {args.kills} kills")
    return Outcome(
        platform="Slack",
        expected=len(expected),
        kills=kills,
        in_doubt=len(in_doubt),
        posted_unrecorded=len(unrecorded),
        requests=counter.requests,
        accepted=counter.ok,
        rejected=counter.rejected,
        throughput=throughput(times),
        settle_seconds=finished,
        duplicates=duplicates,
        lost=lost,
        unknown=states.get("unknown", 0),
        unknown_arrived=0,
        final_duplicates=duplicates,
        final_lost=lost,
        finished=finished,
        states=states,
        send_state=ended_state,
        other_calls=dict(counter.other_calls),
        problems=problems,
        log_tail=log_tail,
    )


# --- Teams --------------------------------------------------------------------------------------


class KillableTeams(FakeTeams):
    """The loopback Teams with a hook the next SendToConversation runs once its card is
    stored, before the answer goes back (where a kill hurts most)."""

    on_send: Callable[[], None] | None = None

    def _send(self, request: Request, params: dict[str, str]) -> Answer:
        answer = super()._send(request, params)
        hook, self.on_send = self.on_send, None
        if hook is not None:
            hook()
        return answer

    def start(self) -> None:
        super().start()
        # A sender killed mid-request leaves the answer nowhere to go: not an error here.
        if self._server is not None:
            self._server.handle_error = lambda request, client_address: None  # type: ignore[method-assign]


class CardCounter:
    """Counts SendToConversation calls as they arrive, per 1:1 chat."""

    def __init__(self, teams: FakeTeams) -> None:
        self.teams = teams
        self.seen = 0
        self.ok_by_chat: Counter[str] = Counter()
        self.ok = 0
        self.rejected = 0
        self.requests = 0
        self.times: list[float] = []
        self.other_calls: Counter[str] = Counter()

    def update(self) -> int:
        with self.teams._cond:
            new = self.teams.calls[self.seen :]
            self.seen += len(new)
        for call in new:
            if call.operation != "SendToConversation":
                self.other_calls[call.operation] += 1
                continue
            self.requests += 1
            if call.status == 429:
                self.rejected += 1
            elif call.ok:
                self.ok += 1
                self.ok_by_chat[str(call.params["conversation_id"])] += 1
                self.times.append(call.at)
        return self.ok

    def duplicates_and_lost(self, chats: set[str]) -> tuple[int, int]:
        duplicates = sum(n - 1 for n in self.ok_by_chat.values() if n > 1)
        return duplicates, sum(1 for chat in chats if not self.ok_by_chat.get(chat))


def populate_teams(teams: FakeTeams, db: Engine, users: int) -> dict[str, str]:
    """N people with the app, each with a known 1:1 chat in References (as after they wrote
    to the bot once); returns Entra object id → chat id."""
    chats = {}
    with Session(db) as session:
        for n in range(users):
            user = teams.directory.add_user(
                f"user{n:06d}", f"User{n} Person{n}", app_installed=True
            )
            chat = teams.directory.personal_conversation_id(user)
            chats[user.id] = chat
            save_person(
                session=session,
                person=Person(
                    user.id, user.teams_id, user.display_name, TENANT_ID, chat, teams.url
                ),
            )
        session.commit()
    return chats


def rows_in(db: Engine, send_id: int, state: str) -> dict[int, str]:
    """The send's rows in `state`: id → recipient."""
    with Session(db) as session:
        rows = session.exec(
            select(Delivery.id, Delivery.recipient).where(
                col(Delivery.send_id) == send_id, col(Delivery.state) == state
            )
        ).all()
    return {int(row_id or 0): recipient for row_id, recipient in rows}


def wait_for_cards(counter: CardCounter, above: int, child: Child, timeout: float) -> bool:
    """Until Teams has accepted more than `above` cards (this life has started sending)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and child.alive():
        if counter.update() > above:
            return True
        time.sleep(0.05)
    return False


def teams_environment(teams: FakeTeams, env: dict[str, str], rate: float) -> dict[str, str]:
    """The Service's environment for Teams alone: the TEAMS_* settings of the loopback Teams."""
    env = {**env, **teams.settings(), "TEAMS_SEND_RATE": str(rate), "SLACK_BOT_TOKEN": ""}
    env.pop("SLACK_API_URL", None)
    return env


def run_teams(args: argparse.Namespace) -> Outcome:
    """The crash run on the loopback Teams, then the operator's settling of `unknown` rows."""
    rng = random.Random(args.seed)
    latest = max(1.0, args.users / args.rate / (args.kills + 1))
    kills: list[Kill] = []
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="mobilize-bench-") as tmp:
        folder = Path(tmp)
        content = prepare_content(folder / "content")
        with database(args.database_url, folder) as url, KillableTeams(preload=False) as teams:
            db = prepare_database(url)
            chats = populate_teams(teams, db, args.users)
            send_id = queue_send(db)
            env = child_environment(
                slack_url="",
                database_url=url,
                content_dir=content,
                rate=args.rate,
                workers=args.workers,
                lease=args.lease,
            )
            env = teams_environment(teams, env, args.rate)
            print(
                f"Teams: {args.users:,} users with the app, TEAMS_SEND_RATE {args.rate:g}/s "
                f"(tenant limit {teams.tenant_per_second}/s), {args.workers} workers, "
                f"lease {args.lease:g} s; the same kills (seed {args.seed})"
            )
            counter = CardCounter(teams)
            started = time.monotonic()
            log_path = folder / "child.log"
            script = Path(__file__).resolve()
            in_doubt: set[int] = set()
            unrecorded: set[int] = set()
            for life in range(args.kills):
                child = start_child(script, env, log_path)
                before = counter.update()
                if not wait_for_cards(counter, before, child, timeout=120 + args.lease):
                    problems.append(f"life {life + 1} sent nothing")
                    child.terminate()
                    break
                after = rng.uniform(0.0, latest)
                time.sleep(after)
                if args.anywhere:
                    child.kill()
                else:
                    # The worst moment: Teams has stored a card, its sender has not heard back.
                    teams.on_send = functools.partial(kill_and_reap, child.process)
                    child.process.wait()
                counter.update()
                sending = rows_in(db, send_id, "sending")
                doubtful = set(sending) - in_doubt
                posted = {i for i in doubtful if counter.ok_by_chat.get(chats[sending[i]])}
                in_doubt |= doubtful
                unrecorded |= posted
                kills.append(Kill(life + 1, after, counter.ok, len(doubtful), len(posted)))
            child = start_child(script, env, log_path)
            # Each row in doubt costs the reconcile 1–2 tokens of the reads budget (0.8/s).
            budget = 180 + 3 * args.users / args.rate + 2 * args.lease + 3 * len(in_doubt)
            states = settled_states(db, send_id, len(chats), time.monotonic() + budget, child)
            settle_seconds = time.monotonic() - started
            counter.update()
            duplicates, lost = counter.duplicates_and_lost(set(chats.values()))
            # The operator: marks sent the unknown rows whose person has the card, resends the rest.
            unknown = rows_in(db, send_id, "unknown")
            arrived = [i for i, who in unknown.items() if counter.ok_by_chat.get(chats[who])]
            missing = [i for i in unknown if i not in arrived]
            with Session(db) as session:
                now = datetime.now(UTC)
                resolve_unknown(session=session, delivery_ids=arrived, resend=False, now=now)
                resolve_unknown(session=session, delivery_ids=missing, resend=True, now=now)
                session.commit()
            states = settled_states(
                db, send_id, len(chats), time.monotonic() + 60 + 3 * len(missing), child
            )
            finished = time.monotonic() - started
            for _ in range(20):  # let a scheduler tick mark the send done
                if send_state(db, send_id) == "done":
                    break
                time.sleep(0.5)
            ended_state = send_state(db, send_id)
            child.terminate()
            counter.update()
            states = delivery_states(db, send_id)
            log_tail = child.log_tail()
            db.dispose()
    final_duplicates, final_lost = counter.duplicates_and_lost(set(chats.values()))
    if len(kills) != args.kills:
        problems.append(f"{len(kills)} of {args.kills} kills")
    if not set(states) <= set(TERMINAL):
        problems.append(f"rows left {states}")
    return Outcome(
        platform="Teams",
        expected=len(chats),
        kills=kills,
        in_doubt=len(in_doubt),
        posted_unrecorded=len(unrecorded),
        requests=counter.requests,
        accepted=counter.ok,
        rejected=counter.rejected,
        throughput=throughput(counter.times),
        settle_seconds=settle_seconds,
        duplicates=duplicates,
        lost=lost,
        unknown=len(unknown),
        unknown_arrived=len(arrived),
        final_duplicates=final_duplicates,
        final_lost=final_lost,
        finished=finished,
        states=states,
        send_state=ended_state,
        other_calls=dict(counter.other_calls),
        problems=problems,
        log_tail=log_tail,
    )


# --- reporting ----------------------------------------------------------------------------------


def print_slack(args: argparse.Namespace, run: Outcome) -> None:
    """The Slack run's summary (the benchmark's output without --platform teams)."""
    print()
    print(f"{'kills':<26} {len(run.kills)} (SIGKILL), restarted each time")
    print(
        f"{'in doubt after the kills':<26} {run.in_doubt} rows `sending`, "
        f"{run.posted_unrecorded} already posted (reconciled from message metadata, not resent)"
    )
    print(
        f"{'Slack calls':<26} chat.postMessage {run.requests:,} "
        f"({run.accepted:,} ok, {run.rejected} × 429); "
        + ", ".join(f"{name} {n}" for name, n in sorted(run.other_calls.items()))
    )
    print(
        f"{'whole run':<26} {run.finished:.1f} s "
        f"(no kills: about {args.users / args.rate:.0f} s of sending)"
    )
    print(f"{'database':<26} {run.states}; send {run.send_state}")
    print(
        f"{'duplicates / lost':<26} {run.duplicates} / {run.lost} of {run.expected:,} eligible  "
        f"[{verdict(run.ok)}]"
    )


def print_side_by_side(args: argparse.Namespace, teams: Outcome, slack: Outcome) -> None:
    """Each Teams figure beside the same run's Slack figure."""

    def row(name: str, left: str, right: str) -> None:
        print(f"{name:<40} {left:<36} {right}")

    def kills(run: Outcome) -> str:
        return ", ".join(f"{k.after:.1f}s→{k.in_doubt}({k.posted_unrecorded})" for k in run.kills)

    print()
    row("", "Teams", "Slack (baseline, same run)")
    row("kills: s into a life → in doubt (posted)", kills(teams), kills(slack))
    row(
        f"throughput, msgs/s (limit {args.rate:g}/s)",
        f"{teams.throughput:.1f} best 5 s; {teams.accepted / teams.settle_seconds:.1f} overall",
        f"{slack.throughput:.1f} best 5 s; {slack.accepted / slack.settle_seconds:.1f} overall",
    )
    row(
        "posts: requests / accepted / 429",
        f"{teams.requests:,} / {teams.accepted:,} / {teams.rejected}",
        f"{slack.requests:,} / {slack.accepted:,} / {slack.rejected}",
    )
    row(
        "rows in doubt after kills (posted)",
        f"{teams.in_doubt} ({teams.posted_unrecorded})",
        f"{slack.in_doubt} ({slack.posted_unrecorded})",
    )
    row(
        "unknown rows after kills",
        f"{teams.unknown} ({teams.unknown_arrived} had the card)",
        f"{slack.unknown} (reconciled from metadata)",
    )
    row(
        "duplicates / people without it, settled",
        f"{teams.duplicates} / {teams.lost}",
        f"{slack.duplicates} / {slack.lost}",
    )
    row("time to settle", f"{teams.settle_seconds:.1f} s", f"{slack.settle_seconds:.1f} s")
    row(
        "after the operator: duplicates / lost",
        f"{teams.final_duplicates} / {teams.final_lost} "
        f"({teams.unknown - teams.unknown_arrived} resent)",
        f"{slack.final_duplicates} / {slack.final_lost} (no operator needed)",
    )
    row("whole run", f"{teams.finished:.1f} s", f"{slack.finished:.1f} s")
    row(
        "database at the end",
        f"{teams.states}; send {teams.send_state}",
        f"{slack.states}; send {slack.send_state}",
    )
    row("verdict", verdict(teams.ok), verdict(slack.ok))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3_000, help="active humans (3,000)")
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help=f"posts/s for the workspace / tenant (50; {TEAMS_RATE:g} with --platform teams)",
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
    parser.add_argument(
        "--platform",
        choices=("slack", "teams"),
        default="slack",
        help="teams: run on the loopback Teams too, beside a Slack baseline (slack)",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main()
    if args.rate is None:
        args.rate = TEAMS_RATE if args.platform == "teams" else 50.0

    if args.platform == "slack":
        slack = run_slack(args)
        print_slack(args, slack)
        failed = [slack]
    else:
        slack = run_slack(args, report=False)
        teams = run_teams(args)
        print_side_by_side(args, teams, slack)
        failed = [teams, slack]
    failed = [run for run in failed if not run.ok]
    for run in failed:
        if run.problems:
            print(f"{run.platform} problems: " + "; ".join(run.problems))
        if run.log_tail:
            print(f"{run.platform} sending process log (tail):\n" + run.log_tail)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
