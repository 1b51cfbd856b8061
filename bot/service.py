"""Assembles the running bot: database, knowledge base, announcements, Slack app, watchers."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.background import BackgroundScheduler
from slack_sdk import WebClient
from sqlalchemy import Engine

from bot import jobs
from bot.channels.slack.app import Admins, build_app
from bot.channels.slack.chat import SlackChat, make_client
from bot.channels.slack.directory import SlackDirectory
from bot.channels.slack.sender import SlackSender, outbox_client
from bot.channels.slack.server import EarlyAcks, HttpServer, WebApp
from bot.config import Settings
from bot.core.announcements.announcer import Announcer
from bot.core.announcements.audience import Directories, Directory
from bot.core.content import ContentError, ContentErrors
from bot.core.faq.desk import FaqDesk
from bot.core.faq.embed import (
    CachedEmbedder,
    Embedder,
    load_embedder,
    model_cache_dir,
    release_free_memory,
)
from bot.core.faq.engine import FaqEngine
from bot.core.messages import Address, Chat, Chats, Message, say
from bot.core.outbox import Limits, Sender
from bot.core.platforms import SLACK, TEAMS
from bot.core.surveys.runner import SurveyRunner
from bot.metrics import CONTENT_RELOADS
from bot.store.db import make_engine, upgrade
from bot.store.embeddings import DbEmbeddingCache

if TYPE_CHECKING:  # the Teams SDK is imported only when Teams is configured
    from bot.channels.teams.app import TeamsEndpoint
    from bot.channels.teams.platform import TeamsParts
    from bot.console.app import Console

log = logging.getLogger(__name__)
StartResponse = Callable[..., Any]


def make_embedder(settings: Settings, db: Engine) -> Embedder | None:
    """The configured sentence embedder with its database cache, or None (lexical only)."""
    if not settings.embedding_enabled:
        log.warning(
            "semantic matching disabled by MOBILIZE_EMBEDDING_MODEL; using lexical matching"
        )
        return None
    inner = load_embedder(settings.embedding_model, cache_dir=model_cache_dir(settings.sqlite_path))
    return CachedEmbedder(inner, DbEmbeddingCache(db)) if inner else None


def connect(settings: Settings) -> Engine:
    """The database from DATABASE_URL, migrated to the latest revision."""
    db = make_engine(settings.database_url)
    upgrade(db)
    return db


def slack_client(settings: Settings, *, max_retries: int | None = None) -> WebClient:
    """A Web API client from settings (commands pass fewer retries than the running bot)."""
    return make_client(
        token=settings.slack_bot_token or "xoxb-unset",
        base_url=settings.slack_api_url,
        max_retries=settings.slack_max_retries if max_retries is None else max_retries,
    )


class LazyConsole:
    """The comms lead's console (bot.console), built when first used: its first request at
    /console or an admin's first `console` in chat. Flask and the console's pages are then
    not imported at start, which `mobilize run` waits for (benchmarks/serving.py)."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self._console: Console | None = None
        self._lock = threading.Lock()

    def get(self) -> Console:
        with self._lock:
            if self._console is None:
                from bot.console import build_console

                self._console = build_console(self.service)
            return self._console

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """A WSGI app for the paths under /console."""
        try:
            console = self.get()
        except Exception:  # a console that cannot be built must not take the bot with it
            log.exception("the console could not be started")
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"The console is not available just now; the bot's log says why.\n"]
        return console(environ, start_response)

    def reply(self, user_id: str) -> Message:
        """What the bot answers an admin's `console` with in a 1:1 chat (a one-time link)."""
        try:
            console = self.get()
        except Exception:
            log.exception("the console could not be started")
            return say("The console is not available just now; the bot's log says why.")
        return console.links.reply(user_id)


@dataclass
class Platforms:
    """The connected chat platforms, as the core sees them: one `Chat` that posts where each
    address is, a `Sender` and a `Directory` per platform, and each platform's rate limits."""

    chat: Chats
    senders: dict[str, Sender] = field(default_factory=dict)
    directories: dict[str, Directory] = field(default_factory=dict)
    limits: dict[str, Limits] = field(default_factory=dict)
    slack_chat: SlackChat | None = None
    teams: TeamsParts | None = None

    @property
    def directory(self) -> Directories:
        return Directories(self.directories)

    def close(self) -> None:
        if self.teams is not None:
            self.teams.close()


