"""Fan-out of one announcement to 10,000 DMs under Slack-like rate limits.

The requirements: the achieved rate is at least 90% of what the configured limit allows, at
most 1% of chat.postMessage requests get a 429, the sending process's memory stays flat (no
growth proportional to recipients), resolving the 10,000-person audience takes at most 10 s,
and every eligible person gets exactly one message (0 duplicates, 0 lost).

A loopback Slack (tests/slack/fake_slack.py) runs in this process with N human users plus a few
bots and deactivated accounts, and limits chat.postMessage to R per second for the whole
workspace (a token bucket holding R tokens, so a second's burst). The sending runs in a child
process, the real path: `Service(settings)` with SLACK_API_URL pointing at the loopback,
MOBILIZE_SEND_RATE=R and MOBILIZE_WORKERS=W, then `start_announcements()` (the scheduler tick
resolves the audience and writes the deliveries; the outbox workers send). The send is queued
with `sends.create_adhoc(audience=["everyone"])` before the child starts. The child's RSS is
sampled every second from /proc. Run from the repository root:

    .venv/bin/python benchmarks/delivery_fanout.py [--users 10000] [--rate 50] [--workers 4]
                                                   [--database-url postgresql+psycopg://…]

SQLite (a temporary file) by default. With --database-url postgresql+psycopg://… the run uses a
private schema in that database and drops it afterwards (a SQLite URL is emptied first).
Exits 1 when a requirement is not met.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also runnable as `python benchmarks/delivery_fanout.py`
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, delete, func, text  # noqa: E402
from sqlmodel import Session, col, select  # noqa: E402

from bot.store.db import make_engine, upgrade  # noqa: E402
from bot.store.models import AnnouncementSend, Delivery, RateBudget, SchedulerMark  # noqa: E402
from tests.auxil.db import committed  # noqa: E402
from tests.auxil.loopback import LoopbackSlack  # noqa: E402
from tests.slack.fake_slack import BOT_TOKEN, FakeSlack  # noqa: E402

TEMPLATE = "training-opens"
RESOLVE_LIMIT = 10.0  # seconds to resolve a 10,000-person audience
RATE_SHARE = 0.90  # achieved / allowed
MAX_429_SHARE = 0.01
RSS_GROWTH_MB = 5.0  # peak RSS after 2,000 sent may exceed the peak before by this much
RSS_MARK = 2_000  # sent messages: the "early" memory mark
LEASE_SECONDS = 30  # short, for the crash run; ≥ bot.core.outbox.POST_BOUND (20 s)
TERMINAL = ("sent", "failed", "skipped", "cancelled", "deleted")


# --- the loopback Slack -----------------------------------------------------------------------


def populate(fake: FakeSlack, users: int) -> set[str]:
    """N active humans (U000000…) plus 1% bots and 1% deactivated accounts (at least 3 each);
    FakeSlack's preloaded humans are removed. Returns the ids `everyone` must reach."""
    for user_id in ("U1", "U2", "U3"):
        fake.users.pop(user_id, None)
    humans = set()
    for n in range(users):
        user_id = f"U{n:06d}"
        fake.add_user(user_id, name=f"user{n}", real_name=f"User{n} Person{n}")
        humans.add(user_id)
    for n in range(max(3, users // 100)):
        fake.add_user(f"UB{n:05d}", name=f"bot{n}", real_name=f"Bot {n}", is_bot=True)
        fake.add_user(f"UD{n:05d}", name=f"gone{n}", real_name=f"Gone {n}", deleted=True)
    return humans


# --- the database and the content ---------------------------------------------------------------


def prepare_content(folder: Path) -> Path:
    """The repository's rollout, FAQ and templates, with an empty announcement plan (so only
    the benchmark's ad-hoc send goes out)."""
    shutil.copytree(ROOT / "messages", folder / "messages")
    (folder / "schedules").mkdir()
    shutil.copy(ROOT / "schedules" / "rollout.yaml", folder / "schedules" / "rollout.yaml")
    (folder / "schedules" / "announcements.yaml").write_text("announcements: []\n")
    return folder


def prepare_database(url: str) -> Engine:
    db = make_engine(url)
    upgrade(db)
    with Session(db) as session:
        session.execute(delete(Delivery))
        session.execute(delete(AnnouncementSend))
        session.execute(delete(RateBudget))
        session.execute(delete(SchedulerMark))
        session.commit()
    if _has_table(db, "apscheduler_jobs"):
        with db.begin() as connection:
            connection.execute(text("DELETE FROM apscheduler_jobs"))
    return db


def _has_table(db: Engine, name: str) -> bool:
    from sqlalchemy import inspect

    return inspect(db).has_table(name)


def queue_send(db: Engine) -> int:
    from bot.core.announcements import sends

    return committed(
        db,
        sends.create_adhoc,
        template=TEMPLATE,
        audience=["everyone"],
        at=datetime.now(UTC),
        by="benchmark",
    )


def delivery_states(db: Engine, send_id: int) -> dict[str, int]:
    with Session(db) as session:
        rows = session.exec(
            select(Delivery.state, func.count())
            .where(col(Delivery.send_id) == send_id)
            .group_by(col(Delivery.state))
        ).all()
    return {str(state): int(number) for state, number in rows}


def send_state(db: Engine, send_id: int) -> str:
    with Session(db) as session:
        send = session.get(AnnouncementSend, send_id)
        return send.state if send else "?"


# --- the sending process ------------------------------------------------------------------------


def child_environment(
    *, slack_url: str, database_url: str, content_dir: Path, rate: float, workers: int, lease: float
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SLACK_API_URL": slack_url,
            "SLACK_BOT_TOKEN": BOT_TOKEN,  # the token the loopback Slack issued
            "DATABASE_URL": database_url,
            "MOBILIZE_CONTENT_DIR": str(content_dir),
            "MOBILIZE_SEND_RATE": str(rate),
            "MOBILIZE_WORKERS": str(workers),
            "MOBILIZE_EMBEDDING_MODEL": "none",
            "MOBILIZE_TICK_SECONDS": "2",
            "MOBILIZE_LEASE_SECONDS": str(lease),
            "MOBILIZE_ADMINS": "",
            "MOBILIZE_SURVEY_SECRET": "benchmark",  # else a secret file is written in the cwd
            "MOBILIZE_LOG_LEVEL": "WARNING",
            "HF_HUB_OFFLINE": "1",
            "OPENBLAS_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
        }
    )
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
        env.pop(name, None)
    return env


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "at": time.time(), **fields}), flush=True)


