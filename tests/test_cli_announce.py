"""`mobilize announce …` through Typer's CliRunner, with Slack faked on loopback and a temp
database: what people type, what they see, and clear errors instead of tracebacks."""

from __future__ import annotations

import csv
import io
import json
import sys
import textwrap
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, update
from sqlmodel import Session, col, select
from typer.testing import CliRunner, Result

from bot.channels.slack.chat import SlackChat, make_client
from bot.cli import app, main
from bot.config import get_settings
from bot.core.announcements.announcer import Announcer
from bot.core.messages import say
from bot.core.outbox import Budget, Limits, Outbox, SendResult
from bot.core.outbox.outbox import (
    ANNOUNCEMENT,
    CANNOT_TELL,
    IN_DOUBT,
    LEASE,
    SURVEY_INVITATION,
)
from bot.core.platforms import TEAMS
from bot.service import connect_platforms, make_announcer
from bot.store.db import make_engine, upgrade
from bot.store.models import AnnouncementSend, AuditLog, Delivery, SurveyRun, SurveySend
from tests.auxil.outbox import (
    T0,
    FakeClock,
    RecordingSender,
    deliveries,
    make_send,
    renderer,
    send_row,
)
from tests.slack.fake_slack import FakeSlack

GO_LIVE = date.today() + timedelta(days=10)
STATUS_KEYS = {"id", "state", "total", "pending", "sent", "failed", "skipped", "acknowledged"}
EXPORT_HEADER = [
    "recipient",
    "kind",
    "name",
    "state",
    "error",
    "channel",
    "ts",
    "updated_at",
    "acknowledged_at",
]


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")


@pytest.fixture
def content(tmp_path: Path) -> Path:
    """A small rollout going live in ten days: two announcements, one asking for an ack."""
    root = tmp_path / "content"
    write(
        root,
        "schedules/rollout.yaml",
        f"""
        rollout:
          name: Compass
          organisation: Fernhill
          timezone: Europe/London
          links:
            portal: https://compass.example/
        milestones:
          go_live: {GO_LIVE.isoformat()}
        """,
    )
    write(
        root,
        "schedules/announcements.yaml",
        """
        announcements:
          - id: go-live-day
            template: go-live-day
            to: everyone
            at: "go_live at 08:00"
          - id: read-only
            template: read-only
            to: "users:U1,U2"
            at: "go_live - 2 days at 09:00"
            ack: true
        """,
    )
    write(
        root,
        "messages/announcements/go-live-day.md",
        """
        ---
        title: "{{ rollout.name }} is live"
        owner: Compass Programme
        buttons:
          - label: Open Compass
            url: "{{ links.portal }}"
        ---
        Good morning {{ user.first_name }}! {{ rollout.name }} is live from {{ milestones.go_live | longdate }}.
        """,
    )
    write(
        root,
        "messages/announcements/read-only.md",
        """
        ---
        title: The old system is read-only
        owner: Compass Programme
        buttons:
          - ack: I've read this
        ---
        Hi {{ user.first_name }}, the old system is now read-only.
        """,
    )
    return root


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    database_url: str,
    content: Path,
    slack: FakeSlack,
) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)  # no stray .env
    for name, value in {
        "SLACK_BOT_TOKEN": "xoxb-test-token",
        "SLACK_API_URL": slack.url,
        "DATABASE_URL": database_url,
        "MOBILIZE_CONTENT_DIR": str(content),
        "MOBILIZE_ADMINS": "U3",
        "MOBILIZE_SEND_RATE": "1000",
        "MOBILIZE_EDIT_RATE": "100",
        "COLUMNS": "200",
    }.items():
        monkeypatch.setenv(name, value)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def db(cli_env: None, database_url: str) -> Iterator[Engine]:
    """The CLI's database, migrated, for looking at what a command did."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def mobilize(*args: str) -> Result:
    result = CliRunner().invoke(app, ["announce", *args])
    assert "Traceback" not in result.output
    return result


def ok(*args: str) -> str:
    result = mobilize(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def queue(*args: str) -> int:
    """`announce send …`; returns the id it printed on its last line."""
    return int(ok("send", *args).strip().splitlines()[-1])


@pytest.fixture
def running(db: Engine) -> Iterator[Announcer]:
    """The running bot's announcer (its scheduler and workers are driven by `run_bot`)."""
    settings = get_settings()
    client = make_client(token="xoxb-test-token", base_url=settings.slack_api_url, max_retries=0)
    announcer = make_announcer(
        settings, db, connect_platforms(settings, db, slack_chat=SlackChat(client))
    )
    assert announcer.load() == []
    yield announcer


