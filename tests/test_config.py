"""Settings: a bad or missing value names the variable and what to put there."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from bot.config import SettingsError, load_settings


def test_malformed_values_name_the_variable_and_the_fix() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(MOBILIZE_TIMEZONE="Mars/Base", MOBILIZE_ADMINS="bob", SLACK_API_URL="slack")
    text = str(caught.value)
    assert "MOBILIZE_TIMEZONE" in text and "Europe/London" in text
    assert "MOBILIZE_ADMINS" in text and "U012ABC" in text
    assert "SLACK_API_URL" in text


def test_missing_slack_tokens_are_named_for_the_mode() -> None:
    settings = load_settings(SLACK_BOT_TOKEN="", SLACK_SIGNING_SECRET="", SLACK_APP_TOKEN="")
    with pytest.raises(SettingsError) as http:
        settings.require_slack(socket_mode=False)
    assert "SLACK_BOT_TOKEN is not set" in str(http.value)
    assert "SLACK_SIGNING_SECRET is not set" in str(http.value)
    with pytest.raises(SettingsError) as socket:
        settings.require_slack(socket_mode=True)
    assert "SLACK_APP_TOKEN is not set" in str(socket.value)


def test_the_survey_secret_comes_from_one_place_and_is_never_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "keys" / "secret"
    settings = load_settings(MOBILIZE_SURVEY_SECRET="", MOBILIZE_SURVEY_SECRET_FILE=str(path))
    assert settings.survey_key() is None and not path.exists()  # anonymous runs will refuse
    path.parent.mkdir()
    path.write_text("s3cret\n")
    path.chmod(0o600)
    monkeypatch.chdir(tmp_path)  # the same secret from any working directory
    assert settings.survey_key() == b"s3cret" and stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(SettingsError, match="relative"):
        load_settings(MOBILIZE_SURVEY_SECRET="", MOBILIZE_SURVEY_SECRET_FILE="secret").survey_key()
    beside = load_settings(
        MOBILIZE_SURVEY_SECRET="",
        MOBILIZE_SURVEY_SECRET_FILE=str(path),
        DATABASE_URL=f"sqlite:///{path.parent / 'mobilize.db'}",
    )
    with pytest.raises(SettingsError, match="database's folder"):
        beside.survey_key()
    assert load_settings(MOBILIZE_SURVEY_SECRET="given").survey_key() == b"given"
