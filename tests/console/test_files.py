"""The console's content files page: any file the bot reads, edited under the rules of a
template save (checked first, refused with file:line and nothing written, atomic, committed,
audited, reloaded), and nothing outside messages/ and schedules/ reachable."""

from __future__ import annotations

from pathlib import Path

import pytest
from werkzeug.test import Client

from bot.service import Service
from tests.auxil.running import ADMIN
from tests.console.conftest import audited, csrf_of, git_repo

PLAN = "schedules/announcements.yaml"


def opened(client: Client, relative: str) -> tuple[str, str]:
    """(the editor's text, its base digest) as the page has them."""
    page = client.get("/console/files/edit", query_string={"path": relative})
    assert page.status_code == 200, page.text
    base = page.text.split('name="base" value="', 1)[1].split('"', 1)[0]
    return page.text, base


def test_every_content_file_is_listed_and_nothing_else(
    client: Client, csrf: str, service: Service
) -> None:
    root = service.settings.content_dir
    (root / "notes.txt").write_text("not content\n", encoding="utf-8")
    page = client.get("/console/files")
    assert page.status_code == 200
    for relative in (PLAN, "schedules/rollout.yaml", "messages/announcements/go-live-day.md"):
        assert f">{relative}</a>" in page.text
    assert "notes.txt" not in page.text


def test_a_plan_edit_with_an_error_is_refused_with_its_line_and_nothing_is_written(
    client: Client, csrf: str, service: Service
) -> None:
    path = service.settings.content_dir / PLAN
    before = path.read_text(encoding="utf-8")
    _text, base = opened(client, PLAN)
    broken = before.replace("template: training-opens", "template: training-opnes", 1)
    checked = client.post(
        "/console/files/check", data={"csrf": csrf, "path": PLAN, "source": broken}
    )
    assert f"{PLAN}:" in checked.text and "training-opnes" in checked.text
    refused = client.post(
        "/console/files/save", data={"csrf": csrf, "path": PLAN, "source": broken, "base": base}
    )
    assert refused.status_code == 422
    assert f"{PLAN}:" in refused.text and "Nothing was written" in refused.text
    assert path.read_text(encoding="utf-8") == before
    assert service.announcer.content.plan.get("training-opens") is not None


def test_a_good_plan_edit_is_written_committed_audited_and_reloaded(
    client: Client, csrf: str, service: Service
) -> None:
    root = service.settings.content_dir

    git = git_repo(root)
    path = root / PLAN
    _text, base = opened(client, PLAN)
    edited = path.read_text(encoding="utf-8").replace(
        "  - id: training-reminder\n", "  - id: training-nudge\n", 1
    )
    saved = client.post(
        "/console/files/save",
        data={"csrf": csrf, "path": PLAN, "source": edited.replace("\n", "\r\n"), "base": base},
    )
    assert saved.status_code == 303
    assert path.read_text(encoding="utf-8") == edited
    assert service.announcer.content.plan.get("training-nudge") is not None
    assert git("log", "-1", "--format=%an|%s") == f"chika|Edit {PLAN} (console)"
    assert git("status", "--porcelain") == ""
    assert (
        ADMIN,
        "console.file.save",
        f"{PLAN} (commit {git('rev-parse', '--short', 'HEAD')})",
    ) in audited(service)

    # Saving over a change made since the page was opened is refused.
    stale = client.post(
        "/console/files/save",
        data={"csrf": csrf, "path": PLAN, "source": edited + "# mine\n", "base": base},
    )
    assert stale.status_code == 409 and "changed since you opened it" in stale.text
    assert path.read_text(encoding="utf-8") == edited


def test_a_new_faq_entry_file_is_created_checked_first(
    client: Client, csrf: str, service: Service
) -> None:
    relative = "messages/faq/kiosk-login.md"
    page = client.get("/console/files/edit", query_string={"path": relative, "new": "1"})
    assert page.status_code == 200 and "(new)" in page.text
    good = (
        "---\nid: kiosk-login\nquestion: How do I log in at a kiosk?\nowner: Service desk\n"
        "review_by: 2027-06-01\n---\n"
        "Tap your badge on the reader, then enter your PIN.\n"
    )
    bad = good.replace("question:", "questoin:")
    refused = client.post(
        "/console/files/save", data={"csrf": csrf, "path": relative, "source": bad, "base": ""}
    )
    assert refused.status_code == 422 and f"{relative}:" in refused.text
    assert not (service.settings.content_dir / relative).exists()
    created = client.post(
        "/console/files/save", data={"csrf": csrf, "path": relative, "source": good, "base": ""}
    )
    assert created.status_code == 303
    assert "kiosk-login" in service.desk.engine.state.kb.entries


@pytest.mark.parametrize(
    "relative",
    [
        "../outside.md",
        "/etc/passwd",
        "messages/../../outside.md",
        ".env",
        "bot.db",
        "messages/.hidden.md",
        "schedules/rollout.yaml.bak",
        "messages/link.md",  # a symbolic link out of the content folder
    ],
)
def test_nothing_outside_the_content_files_can_be_read_or_written(
    client: Client, csrf: str, service: Service, tmp_path: Path, relative: str
) -> None:
    outside = tmp_path / "outside.md"
    outside.write_text("secret\n", encoding="utf-8")
    (service.settings.content_dir / "messages" / "link.md").symlink_to(outside)
    page = client.get("/console/files/edit", query_string={"path": relative})
    assert page.status_code == 404 and "secret" not in page.text
    written = client.post(
        "/console/files/save",
        data={"csrf": csrf, "path": relative, "source": "x\n", "base": ""},
    )
    assert written.status_code == 404
    assert outside.read_text(encoding="utf-8") == "secret\n"


def test_a_save_without_the_sessions_token_changes_nothing(
    client: Client, csrf: str, service: Service
) -> None:
    path = service.settings.content_dir / PLAN
    before = path.read_text(encoding="utf-8")
    refused = client.post(
        "/console/files/save", data={"path": PLAN, "source": "announcements: []\n", "base": ""}
    )
    assert refused.status_code == 400
    assert path.read_text(encoding="utf-8") == before
    assert csrf_of(client.get("/console/files")) == csrf