def run_bot(announcer: Announcer) -> None:
    for _ in range(10):
        announcer.tick()
        if announcer.outbox.drain_once(batch=50) == 0:
            break
    announcer.tick()


# --- plan and preview ---------------------------------------------------------------------


def test_plan_lists_what_is_coming(cli_env: None) -> None:
    out = ok("plan")
    assert "go-live-day" in out and "read-only" in out
    assert f"{GO_LIVE:%a %d %b %Y} 08:00" in out
    assert "users:U1,U2" in out
    assert "Nothing planned in the next 5 days." in ok("plan", "--days", "5")


def test_plan_with_sizes_resolves_each_audience_through_slack(cli_env: None) -> None:
    out = ok("plan", "--sizes")
    assert "3 people; left out: 1 bot, 1 deactivated" in out  # everyone
    assert "2 people" in out  # users:U1,U2


def test_preview_prints_block_kit_json_and_a_builder_link(cli_env: None) -> None:
    out = ok("preview", "go-live-day")
    lines = out.splitlines()
    start = lines.index("[")
    end = lines.index("]", start)
    blocks = json.loads("\n".join(lines[start : end + 1]))
    assert blocks[0]["type"] == "section"
    assert "Good morning Sam!" in json.dumps(blocks)  # the sample recipient
    (link,) = [line for line in lines if line.startswith("Block Kit Builder: ")]
    url = link.removeprefix("Block Kit Builder: ")
    assert url.startswith("https://app.slack.com/block-kit-builder/#")
    assert json.loads(urllib.parse.unquote(url.split("#", 1)[1])) == {"blocks": blocks}


def test_preview_for_a_real_user_uses_their_name(cli_env: None) -> None:
    assert "Good morning Alice!" in ok("preview", "go-live-day", "--user", "U1")


# --- send, status, export -------------------------------------------------------------------


def test_send_queues_an_announcement_and_prints_its_id(db: Engine) -> None:
    result = mobilize("send", "read-only", "--to", "users:U1,U2", "--by", "U3")
    assert result.exit_code == 0, result.output
    assert "Audience: 2 people" in result.stdout
    send_id = int(result.stdout.strip().splitlines()[-1])
    send = send_row(db, send_id)
    assert (send.template, json.loads(send.audience), send.owner, send.ack, send.state) == (
        "read-only",
        ["users:U1,U2"],
        "U3",
        True,
        "planned",
    )
    with Session(db) as session:
        (entry,) = session.exec(select(AuditLog)).all()
    assert (entry.actor, entry.action) == ("U3", "announce.send")


def test_send_at_a_time_in_the_rollouts_zone(db: Engine) -> None:
    send_id = queue("go-live-day", "--to", "everyone", "--at", "2030-07-01T09:00")
    assert send_row(db, send_id).due_at == datetime(2030, 7, 1, 8, 0, tzinfo=UTC)  # BST


def test_a_dry_run_shows_the_audience_and_queues_nothing(db: Engine) -> None:
    out = ok("send", "go-live-day", "--to", "everyone", "--dry-run")
    assert "Audience: 3 people; left out: 1 bot, 1 deactivated" in out
    with Session(db) as session:
        assert session.exec(select(AnnouncementSend)).all() == []


