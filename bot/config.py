"""Settings from the environment and `.env`; every one is documented in `.env.example`."""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# What to put in each variable, shown when it is missing or malformed.
HINTS: dict[str, str] = {
    "SLACK_BOT_TOKEN": "the Bot User OAuth Token (xoxb-…) from your Slack app's "
    "'OAuth & Permissions' page",
    "SLACK_SIGNING_SECRET": "the Signing Secret from your Slack app's 'Basic Information' page",
    "SLACK_APP_TOKEN": "an app-level token with connections:write (xapp-…), for Socket Mode",
    "SLACK_API_URL": "the Slack Web API base URL, e.g. https://slack.com/api/",
    "DATABASE_URL": "a SQLAlchemy URL, e.g. sqlite:///./mobilize.db or postgresql+psycopg://user@host/db",
    "MOBILIZE_CONTENT_DIR": "the folder holding messages/ and schedules/",
    "MOBILIZE_ADMINS": "comma-separated Slack user ids and Microsoft Entra object ids (Teams), "
    "e.g. U012ABC,U034DEF",
    "MOBILIZE_SUPPORT_CHANNEL": "the channel id (C…) where escalated questions go",
    "MOBILIZE_TIMEZONE": "an IANA time zone name such as Europe/London",
    "MOBILIZE_EMBEDDING_MODEL": "a sentence-transformers model name or local path, or 'none'",
    "MOBILIZE_LOG_LEVEL": "DEBUG, INFO, WARNING or ERROR",
    "MOBILIZE_SLACK_MAX_RETRIES": "a whole number from 0 to 10",
    "MOBILIZE_ADMIN_GROUP": "a Slack user group id (S…) whose members are admins",
    "MOBILIZE_SEND_RATE": "messages per second for the whole workspace, e.g. 20",
    "MOBILIZE_EDIT_RATE": "edits and deletions per second (Slack Tier 3 is about 0.8)",
    "MOBILIZE_WORKERS": "how many sending threads each process runs, e.g. 4",
    "MOBILIZE_GRACE_MINUTES": "minutes after which a missed announcement is no longer sent",
    "MOBILIZE_TICK_SECONDS": "seconds between scheduler runs, e.g. 30",
    "MOBILIZE_SURVEY_SECRET": "a long random string (keep it out of the database and of git)",
    "MOBILIZE_SURVEY_SECRET_FILE": "the absolute path of the file holding the survey secret, "
    "outside the database's folder and its backups (make one with `mobilize survey secret`)",
    "MOBILIZE_LEASE_SECONDS": "seconds a worker holds a delivery it is sending, at least 20, "
    "e.g. 120",
    "MOBILIZE_PUBLIC_URL": "the address people reach this bot's web port at, e.g. "
    "https://mobilize.example.com (console sign-in links start with it)",
    "MOBILIZE_CONSOLE_SECRET": "a long random string that signs console session cookies (the "
    "same for every process; unset: a file next to the database is made once)",
    "MOBILIZE_CONSOLE_SESSION_HOURS": "hours a console session lasts without being used, e.g. 8",
    "MOBILIZE_MESSAGE_BUDGET": "messages per person per week (announcements and surveys), e.g. 3",
    "TEAMS_APP_ID": "the bot's Microsoft App ID (a GUID) from its Azure Bot / Entra app "
    "registration",
    "TEAMS_APP_PASSWORD": "a client secret of that Entra app registration (Certificates & secrets)",
    "TEAMS_TENANT_ID": "your Microsoft Entra tenant id (a GUID; Entra ID → Overview)",
    "MOBILIZE_TEAMS_SUPPORT_CHANNEL": "the Teams channel id (19:…@thread.tacv2) where "
    "escalated questions go (channel → ⋯ → Get link to channel: the part after /channel/, "
    "URL-decoded)",
    "TEAMS_OPENID_METADATA_URL": "the Bot Framework OpenID metadata URL (leave unset outside "
    "tests)",
    "TEAMS_TOKEN_URL": "the Entra token endpoint for the bot's credentials (leave unset outside "
    "tests)",
    "TEAMS_GRAPH_URL": "the Microsoft Graph host, e.g. https://graph.microsoft.com (leave unset "
    "outside tests)",
    "TEAMS_INSTALL_FOR_USERS": "true to install the Teams app for people who have not (Graph; "
    "needs TeamsAppInstallation.ReadWriteSelfForUser.All), false to leave them out",
    "TEAMS_CATALOG_APP_ID": "the app's id in your org's Teams app catalog (a GUID; Teams admin "
    "center → Manage apps → the app → App ID), not the bot's Microsoft App ID",
    "TEAMS_SEND_RATE": "Teams messages per second for the whole tenant, from 1 to 50, e.g. 15",
}


