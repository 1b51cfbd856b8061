"""`mobilize survey …` through Typer's CliRunner, with Slack faked on loopback and a temp
database: start, status, results, close and export, and clear errors instead of tracebacks."""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select
from typer.testing import CliRunner, Result

from bot.cli import app, main
from bot.config import get_settings
from bot.core.surveys.runner import SurveyRunner
from bot.store.db import make_engine, upgrade
from bot.store.models import AuditLog, Delivery, SurveyResponse, SurveyRun, SurveySend
from tests.auxil.surveys import FakeDirectory, RecordingChat, person, write
from tests.slack.fake_slack import FakeSlack

ROOT = Path(__file__).resolve().parent.parent
SECRET = "cli-test-secret"
PEOPLE = ["U1", "U2", "U4", "U5"]
PULSE = """\
title: Pulse
anonymity: {anonymity}
min_group: 3
questions:
  - id: ready
    kind: likert
    adkar: awareness
    text: I understand why we are changing.
  - id: confidence
    kind: likert
    text: How confident do you feel?
  - id: recommend
    kind: enps
    text: Would you recommend Compass?
  - id: training
    kind: choice
    text: Which training did you take?
    options: [E-learning, Live session]
  - id: helped
    kind: multi
    text: What helped?
    options: [Guides, Champions]
  - id: comment
    kind: text
    text: Anything else?
    optional: true
"""


@pytest.fixture
def content(tmp_path: Path) -> Path:
    """The example rollout with two small surveys and no survey plan."""
    root = tmp_path / "content"
    (root / "schedules").mkdir(parents=True)
    shutil.copy(ROOT / "schedules" / "rollout.yaml", root / "schedules" / "rollout.yaml")
    write(root, "messages/surveys/pulse.yaml", PULSE.format(anonymity="anonymous"))
    write(root, "messages/surveys/named.yaml", PULSE.format(anonymity="named"))
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
        "MOBILIZE_SURVEY_SECRET": SECRET,
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


@pytest.fixture
def running(db: Engine, content: Path) -> SurveyRunner:
    """The running bot's survey side, with the same secret (Slack's directory faked)."""
    runner = SurveyRunner(
        db=db,
        content_dir=content,
        directory=FakeDirectory([person(user) for user in PEOPLE]),
        chat=RecordingChat(),
        secret=SECRET.encode(),
    )
    assert runner.load() == []
    return runner


def mobilize(*args: str) -> Result:
    result = CliRunner().invoke(app, ["survey", *args])
    assert "Traceback" not in result.output
    return result


def ok(*args: str) -> str:
    result = mobilize(*args)
    assert result.exit_code == 0, result.output
    return result.stdout


def open_latest(runner: SurveyRunner, survey: str = "pulse") -> int:
    """What the running bot's next tick does with a run the CLI started."""
    with Session(runner.db) as session:
        run = session.exec(select(SurveyRun).where(SurveyRun.survey_id == survey)).all()[-1]
    assert run.id is not None
    assert runner.open_run(run.id, datetime.now(UTC)) > 0
    return run.id


def answer_all(runner: SurveyRunner, run_id: int, users: list[str]) -> None:
    for n, user in enumerate(users):
        desk = runner.desk
        desk.answer(run_id=run_id, user_id=user, question_id="ready", value=str(n + 2))
        desk.answer(run_id=run_id, user_id=user, question_id="recommend", value="9")
        desk.answer(run_id=run_id, user_id=user, question_id="training", value="E-learning")
        desk.answer(
            run_id=run_id, user_id=user, question_id="helped", value=["Guides", "Champions"]
        )
    runner.desk.answer(run_id=run_id, user_id=users[0], question_id="comment", value="More, please")