def test_status_json_has_the_documented_keys_and_groups_failures(
    slack: FakeSlack, running: Announcer
) -> None:
    send_id = queue("go-live-day", "--to", "users:U1,U2;users:U3", "--by", "U3")
    slack.fail("chat.postMessage", "account_inactive")
    run_bot(running)

    status = json.loads(ok("status", str(send_id), "--json"))
    assert set(status) >= STATUS_KEYS
    assert {key: status[key] for key in STATUS_KEYS} == {
        "id": send_id,
        "state": "done",
        "total": 3,
        "pending": 0,
        "sent": 2,
        "failed": 1,
        "skipped": 0,
        "acknowledged": 0,
    }
    assert status["failures"] == {"account_inactive": 1}

    text = ok("status", str(send_id))
    assert "Sent: 2 · Failed: 1" in text and "`account_inactive` ×1" in text
    (listed,) = json.loads(ok("status", "--json"))
    assert listed["id"] == send_id


def test_export_writes_one_csv_row_per_recipient(running: Announcer, db: Engine) -> None:
    send_id = queue("read-only", "--to", "users:U1,U2")
    run_bot(running)
    rows = list(csv.reader(io.StringIO(ok("export", str(send_id)))))
    assert rows[0] == EXPORT_HEADER
    assert [(row[0], row[1], row[3], row[5]) for row in rows[1:]] == [
        ("U1", "dm", "sent", "DU1"),
        ("U2", "dm", "sent", "DU2"),
    ]
    assert [row[6] for row in rows[1:]] == [d.ts for d in deliveries(db, send_id)]


# --- after sending ------------------------------------------------------------------------------


def test_update_recall_resend_and_cancel_say_what_they_did(
    slack: FakeSlack, running: Announcer, db: Engine
) -> None:
    slack.fail("chat.postMessage", "account_inactive")
    send_id = queue("go-live-day", "--to", "users:U1,U2")
    run_bot(running)

    assert f"1 sent copies of #{send_id} will be re-rendered and edited" in ok(
        "update", str(send_id)
    )
    assert f"1 failed deliveries of #{send_id} queued again." in ok(
        "resend", str(send_id), "--failed"
    )
    assert f"#{send_id} cancelled; 1 pending deliveries will not be sent." in ok(
        "cancel", str(send_id)
    )
    assert f"1 sent copies of #{send_id} will be deleted" in ok(
        "recall", str(send_id), "--by", "U3"
    )
    with Session(db) as session:
        actions = [entry.action for entry in session.exec(select(AuditLog))]
    assert actions == [
        "announce.send",
        "announce.update",
        "announce.resend",
        "announce.cancel",
        "announce.recall",
    ]


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["send", "nope", "--to", "everyone"], "no template 'nope'; known: go-live-day, read-only"),
        (["send", "go-live-day", "--to", "people:all"], "unknown audience 'people:all'"),
        (["send", "go-live-day", "--to", "channel:general"], "takes a channel id like C0123ABCD"),
        (["send", "go-live-day", "--to", "everyone", "--at", "tomorrow"], "use a date and time"),
        (["preview", "nope"], "no template 'nope'"),
        (["status", "999"], "no announcement #999"),
        (["resend", "1"], "say what to resend: --failed"),
        (["settle", "1"], "say what happened: --mark-sent (it arrived) or --resend (it did not)"),
        (["settle", "1", "--resend", "--mark-sent"], "say what happened: --mark-sent"),
        (["settle", "--resend"], "give delivery ids, or --all with --send ID or --survey ID"),
        (["settle", "--all", "--resend"], "--all needs one of --send ID and --survey ID"),
        (["settle", "1", "--send", "2", "--resend"], "--send and --survey go with --all"),
    ],
)
def test_bad_input_gets_a_clear_message_and_a_non_zero_exit(
    db: Engine, args: list[str], message: str
) -> None:
    result = mobilize(*args)
    assert result.exit_code != 0
    assert message in " ".join(result.output.split())
    with Session(db) as session:
        assert session.exec(select(AnnouncementSend)).all() == []


def test_an_audience_slack_cannot_resolve_is_reported_without_a_traceback(
    db: Engine, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        sys, "argv", ["mobilize", "announce", "send", "go-live-day", "--to", "members:C404"]
    )
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code not in (0, None)
    captured = capsys.readouterr()
    assert "members:C404: listing the channel's members failed: channel_not_found" in captured.err
    assert "Traceback" not in captured.out + captured.err
    with Session(db) as session:
        assert session.exec(select(AnnouncementSend)).all() == []


# --- deliveries in doubt ---------------------------------------------------------------------


