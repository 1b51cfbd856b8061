"""`mobilize doctor` through Typer's CliRunner against the strict loopback Slack and Teams
(identity, Graph, Bot Connector): what an installer sees for each thing that can be wrong, and
what to do about it."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable, Iterator
from datetime import date, timedelta
from pathlib import Path

import pytest
import yaml
from sqlalchemy import Engine
from typer.testing import CliRunner, Result

from bot.channels.slack.scopes import (
    all_scopes,
    audience_uses,
    configured_uses,
    needed_scopes,
)
from bot.channels.teams.refs import References
from bot.cli import app
from bot.config import get_settings, load_settings
from bot.doctor import diagnose
from bot.store.db import make_engine, upgrade
from tests.slack.fake_slack import APP_TOKEN, BOT_TOKEN, FakeSlack
from tests.teams.fake_connector import FakeTeams

ROOT = Path(__file__).resolve().parent.parent
GO_LIVE = date.today() + timedelta(days=10)
SECRET = "0123456789abcdef0123456789abcdef"
INVITE = "/invite @mobilize"


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")


@pytest.fixture
def content(tmp_path: Path) -> Path:
    """A plan using every kind of audience, and a survey segmented by channel and by group."""
    root = tmp_path / "content"
    write(
        root,
        "schedules/rollout.yaml",
        f"""
        rollout:
          name: Compass
          organisation: Fernhill
          timezone: Europe/London
        milestones:
          go_live: {GO_LIVE.isoformat()}
        """,
    )
    write(
        root,
        "schedules/announcements.yaml",
        """
        announcements:
          - id: kickoff
            template: note
            to: [everyone, "users:U1,U2", "emails:people.csv", "group:S1"]
            at: "go_live - 2 days at 09:00"
          - id: news
            template: note
            to: [channel:C0NEWS, members:C1]
            at: "go_live at 09:00"
        """,
    )
    write(root, "people.csv", "email\nalice@example.com\n")
    write(
        root,
        "messages/announcements/note.md",
        """
        ---
        title: Compass is coming
        owner: Compass Programme
        ---
        Hi {{ user.first_name }}, Compass goes live on {{ milestones.go_live | longdate }}.
        """,
    )
    write(
        root,
        "messages/surveys/pulse.yaml",
        """
        title: How is it going?
        owner: Compass Programme
        questions:
          - {id: ready, kind: likert, text: I feel ready for Compass.}
        segments:
          - {id: site, label: Site, by: channel, values: {General: C1, News: C0NEWS}}
          - {id: team, label: Team, by: group, values: {Pilot: S1, Admins: S0ADMINS}}
        """,
    )
    write(
        root,
        "schedules/surveys.yaml",
        """
        surveys:
          - survey: pulse
            to: everyone
            at: "go_live + 1 day at 10:00"
        """,
    )
    return root


def workspace(scopes: set[str] | frozenset[str] | None = None) -> FakeSlack:
    """The strict fake with the channels and groups the content and settings name; the bot
    is in #general (C1), #rollout-support (CSUPPORT) and #rollout-news (C0NEWS)."""
    fake = FakeSlack(scopes=all_scopes() if scopes is None else scopes)
    fake.add_channel("C0NEWS", name="rollout-news", members=["U1", "U2"])
    fake.usergroup_members["S0ADMINS"] = ["U3"]
    fake.usergroup_members["S1"] = ["U1", "U2"]
    fake.add_method(
        "apps.connections.open",
        lambda params: {"url": "ws://127.0.0.1:1/"},
        scope="connections:write",
        token="app",
    )
    return fake


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with workspace() as fake:
        yield fake


Doctor = Callable[..., Result]


@pytest.fixture
def doctor(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: Path) -> Iterator[Doctor]:
    """`mobilize doctor ARGS` against `fake` (or a base URL), with settings from the
    environment; a keyword overrides one variable (None unsets it). Each run gets a fresh
    fake: Slack's rate tiers (Tier 2 for usergroups.users.list) are on."""
    monkeypatch.chdir(tmp_path)  # no stray .env

    def invoke(fake: FakeSlack | str, *args: str, **env: str | None) -> Result:
        values: dict[str, str | None] = {
            "SLACK_BOT_TOKEN": BOT_TOKEN,
            "SLACK_APP_TOKEN": APP_TOKEN,
            "SLACK_SIGNING_SECRET": SECRET,
            "SLACK_API_URL": fake if isinstance(fake, str) else fake.url,
            "MOBILIZE_CONTENT_DIR": str(content),
            "MOBILIZE_SUPPORT_CHANNEL": "CSUPPORT",
            "MOBILIZE_ADMIN_GROUP": "S0ADMINS",
            "MOBILIZE_ADMINS": None,
            "COLUMNS": "200",
        }
        values.update(env)
        for name, value in values.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        get_settings.cache_clear()
        result = CliRunner().invoke(app, ["doctor", *args])
        assert "Traceback" not in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            result.exception
        )
        return result

    yield invoke
    get_settings.cache_clear()


