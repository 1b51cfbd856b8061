"""1,000 survey answer clicks arriving within one second: every one stored, each acked in time.

Slack wants an interaction acknowledged (HTTP 200) within 3 seconds, or the person sees an
error; a pulse survey sent to everyone at 10:00 brings its clicks in a burst. The requirement:
1,000 clicks fired within about one second are all stored, and the p99 of the time to HTTP 200
is well under 3 s.

The bot runs in a child process, the real path: `Service(settings)` serving HTTP on waitress
(`service.http_server`), with SLACK_API_URL pointing at a loopback Slack (tests/slack/
fake_slack.py) in this process that holds 1,000 users. The child starts an ad-hoc run of the
example `readiness` survey to everyone and sends the 1,000 invitation DMs through its outbox.
This process then builds, for each person, the signed `block_actions` request Slack would send
for a click on one of the Likert buttons of their own invitation (the message's blocks
included, as Slack does), and fires the 1,000 requests from a thread pool, spread evenly over
one second. Each click carries its own response_url, as Slack's do; the loopback Slack holds
Slack's real limits (chat.update Tier 3, about 50 a minute with small bursts; a response_url
5 uses within 30 minutes). It measures each request's time from sending to the HTTP 200, then
waits until the database holds every answer and every invitation shows its answer (✓) in
Slack. Run from the repository root:

    .venv/bin/python benchmarks/survey_clicks.py [--clicks 1000] [--window 1.0]
                                                 [--database-url postgresql+psycopg://…]

The baseline, in the same run: the same clicks (signed anew) fired the same way at a bare Bolt
app (no Mobilize) that acks them, served by the same HTTP server (`--child bare`).

SQLite (a temporary file) by default; with --database-url postgresql+psycopg://… the run uses a
private schema in that database and drops it afterwards. Exits 1 when a click is lost, the p99
ack is over ACK_P99_FLOOR (Slack's own deadline is 3 s), the answers are not all stored within
STORED_FLOOR of the last click, or an invitation does not show its answer within STORE_TIMEOUT.
"""

from __future__ import annotations

import argparse
import asyncio
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also runnable as `python benchmarks/survey_clicks.py`
    sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, func, text  # noqa: E402
from sqlmodel import Session, select  # noqa: E402

from bot.core.surveys.runs import SurveyDesk  # noqa: E402
from bot.store.db import make_engine, upgrade  # noqa: E402
from bot.store.models import SurveyResponse, SurveyRun  # noqa: E402
from tests.slack.fake_slack import BOT_TOKEN, FakeSlack  # noqa: E402
from tests.slack.signing import (  # noqa: E402
    FORM_CONTENT_TYPE,
    SIGNING_SECRET,
    action_body,
    block_action,
    signed_headers,
)

SURVEY = "readiness"
QUESTION = "awareness"
ACK_P99_FLOOR = 0.3  # the floor for the p99 ack of the burst
STORED_FLOOR = 5.0  # ... and for every answer to be stored, seconds after the last click
SECRET = "benchmark"  # MOBILIZE_SURVEY_SECRET; else a secret file is written in the cwd
STORE_TIMEOUT = 120.0  # seconds after the last click for every answer to be in the database


# --- the bot's process ---------------------------------------------------------------------------


def emit(event: str, **fields: Any) -> None:
    print(json.dumps({"event": event, "at": time.time(), **fields}), flush=True)


def child_main() -> int:
    """The bot: the real Service over HTTP, from the environment. Starts the run, sends the
    invitations, reports its port, then serves until SIGTERM."""
    import logging

    from bot.config import load_settings
    from bot.service import Service

    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    service = Service(load_settings())
    server = service.http_server(port=0, host="127.0.0.1")
    server.start()
    service.ready.set()
    started = time.perf_counter()
    run_id = service.surveys.start_adhoc(survey_id=SURVEY, audience=["everyone"], by="benchmark")
    service.surveys.tick()
    while service.announcer.outbox.drain_once(batch=100):
        pass
    emit("ready", port=server.port, run_id=run_id, invite_seconds=time.perf_counter() - started)
    stop.wait()
    server.stop()
    service.stop()
    return 0


