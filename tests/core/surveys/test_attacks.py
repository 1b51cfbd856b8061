"""The attacker's notebook: an anonymous run of 20 people closes, and someone who holds the
database files (main file and WAL), a backup, the logs, the bot token or the published results
tries to learn who said what. Every attack of issue 8 is here and must fail, on SQLite and on
PostgreSQL (the `db` fixture runs both when TEST_DATABASE_URL is set).

The attacker never uses the survey secret: it is kept away from the database (README,
"Threat model"). Where the attack is on the files, the test reads the raw bytes.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from itertools import combinations
from pathlib import Path
from typing import Any

import pytest
from scipy import stats
from slack_sdk import WebClient
from sqlalchemy import Engine, inspect, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from bot.cli import PAYLOAD_LOGGERS, setup_logging
from bot.core.messages import Message
from bot.core.surveys.privacy import SecretMissing, WrongSecret
from bot.core.surveys.report import (
    SUPPRESSED,
    export_rows,
    run_results,
    trend_results,
)
from bot.core.surveys.results import suppress
from bot.core.surveys.runs import CLOSED_TEXT, SurveyDesk, invite
from bot.store.models import Delivery, SurveyInvitation, SurveyResponse, SurveyRun
from tests.auxil.db import committed
from tests.auxil.surveys import (
    SECRET,
    Bot,
    FakeDirectory,
    insert_run,
    load_survey,
    make_bot,
    person,
    write,
)

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)  # outside the example rollout's survey plan
MIN_GROUP = 3
ATTACK = """\
title: Attack pulse
anonymity: anonymous
min_group: 3
questions:
  - {id: ready, kind: likert, adkar: awareness, text: I understand why we are changing.}
  - {id: where, kind: choice, text: "Where do you work?", options: [Warehouse, Office, Field]}
  - {id: desire, kind: likert, adkar: desire, optional: true, text: I want to use Compass.}
  - {id: comment, kind: text, optional: true, text: "Anything else?"}
segments:
  - {id: site, by: channel, values: {Coventry: C0COVENTRY, Dublin: C0DUBLIN}}
  - {id: team, by: group, values: {Finance: S0FINANCE, Ops: S0OPS}}
"""
PEOPLE = [f"U{n:02d}PERSON" for n in range(20)]
COVENTRY, DUBLIN = PEOPLE[:14], PEOPLE[14:]
FINANCE = [*PEOPLE[:4], PEOPLE[14]]  # one Dublin person in Finance: a combination of one
OPS = [p for p in PEOPLE if p not in FINANCE]
FIELD = PEOPLE[7]  # the only one who works in the field


def tag(user: str) -> str:
    """A comment only `user` writes, so the test (not the attacker) can tell rows apart."""
    return f"remark-{user}-zq"


@pytest.fixture
def bot(db: Engine, content_dir: Path) -> Bot:
    write(content_dir, "messages/surveys/attack.yaml", ATTACK)
    directory = FakeDirectory(
        [person(user) for user in PEOPLE],
        channels={"C0COVENTRY": COVENTRY, "C0DUBLIN": DUBLIN},
        groups={"S0FINANCE": FINANCE, "S0OPS": OPS},
    )
    return make_bot(db, content_dir, directory, start=START)


class Slack:
    """What the bot token can read back: the latest text of every message the bot posted,
    after clicks (chat.update from the click handler) and the outbox's edits."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.clicked: dict[tuple[str, str], Message] = {}

    def messages(self) -> dict[tuple[str, str], Message]:
        latest = {(p.channel, p.ts): p.message for p in self.bot.sender.posts}
        latest.update(self.clicked)
        for channel, ts, message in self.bot.sender.updates:
            latest[(channel, ts)] = message
        return latest


def start_run(bot: Bot) -> int:
    run_id = bot.runner.start_adhoc(survey_id="attack", audience=["everyone"], by="U0OWNER")
    bot.at(START)
    return run_id


def click(bot: Bot, slack: Slack, run_id: int, user: str, question: str, value: Any) -> None:
    """A click, as the Slack listener handles it: store, then update the clicked message."""
    message = bot.runner.desk.answer(run_id=run_id, user_id=user, question_id=question, value=value)
    with Session(bot.db) as session:
        delivery = session.exec(select(Delivery).where(Delivery.recipient == user)).first()
    assert delivery is not None
    slack.clicked[(delivery.channel, delivery.ts)] = message