@dataclass
class Doubt:
    """Deliveries the outbox left `unknown`, and that outbox (to drive it afterwards)."""

    outbox: Outbox
    sender: RecordingSender
    clock: FakeClock
    send_id: int
    announcement: list[int]
    survey: list[int]


def survey_rows(db: Engine, recipients: list[str]) -> list[int]:
    """A run of the survey `pulse` with one pending invitation per recipient."""
    with Session(db) as session:
        run = SurveyRun(
            key=f"test:{uuid.uuid4().hex}",
            survey_id="pulse",
            anonymity="anonymous",
            audience="[]",
            state="open",
            starts_at=T0,
            closes_at=T0 + timedelta(days=7),
        )
        session.add(run)
        session.flush()
        batch = SurveySend(
            key=f"test:{uuid.uuid4().hex}", run_id=int(run.id or 0), kind="invitation"
        )
        session.add(batch)
        session.flush()
        rows = [
            Delivery(
                survey_send_id=batch.id,
                kind=SURVEY_INVITATION,
                platform=TEAMS,
                recipient=recipient,
                name="Chika Sato",
                not_before=T0,
                updated_at=T0,
            )
            for recipient in recipients
        ]
        session.add_all(rows)
        session.commit()
        return [int(row.id or 0) for row in rows]


@pytest.fixture
def doubt(db: Engine) -> Doubt:
    """Two announcement deliveries and one survey invitation on Teams, made `unknown` the way
    the core does it: each post gets no answer (in doubt), the lease runs out, and the Teams
    sender's `find` can only say CANNOT_TELL."""
    send_id, announcement = make_send(db, ["aad-alice", "aad-bob"], template="go-live-day")
    with Session(db) as session:
        session.execute(
            update(Delivery).where(col(Delivery.send_id) == send_id).values(platform=TEAMS)
        )
        session.commit()
    survey = survey_rows(db, ["aad-chika"])
    clock = FakeClock()
    sender = RecordingSender(clock=clock)
    outbox = Outbox(
        db=db,
        senders={TEAMS: sender},
        renderers={
            ANNOUNCEMENT: renderer(db),
            SURVEY_INVITATION: lambda d: say("How is it going?"),
        },
        limits=Limits(
            posts_per_second=1000,
            burst=1000,
            edits_per_second=1000,
            reads_per_second=1000,
            read_burst=1000,
        ),
        clock=clock.now,
        sleep=clock.sleep,
    )
    outbox.budget = Budget(db, clock=clock.time)
    sender.script("post", *[SendResult(ok=False, error=IN_DOUBT)] * 3)
    assert outbox.drain_once() == 3
    clock.advance(LEASE.total_seconds() + 1)
    sender.script("find", *[SendResult(ok=False, error=CANNOT_TELL)] * 3)
    assert outbox.reconcile() == 3
    assert {row.state for row in all_deliveries(db)} == {"unknown"}
    return Doubt(outbox, sender, clock, send_id, announcement, survey)


def all_deliveries(db: Engine) -> list[Delivery]:
    with Session(db) as session:
        return list(session.exec(select(Delivery).order_by(col(Delivery.id))).all())


def test_unknown_lists_announcements_and_surveys_in_doubt(doubt: Doubt) -> None:
    out = " ".join(ok("unknown").split())
    (first, second), (third,) = doubt.announcement, doubt.survey
    for line in (
        f"│ {first} │ announcement #{doubt.send_id} (go-live-day) │ aad-alice │ teams │"
        " announcement │ 2027-04-06 08:00:00 │ 1 │",
        f"│ {second} │ announcement #{doubt.send_id} (go-live-day) │ aad-bob │ teams │",
        f"│ {third} │ survey pulse run 1 (invitation) │ Chika Sato (aad-chika) │ teams │"
        " survey_invitation │ 2027-04-06 08:00:00 │ 1 │",
    ):
        assert line in out, out
    assert "3 in doubt." in out and "--mark-sent` (it arrived) or `--resend` (it did not)" in out

    listed = json.loads(ok("unknown", "--json"))
    assert [row["id"] for row in listed] == [first, second, third]
    assert set(listed[0]) == {
        "id",
        "for",
        "recipient",
        "name",
        "platform",
        "kind",
        "tried_at",
        "attempts",
    }
    assert [
        row["id"] for row in json.loads(ok("unknown", "--json", "--send", str(doubt.send_id)))
    ] == [first, second]
    assert [row["id"] for row in json.loads(ok("unknown", "--json", "--survey", "pulse"))] == [
        third
    ]
    assert json.loads(ok("unknown", "--json", "--survey", "other")) == []