def bare_main() -> int:
    """The baseline: a bare Bolt app (no Mobilize) acking every survey answer click, served by
    the same HTTP server as the bot (bot.channels.slack.server, waitress)."""
    import re

    from slack_bolt import Ack, App
    from slack_sdk import WebClient

    from bot.channels.slack.server import HttpServer, WebApp

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    app = App(
        client=WebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"]),
        signing_secret=SIGNING_SECRET,
        token_verification_enabled=False,
    )

    @app.action(re.compile(r"^survey\.answer"))
    def on_click(ack: Ack) -> None:
        ack()

    server = HttpServer(WebApp(app, ready=lambda: True), host="127.0.0.1", port=0)
    server.start()
    emit("ready", port=server.port)
    stop.wait()
    server.stop()
    return 0


def start_child(
    env: dict[str, str], log_path: Path, *, bare: bool = False
) -> subprocess.Popen[str]:
    with log_path.open("a") as log:
        return subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child"] + (["bare"] if bare else []),
            cwd=str(ROOT),
            env=env,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )


def wait_for_event(child: subprocess.Popen[str], name: str, timeout: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def read() -> None:
        assert child.stdout is not None
        for line in child.stdout:
            with suppress(ValueError):
                event = json.loads(line)
                if event.get("event") == name:
                    found.update(event)
                    return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    if not found:
        raise SystemExit(f"the bot did not report {name!r} within {timeout:.0f} s")
    return found


def child_environment(*, slack_url: str, database_url: str, content_dir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "SLACK_API_URL": slack_url,
            "SLACK_BOT_TOKEN": BOT_TOKEN,  # the token the loopback Slack issued
            "SLACK_SIGNING_SECRET": SIGNING_SECRET,
            "DATABASE_URL": database_url,
            "MOBILIZE_CONTENT_DIR": str(content_dir),
            "MOBILIZE_SEND_RATE": "1000",
            "MOBILIZE_EMBEDDING_MODEL": "none",
            "MOBILIZE_ADMINS": "",
            "MOBILIZE_SURVEY_SECRET": SECRET,
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


# --- the workspace: Slack, content, database -------------------------------------------------


def populate(fake: FakeSlack, users: int) -> list[str]:
    """N active humans (U00000…); FakeSlack's preloaded humans are removed."""
    for user_id in ("U1", "U2", "U3"):
        fake.users.pop(user_id, None)
    people = [f"U{n:05d}" for n in range(users)]
    for n, user_id in enumerate(people):
        fake.add_user(user_id, name=f"user{n}", real_name=f"User{n} Person{n}")
    return people


def prepare_content(folder: Path) -> Path:
    """The repository's messages and rollout, with no announcement or survey plan."""
    shutil.copytree(ROOT / "messages", folder / "messages")
    (folder / "schedules").mkdir()
    shutil.copy(ROOT / "schedules" / "rollout.yaml", folder / "schedules" / "rollout.yaml")
    return folder


@contextmanager
def database(url: str, folder: Path) -> Iterator[str]:
    """A SQLite file in `folder` by default; on PostgreSQL a private schema, dropped after."""
    if not url:
        yield f"sqlite:///{folder / 'bench.db'}"
        return
    if not url.startswith("postgresql"):
        raise SystemExit("--database-url takes a postgresql+psycopg://… URL")
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


# --- the clicks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Click:
    user: str
    value: int
    body: str


@dataclass(frozen=True)
class Timing:
    due: float  # when the click was meant to go (perf_counter)
    sent: float
    acked: float
    status: int

    @property
    def seconds(self) -> float:
        return self.acked - self.sent


def clicks(fake: FakeSlack, people: list[str], run_id: int) -> list[Click]:
    """For each person, the block_actions request for a click on one Likert button of their own
    invitation (the value cycles 1–5)."""
    found = []
    for n, user in enumerate(people):
        messages = fake.messages.get(f"D{user}") or []
        if not messages:
            raise SystemExit(f"no invitation reached {user}")
        message = messages[0]
        value = n % 5 + 1
        wanted = f"{run_id}|{QUESTION}|{value}"
        button = next(
            element
            for block in message["blocks"]
            if block["type"] == "actions"
            for element in block["elements"]
            if element.get("value") == wanted
        )
        payload = block_action(
            action_id=button["action_id"],
            value=wanted,
            user_id=user,
            channel_id=f"D{user}",
            message_ts=message["ts"],
            trigger_id=fake.new_trigger_id(),
            response_url=fake.new_response_url(
                channel=f"D{user}", user=user, message_ts=message["ts"]
            ),
        )
        payload["message"]["blocks"] = message["blocks"]
        found.append(Click(user, value, action_body(payload)))
    return found


def fire(port: int, planned: list[Click], *, window: float) -> list[Timing]:
    """Send the clicks spread evenly over `window` seconds, each on its own connection (as
    Slack does), from one asyncio loop: a slow ack never delays the next click. (A pool of
    threads each waiting for its ack would send slower than the clicks are meant to arrive,
    and so hide the very queueing being measured.)"""
    requests = []
    for click in planned:
        headers = signed_headers(click.body, content_type=FORM_CONTENT_TYPE)
        body = click.body.encode()
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        requests.append(
            (
                f"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{head}"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            + body
        )

    async def one(request: bytes, due: float) -> Timing:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        sent = time.perf_counter()
        status = 0
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(request)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), timeout=60)
            status = int(line.split()[1]) if line.startswith(b"HTTP/") else 0
            acked = time.perf_counter()
            await reader.read()  # the rest of the response; the server closes
            writer.close()
        except (OSError, TimeoutError, ValueError, IndexError):
            acked = time.perf_counter()
        return Timing(due, sent, acked, status)

    async def all_clicks() -> list[Timing]:
        start = time.perf_counter() + 0.2
        step = window / max(1, len(requests) - 1)
        return list(
            await asyncio.gather(
                *(one(request, start + n * step) for n, request in enumerate(requests))
            )
        )

    return asyncio.run(all_clicks())


def stored(db: Engine, run_id: int, people: list[str]) -> tuple[int, int, Counter[int]]:
    """(responses, people whose answer the bot finds, their values of the clicked question).
    Answers of an open anonymous run are sealed and name nobody: they are read through the
    survey desk with the deployment's secret, as the bot reads them."""
    with Session(db) as session:
        rows = session.exec(select(func.count()).where(SurveyResponse.run_id == run_id)).one()
        run = session.get(SurveyRun, run_id)
    assert run is not None
    desk = SurveyDesk(db=db, secret=SECRET.encode(), surveys=dict)
    found = desk.answered(run, people)
    values = Counter(int(answers.get(QUESTION, 0)) for answers in found.values())
    return int(rows), len(found), values


def shown(fake: FakeSlack, planned: list[Click]) -> int:
    """How many invitations show the clicked answer (✓ and its value) in Slack now."""
    count = 0
    for click in planned:
        messages = list(fake.messages.get(f"D{click.user}") or [])
        text = json.dumps(messages[0].get("blocks") or [], ensure_ascii=False) if messages else ""
        count += f"✓ _{click.value} " in text
    return count


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))]


