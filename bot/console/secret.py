"""The key that signs console session cookies: MOBILIZE_CONSOLE_SECRET, else a random one
kept in a file (mode 600) made on the first start."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from bot.config import Settings


def secret_path(settings: Settings) -> Path:
    """Where the generated key lives: next to a SQLite database, else in the user's config."""
    database = settings.sqlite_path
    if database is not None:
        return database.with_name(database.name + ".console-secret")
    return Path.home() / ".config" / "mobilize" / "console-secret"


def console_key(settings: Settings) -> bytes:
    """The signing key: the setting when given, else the file's (created once, 0600).

    Several processes on one PostgreSQL on different machines must share
    MOBILIZE_CONSOLE_SECRET: each machine would otherwise make its own file."""
    if settings.console_secret:
        return settings.console_secret.encode()
    path = secret_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(40):  # another process may have just made it and not written it yet
            key = path.read_text(encoding="ascii").strip()
            if key:
                return key.encode()
            time.sleep(0.05)
        raise RuntimeError(f"{path} is empty: delete it (a new one is made) or fill it") from None
    key = secrets.token_urlsafe(48)
    with os.fdopen(handle, "w", encoding="ascii") as out:
        out.write(key + "\n")
    return key.encode()
