"""200 DMs within one second from 10 people: how fast each is acknowledged.

Slack retries an event it got no 200 for within 3 s (and the person then gets two answers or
none), and a rollout's busy minute is many people writing at once. The requirement: 200 DM
events from 10 senders, sent within about one second, each acked (HTTP 200) at p99 ≤ 50 ms.

The bot is the real `mobilize run --http` in a child process, against a loopback Slack
(tests/slack/fake_slack.py) in this process, with the example rollout and the default
MOBILIZE_EMBEDDING_MODEL (the first start makes the ONNX export and embeds the knowledge base;
the burst is sent once /healthz answers 200). The baseline, measured in the same run on the
same events: a bare Bolt app (no Mobilize: one `message` listener that does nothing) served by
the same HTTP server (`bot.channels.slack.server.HttpServer`, waitress) in a child process.
Each event is signed as Slack signs it and sent on its own connection from one asyncio loop,
spread evenly over the window, the 10 senders interleaved. It reports each request's time from
sending to the HTTP 200, and for the bot also how many questions were answered and when the
last answer reached Slack. Run from the repository root:

    .venv/bin/python benchmarks/dm_burst.py [--events 200] [--senders 10] [--window 1.0]

Exits 1 when the bot's p99 ack is over 50 ms, an event is not answered 200, or not every
question gets exactly one answer.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also runnable as `python benchmarks/dm_burst.py`
    sys.path.insert(0, str(ROOT))

from tests.auxil.benchmarking import bot_environment, free_port, healthy, percentile  # noqa: E402
from tests.slack.fake_slack import FakeSlack  # noqa: E402
from tests.slack.signing import SIGNING_SECRET, event_body, signed_headers  # noqa: E402

ACK_P99_FLOOR_S = 0.050
ANSWER_TIMEOUT = 180.0  # seconds after the last ack for every question to be answered


def child_main(kind: str, port: int) -> int:
    """`mobilize run --http` (kind "mobilize"), or the bare Bolt app (kind "bare")."""
    if kind == "mobilize":
        from bot.cli import main

        sys.argv = ["mobilize", "run", "--http", "--host", "127.0.0.1", "--port", str(port)]
        main()
        return 0
    from slack_bolt import App
    from slack_sdk import WebClient

    from bot.channels.slack.server import HttpServer, WebApp

    app = App(
        client=WebClient(token=os.environ["SLACK_BOT_TOKEN"], base_url=os.environ["SLACK_API_URL"]),
        signing_secret=SIGNING_SECRET,
        token_verification_enabled=False,
    )

    @app.event("message")
    def on_message() -> None:
        return None

    HttpServer(WebApp(app, ready=lambda: True), host="127.0.0.1", port=port).serve_forever()
    return 0


def sender(index: int) -> str:
    return f"U0DM{index:04d}"


def plan(events: int, senders: int, questions: list[str]) -> list[tuple[str, bytes]]:
    """(sender, raw HTTP request) per event, the senders taking turns; each DM has its own
    ts and event_id, as Slack's do."""
    base = int(time.time())
    planned = []
    for n in range(events):
        user = sender(n % senders)
        ts = f"{base}.{n:06d}"
        event = {
            "type": "message",
            "channel_type": "im",
            "channel": f"D{user}",
            "user": user,
            "text": questions[n % len(questions)],
            "ts": ts,
            "event_ts": ts,
        }
        body = event_body(event, event_id=f"EvBURST{base}{n:05d}")
        planned.append((user, body))
    return [(user, _request(body)) for user, body in planned]