def checks(result: Result) -> list[dict[str, str]]:
    data = json.loads(result.stdout)
    found: list[dict[str, str]] = data["checks"]
    return found


def failed(result: Result) -> dict[str, dict[str, str]]:
    """The failed checks of a `--json` run, by subject."""
    return {c["subject"]: c for c in checks(result) if c["status"] == "fail"}


# --- the scope table ----------------------------------------------------------------------


def test_the_manifest_asks_for_exactly_the_scopes_the_code_needs() -> None:
    manifest = yaml.safe_load((ROOT / "slack-manifest.yml").read_text(encoding="utf-8"))
    asked = set(manifest["oauth_config"]["scopes"]["bot"])
    assert asked == set(all_scopes()), (
        f"slack-manifest.yml lacks {sorted(all_scopes() - asked)}, "
        f"asks in vain for {sorted(asked - all_scopes())}"
    )


@pytest.mark.parametrize(
    ("audience", "scopes"),
    [
        ("everyone", {"users:read"}),
        ("everyone+guests", {"users:read"}),
        ("users:U1,U2", {"users:read"}),
        ("emails:list.csv", {"users:read", "users:read.email"}),
        ("group:S1", {"usergroups:read", "users:read"}),
        ("members:C1", {"channels:read", "users:read"}),
        ("members:G1", {"groups:read", "users:read"}),
        ("channel:C1", {"chat:write", "channels:read"}),
        ("channel:G1", {"chat:write", "groups:read"}),
    ],
)
def test_each_audience_needs_its_scopes(audience: str, scopes: set[str]) -> None:
    assert set(needed_scopes(audience_uses(audience))) == scopes


def test_the_configuration_decides_what_is_needed() -> None:
    base = set(needed_scopes(configured_uses()))
    assert base == {
        "app_mentions:read",
        "chat:write",
        "commands",
        "files:write",
        "im:history",
        "im:write",
    }
    public = set(needed_scopes(configured_uses(support_channel="C0HELP")))
    assert public - base == {"channels:history", "channels:read"}
    private = needed_scopes(configured_uses(support_channel="C0HELP", private={"C0HELP"}))
    assert set(private) - base == {"groups:history", "groups:read"}
    assert "MOBILIZE_SUPPORT_CHANNEL C0HELP" in private["groups:history"][0]
    admins = needed_scopes(configured_uses(admin_group="S0ADMINS"))
    assert admins["usergroups:read"] == [
        "MOBILIZE_ADMIN_GROUP S0ADMINS: admins from MOBILIZE_ADMIN_GROUP"
    ]
    segments = configured_uses(segments=[("survey pulse", "channel", "G0X")])
    assert "groups:read" in needed_scopes(segments)
    with_plan = needed_scopes(configured_uses(audiences=[("announcement a", "everyone")]))
    assert with_plan["users:read"] == ["announcement a (to: everyone)"]


# --- all good -----------------------------------------------------------------------------


def test_all_good_exits_zero_and_posts_nothing(slack: FakeSlack, doctor: Doctor) -> None:
    result = doctor(slack)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "✗" not in out
    assert "All good." in out
    for line in (
        "✓ SLACK_BOT_TOKEN: works: bot @mobilize in Example Org",
        "✓ needed scopes: all 11 scopes this configuration needs are granted",
        "✓ #rollout-support (CSUPPORT): the bot is in #rollout-support",
        "✓ #rollout-news (C0NEWS): the bot is in #rollout-news (used by announcement news)",
        "✓ #general (C1): the bot can list the members of #general",
        "✓ S1: the bot can read it: 2 people",
        "✓ S0ADMINS: the bot can read it: 1 person",
        "✓ SLACK_SIGNING_SECRET",
        "✓ SLACK_APP_TOKEN: works",
    ):
        assert line in out, out
    methods = {call.method for call in slack.calls}
    assert not any(method.startswith("chat.") for method in methods)
    assert "apps.connections.open" in methods
    # One call per channel and group, however often the plan names it.
    assert len(slack.calls_to("usergroups.users.list")) == 2


