"""What `mobilize run` does at start: the console (Flask and its pages) is built when first
used, not before the bot is ready; the first request under /console builds it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROGRAM = """
import io, json, sys
from bot.config import load_settings
from bot.service import Service
service = Service(load_settings())
at_start = "flask" in sys.modules
web = service.http_server(port=0, host="127.0.0.1").server.application
seen = []
environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/console/", "SERVER_NAME": "x",
           "SERVER_PORT": "80", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(),
           "QUERY_STRING": "", "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1"}
body = b"".join(web(environ, lambda status, headers, exc_info=None: seen.append(status)))
print(json.dumps({"at_start": at_start, "after": "flask" in sys.modules, "status": seen[0]}))
service.stop()
"""


def run_bot_program(program: str, folder: Path) -> subprocess.CompletedProcess[str]:
    """`program` in a fresh interpreter, with the example content copied into `folder` and a
    Slack that is never reached."""
    shutil.copytree(ROOT / "messages", folder / "messages")
    shutil.copytree(ROOT / "schedules", folder / "schedules")
    env = {
        **os.environ,
        "DATABASE_URL": f"sqlite:///{folder / 'bot.db'}",
        "MOBILIZE_CONTENT_DIR": str(folder),
        "MOBILIZE_EMBEDDING_MODEL": "none",
        "MOBILIZE_SURVEY_SECRET": "test-survey-secret",
        "SLACK_BOT_TOKEN": "xoxb-test-token",
        "SLACK_SIGNING_SECRET": "test-signing-secret",
        "SLACK_API_URL": "http://127.0.0.1:9/api/",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("TEAMS_APP_ID", None)
    return subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_console_is_built_on_its_first_request(tmp_path: Path) -> None:
    done = run_bot_program(PROGRAM, tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["at_start"] is False
    assert result["after"] is True
    assert not result["status"].startswith(("5", "404"))


RESTART = """
import json, sys
from bot.config import load_settings
from bot.store.db import make_engine, upgrade
upgrade(make_engine(load_settings().database_url))  # a database already migrated
for name in [m for m in sys.modules if m.split(".")[0] in ("alembic", "mako")]:
    del sys.modules[name]
from bot.service import Service
service = Service(load_settings())
print(json.dumps({"alembic": "alembic" in sys.modules}))
service.stop()
"""


def test_a_restart_on_a_migrated_database_does_not_load_alembic(tmp_path: Path) -> None:
    from alembic.script import ScriptDirectory

    from bot.store.db import HEAD_REVISION, MIGRATIONS, alembic_config, make_engine

    config = alembic_config(make_engine("sqlite://"))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD_REVISION
    assert str(MIGRATIONS).endswith("migrations")
    done = run_bot_program(RESTART, tmp_path)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {"alembic": False}