def everyone_answers(bot: Bot, slack: Slack, run_id: int) -> list[str]:
    """Each person answers in turn (the order is what the attacker wants); returns it."""
    order = list(PEOPLE)
    for n, user in enumerate(order):
        click(bot, slack, run_id, user, "ready", str(n % 5 + 1))
        click(bot, slack, run_id, user, "where", "Field" if user == FIELD else "Office")
        click(bot, slack, run_id, user, "comment", tag(user))
        if n == 10:
            bot.at(START + timedelta(days=2))  # a reminder goes out halfway through
    return order


def run_and_close(bot: Bot) -> tuple[int, Slack, list[str]]:
    slack = Slack(bot)
    run_id = start_run(bot)
    order = everyone_answers(bot, slack, run_id)
    bot.at(START + timedelta(days=5))  # closed
    bot.at(START + timedelta(days=5, minutes=2))  # the outbox's edits are due
    return run_id, slack, order


def raw_files(db: Engine) -> bytes:
    """Every byte of the database's files, as someone with the disk (or a copy) reads them:
    SQLite's main file, WAL and journal; PostgreSQL's relation files of this database."""
    if db.dialect.name == "sqlite":
        path = Path(str(db.url.database))
        found = b""
        for suffix in ("", "-wal", "-journal"):
            candidate = Path(f"{path}{suffix}")
            if candidate.exists():
                found += candidate.read_bytes()
        return found
    with db.connect() as connection:
        connection.execute(text("CHECKPOINT"))  # what is in memory reaches the files
        data = connection.execute(text("SHOW data_directory")).scalar_one()
        oid = connection.execute(
            text("SELECT oid FROM pg_database WHERE datname = current_database()")
        ).scalar_one()
    folder = Path(data) / "base" / str(oid)
    return b"".join(p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file())


def physical_order(db: Engine, run_id: int) -> list[str]:
    """The comments of a run's rows in their physical order (SQLite rowid, PostgreSQL ctid)."""
    position = "rowid" if db.dialect.name == "sqlite" else "ctid"
    with db.connect() as connection:
        rows = connection.execute(
            text(f"SELECT answers FROM survey_response WHERE run_id = :run ORDER BY {position}"),
            {"run": run_id},
        ).all()
    return [json.loads(answers).get("comment", "") for (answers,) in rows]


# --- row order ---------------------------------------------------------------------------------


def test_row_order_does_not_follow_the_order_people_answered(bot: Bot) -> None:
    run_id, _slack, order = run_and_close(bot)
    physical = physical_order(bot.db, run_id)
    assert sorted(physical) == sorted(tag(user) for user in order)
    # The attacker ranks rows by position and people by when the ledger says they answered.
    ranks = [order.index(comment.split("-")[1]) for comment in physical]
    rho = float(stats.spearmanr(range(len(ranks)), ranks).statistic)
    assert abs(rho) < 0.8  # today's code: 1.00; a shuffle of 20 exceeds 0.8 once in ~10^5
    # The raw file, page by page, tells no more than the row ids.
    raw = raw_files(bot.db)
    offsets = sorted((raw.rfind(tag(user).encode()), user) for user in order)
    assert all(offset >= 0 for offset, _ in offsets)
    file_ranks = [order.index(user) for _offset, user in offsets]
    assert abs(float(stats.spearmanr(range(20), file_ranks).statistic)) < 0.8
    if bot.db.dialect.name == "postgresql":  # xmin: the transaction that wrote each row
        with bot.db.connect() as connection:
            xmins = connection.execute(
                text("SELECT DISTINCT xmin::text FROM survey_response WHERE run_id = :r"),
                {"r": run_id},
            ).all()
        assert len(xmins) == 1  # all written at once, at the close


def test_the_ledger_says_nothing_of_who_answered_or_when(bot: Bot) -> None:
    slack = Slack(bot)
    run_id = start_run(bot)

    def snapshot() -> dict[str, list[tuple[Any, ...]]]:
        found = {}
        with bot.db.connect() as connection:
            for table in inspect(bot.db).get_table_names():
                rows = connection.execute(text(f'SELECT * FROM "{table}"')).all()
                found[table] = sorted(tuple(str(v) for v in row) for row in rows)
        return found

    # Live polling: the attacker snapshots the database before and after one person clicks.
    before = snapshot()
    click(bot, slack, run_id, PEOPLE[3], "comment", tag(PEOPLE[3]))
    after = snapshot()
    changed = {table for table in before if before[table] != after[table]}
    assert changed == {"survey_response"}  # the ledger, the outbox: untouched
    new = set(after["survey_response"]) - set(before["survey_response"])
    (row,) = new
    assert not any(PEOPLE[3] in value or tag(PEOPLE[3]) in value for value in row)  # sealed
    assert not any("comment" in value for value in row)  # not even which question
    # Nothing in the ledger marks who answered, now or after the close.
    for user in PEOPLE[:10]:
        click(bot, slack, run_id, user, "ready", "4")
    bot.at(START + timedelta(days=5))
    with Session(bot.db) as session:
        assert {row.answered for row in session.exec(select(SurveyInvitation))} == {False}