def ms(seconds: float) -> str:
    return f"{1000 * seconds:8.1f} ms"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clicks", type=int, default=1000, help="people, one click each (1000)")
    parser.add_argument("--window", type=float, default=1.0, help="seconds to fire them in (1)")
    parser.add_argument(
        "--database-url", default="", help="a scratch database (default: a temporary SQLite file)"
    )
    parser.add_argument("--child", nargs="?", const="bot", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return bare_main() if args.child == "bare" else child_main()

    with tempfile.TemporaryDirectory(prefix="mobilize-bench-") as tmp:
        folder = Path(tmp)
        content = prepare_content(folder / "content")
        with database(args.database_url, folder) as url, FakeSlack() as fake:
            db = make_engine(url)
            upgrade(db)
            people = populate(fake, args.clicks)
            env = child_environment(slack_url=fake.url, database_url=url, content_dir=content)
            child = start_child(env, folder / "child.log")
            try:
                ready = wait_for_event(child, "ready", timeout=300)
                run_id = int(ready["run_id"])
                planned = clicks(fake, people, run_id)
                calls_before = len(fake.calls)
                timings = fire(int(ready["port"]), planned, window=args.window)
                last_click = max(t.acked for t in timings)
                deadline = last_click + STORE_TIMEOUT
                responses, found, values = stored(db, run_id, people)
                while (responses < len(planned) or found < len(planned)) and (
                    time.perf_counter() < deadline
                ):
                    time.sleep(0.2)
                    responses, found, values = stored(db, run_id, people)
                all_stored = time.perf_counter() - last_click
                confirmed = shown(fake, planned)
                while confirmed < len(planned) and time.perf_counter() < deadline:
                    time.sleep(0.2)
                    confirmed = shown(fake, planned)
                all_shown = time.perf_counter() - last_click
                after = Counter(
                    (call.method, call.status)
                    for call in list(fake.calls)[calls_before:]
                    if call.method in ("response_url", "chat.update")
                )
            finally:
                child.terminate()
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()
                db.dispose()
            # The baseline, same run: the bare Bolt app acking the same clicks (re-signed now).
            bare = start_child(env, folder / "bare.log", bare=True)
            try:
                bare_port = int(wait_for_event(bare, "ready", timeout=120)["port"])
                baseline = fire(bare_port, planned, window=args.window)
            finally:
                bare.terminate()
                try:
                    bare.wait(15)
                except subprocess.TimeoutExpired:
                    bare.kill()
            log = (folder / "child.log").read_text().splitlines()
            log_tail = "\n".join(log[-10:])
            errors = [line for line in log if " ERROR " in line]

    # --- figures
    acks = [t.seconds for t in timings]
    ok = [t for t in timings if t.status == 200]
    late = [t.sent - t.due for t in timings]
    spread = max(t.sent for t in timings) - min(t.sent for t in timings)
    expected = Counter(click.value for click in planned)
    p50, p99, worst = percentile(acks, 0.50), percentile(acks, 0.99), max(acks)
    backend = "SQLite" if url.startswith("sqlite") else "PostgreSQL"
    print(
        f"{len(planned):,} answer clicks, planned over "
        f"{args.window:g} s, sent over {spread:.2f} s; {backend}, {os.cpu_count()} cores; "
        f"{len(planned):,} invitations sent in {ready['invite_seconds']:.1f} s beforehand"
    )
    print()
    base = [t.seconds for t in baseline]
    base_ok = sum(1 for t in baseline if t.status == 200)
    print(f"{'':34} {'p50':>11} {'p99':>11} {'max':>11}")
    print(f"{'ack (request → HTTP 200)':34} {ms(p50)} {ms(p99)} {ms(worst)}")
    print(
        f"{'  bare Bolt app (baseline)':34} {ms(percentile(base, 0.5))} "
        f"{ms(percentile(base, 0.99))} {ms(max(base))}  ({base_ok:,} answered 200)"
    )
    print(
        f"{'sent after planned time':34} {ms(percentile(late, 0.5))} "
        f"{ms(percentile(late, 0.99))} {ms(max(late))}"
    )
    print()
    lost = len(planned) - responses
    checks = [
        (f"HTTP 200 for every click ({len(ok):,}/{len(planned):,})", len(ok) == len(planned)),
        (f"p99 ack ≤ {1000 * ACK_P99_FLOOR:.0f} ms ({1000 * p99:.0f} ms)", p99 <= ACK_P99_FLOOR),
        (
            f"every answer stored ({responses:,} responses, {found:,} people's answers found, "
            f"all {all_stored:.1f} s after the last ack; floor {STORED_FLOOR:g} s)",
            responses == found == len(planned) and all_stored <= STORED_FLOOR,
        ),
        ("each stored value is the one clicked", values == expected),
        (
            f"every invitation shows its answer in Slack ({confirmed:,}; all {all_shown:.1f} s "
            f"after the last ack; response_url {after['response_url', 200]:,}, chat.update "
            f"{after['chat.update', 200]:,} + {after['chat.update', 429]:,} answered 429)",
            confirmed == len(planned),
        ),
        (f"no errors in the bot's log ({len(errors)})", not errors),
    ]
    width = max(len(name) for name, _ in checks)
    for name, passed in checks:
        print(f"  {name:<{width}}  {'ok' if passed else 'FAILED'}")
    if lost or not all(passed for _, passed in checks):
        if log_tail:
            print("\nthe bot's log ends:\n" + log_tail)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