def slack_limits(settings: Settings) -> Limits:
    return Limits(
        posts_per_second=settings.send_rate,
        # A tenth of a second's worth, not a second's: Slack allows bursts, but one as big
        # as its own bucket, met by network jitter, earns 429s (and a pause for everyone).
        burst=max(2.0, settings.send_rate / 10),
        edits_per_second=settings.edit_rate,
    )


def connect_platforms(
    settings: Settings, db: Engine, *, slack_chat: SlackChat | None = None
) -> Platforms:
    """Slack when its bot token is set, Teams when its app id is (the Teams SDK is imported
    only then)."""
    chats: dict[str, Chat] = {}
    platforms = Platforms(chat=Chats(chats))  # filled in below
    if settings.slack_enabled or slack_chat is not None:
        client = slack_chat.client if slack_chat is not None else slack_client(settings)
        platforms.slack_chat = slack_chat or SlackChat(client)
        chats[SLACK] = platforms.slack_chat
        platforms.senders[SLACK] = SlackSender(
            outbox_client(
                token=settings.slack_bot_token or "xoxb-unset", base_url=settings.slack_api_url
            )
        )
        platforms.directories[SLACK] = SlackDirectory(client)
        platforms.limits[SLACK] = slack_limits(settings)
    if settings.teams_enabled:
        from bot.channels.teams.platform import connect_teams

        teams = connect_teams(settings, db)
        platforms.teams = teams
        chats[TEAMS] = teams.chat
        platforms.senders[TEAMS] = teams.sender
        platforms.directories[TEAMS] = teams.directory
        platforms.limits[TEAMS] = teams.limits
    platforms.chat.chats.update(chats)
    return platforms


def make_survey_runner(settings: Settings, db: Engine, platforms: Platforms) -> SurveyRunner:
    """The survey service, from settings."""
    return SurveyRunner(
        db=db,
        content_dir=settings.content_dir,
        directory=platforms.directory,
        chat=platforms.chat,
        secret=settings.survey_key(),
        admins=settings.admin_ids,
        grace=timedelta(minutes=settings.grace_minutes),
        default_timezone=settings.timezone,
    )


def make_announcer(settings: Settings, db: Engine, platforms: Platforms) -> Announcer:
    """The announcement service on the connected platforms, from settings."""
    return Announcer(
        db=db,
        content_dir=settings.content_dir,
        directory=platforms.directory,
        senders=platforms.senders,
        chat=platforms.chat,
        admins=settings.admin_ids,
        limits=platforms.limits.get(SLACK, slack_limits(settings)),
        platform_limits=platforms.limits,
        grace=timedelta(minutes=settings.grace_minutes),
        default_timezone=settings.timezone,
        lease=timedelta(seconds=settings.lease_seconds),
    )