# --- erased keys --------------------------------------------------------------------------------


def test_erased_keys_and_the_run_key_are_gone_from_the_files(bot: Bot) -> None:
    slack = Slack(bot)
    run_id = start_run(bot)
    everyone_answers(bot, slack, run_id)
    # A copy taken while the run is open: every respondent key, the run's salt.
    with Session(bot.db) as session:
        keys = {row.respondent_key for row in session.exec(select(SurveyResponse))}
        run = session.get(SurveyRun, run_id)
        assert run is not None and run.key_salt
        salt = run.key_salt
    assert len(keys) == 20 and None not in keys
    raw_open = raw_files(bot.db)
    assert any(key.encode() in raw_open for key in keys if key)  # the attack reads the files
    assert not any(tag(user).encode() in raw_open for user in PEOPLE)  # answers are sealed

    bot.at(START + timedelta(days=5))  # closed; the bot (and its connections) still running
    raw = raw_files(bot.db)
    left = [key for key in keys if key and key.encode() in raw]
    assert left == []  # today's code: all 20 in the -wal file
    assert salt.encode() not in raw  # the run key cannot be derived again, secret or not
    assert SECRET not in raw


def test_a_process_with_another_secret_refuses_instead_of_counting_twice(bot: Bot) -> None:
    slack = Slack(bot)
    run_id = start_run(bot)
    click(bot, slack, run_id, PEOPLE[0], "ready", "4")
    # A second bot, started elsewhere with another secret (or none), mid-run:
    for other in (b"another-secret", b""):
        desk = SurveyDesk(db=bot.db, secret=other, surveys=lambda: bot.runner.surveys)
        with pytest.raises((WrongSecret, SecretMissing)):
            desk.answer(run_id=run_id, user_id=PEOPLE[0], question_id="ready", value="2")
    with Session(bot.db) as session:
        assert len(session.exec(select(SurveyResponse)).all()) == 1
    # And without a secret no anonymous run starts at all.
    bot.runner.desk.secret = b""
    with pytest.raises(SecretMissing):
        bot.runner.start_adhoc(survey_id="attack", audience=["everyone"], by="U0OWNER")


# --- segment combinations -----------------------------------------------------------------------


def test_no_stored_segment_combination_is_held_by_fewer_than_min_group(bot: Bot) -> None:
    _run_id, _slack, _order = run_and_close(bot)
    with Session(bot.db) as session:
        ledger = [json.loads(r.segments) for r in session.exec(select(SurveyInvitation))]
        stored = [json.loads(r.segments) for r in session.exec(select(SurveyResponse))]
    # The attacker counts, for each combination a response carries, how many invitees hold
    # exactly that combination; one holder would name the author.
    holders = Counter(json.dumps(s, sort_keys=True) for s in ledger)
    for segments in stored:
        assert holders[json.dumps(segments, sort_keys=True)] >= MIN_GROUP
    # The lone Dublin person in Finance is not told apart by what is stored.
    mine = next(s for u, s in zip(PEOPLE, ledger, strict=False) if u == PEOPLE[14])
    assert mine != {"site": "Dublin", "team": "Finance"}
    assert any(s.get("team") for s in ledger)  # segments are still stored where safe


# --- differencing -------------------------------------------------------------------------------


def figures(report: dict[str, Any]) -> dict[str, Counter[tuple[str, str]]]:
    """Every published group's figures as sums over its people: per question, how many
    answered and how many gave each value (a comment is a value), and the response count."""
    groups = {"everyone": report["overall"]} | {
        f"{segment}={label}": group
        for segment, by_label in report["segments"].items()
        for label, group in by_label.items()
    }
    found: dict[str, Counter[tuple[str, str]]] = {}
    for name, group in groups.items():
        if group.get(SUPPRESSED):
            continue
        counts: Counter[tuple[str, str]] = Counter({("*", "responses"): group["responses"]})
        for question, summary in group["questions"].items():
            if summary.get(SUPPRESSED):
                continue
            values = summary.get("distribution") or summary.get("counts") or {}
            counts.update({(question, str(v)): n for v, n in values.items()})
            counts.update((question, c) for c in summary.get("comments", []))
            counts[(question, "n")] = summary.get("n", 0)
        found[name] = counts
    return found


