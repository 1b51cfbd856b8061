"""One `mobilize run` serves Slack and Teams together on one port; Teams alone needs no Slack."""

from __future__ import annotations

from pathlib import Path

from bot.service import Service
from tests.auxil.running import bot_settings
from tests.channels.teams.conftest import ANSWERABLE, card_text, teams_settings
from tests.slack.fake_slack import FakeSlack
from tests.teams.fake_connector import FakeTeams


def test_slack_and_teams_on_one_port(
    database_url: str, content_dir: Path, teams: FakeTeams
) -> None:
    with FakeSlack() as slack:
        settings = bot_settings(
            database_url=database_url,
            content_dir=content_dir,
            slack=slack,
            **teams_settings(teams, database_url=database_url, content_dir=content_dir).model_dump(
                by_alias=True,
                include={
                    "teams_app_id",
                    "teams_app_password",
                    "teams_tenant_id",
                    "teams_support_channel",
                    "teams_openid_metadata_url",
                    "teams_token_url",
                    "teams_graph_url",
                },
            ),
        )
        service = Service(settings)
        server = service.http_server(port=0, host="127.0.0.1")
        server.start()
        try:
            url = f"http://127.0.0.1:{server.port}"
            assert (
                teams.send_activity(
                    f"{url}/api/messages", teams.message_activity("alice", ANSWERABLE)
                ).status
                == 200
            )
            teams.wait_for("SendToConversation")
            assert "password" in card_text(teams.sent[-1]).lower()
            slack_answer = teams.send_activity(f"{url}/slack/events", {"type": "url_verification"})
            assert slack_answer.status in (401, 403)  # Bolt is there, and checks Slack's signature
        finally:
            server.stop()
            service.stop()


def test_teams_alone_serves_no_slack_endpoint(
    database_url: str, content_dir: Path, teams: FakeTeams
) -> None:
    settings = teams_settings(teams, database_url=database_url, content_dir=content_dir)
    assert settings.teams_enabled and not settings.slack_enabled
    service = Service(settings)
    server = service.http_server(port=0, host="127.0.0.1")
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        assert teams.send_activity(f"{url}/slack/events", {"type": "event_callback"}).status == 404
        assert (
            teams.send_activity(
                f"{url}/api/messages", teams.message_activity("bob", ANSWERABLE)
            ).status
            == 200
        )
        teams.wait_for("SendToConversation")
    finally:
        server.stop()
        service.stop()
