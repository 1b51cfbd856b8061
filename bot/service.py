"""Assembles the running bot: database, knowledge base, Slack app, content watcher."""

from __future__ import annotations

import logging
import threading

from sqlalchemy import Engine

from bot.channels.slack.app import build_app
from bot.channels.slack.chat import SlackChat, make_client
from bot.channels.slack.server import HttpServer, WebApp
from bot.config import Settings
from bot.core.content import ContentError
from bot.core.faq.desk import FaqDesk
from bot.core.faq.embed import CachedEmbedder, Embedder, load_embedder
from bot.core.faq.engine import FaqEngine
from bot.core.messages import Address, say
from bot.metrics import CONTENT_RELOADS
from bot.store.db import make_engine, upgrade
from bot.store.embeddings import DbEmbeddingCache

log = logging.getLogger(__name__)


def make_embedder(settings: Settings, db: Engine) -> Embedder | None:
    """The configured sentence embedder with its database cache, or None (lexical only)."""
    if not settings.embedding_enabled:
        log.warning(
            "semantic matching disabled by MOBILIZE_EMBEDDING_MODEL; using lexical matching"
        )
        return None
    inner = load_embedder(settings.embedding_model)
    return CachedEmbedder(inner, DbEmbeddingCache(db)) if inner else None


class Service:
    """Everything `mobilize run` needs, built once from settings."""

    def __init__(self, settings: Settings, *, with_slack: bool = True) -> None:
        self.settings = settings
        self.db = make_engine(settings.database_url)
        upgrade(self.db)
        self.ready = threading.Event()
        self.client = make_client(
            token=settings.slack_bot_token or "xoxb-unset",
            base_url=settings.slack_api_url,
            max_retries=settings.slack_max_retries,
        )
        self.chat = SlackChat(self.client)
        self.engine = FaqEngine(
            content_dir=settings.content_dir,
            embedder=make_embedder(settings, self.db),
            db=self.db,
            on_errors=self.report_content_errors if with_slack else None,
            default_timezone=settings.timezone,
        )
        self.engine.load()
        self.desk = FaqDesk(
            engine=self.engine, db=self.db, support_channel=settings.support_channel
        )
        self.app = build_app(
            client=self.client,
            signing_secret=settings.slack_signing_secret,
            desk=self.desk,
            db=self.db,
            support_channel=settings.support_channel,
            admins=settings.admin_ids,
        )
        self._stop = threading.Event()

    def report_content_errors(self, errors: list[ContentError]) -> None:
        """Tell the admins what is wrong; the last good content keeps serving."""
        CONTENT_RELOADS.labels(result="error").inc()
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
        if not self.engine.load():
            CONTENT_RELOADS.labels(result="ok").inc()

    def watch_content(self) -> threading.Thread:
        """Reload when files under messages/ or schedules/ change (no restart needed)."""
        from watchfiles import watch

        folders = [
            p
            for p in (
                self.settings.content_dir / "messages",
                self.settings.content_dir / "schedules",
            )
            if p.is_dir()
        ]

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

    def http_server(self, *, port: int, host: str = "0.0.0.0") -> HttpServer:
        return HttpServer(WebApp(self.app, ready=self.ready.is_set), host=host, port=port)

    def stop(self) -> None:
        self._stop.set()
        self.db.dispose()