def _request(body: str) -> bytes:
    headers = signed_headers(body)
    data = body.encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return (
        f"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    ).encode() + data


def fire(port: int, requests: list[bytes], *, window: float) -> list[tuple[float, int]]:
    """Send the requests spread evenly over `window` seconds, each on its own connection, from
    one asyncio loop (a slow ack never delays the next). (seconds to the status line, status)
    per request."""

    async def one(request: bytes, due: float) -> tuple[float, int]:
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
            await reader.read()
            writer.close()
        except (OSError, TimeoutError, ValueError, IndexError):
            acked = time.perf_counter()
        return acked - sent, status

    async def all_requests() -> list[tuple[float, int]]:
        start = time.perf_counter() + 0.2
        step = window / max(1, len(requests) - 1)
        return list(
            await asyncio.gather(*(one(r, start + n * step) for n, r in enumerate(requests)))
        )

    return asyncio.run(all_requests())


def answered(fake: FakeSlack, channels: set[str]) -> int:
    """The bot's messages in the senders' DMs."""
    return sum(
        1
        for call in list(fake.calls)
        if call.method == "chat.postMessage"
        and call.ok
        and str(call.params.get("channel", "")) in channels
    )


def one_run(
    kind: str, env: dict[str, str], fake: FakeSlack, requests: list[bytes], args: Any, log: Path
) -> dict[str, Any]:
    port = free_port()
    with log.open("a") as handle:
        child = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child", kind, str(port)],
            cwd=str(ROOT),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=handle,
        )
    try:
        started = time.perf_counter()
        while not healthy(port):
            if child.poll() is not None or time.perf_counter() - started > 600:
                raise SystemExit(f"{kind}: the server did not become ready; see {log}")
            time.sleep(0.05)
        time.sleep(1.0)  # let start-up work (first ticks, caches) settle
        channels = {f"D{sender(i)}" for i in range(args.senders)}
        before = answered(fake, channels)
        timings = fire(port, requests, window=args.window)
        last_ack = time.perf_counter()
        result: dict[str, Any] = {"kind": kind, "timings": timings}
        if kind == "mobilize":
            deadline = last_ack + ANSWER_TIMEOUT
            count = answered(fake, channels) - before
            while count < len(requests) and time.perf_counter() < deadline:
                time.sleep(0.1)
                count = answered(fake, channels) - before
            result["answered_s"] = time.perf_counter() - last_ack
            time.sleep(2.0)  # a duplicate answer would come after the last one
            result["answers"] = answered(fake, channels) - before
    finally:
        child.terminate()
        try:
            child.wait(15)
        except subprocess.TimeoutExpired:
            child.kill()
    return result


def example_questions() -> list[str]:
    import csv

    with (ROOT / "messages" / "faq-cases.csv").open(encoding="utf-8") as handle:
        return [row["question"] for row in csv.DictReader(handle)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=200, help="DM events (200)")
    parser.add_argument("--senders", type=int, default=10, help="people sending them (10)")
    parser.add_argument("--window", type=float, default=1.0, help="seconds to send them in (1)")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child_main(args.child[0], int(args.child[1]))

    questions = example_questions()
    with tempfile.TemporaryDirectory(prefix="mobilize-bench-dm-") as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / "messages", folder / "content" / "messages")
        shutil.copytree(ROOT / "schedules", folder / "content" / "schedules")
        log = folder / "child.log"
        with FakeSlack() as fake:
            for index in range(args.senders):
                fake.add_user(sender(index), name=f"dm{index}", real_name=f"Sender {index}")
            env = bot_environment(fake.url, folder)
            runs = {}
            for kind in ("bare", "mobilize"):
                requests = [
                    request for _user, request in plan(args.events, args.senders, questions)
                ]
                runs[kind] = one_run(kind, env, fake, requests, args, log)
        errors = [line for line in log.read_text().splitlines() if " ERROR " in line]

    print(
        f"{args.events} DM events from {args.senders} senders within {args.window:g} s, "
        f"each on its own connection; {os.cpu_count()} cores"
    )
    print()
    print(f"{'ack (request → HTTP 200)':34} {'p50':>9} {'p99':>9} {'max':>9} {'200s':>6}")
    failed = False
    for kind, label in (("mobilize", "mobilize run --http"), ("bare", "bare Bolt app (baseline)")):
        timings = runs[kind]["timings"]
        acks = [seconds for seconds, _status in timings]
        ok = sum(1 for _seconds, status in timings if status == 200)
        p50, p99, worst = percentile(acks, 0.5), percentile(acks, 0.99), max(acks)
        print(
            f"{label:34} {1000 * p50:6.1f} ms {1000 * p99:6.1f} ms {1000 * worst:6.1f} ms {ok:>6}"
        )
        if kind == "mobilize":
            failed = p99 > ACK_P99_FLOOR_S or ok != len(timings)
    mine = runs["mobilize"]
    print()
    print(
        f"answers from the bot: {mine['answers']} of {args.events}, the last "
        f"{mine['answered_s']:.1f} s after the last ack (Slack allows ~1 message a second per "
        f"DM: {args.senders} DMs)"
    )
    if mine["answers"] != args.events:
        failed = True
    for line in errors[-5:]:
        print("child:", line)
    if failed:
        print(
            f"FAILED: p99 ack ≤ {1000 * ACK_P99_FLOOR_S:.0f} ms, every event 200, one answer each"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
