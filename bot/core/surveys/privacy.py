"""The cryptography and the storage hygiene behind anonymous survey answers.

- **One key per run.** `run_key()` derives it with HMAC-SHA256 from the deployment's survey
  secret (never in the database) and a random salt stored with the run while it is open. The
  salt is erased when the run closes, so the run key cannot be derived again, not even by
  someone who later holds both the secret and the database.
- **Respondent keys.** `respondent_key()` is HMAC(run key, user): it lets the bot find a
  person's own row to change an answer, and names nobody without the run key.
- **Sealed answers.** While a run is open its answers are stored sealed (`seal()`: a random
  nonce, an HMAC-SHA256 keystream and an HMAC tag; encrypt-then-MAC with separate keys), so a
  copy of the database taken while the run is open, without the secret, shows that someone
  answered but not what. At close the answers are opened, shuffled and written again in
  plain text, in random order, with fresh random ids and no key (`bot.core.surveys.runs`).
- **Erased means gone from the files** (`scrub()`): SQLite runs the close with
  `secure_delete` on, then `VACUUM` and a `wal_checkpoint(TRUNCATE)`; PostgreSQL rewrites the
  survey tables with `VACUUM FULL` (new files; the old ones are unlinked). PostgreSQL's own
  write-ahead log and archives are out of reach of any client: treat them like backups.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError

log = logging.getLogger(__name__)

_KEY_LABEL = b"mobilize/survey-run/v1"
_CHECK_LABEL = b"mobilize/survey-run-check/v1"
_PREFIX = "sealed:v1:"
_NONCE = 16
_TAG = 32


class SecretMissing(Exception):
    """An anonymous or confidential run needs the deployment's survey secret."""


class WrongSecret(Exception):
    """This process's survey secret is not the one the run was started with."""


def new_salt() -> str:
    """A fresh random salt for a run (hex)."""
    return secrets.token_hex(32)


def run_key(secret: bytes, run_id: int, salt: str) -> bytes:
    """The run's key: HMAC-SHA256(secret, label | run id | salt)."""
    if not secret:
        raise SecretMissing("no survey secret")
    message = b"|".join((_KEY_LABEL, str(run_id).encode(), salt.encode()))
    return hmac.new(secret, message, hashlib.sha256).digest()


def key_check(key: bytes) -> str:
    """A fingerprint of a run key, stored with the run: a process started with another secret
    finds out before it writes a second row for someone (and reveals nothing about the key)."""
    return hmac.new(key, _CHECK_LABEL, hashlib.sha256).hexdigest()


def respondent_key(key: bytes, user_id: str) -> str:
    """HMAC of the user under the run key: finds a person's own answers, names nobody."""
    return hmac.new(key, b"respondent|" + user_id.encode(), hashlib.sha256).hexdigest()


def _subkeys(key: bytes) -> tuple[bytes, bytes]:
    encrypt = hmac.new(key, b"encrypt", hashlib.sha256).digest()
    mac = hmac.new(key, b"authenticate", hashlib.sha256).digest()
    return encrypt, mac


def _keystream(key: bytes, nonce: bytes, length: int) -> bytes:
    blocks = []
    for counter in range((length + 31) // 32):
        blocks.append(hmac.new(key, nonce + counter.to_bytes(8, "big"), hashlib.sha256).digest())
    return b"".join(blocks)[:length]


def seal(key: bytes, plain: str) -> str:
    """`plain` encrypted and authenticated under `key`, as text."""
    encrypt, mac = _subkeys(key)
    nonce = secrets.token_bytes(_NONCE)
    data = plain.encode()
    body = bytes(a ^ b for a, b in zip(data, _keystream(encrypt, nonce, len(data)), strict=True))
    tag = hmac.new(mac, nonce + body, hashlib.sha256).digest()
    return _PREFIX + base64.b64encode(nonce + body + tag).decode()


def is_sealed(stored: str) -> bool:
    return stored.startswith(_PREFIX)


def unseal(key: bytes, stored: str) -> str:
    """The plain text of a `seal()`ed value; ValueError when it was not sealed under `key`."""
    if not is_sealed(stored):
        return stored
    raw = base64.b64decode(stored[len(_PREFIX) :])
    nonce, body, tag = raw[:_NONCE], raw[_NONCE:-_TAG], raw[-_TAG:]
    encrypt, mac = _subkeys(key)
    if not hmac.compare_digest(tag, hmac.new(mac, nonce + body, hashlib.sha256).digest()):
        raise ValueError("sealed under another key")
    stream = _keystream(encrypt, nonce, len(body))
    return bytes(a ^ b for a, b in zip(body, stream, strict=True)).decode()


# ---------------------------------------------------------------------------- files


def secure_delete(connection: Connection) -> None:
    """On SQLite, make this connection overwrite deleted content with zeros."""
    if connection.dialect.name == "sqlite":
        connection.exec_driver_sql("PRAGMA secure_delete=ON")


def scrub(db: Engine, tables: Sequence[str]) -> None:
    """Leave no erased value in the database's files: on SQLite `VACUUM` and truncate the WAL;
    on PostgreSQL `VACUUM FULL` the `tables` (their new files hold only live rows)."""
    try:
        _scrub(db, tables)
    except OperationalError as exc:  # the close stands; say loudly that the files are not clean
        log.error("survey close: scrubbing the database files failed: %s", exc.orig)


def _scrub(db: Engine, tables: Sequence[str]) -> None:
    if db.dialect.name == "sqlite":
        with db.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            connection.exec_driver_sql("PRAGMA secure_delete=ON")
            connection.exec_driver_sql("VACUUM")
            for _attempt in range(50):
                busy, _log, _done = connection.exec_driver_sql(
                    "PRAGMA wal_checkpoint(TRUNCATE)"
                ).one()
                if not busy:
                    break
                time.sleep(0.1)  # a reader of another connection holds an old snapshot
            else:
                log.warning("survey close: the WAL could not be truncated (readers kept it busy)")
        return
    if db.dialect.name == "postgresql":
        with db.connect() as connection:
            connection = connection.execution_options(isolation_level="AUTOCOMMIT")
            # VACUUM FULL waits for every open transaction on the table, and new ones queue
            # behind it: a short wait, and the close stands (logged) if it cannot get in.
            connection.execute(text("SET lock_timeout = '10s'"))
            for table in tables:
                connection.exec_driver_sql(f'VACUUM FULL "{table}"')


def create_secret_file(path: Path) -> None:
    """Write a new random survey secret to `path`, readable by its owner only; refuses to
    overwrite one (that would make every open run's answers unreadable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