def test_start_status_results_close_and_export(
    db: Engine, running: SurveyRunner, slack: FakeSlack
) -> None:
    out = ok("start", "pulse", "--to", "users:U1,U2,U4,U5", "--by", "U3", "--days", "3")
    assert "Started pulse (run id 1, open 3 days, to users:U1,U2,U4,U5)." in " ".join(out.split())
    with Session(db) as session:
        (audit,) = session.exec(select(AuditLog)).all()
    assert (audit.actor, audit.action) == ("U3", "survey.start")

    status = json.loads(ok("status", "pulse", "--json"))
    assert [(r["run"], r["state"], r["invited"], r["answered"]) for r in status] == [
        (1, "planned", 0, 0)
    ]
    run_id = open_latest(running)
    answer_all(running, run_id, ["U1", "U2", "U4"])
    (row,) = json.loads(ok("status", "pulse", "--json"))
    assert (row["state"], row["anonymity"], row["invited"], row["answered"]) == (
        "open",
        "anonymous",
        4,
        3,
    )
    table = ok("status", "pulse")
    assert "75%" in table
    # While the run is open, results would change as each person answers: refused.
    refused = mobilize("results", "pulse")
    assert refused.exit_code != 0 and "still open" in refused.output
    assert mobilize("export", "pulse").exit_code != 0

    out = ok("close", "pulse", "--by", "U3")
    assert "Closed run 1 of pulse" in out
    (dm,) = slack.wait_for("chat.postMessage", where=lambda c: c.params["channel"] == "U3")
    assert "Pulse: results of run 1" in dm.params["text"]
    assert "already closed" in ok("close", "pulse")
    with Session(db) as session:
        assert {r.respondent_key for r in session.exec(select(SurveyResponse))} == {None}

    report = json.loads(ok("results", "pulse", "--json"))
    assert report["overall"]["responses"] == 3 and report["overall"]["population"] == 4
    assert report["overall"]["questions"]["ready"]["mean"] == 3.0  # 2, 3, 4
    # Nobody answered it, and one person commented: both below min_group, both hidden.
    assert report["overall"]["questions"]["confidence"] == {"suppressed": True}
    assert report["overall"]["questions"]["comment"] == {"suppressed": True}
    assert report["overall"]["adkar_barrier"] == "awareness"
    text = " ".join(ok("results", "pulse").split())
    assert "3 of 4 answered." in text
    assert "mean 3.00" in text and "eNPS +100" in text
    assert '{"E-learning": 3, "Live session": 0}' in text  # a choice shows its counts
    assert "ADKAR barrier point: awareness" in text

    # The export is the published figures, in long form: no row per person, no hidden comment.
    rows = list(csv.reader(io.StringIO(ok("export", "pulse"))))
    assert rows[0] == ["segment", "group", "question", "value", "count"]
    assert ["", "everyone", "responses", "", "3"] in rows
    assert [r[2:] for r in rows if r[2] == "ready"] == [
        ["ready", "1", "0"],
        ["ready", "2", "1"],
        ["ready", "3", "1"],
        ["ready", "4", "1"],
        ["ready", "5", "0"],
    ]
    assert ["", "everyone", "training", "E-learning", "3"] in rows
    assert not [r for r in rows if r[2] in {"comment", "confidence"}]
    assert "More, please" not in ok("export", "pulse")


def test_too_few_answers_show_and_export_nothing(db: Engine, running: SurveyRunner) -> None:
    ok("start", "pulse", "--to", "users:U1,U2,U4,U5")
    run_id = open_latest(running)
    answer_all(running, run_id, ["U1", "U2"])  # min_group is 3
    ok("close", "pulse")

    assert json.loads(ok("results", "pulse", "--json"))["overall"] == {
        "responses": 2,
        "suppressed": True,
    }
    assert "2 responses: fewer than 3, nothing is shown." in ok("results", "pulse")
    assert "More, please" not in ok("results", "pulse", "--json")
    assert ok("export", "pulse") == "Only 2 responses: fewer than 3, nothing to export.\n"


def test_a_named_survey_exports_who_said_what(db: Engine, running: SurveyRunner) -> None:
    ok("start", "named", "--to", "users:U1,U2,U4,U5", "--by", "U3")
    run_id = open_latest(running, "named")
    answer_all(running, run_id, ["U1", "U2", "U4"])
    ok("close", "named", "--run", "1")

    rows = list(csv.reader(io.StringIO(ok("export", "named", "--run", "1"))))
    assert rows[0][0] == "user"
    assert sorted(row[:2] for row in rows[1:]) == [["U1", "2"], ["U2", "3"], ["U4", "4"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["start", "nope"], "no survey 'nope'; known: named, pulse"),
        (["start", "pulse", "--to", "users:bob"], "takes user ids like U0123ABCD"),
        (["start", "pulse", "--to", "people:all"], "unknown audience 'people:all'"),
        (["start", "pulse", "--days", "0"], "Invalid value for '--days'"),
        (["start", "pulse", "--days", "29"], "Invalid value for '--days'"),
        (["status", "nope"], "no survey 'nope'"),
        (["results", "pulse"], "survey 'pulse' has no runs yet"),
        (["close", "pulse"], "survey 'pulse' has no runs yet"),
        (["export", "nope"], "no survey 'nope'"),
    ],
)
def test_bad_input_gets_a_clear_message_and_a_non_zero_exit(
    db: Engine, args: list[str], message: str
) -> None:
    result = mobilize(*args)
    assert result.exit_code != 0
    assert message in " ".join(result.output.replace("│", "").split())
    with Session(db) as session:
        assert session.exec(select(SurveyRun)).all() == []