def child_main() -> int:
    """The sending process: the real Service with its scheduler tick and outbox workers, from
    the environment. Reports the audience resolution time on stdout; runs until SIGTERM."""
    import logging

    from bot.config import load_settings
    from bot.core.announcements import sends
    from bot.service import Service

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    # Time the audience resolution (directory listing) and the whole resolve step (with writing
    # one delivery row per person) inside the scheduler's tick.
    real_resolve, real_resolve_due = sends.resolve, sends.resolve_due
    timings: dict[str, float] = {}

    def timed_resolve(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        audience = real_resolve(*args, **kwargs)
        timings["resolve"] = time.perf_counter() - started
        timings["people"] = len(audience.people)
        return audience

    def timed_resolve_due(*args: Any, **kwargs: Any) -> list[int]:
        started = time.perf_counter()
        done = real_resolve_due(*args, **kwargs)
        if done:
            emit(
                "resolved",
                sends=done,
                resolve_seconds=timings.get("resolve", 0.0),
                people=timings.get("people", 0),
                total_seconds=time.perf_counter() - started,
            )
        return done

    sends.resolve = timed_resolve
    sends.resolve_due = timed_resolve_due

    service = Service(load_settings())
    service.start_announcements()
    emit("started", pid=os.getpid())
    stop.wait()
    service.stop()
    emit("stopped")
    return 0


@dataclass
class Child:
    """A sending process, with its stdout events and its RSS samples."""

    process: subprocess.Popen[str]
    log_path: Path
    events: list[dict[str, Any]] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with suppress(ValueError):
                self.events.append(json.loads(line))

    def event(self, name: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e.get("event") == name), None)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def terminate(self, timeout: float = 15.0) -> None:
        if self.alive():
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""


