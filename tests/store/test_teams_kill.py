"""Announcements on Teams survive kill -9 without a duplicate: a child process (the running
bot's outbox with the real `TeamsSender`, tests/auxil/teams_worker.py) is killed with SIGKILL
twice while it sends one announcement to 1,000 people on the loopback Teams, and started again.

Teams offers no read-back of what the bot sent, so a row a kill leaves in doubt (`sending`,
lease run out) is never resent silently: it becomes `unknown`, and an operator settles it
(`resolve_unknown`). Each worker thread holds one row at a time (`--batch 1`), so a kill leaves
at most one row per thread in doubt. The test then plays the operator — marks sent the unknown
rows whose person has the card, resends the others — and everyone ends with exactly one copy.

Every person has the app and a known 1:1 chat: their References rows are written up front
(conversation id and service URL), so the sender posts straight into the chat, as it does for
anyone who has written to the bot."""

from __future__ import annotations

import functools
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session

from bot.channels.teams.refs import Person, save_person
from bot.core.outbox import resolve_unknown
from tests.auxil.outbox import deliveries, make_send
from tests.auxil.processes import kill, wait_for_line
from tests.teams.fake_connector import TENANT_ID, FakeTeams
from tests.teams.server import Answer, Request

ROOT = Path(__file__).resolve().parents[2]
USERS = 1_000
KILLS = 2
THREADS = 4
RATE = 45  # TEAMS_SEND_RATE: with the budget's burst, under the tenant's 50 requests a second
LEASE = 2  # seconds; the bot's is 120
SEED = 7
# Rows a worker claims at a time. Every claimed row is `sending` until its post is recorded, so
# a kill leaves all of a thread's claimed rows in doubt — posted or not yet tried — and on Teams
# each becomes `unknown`. One at a time keeps that to the post in flight (the bot claims 10).
BATCH = 1
DEADLINE = 60  # seconds a worker may take to settle everything


class KillableTeams(FakeTeams):
    """FakeTeams with a hook the next SendToConversation runs once its card is stored, before
    the answer goes back (where a kill hurts most: posted, and the sender never hears)."""

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


def accepted(teams: FakeTeams) -> Counter[str]:
    """SendToConversation calls the connector accepted, per conversation."""
    return Counter(
        str(call.params["conversation_id"])
        for call in teams.calls_to("SendToConversation")
        if call.ok
    )


def has_card(teams: FakeTeams, conversation: str) -> bool:
    return any(stored.sender == "bot" for stored in teams.activities(conversation))