def hidden_groups(report: dict[str, Any], min_group: int) -> list[str]:
    """The attack: subtract every pair of published figures (and every group from the total,
    and the sum of each breakdown from the total); a difference that is a non-negative tally
    of 1 to min_group − 1 people reveals their answers."""
    published = figures(report)
    found = []
    candidates: list[tuple[str, Counter[tuple[str, str]]]] = []
    for (a, fa), (b, fb) in combinations(published.items(), 2):
        for name, big, small in ((f"{a}-{b}", fa, fb), (f"{b}-{a}", fb, fa)):
            diff = Counter(big)
            diff.subtract(small)
            candidates.append((name, diff))
    for segment in report["segments"]:
        total = Counter(published.get("everyone", Counter()))
        for name, counts in published.items():
            if name.startswith(f"{segment}="):
                total.subtract(counts)
        candidates.append((f"everyone-all {segment}", total))
    for name, diff in candidates:
        if any(v < 0 for v in diff.values()):
            continue  # not a subset: the difference is no one's answers
        for question in {q for q, _ in diff}:
            people = diff[(question, "n")] if question != "*" else diff[("*", "responses")]
            if 0 < people < min_group:
                found.append(f"{name}: {question} of {people}")
    return found


FINANCE_COV = {"site": "Coventry", "team": "Finance"}
CRAFTED: list[tuple[dict[str, str], dict[str, Any]]] = [
    # Coventry 6, of whom Finance 5, and Dublin 5 (min_group 5). Coventry − Finance is one
    # person (ready, the optional desire, a comment); Dublin has one comment, so overall − the
    # rest would be it.
    *[(FINANCE_COV, {"ready": 4, "desire": 4, "comment": f"finance note {n}"}) for n in range(4)],
    (FINANCE_COV, {"ready": 4, "desire": 4}),
    ({"site": "Coventry"}, {"ready": 1, "desire": 1, "comment": "my manager ignores me"}),
    ({"site": "Dublin"}, {"ready": 2, "comment": "Dublin is forgotten"}),
    *[({"site": "Dublin"}, {"ready": 2})] * 4,
]


def test_subtracting_published_figures_finds_no_hidden_group(db: Engine, tmp_path: Path) -> None:
    survey = load_survey(tmp_path, ATTACK.replace("min_group: 3", "min_group: 5"), "attack")
    run_id = insert_run(
        db,
        survey,
        invitations=[segments for segments, _answers in CRAFTED] * 2,
        responses=[(answers, segments) for segments, answers in CRAFTED],
    )
    # Today's rule, one breakdown at a time and on respondent counts, shows Coventry (6), Dublin
    # (5) and Finance (5), and every question in them with 5 or more answers.
    assert suppress({"Coventry": 6, "Dublin": 5}, min_group=5, total=11) == set()
    assert suppress({"Finance": 5}, min_group=5, total=11) == set()
    report = run_results(db=db, survey=survey, run_id=run_id)
    assert hidden_groups(report, 5) == []
    # …and what is published still says something: the whole run, and a safe breakdown.
    assert report["overall"]["questions"]["ready"]["n"] == 11
    assert report["overall"]["questions"]["comment"]["n"] == 6
    # Each comment shows only in a pool of at least min_group, never tied to Dublin.
    groups = [
        report["overall"],
        *report["segments"]["site"].values(),
        *report["segments"]["team"].values(),
    ]
    pools = [
        group["questions"]["comment"]["comments"]
        for group in groups
        if not group.get(SUPPRESSED) and not group["questions"]["comment"].get(SUPPRESSED)
    ]
    assert all(len(pool) >= 5 for pool in pools) and len(pools) == 1


def test_the_real_run_publishes_nothing_subtractable(bot: Bot) -> None:
    run_id, _slack, _order = run_and_close(bot)
    survey = bot.runner.surveys["attack"]
    report = run_results(db=bot.db, survey=survey, run_id=run_id)
    assert not report["overall"].get(SUPPRESSED)
    assert hidden_groups(report, MIN_GROUP) == []
    # The lone field worker's choice is a count among 20, never a row tied to anything else.
    assert report["overall"]["questions"]["where"]["counts"]["Field"] == 1