def test_json_for_scripts(slack: FakeSlack, doctor: Doctor) -> None:
    result = doctor(slack, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["ok"], data["problems"]) == (True, 0)
    assert data["scopes"]["missing"] == []
    assert set(data["scopes"]["granted"]) == set(all_scopes())
    assert data["workspace"]["bot_user"] == "mobilize"
    assert {c["status"] for c in data["checks"]} <= {"ok", "skip"}
    assert set(data["checks"][0]) == {"section", "subject", "status", "detail", "fix"}


# --- scopes -------------------------------------------------------------------------------

NEEDED_HERE = sorted(all_scopes() - {"groups:history", "groups:read"})  # no private channels


@pytest.mark.parametrize("scope", NEEDED_HERE)
def test_a_missing_scope_is_named_with_how_to_add_it(doctor: Doctor, scope: str) -> None:
    with workspace(all_scopes() - {scope}) as fake:
        result = doctor(fake)
    with workspace(all_scopes() - {scope}) as fake:
        data = json.loads(doctor(fake, "--json").stdout)
    assert result.exit_code == 1
    assert f"✗ {scope}: not granted; needed for " in result.stdout
    assert f"Add an OAuth Scope → {scope}; then Reinstall to Workspace" in result.stdout
    assert data["scopes"]["missing"] == [scope]
    assert data["ok"] is False


def test_a_token_from_the_old_manifest(doctor: Doctor) -> None:
    old = {
        "app_mentions:read",
        "channels:history",
        "groups:history",
        "chat:write",
        "commands",
        "im:history",
        "im:read",
        "im:write",
    }
    with workspace(old) as fake:
        result = doctor(fake, "--json")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["scopes"]["missing"] == [
        "channels:read",
        "files:write",
        "usergroups:read",
        "users:read",
        "users:read.email",
    ]
    problems = failed(result)
    assert "announcement kickoff (to: everyone)" in problems["users:read"]["detail"]
    assert (
        "cannot read its members: the token lacks usergroups:read"
        in (problems["S0ADMINS"]["detail"])
    )
    warnings = {c["subject"]: c for c in checks(result) if c["status"] == "warn"}
    assert warnings["im:read"]["detail"] == "granted but never used by the bot"
    assert "groups:read" in warnings  # not needed here, but members:G… would fail
    # Without channels:read the doctor cannot see whether the bot is in a channel.
    skipped = {c["subject"] for c in checks(result) if c["status"] == "skip"}
    assert {"CSUPPORT", "C0NEWS"} <= skipped


# --- channels and groups ------------------------------------------------------------------


def test_a_support_channel_the_bot_is_not_in(slack: FakeSlack, doctor: Doctor) -> None:
    slack.add_channel("C0HELP", name="help-desk", members=["U3"], bot=False)
    result = doctor(slack, MOBILIZE_SUPPORT_CHANNEL="C0HELP")
    assert result.exit_code == 1
    assert "✗ #help-desk (C0HELP): the bot is not in #help-desk" in result.stdout
    assert f"fix: type {INVITE} in #help-desk" in result.stdout


def test_a_private_support_channel_needs_groups_scopes(slack: FakeSlack, doctor: Doctor) -> None:
    slack.add_channel("C0PRIV", name="support-team", members=["U3"], private=True)
    slack.scopes -= {"groups:history"}
    result = doctor(slack, "--json", MOBILIZE_SUPPORT_CHANNEL="C0PRIV")
    assert result.exit_code == 1
    problems = failed(result)
    assert set(problems) == {"groups:history"}
    assert "MOBILIZE_SUPPORT_CHANNEL C0PRIV" in problems["groups:history"]["detail"]


def test_a_support_channel_given_by_name(slack: FakeSlack, doctor: Doctor) -> None:
    result = doctor(slack, MOBILIZE_SUPPORT_CHANNEL="#help")
    assert result.exit_code == 1
    assert "'#help' is not a channel id (C…)" in result.stdout


def test_a_missing_support_channel_is_a_warning(slack: FakeSlack, doctor: Doctor) -> None:
    result = doctor(slack, MOBILIZE_SUPPORT_CHANNEL=None)
    assert result.exit_code == 0, result.output
    assert "! MOBILIZE_SUPPORT_CHANNEL: not set" in result.stdout
    assert "All good (1 warning)." in result.stdout


