"""Scheduled jobs: module-level functions taking ids, as APScheduler's persistent job store
needs (it stores a reference to the function and its arguments, not live objects)."""

from __future__ import annotations

from bot.core.announcements.announcer import Announcer

# The announcers running in this process, by workspace name.
RUNNING: dict[str, Announcer] = {}


def announcements_tick(workspace: str = "default") -> None:
    """Materialise due announcements, finish sends, report and remind."""
    announcer = RUNNING.get(workspace)
    if announcer is not None:
        announcer.tick()