class Service:
    """Everything `mobilize run` needs, built once from settings."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.db = connect(settings)
        self.ready = threading.Event()
        self.client = slack_client(settings)
        slack_chat = SlackChat(self.client)
        self.platforms = connect_platforms(
            settings, self.db, slack_chat=slack_chat if settings.slack_enabled else None
        )
        self.chat = self.platforms.chat  # posts to each address on its platform
        self.engine = FaqEngine(
            content_dir=settings.content_dir,
            embedder=make_embedder(settings, self.db),
            db=self.db,
            default_timezone=settings.timezone,
        )
        self.engine.load()
        self.desk = FaqDesk(
            engine=self.engine, db=self.db, support_channel=settings.support_channel
        )
        self.announcer = make_announcer(settings, self.db, self.platforms)
        # Slack's answers, reports and notices share the outbox's rate budget (and its 429s).
        slack_chat.charge_to(self.announcer.outbox.budget, self.announcer.outbox.limits)
        self.surveys = make_survey_runner(settings, self.db, self.platforms)
        for kind, renderer in self.surveys.renderers().items():  # surveys' outbox kinds
            self.announcer.outbox.register(kind, renderer)
        errors = self.announcer.load() + self.surveys.load()
        if errors:
            raise ContentErrors(errors)
        self.admins = Admins(self.client, users=settings.admin_ids, group=settings.admin_group)
        self.console = LazyConsole(self)  # the comms lead's web console at /console
        # Over HTTP, events and survey clicks are acked before any work on them (Socket Mode
        # acks each envelope itself: bot.channels.slack.socket_mode).
        self.early = (
            EarlyAcks(settings.slack_signing_secret) if settings.slack_signing_secret else None
        )
        self.app = build_app(
            client=self.client,
            signing_secret=settings.slack_signing_secret,
            desk=self.desk,
            db=self.db,
            support_channel=settings.support_channel,
            admins=self.admins,
            announcer=self.announcer,
            surveys=self.surveys.desk,
            console=self.console.reply,
            early=self.early,
        )
        self.teams: TeamsEndpoint | None = None
        if self.platforms.teams is not None:  # Teams at POST /api/messages, next to Slack's
            from bot.channels.teams.app import build_endpoint

            self.teams = build_endpoint(
                settings=settings,
                db=self.db,
                engine=self.engine,
                refs=self.platforms.teams.refs,
                chat=self.platforms.teams.chat,
                announcer=self.announcer,
                surveys=self.surveys.desk,
                console=self.console.reply,
            )
        self._stop = threading.Event()
        self.scheduler: BackgroundScheduler | None = None
        release_free_memory()  # what building all this used and freed goes back to the system

    def report_content_errors(self, errors: list[ContentError]) -> None:
        """Tell the admins what is wrong; the last good content keeps serving."""
        CONTENT_RELOADS.labels(result="error").inc()
        for error in errors:
            log.warning("content error: %s", error)
        listing = "\n".join(f"• `{error}`" for error in errors[:20])
        more = f"\n…and {len(errors) - 20} more" if len(errors) > 20 else ""
        for admin in sorted(self.settings.admin_ids):
            self.chat.post(
                Address(admin),
                say(
                    "*Content has errors; I'm still serving the last good version.*\n"
                    f"{listing}{more}"
                ),
            )

    def reload(self) -> None:
        """Reload every content file; errors reach the admins, the last good content stays."""
        errors = self.engine.load() + self.announcer.load() + self.surveys.load()
        if errors:
            self.report_content_errors(errors)
        else:
            CONTENT_RELOADS.labels(result="ok").inc()

    def watch_content(self) -> threading.Thread:
        """Reload when files under messages/ or schedules/ change (no restart needed)."""
        from watchfiles import watch

        root = self.settings.content_dir
        folders = [p for p in (root / "messages", root / "schedules") if p.is_dir()]

        def loop() -> None:
            if not folders:
                return
            for _changes in watch(*folders, stop_event=self._stop, debounce=500, rust_timeout=1000):
                try:
                    self.reload()
                except Exception:  # a reload must never stop the watcher
                    log.exception("content reload failed")

        thread = threading.Thread(target=loop, name="content-watch", daemon=True)
        thread.start()
        return thread

    def sync_learned(self, *, every: float = 30.0) -> threading.Thread:
        """Every `every` seconds, use alternates approved by other processes or the CLI."""

        def loop() -> None:
            while not self._stop.wait(every):
                try:
                    self.engine.sync_learned()
                except Exception:  # the next round tries again
                    log.exception("syncing approved alternates failed")

        thread = threading.Thread(target=loop, name="learned-sync", daemon=True)
        thread.start()
        return thread

    def start_announcements(self, *, workers: int | None = None) -> None:
        """The scheduler (APScheduler with its persistent job store) and the outbox workers."""
        jobs.RUNNING["default"] = self.announcer
        jobs.SURVEYS["default"] = self.surveys
        self.scheduler = BackgroundScheduler(
            jobstores={"default": SQLAlchemyJobStore(engine=self.db)}, timezone=UTC
        )
        self.scheduler.add_job(
            jobs.announcements_tick,
            "interval",
            seconds=self.settings.tick_seconds,
            id="announcements.tick",
            kwargs={"workspace": "default"},
            replace_existing=True,
            coalesce=True,
            max_instances=1,
            next_run_time=datetime.now(UTC),
        )
        self.scheduler.start()
        count = self.settings.workers if workers is None else workers
        self.announcer.start_workers(self._stop, count=count)

    def http_server(self, *, port: int, host: str = "0.0.0.0") -> HttpServer:
        slack = self.app if self.settings.slack_enabled else None
        web = WebApp(
            slack, ready=self.ready.is_set, teams=self.teams, console=self.console, early=self.early
        )
        return HttpServer(web, host=host, port=port)

    def stop(self) -> None:
        self._stop.set()
        if self.early is not None:
            self.early.close()
        if self.scheduler is not None:
            self.scheduler.shutdown(wait=False)
        jobs.RUNNING.pop("default", None)
        jobs.SURVEYS.pop("default", None)
        if self.teams is not None:
            self.teams.close()
        self.platforms.close()
        self.db.dispose()