def test_announcement_channels_the_bot_cannot_post_to(slack: FakeSlack, doctor: Doctor) -> None:
    slack.add_channel("C0NEWS", name="rollout-news", members=["U1"], bot=False)
    result = doctor(slack)
    assert result.exit_code == 1
    assert (
        "✗ #rollout-news (C0NEWS): the bot is not in #rollout-news (used by announcement news)"
        in result.stdout
    )
    assert f"fix: type {INVITE} in #rollout-news" in result.stdout


def test_chat_write_public_posts_without_membership(doctor: Doctor) -> None:
    with workspace(all_scopes() | {"chat:write.public"}) as fake:
        fake.add_channel("C0NEWS", name="rollout-news", members=["U1"], bot=False)
        result = doctor(fake)
    assert result.exit_code == 0, result.output
    assert "the bot is not in #rollout-news but may post there (chat:write.public)" in (
        result.stdout
    )


def test_an_archived_or_unknown_announcement_channel(slack: FakeSlack, doctor: Doctor) -> None:
    slack.add_channel("C0NEWS", name="rollout-news", archived=True)
    slack.channels.pop("C1")
    slack.channel_members.pop("C1")
    result = doctor(slack, "--json")
    assert result.exit_code == 1
    problems = failed(result)
    assert "#rollout-news is archived" in problems["#rollout-news (C0NEWS)"]["detail"]
    assert "the bot sees no channel C1" in problems["C1"]["detail"]
    assert INVITE in problems["C1"]["fix"] and "Channel ID" in problems["C1"]["fix"]


def test_survey_segment_channels_the_bot_cannot_list(
    content: Path, slack: FakeSlack, doctor: Doctor
) -> None:
    write(
        content,
        "messages/surveys/pulse.yaml",
        """
        title: How is it going?
        owner: Compass Programme
        questions:
          - {id: ready, kind: likert, text: I feel ready for Compass.}
        segments:
          - {id: site, label: Site, by: channel, values: {Depot: G0DEPOT, Office: C1}}
        """,
    )
    slack.add_channel("G0DEPOT", name="depot", members=["U1"], bot=False)
    result = doctor(slack)
    assert result.exit_code == 1
    assert (
        "✗ G0DEPOT: cannot list its members: the bot sees no channel G0DEPOT "
        "(used by survey pulse segment site 'Depot')"
    ) in result.stdout
    assert f"if it is a private channel, type {INVITE} in it" in result.stdout
    assert "✓ #general (C1): the bot can list the members of #general" in result.stdout


def test_an_admin_group_that_does_not_exist(slack: FakeSlack, doctor: Doctor) -> None:
    result = doctor(slack, MOBILIZE_ADMIN_GROUP="S0GONE")
    assert result.exit_code == 1
    assert "✗ S0GONE: no user group S0GONE in this workspace" in result.stdout
    assert "fix: check the id (S…)" in result.stdout


def test_an_admin_group_the_bot_cannot_read(doctor: Doctor) -> None:
    with workspace(all_scopes() - {"usergroups:read"}) as fake:
        result = doctor(fake, "--json")
    assert result.exit_code == 1
    problems = failed(result)
    assert "the token lacks usergroups:read" in problems["S0ADMINS"]["detail"]
    assert problems["S0ADMINS"]["fix"] == "add usergroups:read (see Scopes)"
    assert "MOBILIZE_ADMIN_GROUP S0ADMINS" in problems["usergroups:read"]["detail"]


def test_an_empty_admin_group_is_a_warning(slack: FakeSlack, doctor: Doctor) -> None:
    slack.usergroup_members["S0ADMINS"] = []
    result = doctor(slack)
    assert result.exit_code == 0, result.output
    assert "! S0ADMINS: the user group has no members" in result.stdout


def test_content_errors_are_reported(content: Path, slack: FakeSlack, doctor: Doctor) -> None:
    write(content, "schedules/announcements.yaml", "announcements:\n  - id: x\n    to: nobody\n")
    result = doctor(slack)
    assert result.exit_code == 1
    assert "run `mobilize check`" in result.stdout


# --- tokens and the signing secret --------------------------------------------------------


def test_a_bad_bot_token(slack: FakeSlack, doctor: Doctor) -> None:
    result = doctor(slack, SLACK_BOT_TOKEN="xoxb-not-the-token")
    assert result.exit_code == 1
    out = result.stdout
    assert "✗ SLACK_BOT_TOKEN: Slack refused the token (invalid_auth)" in out
    assert "Bot User OAuth Token (xoxb-…)" in out
    assert "not checked: the bot token does not work" in out
    assert "✓ SLACK_APP_TOKEN: works" in out  # checked on its own
    assert [call.method for call in slack.calls] == ["auth.test", "apps.connections.open"]