def test_teams_announcement_survives_sigkill_without_duplicates(
    database_url: str, db: Engine
) -> None:
    rng = random.Random(SEED)
    started = time.monotonic()
    figures: list[str] = []
    with KillableTeams(preload=False) as teams:
        chats: dict[str, str] = {}  # Entra object id -> 1:1 chat id
        with Session(db) as session:
            for n in range(USERS):
                user = teams.directory.add_user(f"p{n:04d}", f"Person {n}", app_installed=True)
                chats[user.id] = teams.directory.personal_conversation_id(user)
                save_person(
                    session=session,
                    person=Person(
                        user.id,
                        user.teams_id,
                        user.display_name,
                        TENANT_ID,
                        chats[user.id],
                        teams.url,
                    ),
                )
            session.commit()
        people = list(chats)
        send_id, ids = make_send(
            db, people, now=datetime.now(UTC) - timedelta(seconds=1), platform="teams"
        )
        recipients = dict(zip(ids, people, strict=True))
        seen_in_doubt: set[int] = set()
        env = {**os.environ, **teams.settings(), "NO_PROXY": "127.0.0.1,localhost"}
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY"):
            env.pop(name, None)

        def start() -> subprocess.Popen[str]:
            command = [sys.executable, "-m", "tests.auxil.teams_worker", database_url]
            command += [f"--expect={USERS}", f"--threads={THREADS}", f"--rate={RATE}"]
            command += [f"--lease={LEASE}", f"--batch={BATCH}", f"--deadline={DEADLINE}"]
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            assert wait_for_line(process, timeout=30) == "ready"
            return process

        def in_doubt() -> set[int]:
            return {int(row.id or 0) for row in deliveries(db, send_id) if row.state == "sending"}

        def finish(process: subprocess.Popen[str]) -> int:
            try:
                out, err = process.communicate(timeout=DEADLINE + 30)
            finally:
                kill(process)
            assert process.returncode == 0, err[-3000:]
            return int(re.findall(r"posted (\d+)", out)[-1])

        for life in range(KILLS):
            before = sum(accepted(teams).values())
            process = start()
            try:
                while sum(accepted(teams).values()) == before:  # this life is sending
                    assert process.poll() is None, process.communicate()[1][-3000:]
                    time.sleep(0.02)
                time.sleep(rng.uniform(0.0, 4.0))
                if life == 0:
                    kill(process)  # anywhere: posting, recording, claiming, waiting for tokens
                else:
                    # The worst moment: Teams stored the card, the worker has not heard back.
                    teams.on_send = functools.partial(kill, process)
                    process.wait(timeout=30)
            finally:
                kill(process)
            doubtful = in_doubt() - seen_in_doubt  # rows this kill left `sending`
            seen_in_doubt |= doubtful
            posted = [i for i in doubtful if has_card(teams, chats[recipients[i]])]
            figures.append(
                f"kill {life + 1}: {sum(accepted(teams).values())} cards so far; "
                f"{len(doubtful)} more rows in doubt, {len(posted)} of them posted"
            )
        posted_last = finish(start())

        # --- what the kills left: no duplicate, in doubt only what a kill interrupted
        per_chat = accepted(teams)
        assert max(per_chat.values()) == 1, per_chat.most_common(3)  # nobody got two copies
        assert sum(per_chat.values()) >= posted_last
        rows = deliveries(db, send_id)
        states = Counter(row.state for row in rows)
        assert set(states) <= {"sent", "unknown"}, states
        for row in rows:
            if row.state != "sent":
                continue
            # Its activity id is a real card of the bot's, in that person's chat.
            assert row.channel == chats[row.recipient]
            cards = [a.id for a in teams.activities(row.channel) if a.sender == "bot"]
            assert cards == [row.ts], (row.id, cards)
        unknown = [row for row in rows if row.state == "unknown"]
        assert len(unknown) <= KILLS * THREADS, len(unknown)
        lost = [row for row in rows if not has_card(teams, chats[row.recipient])]
        assert {row.id for row in lost} <= {row.id for row in unknown}  # sent rows all arrived

        # --- the operator: the card is there → sent; it is not → resend
        arrived = [int(row.id or 0) for row in unknown if has_card(teams, chats[row.recipient])]
        missing = [int(row.id or 0) for row in unknown if not has_card(teams, chats[row.recipient])]
        for row in unknown:
            there = "has the card" if row.id in arrived else "has no card"
            figures.append(f"unknown delivery {row.id} ({row.recipient}): {there}")
        with Session(db) as session:
            now = datetime.now(UTC)
            assert resolve_unknown(
                session=session, delivery_ids=arrived, resend=False, now=now
            ) == len(arrived)
            assert resolve_unknown(
                session=session, delivery_ids=missing, resend=True, now=now
            ) == len(missing)
            session.commit()
        assert finish(start()) == len(missing)

    per_chat = accepted(teams)
    assert set(per_chat) == set(chats.values())  # everyone got it
    assert max(per_chat.values()) == 1  # exactly once
    assert Counter(row.state for row in deliveries(db, send_id)) == {"sent": USERS}
    figures.append(
        f"{len(unknown)} unknown ({len(arrived)} had the card, {len(missing)} resent); "
        f"{USERS} people, one card each; {teams.rejected_429} × 429; "
        f"{time.monotonic() - started:.1f} s"
    )
    print(*figures, sep="\n")