def start_child(script: Path, env: dict[str, str], log_path: Path) -> Child:
    log = log_path.open("a")
    process = subprocess.Popen(
        [sys.executable, str(script), "--child"],
        cwd=str(ROOT),
        env=env,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    log.close()
    return Child(process, log_path)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of a process in kB, or (0, 0) when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0, 0
    values = {}
    for line in status.splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


# --- what Slack saw -----------------------------------------------------------------------------


class PostCounter:
    """Counts chat.postMessage calls as they arrive, without rescanning FakeSlack's list."""

    def __init__(self, fake: FakeSlack) -> None:
        self.fake = fake
        self.seen = 0
        self.ok_by_channel: Counter[str] = Counter()
        self.ok = 0
        self.rejected = 0  # HTTP 429
        self.errors: Counter[str] = Counter()
        self.requests = 0
        self.first_ok: float | None = None
        self.last_ok: float | None = None
        self.other_calls: Counter[str] = Counter()

    def update(self) -> int:
        with self.fake._cond:
            new = self.fake.calls[self.seen :]
            self.seen += len(new)
        for call in new:
            if call.method != "chat.postMessage":
                self.other_calls[call.method] += 1
                continue
            self.requests += 1
            if call.status == 429:
                self.rejected += 1
            elif call.ok:
                self.ok += 1
                self.ok_by_channel[str(call.response.get("channel"))] += 1
                self.first_ok = call.at if self.first_ok is None else self.first_ok
                self.last_ok = call.at
            else:
                self.errors[str(call.response.get("error"))] += 1
        return self.ok

    def duplicates_and_lost(self, expected: set[str]) -> tuple[int, int]:
        duplicates = sum(n - 1 for n in self.ok_by_channel.values() if n > 1)
        lost = sum(1 for user_id in expected if self.ok_by_channel.get(f"D{user_id}", 0) == 0)
        return duplicates, lost


@dataclass
class Sample:
    at: float  # monotonic
    sent: int
    rss_kb: int
    cpu: float = 0.0


@dataclass
class Run:
    samples: list[Sample] = field(default_factory=list)
    resolved: dict[str, Any] | None = None


@contextmanager
def database(url: str, folder: Path) -> Iterator[str]:
    """The database URL for one run: a SQLite file in `folder` by default; on PostgreSQL a
    private schema (dropped afterwards) in the database `url` names."""
    if not url:
        yield f"sqlite:///{folder / 'bench.db'}"
        return
    if not url.startswith("postgresql"):
        yield url
        return
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    admin = make_engine(url)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    try:
        yield f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@contextmanager
def workspace(
    args: argparse.Namespace,
) -> Iterator[tuple[LoopbackSlack, set[str], Engine, str, Path, Path]]:
    """The loopback Slack, the database with the queued send and the content, for one run."""
    with tempfile.TemporaryDirectory(prefix="mobilize-bench-") as tmp:
        folder = Path(tmp)
        content = prepare_content(folder / "content")
        with database(args.database_url, folder) as url:
            db = prepare_database(url)
            fake = LoopbackSlack()
            expected = populate(fake, args.users)
            fake.limit("chat.postMessage", per_second=args.rate, burst=max(1.0, args.rate))
            with fake:
                try:
                    yield fake, expected, db, url, content, folder
                finally:
                    db.dispose()


def wait_until_done(
    db: Engine, send_id: int, total_hint: int, deadline: float, child: Child | None = None
) -> dict[str, int]:
    """Poll until every delivery of the send is settled (or the deadline passes)."""
    states: dict[str, int] = {}
    while time.monotonic() < deadline:
        states = delivery_states(db, send_id)
        total = sum(states.values())
        if total >= total_hint and all(state in TERMINAL for state in states):
            return states
        if child is not None and not child.alive():
            return states
        time.sleep(0.5)
    return states


def mb(kb: int) -> str:
    return f"{kb / 1024:7.1f} MB"


def verdict(ok: bool) -> str:
    return "ok" if ok else "FAILED"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000, help="active humans (10,000)")
    parser.add_argument(
        "--rate", type=float, default=50.0, help="chat.postMessage/s for the workspace (50)"
    )
    parser.add_argument("--workers", type=int, default=4, help="MOBILIZE_WORKERS (4)")
    parser.add_argument(
        "--database-url", default="", help="a scratch database (default: a temporary SQLite file)"
    )
    parser.add_argument(
        "--lease", type=float, default=LEASE_SECONDS, help="MOBILIZE_LEASE_SECONDS (30)"
    )
    parser.add_argument("--rss-growth-mb", type=float, default=RSS_GROWTH_MB)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main()

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
            f"{args.users:,} users (+{len(fake.users) - args.users} bots/deactivated), "
            f"chat.postMessage limited to {args.rate:g}/s (burst {args.rate:g}), "
            f"{args.workers} workers, {'SQLite' if url.startswith('sqlite') else url.split(':')[0]}, "
            f"{os.cpu_count()} cores"
        )
        counter = PostCounter(fake)
        run = Run()
        started = time.monotonic()
        child = start_child(Path(__file__).resolve(), env, folder / "child.log")
        stop_sampling = threading.Event()

        def sample() -> None:
            while not stop_sampling.is_set():
                rss, _hwm = rss_kb(child.pid)
                cpu = cpu_seconds(child.pid)
                sent = counter.update()
                if rss:
                    run.samples.append(Sample(time.monotonic(), sent, rss, cpu))
                stop_sampling.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        budget = 120 + 3 * args.users / args.rate
        states = wait_until_done(db, send_id, len(expected), started + budget, child)
        final_rss, hwm = rss_kb(child.pid)
        stop_sampling.set()
        sampler.join()
        for _ in range(20):  # a scheduler tick marks the send done
            if send_state(db, send_id) != "sending":
                break
            time.sleep(0.5)
        child.terminate()
        counter.update()
        elapsed = time.monotonic() - started
        resolved = child.event("resolved")
        ended_state = send_state(db, send_id)
        log_tail = child.log_tail()

    # --- figures
    sent = counter.ok
    duplicates, lost = counter.duplicates_and_lost(expected)
    wall = (counter.last_ok or 0.0) - (counter.first_ok or 0.0)
    burst = max(1.0, args.rate)
    allowed = burst + args.rate * wall
    share = sent / allowed if allowed else 0.0
    rate = (sent - 1) / wall if wall > 0 else 0.0
    rejected_share = counter.rejected / counter.requests if counter.requests else 0.0
    early = [s.rss_kb for s in run.samples if s.sent <= RSS_MARK and s.sent > 0]
    late = [s.rss_kb for s in run.samples if s.sent > RSS_MARK]
    start_rss = next((s.rss_kb for s in run.samples if s.sent > 0), 0)
    peak_early, peak_late = max(early, default=0), max(late, default=0)
    sending = [s for s in run.samples if 0 < s.sent < len(expected)]
    cpu_share = (
        (sending[-1].cpu - sending[0].cpu) / (sending[-1].at - sending[0].at)
        if len(sending) > 1 and sending[-1].at > sending[0].at
        else 0.0
    )
    cpu_per_message = (
        (sending[-1].cpu - sending[0].cpu) / (sending[-1].sent - sending[0].sent) * 1000
        if len(sending) > 1 and sending[-1].sent > sending[0].sent
        else 0.0
    )
    growth_mb = (peak_late - peak_early) / 1024 if early and late else 0.0
    resolve_seconds = float(resolved["resolve_seconds"]) if resolved else float("inf")
    resolve_total = float(resolved["total_seconds"]) if resolved else float("inf")

    checks = {
        "resolution": resolve_seconds <= RESOLVE_LIMIT,
        "rate": share >= RATE_SHARE,
        "429s": rejected_share <= MAX_429_SHARE,
        "memory": growth_mb <= args.rss_growth_mb,
        "exactly once": duplicates == 0 and lost == 0 and states.get("sent", 0) == len(expected),
    }
    print()
    print(
        f"{'audience resolution':<28} {resolve_seconds:8.2f} s   [{verdict(checks['resolution'])}, ≤ {RESOLVE_LIMIT:.0f} s]"
        f"  ({resolved['people'] if resolved else '?'} people; with writing the rows {resolve_total:.2f} s)"
    )
    print(
        f"{'messages sent':<28} {sent:8,d}     of {len(expected):,} eligible; DB: {states}; send {ended_state}"
    )
    print(f"{'first → last post':<28} {wall:8.1f} s   (whole run {elapsed:.1f} s)")
    print(
        f"{'achieved rate':<28} {rate:8.2f} /s  limit {args.rate:g}/s; {sent:,} of {allowed:,.0f} allowed in that time = {100 * share:.1f}%  [{verdict(checks['rate'])}, ≥ {100 * RATE_SHARE:.0f}%]"
    )
    print(
        f"{'429 answers':<28} {counter.rejected:8,d}     of {counter.requests:,} requests = {100 * rejected_share:.2f}%  [{verdict(checks['429s'])}, ≤ {100 * MAX_429_SHARE:.0f}%]"
    )
    if counter.errors:
        print(f"{'other post errors':<28} {dict(counter.errors)}")
    print(
        f"{'RSS of the sending process':<28} start {mb(start_rss)} · peak ≤{RSS_MARK:,} sent {mb(peak_early)} · peak after {mb(peak_late)} · end {mb(final_rss)} · VmHWM {mb(hwm)}"
    )
    print(
        f"{'CPU of the sending process':<28} {100 * cpu_share:8.0f} %   of one core while sending; {cpu_per_message:.2f} ms per message"
    )
    marks = [m for m in range(RSS_MARK, len(expected) + 1, RSS_MARK) if m <= sent]
    trend = " · ".join(
        f"{m:,}: {max((x.rss_kb for x in run.samples if 0 < x.sent <= m), default=0) / 1024:.1f}"
        for m in marks
    )
    print(f"{'peak RSS by messages sent':<28} {trend} MB")
    print(
        f"{'memory growth':<28} {growth_mb:8.1f} MB  after {RSS_MARK:,} sent  [{verdict(checks['memory'])}, ≤ {args.rss_growth_mb:g} MB]"
    )
    print(
        f"{'duplicates / lost':<28} {duplicates:8,d} / {lost:,}  [{verdict(checks['exactly once'])}]"
    )
    if counter.other_calls:
        print(f"{'other Slack calls':<28} {dict(counter.other_calls)}")
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
        if log_tail:
            print("sending process log (tail):\n" + log_tail)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