@pytest.mark.parametrize(
    ("token", "said"),
    [
        (None, "✗ SLACK_BOT_TOKEN: not set"),
        ("xapp-1-A1-2", "this is an app-level token (xapp-…): it belongs in SLACK_APP_TOKEN"),
        ("xoxp-1-2", "this is a user token (xoxp-…), not the bot token"),
    ],
)
def test_the_wrong_kind_of_bot_token(
    slack: FakeSlack, doctor: Doctor, token: str | None, said: str
) -> None:
    result = doctor(slack, SLACK_BOT_TOKEN=token)
    assert result.exit_code == 1
    assert said in result.stdout
    assert slack.calls_to("auth.test") == []


def test_slack_out_of_reach(doctor: Doctor) -> None:
    with workspace() as fake:
        url = fake.url
    # Stopped: nothing listens on its port any more.
    result = doctor(url, MOBILIZE_SLACK_MAX_RETRIES="0")
    assert result.exit_code == 1
    assert "could not reach Slack at http://127.0.0.1:" in result.stdout


@pytest.mark.parametrize(
    ("token", "said"),
    [
        ("xapp-1-A1-wrong", "Slack refused the app-level token (invalid_auth)"),
        (BOT_TOKEN, "a bot token (xoxb-…): Socket Mode needs an app-level token"),
    ],
)
def test_a_bad_app_token(slack: FakeSlack, doctor: Doctor, token: str, said: str) -> None:
    result = doctor(slack, SLACK_APP_TOKEN=token)
    assert result.exit_code == 1
    assert f"✗ SLACK_APP_TOKEN: {said}" in result.stdout
    assert "App-Level Tokens → Generate Token and Scopes" in result.stdout
    assert "connections:write" in result.stdout


def test_an_app_token_without_connections_write(slack: FakeSlack, doctor: Doctor) -> None:
    slack.app_scopes.clear()
    result = doctor(slack)
    assert result.exit_code == 1
    assert "✗ SLACK_APP_TOKEN: the app-level token lacks connections:write" in result.stdout


def test_no_app_token_means_http_mode(slack: FakeSlack, doctor: Doctor) -> None:
    result = doctor(slack, SLACK_APP_TOKEN=None)
    assert result.exit_code == 0, result.output
    assert "– SLACK_APP_TOKEN: not set: `mobilize run` uses HTTP mode" in result.stdout
    assert slack.calls_to("apps.connections.open") == []


def test_http_mode_needs_the_signing_secret(slack: FakeSlack, doctor: Doctor) -> None:
    result = doctor(slack, SLACK_APP_TOKEN=None, SLACK_SIGNING_SECRET=None)
    assert result.exit_code == 1
    assert "✗ SLACK_SIGNING_SECRET: not set" in result.stdout


@pytest.mark.parametrize(
    ("secret", "said"),
    [
        ("abc123", "it is 6 characters; a signing secret is 32 hexadecimal characters"),
        (SECRET[:-1] + "g", "it is 32 characters; a signing secret is 32 hexadecimal"),
        (f" {SECRET}", "it has spaces or quotes around it"),
        (f'"{SECRET}"', "it has spaces or quotes around it"),
        ("AbCdEfGhIjKlMnOpQrStUvWx", "looks like the deprecated Verification Token"),
        (BOT_TOKEN, "it is a token, not the signing secret"),
    ],
)
def test_a_malformed_signing_secret(
    slack: FakeSlack, doctor: Doctor, secret: str, said: str
) -> None:
    result = doctor(slack, SLACK_SIGNING_SECRET=secret)
    assert result.exit_code == 1
    assert "✗ SLACK_SIGNING_SECRET: malformed: " in result.stdout
    assert said in result.stdout
    assert "Basic Information → App Credentials → Signing Secret" in result.stdout


def test_no_signing_secret_in_socket_mode_is_a_warning(slack: FakeSlack, doctor: Doctor) -> None:
    result = doctor(slack, SLACK_SIGNING_SECRET=None)
    assert result.exit_code == 0, result.output
    assert "! SLACK_SIGNING_SECRET: not set: fine in Socket Mode" in result.stdout


# --- Microsoft Teams ----------------------------------------------------------------------

TEAMS_ONLY: dict[str, str | None] = {
    "SLACK_BOT_TOKEN": None,
    "SLACK_APP_TOKEN": None,
    "SLACK_SIGNING_SECRET": None,
}
NO_SLACK = "http://127.0.0.1:9/"  # never asked: Slack is not configured in these runs


