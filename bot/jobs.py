"""Scheduled jobs: module-level functions taking ids, as APScheduler's persistent job store
needs (it stores a reference to the function and its arguments, not live objects)."""

from __future__ import annotations

import logging

from bot.core.announcements.announcer import Announcer
from bot.core.surveys.runner import SurveyRunner

log = logging.getLogger(__name__)

# What runs in this process, by workspace name.
RUNNING: dict[str, Announcer] = {}
SURVEYS: dict[str, SurveyRunner] = {}


def announcements_tick(workspace: str = "default") -> None:
    """Materialise due announcements and survey runs, finish sends, report and remind."""
    announcer = RUNNING.get(workspace)
    if announcer is not None:
        announcer.tick()
    surveys = SURVEYS.get(workspace)
    if surveys is not None:
        try:
            surveys.tick()
        except Exception:  # the next tick tries again; announcements must not stop
            log.exception("survey tick failed")
