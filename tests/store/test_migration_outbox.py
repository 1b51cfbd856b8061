"""Migration 0007 moves survey batches out of the announcement tables and gives every
delivery its kind and platform, keeping what was there (and back again on downgrade)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy import Engine

from bot.store.db import make_engine, upgrade
from bot.store.migrations import versions  # noqa: F401  (the package must exist)

NOW = datetime(2027, 2, 16, 10, 0, tzinfo=UTC)


def insert(connection: sa.Connection, table: str, **values: Any) -> None:
    """A row of `table` as the schema stands: unnamed NOT NULL columns get a plain default."""
    reflected = sa.Table(table, sa.MetaData(), autoload_with=connection)
    row = dict(values)
    for column in reflected.columns:
        if column.name in row or column.nullable or column.primary_key:
            continue
        kind = column.type.python_type if hasattr(column.type, "python_type") else str
        try:
            kind = column.type.python_type
        except NotImplementedError:
            kind = str
        row[column.name] = {int: 0, float: 0.0, bool: False, datetime: NOW}.get(kind, "")
    connection.execute(reflected.insert().values(**row))


def rows(engine: Engine, sql: str) -> list[tuple[Any, ...]]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(sql)).all()]


def test_survey_sends_and_deliveries_are_moved(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine, "0006")
        with engine.begin() as connection:
            insert(
                connection,
                "survey_run",
                id=1,
                key="pulse@1",
                survey_id="pulse",
                audience="[]",
                state="open",
                starts_at=NOW,
                closes_at=NOW,
            )
            insert(connection, "survey_invitation", id=1, run_id=1, user_id="U1")
            insert(connection, "survey_share", id=4, run_id=1, note="n", summary="s")
            sends = [
                (1, "plan:go-live", None, None),
                (2, "plan:go-live:reminder", 1, None),
                (3, "survey:pulse@1", None, 1),
                (5, "survey:pulse@1:reminder:2", 3, 1),
                (6, "survey-share:pulse@1:4", None, 1),
            ]
            for send_id, key, reminder_of, run_id in sends:
                insert(
                    connection,
                    "announcement_send",
                    id=send_id,
                    key=key,
                    template="t",
                    audience="[]",
                    due_at=NOW,
                    reminder_of=reminder_of,
                    survey_run_id=run_id,
                )
            for delivery_id, send_id, recipient, kind, tz in [
                (10, 1, "C1", "channel", ""),
                (11, 2, "U1", "dm", ""),
                (12, 3, "U1", "dm", "Asia/Tokyo"),
                (13, 5, "U1", "dm", "Asia/Tokyo"),
                (14, 6, "U1", "dm", ""),
            ]:
                insert(
                    connection,
                    "delivery",
                    id=delivery_id,
                    send_id=send_id,
                    recipient=recipient,
                    kind=kind,
                    tz=tz,
                    state="sent",
                    not_before=NOW,
                    updated_at=NOW,
                )
        if database_url.startswith("postgresql"):
            with engine.begin() as connection:
                connection.execute(
                    sa.text("SELECT setval(pg_get_serial_sequence('announcement_send', 'id'), 7)")
                )

        upgrade(engine)
        assert rows(engine, "SELECT id FROM announcement_send ORDER BY id") == [(1,), (2,)]
        assert rows(
            engine, "SELECT id, key, run_id, kind, number, share_id FROM survey_send ORDER BY id"
        ) == [
            (3, "survey:pulse@1", 1, "invitation", 0, None),
            (5, "survey:pulse@1:reminder:2", 1, "reminder", 2, None),
            (6, "survey-share:pulse@1:4", 1, "share", 0, 4),
        ]
        assert rows(
            engine,
            "SELECT id, send_id, survey_send_id, kind, platform, target FROM delivery ORDER BY id",
        ) == [
            (10, 1, None, "announcement", "slack", "channel"),
            (11, 2, None, "announcement_reminder", "slack", "dm"),
            (12, None, 3, "survey_invitation", "slack", "dm"),
            (13, None, 5, "survey_reminder", "slack", "dm"),
            (14, None, 6, "survey_share", "slack", "dm"),
        ]
        assert rows(engine, "SELECT user_id, tz FROM survey_invitation") == [("U1", "Asia/Tokyo")]
        with engine.begin() as connection:  # new survey sends get fresh ids
            insert(connection, "survey_send", key="survey:pulse@2", run_id=1, kind="invitation")
        assert rows(engine, "SELECT max(id) FROM survey_send") == [(7,)]

        upgrade_down(engine)
        assert rows(
            engine,
            "SELECT key, survey_run_id, reminder_of IS NOT NULL FROM announcement_send "
            "WHERE survey_run_id IS NOT NULL ORDER BY key",
        ) == [
            ("survey-share:pulse@1:4", 1, False),
            ("survey:pulse@1", 1, False),
            ("survey:pulse@1:reminder:2", 1, True),
            ("survey:pulse@2", 1, False),
        ]
        assert rows(engine, "SELECT count(*) FROM delivery WHERE send_id IS NULL") == [(0,)]
        assert rows(engine, "SELECT kind FROM delivery WHERE id = 10") == [("channel",)]
    finally:
        engine.dispose()


def upgrade_down(engine: Engine) -> None:
    from alembic import command

    from bot.store.db import alembic_config

    command.downgrade(alembic_config(engine), "0006")