@pytest.fixture
def teams() -> Iterator[FakeTeams]:
    with FakeTeams() as fake:
        yield fake


@pytest.fixture
def teams_db(database_url: str) -> Iterator[Engine]:
    """The bot's database, migrated, with no Teams conversation yet."""
    engine = make_engine(database_url)
    upgrade(engine)
    yield engine
    engine.dispose()


def support_channel(teams: FakeTeams, name: str = "rollout-support") -> str:
    return teams.directory.channel(teams.directory.team("fernhill"), name).id


def added_to_team(teams: FakeTeams, db: Engine) -> None:
    """What the bot keeps when it is added to the team fernhill (its General channel)."""
    References(db).observe(teams.installation_update_activity(team="fernhill"))


def teams_env(teams: FakeTeams, database_url: str, **env: str | None) -> dict[str, str | None]:
    values: dict[str, str | None] = {
        **teams.settings(),
        "MOBILIZE_TEAMS_SUPPORT_CHANNEL": support_channel(teams),
        "DATABASE_URL": database_url,
    }
    values.update(env)
    return values


def by_section(result: Result, section: str) -> dict[str, dict[str, str]]:
    return {c["subject"]: c for c in checks(result) if c["section"] == section}


def test_teams_all_good_next_to_slack(
    slack: FakeSlack, teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    added_to_team(teams, teams_db)
    env = teams_env(teams, database_url)
    result = doctor(slack, **env)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "✗" not in out and "All good." in out
    for line in (
        "✓ SLACK_BOT_TOKEN: works",
        f"✓ TEAMS_APP_ID: a GUID ({teams.app_id})",
        f"✓ TEAMS_TENANT_ID: a GUID ({teams.tenant_id})",
        "✓ TEAMS_APP_PASSWORD: set (",
        f"✓ client credentials: works: a Bot Framework token for app {teams.app_id} from "
        f"{teams.identity.token_url}",
        f"✓ OpenID metadata: read from {teams.identity.openid_metadata_url}",
        "✓ signing keys: 2 keys, 1 endorsed for msteams: requests from Teams can be authenticated",
        "✓ needed permissions: all 3 application permissions the bot uses are granted",
        f"✓ {support_channel(teams)}: rollout-support, a channel of the team Fernhill Logistics, which the bot is in",
    ):
        assert line in out, out
    # Read only: tokens, metadata, keys and one channel list; nothing posted anywhere.
    assert {call.operation for call in teams.calls} == {"GetTeamChannels", "GetTeamDetails"}
    scopes = [call.body["scope"] for call in teams.identity.calls_to("Token")]
    assert scopes == [
        "https://api.botframework.com/.default",
        "https://graph.microsoft.com/.default",
    ]
    assert teams.graph.calls == []

    data = json.loads(doctor(slack, "--json", **env).stdout)
    assert data["ok"] is True
    assert data["teams"]["app_id"] == teams.app_id
    assert data["teams"]["graph"]["missing"] == []
    assert set(data["teams"]["graph"]["needed"]) <= set(data["teams"]["graph"]["granted"])
    sections = {c["section"] for c in data["checks"]}
    assert {
        "Teams settings",
        "Teams bot token",
        "Teams incoming requests",
        "Microsoft Graph permissions",
        "Teams support channel",
    } <= sections


def test_a_support_channel_the_bot_has_heard_from(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    """A row for the channel itself (a message from it reached the bot): no connector call."""
    activity = teams.channel_message_activity("alice", "hello", channel="rollout-support")
    References(teams_db).observe(activity)
    result = doctor(NO_SLACK, **TEAMS_ONLY, **teams_env(teams, database_url))
    assert result.exit_code == 0, result.output
    assert "– SLACK_BOT_TOKEN: not set: Teams only, Slack not checked" in result.stdout
    assert "SLACK_SIGNING_SECRET" not in result.stdout
    assert (
        f"✓ {support_channel(teams)}: the bot has heard from this channel (rollout-support)"
        in result.stdout
    )
    assert teams.calls_to("GetTeamChannels") == []


def test_a_wrong_teams_password_quotes_entra(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    added_to_team(teams, teams_db)
    env = teams_env(teams, database_url, TEAMS_APP_PASSWORD="not-the-secret")
    result = doctor(NO_SLACK, "--json", **TEAMS_ONLY, **env)
    assert result.exit_code == 1
    problems = failed(result)
    token = problems["client credentials"]
    assert "(invalid_client): AADSTS7000215: Invalid client secret provided" in token["detail"]
    assert "Trace ID" not in token["detail"]
    assert "Certificates & secrets → New client secret" in token["fix"]
    assert "Value (not the Secret ID)" in token["fix"]
    graph = by_section(result, "Microsoft Graph permissions")
    assert graph["—"]["status"] == "skip"
    # Without a token the connector cannot be asked: the channel is not confirmed.
    (channel,) = by_section(result, "Teams support channel").values()
    assert channel["status"] == "skip"
    assert "cannot list the channels of the 1 team(s) it is in" in channel["detail"]
    # Incoming requests are checked with public keys: still fine.
    assert by_section(result, "Teams incoming requests")["signing keys"]["status"] == "ok"


def test_a_secret_id_in_place_of_the_password(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    secret_id = "9b2f6c1e-7a3d-4e5f-8a9b-0c1d2e3f4a5b"
    env = teams_env(teams, database_url, TEAMS_APP_PASSWORD=secret_id)
    result = doctor(NO_SLACK, **TEAMS_ONLY, **env)
    assert result.exit_code == 1
    out = result.stdout
    assert "! TEAMS_APP_PASSWORD: is a GUID: that looks like the client secret's Secret ID" in out
    assert (
        "✗ client credentials: token endpoint refused the bot's credentials (invalid_client)" in out
    )


def test_a_wrong_tenant(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    """The bot's token endpoint is the tenant's: a wrong tenant id is named by Entra."""
    other = "33333333-3333-4333-8333-333333333333"
    token_url = teams.identity.token_url.replace(teams.tenant_id, other)
    env = teams_env(teams, database_url, TEAMS_TENANT_ID=other, TEAMS_TOKEN_URL=token_url)
    result = doctor(NO_SLACK, "--json", **TEAMS_ONLY, **env)
    assert result.exit_code == 1
    token = failed(result)["client credentials"]
    assert f"(invalid_request): AADSTS90002: Tenant '{other}' not found." in token["detail"]
    assert "TEAMS_TENANT_ID" in token["fix"]


def test_incomplete_teams_settings(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    env = teams_env(teams, database_url, TEAMS_APP_PASSWORD=None, TEAMS_TENANT_ID=None)
    result = doctor(NO_SLACK, "--json", **TEAMS_ONLY, **env)
    assert result.exit_code == 1
    problems = failed(result)
    assert problems["TEAMS_APP_PASSWORD"]["detail"] == "not set"
    assert "Certificates & secrets" in problems["TEAMS_APP_PASSWORD"]["fix"]
    assert problems["TEAMS_TENANT_ID"]["detail"] == "not set"
    assert "Tenant ID" in problems["TEAMS_TENANT_ID"]["fix"]
    skipped = by_section(result, "Teams bot token")["—"]
    assert skipped["detail"] == "not checked: the Teams settings are incomplete"
    assert teams.identity.calls_to("Token") == []


def test_teams_metadata_unreachable(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    added_to_team(teams, teams_db)
    with FakeTeams() as gone:
        metadata = gone.identity.openid_metadata_url
    # Stopped: nothing listens on its port any more.
    env = teams_env(teams, database_url, TEAMS_OPENID_METADATA_URL=metadata)
    result = doctor(NO_SLACK, **TEAMS_ONLY, **env)
    assert result.exit_code == 1
    out = result.stdout
    assert f"✗ OpenID metadata: could not reach {metadata} (ConnectError)" in out
    assert "✗ signing keys: could not reach http://127.0.0.1:" in out
    assert "allow login.botframework.com through the proxy or firewall" in out
    assert "✓ client credentials: works" in out  # checked on its own


def test_teams_keys_not_endorsed_for_msteams(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    added_to_team(teams, teams_db)
    teams.identity.fail("Keys", 200, {"keys": [{"kid": "k1", "endorsements": ["skype"]}]})
    result = doctor(NO_SLACK, **TEAMS_ONLY, **teams_env(teams, database_url))
    assert result.exit_code == 1
    assert "✗ signing keys: none of the 1 keys at" in result.stdout
    assert "every request from Teams would be refused" in result.stdout


def test_a_missing_graph_permission(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    added_to_team(teams, teams_db)
    teams.identity.revoke("TeamsAppInstallation.ReadWriteSelfForUser.All")
    result = doctor(NO_SLACK, "--json", **TEAMS_ONLY, **teams_env(teams, database_url))
    assert result.exit_code == 1
    problems = failed(result)
    assert set(problems) == {"TeamsAppInstallation.ReadWriteSelfForUser.All"}
    problem = problems["TeamsAppInstallation.ReadWriteSelfForUser.All"]
    assert problem["detail"].startswith("not granted; needed for installing the app for people")
    assert (
        "Application permissions → TeamsAppInstallation.ReadWriteSelfForUser.All"
        in (problem["fix"])
    )
    assert "Grant admin consent" in problem["fix"]
    data = json.loads(result.stdout)
    assert data["teams"]["graph"]["missing"] == ["TeamsAppInstallation.ReadWriteSelfForUser.All"]


def test_no_graph_permission_at_all(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    """No admin consent yet: the token carries no roles."""
    added_to_team(teams, teams_db)
    teams.identity.revoke(*teams.identity.graph_permissions)
    result = doctor(NO_SLACK, "--json", **TEAMS_ONLY, **teams_env(teams, database_url))
    assert set(failed(result)) == {
        "User.Read.All",
        "GroupMember.Read.All",
        "TeamsAppInstallation.ReadWriteSelfForUser.All",
    }


def test_a_support_channel_the_bot_does_not_know(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    """The bot was never added to the support team: no row, and no known team lists it."""
    result = doctor(NO_SLACK, **TEAMS_ONLY, **teams_env(teams, database_url))
    assert result.exit_code == 1
    out = result.stdout
    channel = support_channel(teams)
    assert (
        f"✗ {channel}: the bot has not been added to the channel's team: it has heard from no "
        "team at all"
    ) in out
    assert "fix: in Teams, add Mobilize to the team that holds the support channel" in out


def test_a_support_channel_in_a_team_the_bot_left(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    added_to_team(teams, teams_db)
    teams.directory.team("fernhill").app_installed = False  # removed from the team since
    result = doctor(NO_SLACK, "--json", **TEAMS_ONLY, **teams_env(teams, database_url))
    assert result.exit_code == 1
    problem = failed(result)[support_channel(teams)]
    assert ": 403 BotNotInConversationRoster)" in problem["detail"]


def test_a_missing_teams_support_channel_is_a_warning(
    teams: FakeTeams, teams_db: Engine, database_url: str, doctor: Doctor
) -> None:
    env = teams_env(teams, database_url, MOBILIZE_TEAMS_SUPPORT_CHANNEL=None)
    result = doctor(NO_SLACK, **TEAMS_ONLY, **env)
    assert result.exit_code == 0, result.output
    assert "! MOBILIZE_TEAMS_SUPPORT_CHANNEL: not set: “Ask a person” in Teams has nowhere" in (
        result.stdout
    )
    assert "All good (1 warning)." in result.stdout


def test_malformed_teams_ids(
    teams: FakeTeams, teams_db: Engine, database_url: str, content: Path
) -> None:
    """The settings loader refuses these already (`Settings problem`, exit 2); the doctor
    says the same of settings made some other way."""
    values = {**teams_env(teams, database_url), "MOBILIZE_CONTENT_DIR": str(content)}
    settings = load_settings(**values, **dict.fromkeys(TEAMS_ONLY, ""))
    settings.teams_tenant_id = "fernhill.onmicrosoft.com"
    settings.teams_support_channel = "#rollout-support"
    report = diagnose(settings)
    problems = {c.subject: c for c in report.problems}
    assert problems["TEAMS_TENANT_ID"].detail == "'fernhill.onmicrosoft.com' is not a GUID"
    assert "Microsoft Entra ID → Overview → Tenant ID" in problems["TEAMS_TENANT_ID"].fix
    channel = problems["MOBILIZE_TEAMS_SUPPORT_CHANNEL"]
    assert channel.detail == "'#rollout-support' is not a Teams channel id (19:…@thread.tacv2)"
    assert "Get link to channel" in channel.fix


def test_no_database_yet(teams: FakeTeams, tmp_path: Path, doctor: Doctor) -> None:
    env = teams_env(teams, f"sqlite:///{tmp_path / 'none.db'}")
    result = doctor(NO_SLACK, **TEAMS_ONLY, **env)
    assert result.exit_code == 1
    assert "no database at" in result.stdout and "the bot has not run here yet" in result.stdout
    assert not (tmp_path / "none.db").exists()  # the doctor does not create one


def test_every_graph_permission_the_bot_uses_is_explained() -> None:
    from bot.channels.teams.directory import GRAPH_PERMISSIONS
    from bot.doctor import GRAPH_PURPOSES

    assert set(GRAPH_PURPOSES) == set(GRAPH_PERMISSIONS)