_GUID = re.compile(r"^[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$")


class SettingsError(Exception):
    """A setting is missing or malformed; the message names the variable and what to put there."""


class Settings(BaseSettings):
    """Every setting of the bot. Read once with `get_settings()`."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    slack_bot_token: str = Field(default="", alias="SLACK_BOT_TOKEN")
    slack_signing_secret: str = Field(default="", alias="SLACK_SIGNING_SECRET")
    slack_app_token: str = Field(default="", alias="SLACK_APP_TOKEN")
    slack_api_url: str = Field(default="https://slack.com/api/", alias="SLACK_API_URL")
    database_url: str = Field(default="sqlite:///./mobilize.db", alias="DATABASE_URL")
    content_dir: Path = Field(default=Path("."), alias="MOBILIZE_CONTENT_DIR")
    admins: str = Field(default="", alias="MOBILIZE_ADMINS")
    support_channel: str = Field(default="", alias="MOBILIZE_SUPPORT_CHANNEL")
    timezone: str = Field(default="", alias="MOBILIZE_TIMEZONE")
    embedding_model: str = Field(
        default="sentence-transformers/all-MiniLM-L6-v2", alias="MOBILIZE_EMBEDDING_MODEL"
    )
    log_level: str = Field(default="INFO", alias="MOBILIZE_LOG_LEVEL")
    slack_max_retries: int = Field(default=3, ge=0, le=10, alias="MOBILIZE_SLACK_MAX_RETRIES")
    admin_group: str = Field(default="", alias="MOBILIZE_ADMIN_GROUP")
    send_rate: float = Field(default=20.0, gt=0, le=1000, alias="MOBILIZE_SEND_RATE")
    edit_rate: float = Field(default=0.8, gt=0, le=100, alias="MOBILIZE_EDIT_RATE")
    workers: int = Field(default=4, ge=0, le=64, alias="MOBILIZE_WORKERS")
    grace_minutes: int = Field(default=360, ge=0, alias="MOBILIZE_GRACE_MINUTES")
    tick_seconds: float = Field(default=30.0, gt=0, alias="MOBILIZE_TICK_SECONDS")
    survey_secret: str = Field(default="", alias="MOBILIZE_SURVEY_SECRET")
    survey_secret_file: Path | None = Field(default=None, alias="MOBILIZE_SURVEY_SECRET_FILE")
    # How long a claimed delivery is held before another process may check and resend it;
    # must outlast one post (the outbox's Web API client: 15 s timeout, no retries).
    lease_seconds: float = Field(default=120.0, ge=20, alias="MOBILIZE_LEASE_SECONDS")
    # The comms lead's console (bot.console) at <MOBILIZE_PUBLIC_URL>/console.
    public_url: str = Field(default="", alias="MOBILIZE_PUBLIC_URL")
    console_secret: str = Field(default="", alias="MOBILIZE_CONSOLE_SECRET")
    console_session_hours: float = Field(
        default=8.0, gt=0, le=24 * 30, alias="MOBILIZE_CONSOLE_SESSION_HOURS"
    )
    message_budget: int = Field(default=3, ge=0, le=100, alias="MOBILIZE_MESSAGE_BUDGET")
    # Microsoft Teams (optional): the bot's Entra app registration and where tickets go.
    teams_app_id: str = Field(default="", alias="TEAMS_APP_ID")
    teams_app_password: str = Field(default="", alias="TEAMS_APP_PASSWORD")
    teams_tenant_id: str = Field(default="", alias="TEAMS_TENANT_ID")
    teams_support_channel: str = Field(default="", alias="MOBILIZE_TEAMS_SUPPORT_CHANNEL")
    # Where Microsoft's services are; only tests point these elsewhere (loopback doubles).
    teams_openid_metadata_url: str = Field(
        default="https://login.botframework.com/v1/.well-known/openidconfiguration",
        alias="TEAMS_OPENID_METADATA_URL",
    )
    teams_token_url: str = Field(default="", alias="TEAMS_TOKEN_URL")
    teams_graph_url: str = Field(default="https://graph.microsoft.com", alias="TEAMS_GRAPH_URL")
    # Announcements and surveys on Teams: install the app for people who have not (through
    # Graph, with the app's org catalog id), and the tenant-wide pace of the outbox.
    teams_install_for_users: bool = Field(default=False, alias="TEAMS_INSTALL_FOR_USERS")
    teams_catalog_app_id: str = Field(default="", alias="TEAMS_CATALOG_APP_ID")
    teams_send_rate: float = Field(default=15.0, ge=1, le=50, alias="TEAMS_SEND_RATE")

    @field_validator("survey_secret_file", mode="before")
    @classmethod
    def _no_empty_path(cls, value: object) -> object:
        # `MOBILIZE_SURVEY_SECRET_FILE=` (as in .env.example) means unset, not the folder ".".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("slack_api_url")
    @classmethod
    def _api_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value if value.endswith("/") else value + "/"

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with https:// (or http:// on a private network)")
        return value.rstrip("/")

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        if value:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError) as exc:
                raise ValueError(f"unknown time zone {value!r}") from exc
        return value

    @field_validator("log_level")
    @classmethod
    def _log_level(cls, value: str) -> str:
        value = value.upper()
        if value not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ValueError(f"unknown log level {value!r}")
        return value

    @field_validator("admin_group")
    @classmethod
    def _admin_group(cls, value: str) -> str:
        if value and not value.startswith("S"):
            raise ValueError(f"{value!r} is not a Slack user group id")
        return value

    @field_validator("admins")
    @classmethod
    def _admins(cls, value: str) -> str:
        for user_id in filter(None, (part.strip() for part in value.split(","))):
            if user_id[:1] not in {"U", "W"} and not _GUID.match(user_id):
                raise ValueError(
                    f"{user_id!r} is neither a Slack user id (U…) nor a Microsoft Entra "
                    "object id (a GUID)"
                )
        return value

    @field_validator("teams_app_id", "teams_tenant_id", "teams_catalog_app_id")
    @classmethod
    def _guid(cls, value: str) -> str:
        value = value.strip()
        if value and not _GUID.match(value):
            raise ValueError(f"{value!r} is not a GUID like 00000000-0000-0000-0000-000000000000")
        return value

    @field_validator("teams_support_channel")
    @classmethod
    def _teams_channel(cls, value: str) -> str:
        value = unquote(value.strip())
        if value and not (value.startswith("19:") and "@thread." in value and ";" not in value):
            raise ValueError(f"{value!r} is not a Teams channel id (19:…@thread.tacv2)")
        return value

    @field_validator("teams_openid_metadata_url", "teams_token_url", "teams_graph_url")
    @classmethod
    def _teams_url(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with https:// (http:// only for a loopback test)")
        return value

    @property
    def teams_enabled(self) -> bool:
        """Teams is served when its app id is set."""
        return bool(self.teams_app_id)

    @property
    def slack_enabled(self) -> bool:
        """Slack is served when a bot token is set (a Teams-only deployment has none)."""
        return bool(self.slack_bot_token)

    @property
    def teams_token_endpoint(self) -> str:
        """Where the bot gets its own tokens: the tenant's Entra token endpoint."""
        if self.teams_token_url:
            return self.teams_token_url
        tenant = self.teams_tenant_id or "botframework.com"
        return f"https://login.microsoftonline.com/{tenant}/oauth2/v2.0/token"

    def require_teams(self) -> None:
        """Raise SettingsError naming each Teams variable still missing when Teams is on."""
        values = {
            "TEAMS_APP_PASSWORD": self.teams_app_password,
            "TEAMS_TENANT_ID": self.teams_tenant_id,
        }
        if self.teams_install_for_users:  # installing needs the app's catalog id
            values["TEAMS_CATALOG_APP_ID"] = self.teams_catalog_app_id
        missing = [name for name, value in values.items() if not value]
        if missing:
            raise SettingsError(
                "\n".join(
                    f"{name} is not set: put {HINTS[name]} there (env or .env)" for name in missing
                )
            )

    def survey_key(self) -> bytes | None:
        """The deployment's survey secret, from one place: MOBILIZE_SURVEY_SECRET, else the
        file MOBILIZE_SURVEY_SECRET_FILE (an absolute path, so every process finds the same
        secret whatever its working directory). None when neither is there: anonymous and
        confidential runs then refuse to start. Never created silently, and never next to a
        SQLite database (a backup of the one would hold the other)."""
        if self.survey_secret:
            return self.survey_secret.encode()
        path = self.survey_secret_file
        if path is None:
            return None
        if not path.is_absolute():
            raise SettingsError(
                f"MOBILIZE_SURVEY_SECRET_FILE: {str(path)!r} is relative; give an absolute path "
                "so every process, from any folder, reads the same secret"
            )
        database = self.sqlite_path
        if database is not None and path.resolve().parent == database.resolve().parent:
            raise SettingsError(
                f"MOBILIZE_SURVEY_SECRET_FILE: {path} is in the database's folder; keep the "
                "secret away from the database and its backups"
            )
        if not path.exists():
            return None
        secret = path.read_text().strip().encode()
        if not secret:
            raise SettingsError(f"MOBILIZE_SURVEY_SECRET_FILE: {path} is empty")
        return secret

    @property
    def sqlite_path(self) -> Path | None:
        """The SQLite database file, when DATABASE_URL names one."""
        prefix = "sqlite:///"
        if not self.database_url.startswith(prefix) or self.database_url == prefix + ":memory:":
            return None
        return Path(self.database_url[len(prefix) :].split("?")[0])

    @property
    def admin_ids(self) -> frozenset[str]:
        ids = filter(None, (part.strip() for part in self.admins.split(",")))
        return frozenset(i.lower() if _GUID.match(i) else i for i in ids)  # Entra ids: any case

    @property
    def embedding_enabled(self) -> bool:
        return self.embedding_model.lower() not in {"", "none", "off"}

    def require_slack(self, *, socket_mode: bool) -> None:
        """Raise SettingsError naming each Slack variable the chosen mode still needs."""
        needed = ["SLACK_BOT_TOKEN"] + (
            ["SLACK_APP_TOKEN"] if socket_mode else ["SLACK_SIGNING_SECRET"]
        )
        values = {
            "SLACK_BOT_TOKEN": self.slack_bot_token,
            "SLACK_SIGNING_SECRET": self.slack_signing_secret,
            "SLACK_APP_TOKEN": self.slack_app_token,
        }
        missing = [name for name in needed if not values[name]]
        if missing:
            raise SettingsError(
                "\n".join(
                    f"{name} is not set: put {HINTS[name]} there (env or .env)" for name in missing
                )
            )


def load_settings(**overrides: object) -> Settings:
    """Read settings, turning validation errors into one SettingsError naming each variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            field = str(error["loc"][0]) if error["loc"] else "?"
            variable = _alias(field)
            hint = HINTS.get(variable, "a valid value")
            lines.append(f"{variable}: {error['msg']}; put {hint} there (env or .env)")
        raise SettingsError("\n".join(lines)) from None


def _alias(field: str) -> str:
    info = Settings.model_fields.get(field)
    if info is not None and info.alias:
        return info.alias
    return field.upper()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return load_settings()