def test_a_run_number_that_does_not_exist_is_named(db: Engine) -> None:
    ok("start", "pulse")
    result = mobilize("results", "pulse", "--run", "7")
    assert result.exit_code != 0
    assert "survey 'pulse' has no run 7 (runs 1–1)" in " ".join(
        result.output.replace("│", "").split()
    )


def test_a_broken_survey_file_is_reported_without_a_traceback(
    db: Engine,
    content: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write(content, "messages/surveys/pulse.yaml", "title: Pulse\nquestions: []\n")
    monkeypatch.setattr(sys, "argv", ["mobilize", "survey", "status", "pulse"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code not in (0, None)
    captured = capsys.readouterr()
    assert "pulse.yaml" in captured.err and "content error" in captured.err
    assert "Traceback" not in captured.out + captured.err


def test_share_previews_then_sends_only_what_passed_suppression(
    db: Engine, running: SurveyRunner, tmp_path: Path
) -> None:
    ok("start", "pulse", "--to", "users:U1,U2,U4,U5", "--by", "U3")
    run_id = open_latest(running)
    answer_all(running, run_id, ["U1", "U2", "U4"])
    note = tmp_path / "we-will.md"
    note.write_text("We will run *two more* training sessions in March.\n")
    refused = mobilize("share", "pulse", "--note", str(note))
    assert refused.exit_code != 0 and "still open" in refused.output
    ok("close", "pulse")

    preview = " ".join(ok("share", "pulse", "--note", str(note)).split())
    assert "You said, we did: Pulse" in preview and "3 of 4 answered" in preview
    assert "two more" in preview and "Preview only: 4 people would get this" in preview
    assert "More, please" not in preview  # one comment: hidden, and not shared either
    shares = select(SurveySend).where(col(SurveySend.key).like("survey-share:%"))
    with Session(db) as session:
        assert session.exec(shares).all() == []  # a preview sends nothing

    assert "Queued for 4 people" in " ".join(
        ok("share", "pulse", "--note", str(note), "--yes").split()
    )
    with Session(db) as session:
        (send,) = session.exec(shares).all()
        deliveries = session.exec(select(Delivery).where(Delivery.survey_send_id == send.id)).all()
    assert sorted(d.recipient for d in deliveries) == ["U1", "U2", "U4", "U5"]
    shown = running.render(deliveries[0]).plain  # what the outbox posts
    assert "two more" in shown and "3 of 4 answered" in shown and "More, please" not in shown
    assert "survey.share" in {row.action for row in _audit(db)}


def _audit(db: Engine) -> list[AuditLog]:
    with Session(db) as session:
        return list(session.exec(select(AuditLog)))


def test_an_anonymous_run_will_not_start_without_the_secret(
    db: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MOBILIZE_SURVEY_SECRET")
    monkeypatch.setenv("MOBILIZE_SURVEY_SECRET_FILE", "/nonexistent/mobilize-secret")
    get_settings.cache_clear()
    result = mobilize("start", "pulse")
    assert result.exit_code != 0 and "MOBILIZE_SURVEY_SECRET" in result.output
    with Session(db) as session:
        assert session.exec(select(SurveyRun)).all() == []
    ok("start", "named")  # a named survey needs no secret


def test_secret_creates_a_private_file_once(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "survey-secret"
    assert "Created" in ok("secret", str(path))
    assert len(path.read_text().strip()) == 64 and (path.stat().st_mode & 0o777) == 0o600
    again = mobilize("secret", str(path))
    assert again.exit_code != 0 and "exists" in again.output
    assert mobilize("secret", "relative-secret").exit_code != 0
