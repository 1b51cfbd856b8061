"""How long resolving a 10,000-person audience takes (the requirement: at most 10 s).

Builds a loopback Slack (tests/slack/fake_slack.py) with N users and an N-member channel, then
times `resolve(["everyone"])` and `resolve(["members:C…"])` through SlackDirectory, each with
a fresh directory. Run from the repository root:

    .venv/bin/python -m benchmarks.audience_resolution [--users 10000] [--page-size 1000]

Loopback measures our code, HTTP and JSON under Slack's rate tiers (users.list is Tier 2: 20
calls a minute, so the second audience waits for the tier); against real Slack add one round
trip per call (the call counts are printed).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # also runnable as `python benchmarks/audience_resolution.py`
    sys.path.insert(0, str(ROOT))

from bot.channels.slack.chat import make_client  # noqa: E402
from bot.channels.slack.directory import SlackDirectory  # noqa: E402
from bot.core.announcements.audience import resolve  # noqa: E402
from tests.slack.fake_slack import BOT_TOKEN, FakeSlack  # noqa: E402

LIMIT_SECONDS = 10.0
CHANNEL = "C10K"


def populate(fake: FakeSlack, users: int) -> None:
    """N users, about 2% bots, 2% deactivated and 4% guests, all in one channel."""
    ids = []
    for n in range(users):
        user_id = f"U{n:06d}"
        extra: dict[str, bool] = {}
        if n % 50 == 1:
            extra["is_bot"] = True
        elif n % 50 == 2:
            extra["deleted"] = True
        elif n % 25 == 3:
            extra["is_restricted"] = True
        fake.add_user(user_id, name=f"user{n}", real_name=f"User {n}", **extra)
        ids.append(user_id)
    fake.channel_members[CHANNEL] = ids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--page-size", type=int, default=1000)
    args = parser.parse_args(argv)

    failed = False
    with FakeSlack() as fake:
        populate(fake, args.users)
        print(f"workspace: {len(fake.users):,} users; users.list page size {args.page_size}")
        for part in ("everyone", f"members:{CHANNEL}"):
            # The bot's own client: it waits out users.list's Tier 2 429s (Retry-After).
            client = make_client(token=BOT_TOKEN, base_url=fake.url, max_retries=5)
            client.proxy = None
            directory = SlackDirectory(client, page_size=args.page_size)
            calls_before = len(fake.calls)
            started = time.perf_counter()
            audience = resolve([part], directory, content_dir=ROOT)
            seconds = time.perf_counter() - started
            calls = len(fake.calls) - calls_before
            verdict = "ok" if seconds <= LIMIT_SECONDS else f"OVER {LIMIT_SECONDS:.0f} s"
            failed = failed or seconds > LIMIT_SECONDS
            print(
                f"{part:<16} {seconds:6.3f} s  {calls:3d} Slack calls  "
                f"{audience.summary()}  [{verdict}]"
            )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