def test_nothing_in_doubt(db: Engine) -> None:
    assert ok("unknown").strip() == "No deliveries in doubt."


def test_settle_mark_sent_records_them_and_sends_nothing(db: Engine, doubt: Doubt) -> None:
    first, second = doubt.announcement
    out = ok("settle", str(first), str(doubt.survey[0]), "--mark-sent", "--yes", "--by", "U3")
    assert f"#{first}: unknown → sent (not sent again)" in out
    assert f"#{doubt.survey[0]}: unknown → sent (not sent again)" in out
    assert "2 deliveries recorded as sent." in out
    states = {row.id: (row.state, row.error) for row in all_deliveries(db)}
    assert states[first] == states[doubt.survey[0]] == ("sent", "in_doubt:marked_sent")
    assert states[second] == ("unknown", "in_doubt")
    with Session(db) as session:
        (entry,) = session.exec(select(AuditLog)).all()
    assert (entry.actor, entry.action) == ("U3", "announce.settle")
    assert entry.detail == f"mark sent: 2 in doubt: #{first}, #{doubt.survey[0]}"
    posted = len(doubt.sender.attempts)
    doubt.outbox.drain_once()
    assert len(doubt.sender.attempts) == posted  # never resent


def test_settle_resend_asks_first_then_the_outbox_sends_again(db: Engine, doubt: Doubt) -> None:
    first, second = doubt.announcement
    declined = CliRunner().invoke(app, ["announce", "settle", str(first), "--resend"], input="n\n")
    assert declined.exit_code == 1
    assert (
        "Send this delivery again? Whoever did get a message will have it twice." in declined.output
    )
    assert "Nothing changed." in declined.output
    assert {row.state for row in all_deliveries(db)} == {"unknown"}

    agreed = CliRunner().invoke(app, ["announce", "settle", str(first), "--resend"], input="y\n")
    assert agreed.exit_code == 0, agreed.output
    assert f"#{first}: unknown → pending: the running bot sends it again" in agreed.output
    assert "1 delivery queued again for the running bot to send." in agreed.output
    with Session(db) as session:
        (entry,) = session.exec(select(AuditLog)).all()
    assert entry.action == "announce.settle" and entry.actor.startswith("cli:")
    assert entry.detail == f"resend: 1 in doubt: #{first}"

    doubt.outbox.drain_once()
    assert [post.delivery_id for post in doubt.sender.posts] == [first]
    states = {row.id: row.state for row in all_deliveries(db)}
    assert (states[first], states[second]) == ("sent", "unknown")


def test_settle_all_of_one_send_or_survey(db: Engine, doubt: Doubt) -> None:
    out = ok("settle", "--all", "--send", str(doubt.send_id), "--mark-sent", "--yes")
    assert "2 deliveries recorded as sent." in out
    out = ok("settle", "--all", "--survey", "pulse", "--resend", "--yes")
    assert "1 delivery queued again for the running bot to send." in out
    states = {row.id: row.state for row in all_deliveries(db)}
    assert [states[i] for i in doubt.announcement] == ["sent", "sent"]
    assert states[doubt.survey[0]] == "pending"


def test_settle_leaves_rows_that_are_not_in_doubt_alone(db: Engine, doubt: Doubt) -> None:
    first, _ = doubt.announcement
    ok("settle", str(first), "--mark-sent", "--yes")
    result = mobilize("settle", str(first), "999", "--resend", "--yes")
    assert result.exit_code == 1
    assert f"Not in doubt, left alone: #{first} (sent), #999 (no such delivery)" in result.output
    assert "Nothing to settle." in result.output
    with Session(db) as session:
        assert len(session.exec(select(AuditLog)).all()) == 1
