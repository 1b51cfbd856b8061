"""The comms lead's console: a web app at /console for writing, sending and watching
announcements and reading survey results, signed in through a one-time link from chat.

Wire it into the running bot with `build_console(service)` (see `bot.console.app`)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bot.console.app import Console, ConsoleService


def build_console(
    service: ConsoleService, *, clock: Callable[[], datetime] | None = None
) -> Console:
    """The console for a `bot.service.Service`: a WSGI app to mount at /console (it serves
    paths starting with /console), whose `links.console_link(user_id)` / `links.reply(user_id)`
    answer an admin's `console` in a 1:1 chat."""
    from bot.console.app import Console

    return Console(service) if clock is None else Console(service, clock=clock)