def test_a_trend_never_shows_a_hidden_question(db: Engine, tmp_path: Path) -> None:
    survey = load_survey(tmp_path, ATTACK.replace("min_group: 3", "min_group: 5"), "attack")
    runs = [
        insert_run(
            db,
            survey,
            number=number,
            invitations=[{}] * 8,
            responses=[
                ({"ready": 3, "desire": value} if n < 2 else {"ready": 3}, {}) for n in range(6)
            ],
        )
        for number, value in ((1, 1), (2, 5))
    ]
    trend = trend_results(db=db, survey=survey, run_ids=runs)
    # Two people answered "desire" in each run: today's code shows "1.0 → 5.0".
    assert trend["desire"] == [{"change": None, "significant": False}]
    assert trend["ready"][0]["p_value"] is None  # no spread at all: no test, not p = 0


# --- Slack --------------------------------------------------------------------------------------


def test_no_answer_is_left_readable_in_slack_after_the_close(bot: Bot) -> None:
    run_id, slack, _order = run_and_close(bot)
    with Session(bot.db) as session:
        deliveries = session.exec(select(Delivery).where(Delivery.state == "sent")).all()
    messages = slack.messages()
    assert len(deliveries) >= 20
    for delivery in deliveries:  # what the bot token reads at each (channel, ts) it posted
        message = messages[(delivery.channel, delivery.ts)]
        shown = repr(message)
        assert CLOSED_TEXT in message.plain
        assert "✓" not in shown and "remark-" not in shown and "Field" not in shown
        assert message.rows == () and message.buttons == ()
    # A click after the close stores nothing and shows nothing.
    with pytest.raises(Exception, match="closed"):
        bot.runner.desk.answer(run_id=run_id, user_id=PEOPLE[0], question_id="ready", value="1")


# --- export -------------------------------------------------------------------------------------


def test_the_export_ties_no_answer_to_another(bot: Bot) -> None:
    run_id, _slack, _order = run_and_close(bot)
    survey = bot.runner.surveys["attack"]
    rows = export_rows(survey, run_results(db=bot.db, survey=survey, run_id=run_id))
    assert rows[0] == ["segment", "group", "question", "value", "count"]
    # The field worker's comment, next to "Field" or their score, would name them.
    for row in rows[1:]:
        assert len(row) == 5 and not ("Field" in row and any("remark-" in c for c in row))
    assert {row[2] for row in rows[1:]} <= {"responses", *(q.id for q in survey.questions)}
    # Comments in small groups are left out with the group.
    assert hidden_groups(run_results(db=bot.db, survey=survey, run_id=run_id), MIN_GROUP) == []


# --- logs ---------------------------------------------------------------------------------------


class _Ok(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"ok": true, "channel": "D1", "ts": "1.2"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def slack_api() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Ok)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/"
    server.shutdown()


def test_logs_at_debug_carry_no_answer(
    db: Engine, slack_api: str, caplog: pytest.LogCaptureFixture
) -> None:
    names = ["", *PAYLOAD_LOGGERS, "sqlalchemy.engine"]
    levels = {name: logging.getLogger(name).level for name in names}
    try:
        setup_logging("DEBUG")
        caplog.set_level(logging.DEBUG)
        # What the click handler and the outbox send: the answer in the action value and in
        # the updated message.
        client = WebClient(token="xoxb-test", base_url=slack_api)
        client.chat_update(channel="D1", ts="1.2", text="✓ 4 – Agree remark-logged-zq")
        client.api_call("chat.postMessage", json={"channel": "D1", "text": "1|ready|4 remark-zq"})
        # A database error while storing an answer: the bound values are the answer and key.
        with Session(db) as session:
            for _ in range(2):
                session.add(
                    SurveyResponse(
                        id="f" * 32, run_id=1, respondent_key="k" * 64, answers="remark-db-zq"
                    )
                )
                try:
                    session.commit()
                except IntegrityError as exc:
                    session.rollback()
                    logging.getLogger("bot").exception("storing failed: %s", exc)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    logged = caplog.text + " ".join(str(r.args) for r in caplog.records)
    assert "remark-" not in logged and "k" * 64 not in logged and "|ready|" not in logged


# --- the ledger cannot be reopened --------------------------------------------------------------


def test_a_closed_run_cannot_be_reopened_by_inviting(bot: Bot) -> None:
    run_id, _slack, _order = run_and_close(bot)
    invited, _left = committed(
        bot.db, invite, run_id=run_id, people=["U99LATE"], segments={}, now=START, min_group=3
    )
    assert invited == []
    with Session(bot.db) as session:
        run = session.get(SurveyRun, run_id)
    assert run is not None and run.state == "closed"
