"""outbox: deliveries with a kind and a platform; survey sends apart from announcement sends

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 09:00:00

Survey invitations, reminders and shares were `announcement_send` rows with a
`survey_run_id`. They move to `survey_send` (same ids, so their deliveries only change
column), their deliveries get `survey_send_id` instead of `send_id`, every delivery gets its
kind and platform ("slack"), the old dm/channel `kind` becomes `target`, recipient, channel and
ts widen to 255 characters (Teams' conversation and activity ids), and each invited
person's time zone moves to the participation ledger (reminders read it there).
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _survey_kind(key: str, reminder_of: int | None) -> tuple[str, int, int | None]:
    """(kind, reminder number, share id) of an old survey announcement_send key."""
    if key.startswith("survey-share:"):
        return "share", 0, int(key.rpartition(":")[2])
    if reminder_of is not None or ":reminder:" in key:
        return "reminder", int(key.rpartition(":")[2]), None
    return "invitation", 0, None


def upgrade() -> None:
    op.create_table(
        "survey_send",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", _string(200), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("kind", _string(20), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("share_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["survey_run.id"]),
        sa.ForeignKeyConstraint(["share_id"], ["survey_share.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    op.create_index("ix_survey_send_run_id", "survey_send", ["run_id"], unique=False)
    with op.batch_alter_table("survey_invitation", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tz", _string(64), nullable=False, server_default=""))
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.alter_column("kind", new_column_name="target", existing_type=sa.String(8))
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("kind", _string(40), nullable=False, server_default="announcement")
        )
        batch_op.add_column(
            sa.Column("platform", _string(20), nullable=False, server_default="slack")
        )
        batch_op.add_column(sa.Column("survey_send_id", sa.Integer(), nullable=True))
        batch_op.alter_column("send_id", existing_type=sa.Integer(), nullable=True)
        for column in ("recipient", "channel", "ts"):  # Teams' ids are longer than Slack's
            batch_op.alter_column(
                column, existing_type=sa.String(40), type_=_string(255), existing_nullable=False
            )
        batch_op.create_foreign_key(
            "fk_delivery_survey_send_id", "survey_send", ["survey_send_id"], ["id"]
        )
        batch_op.create_index("ix_delivery_survey_send_id", ["survey_send_id"], unique=False)
        batch_op.create_unique_constraint(
            "uq_delivery_survey_send_id_recipient", ["survey_send_id", "recipient"]
        )

    bind = op.get_bind()
    old = bind.execute(
        sa.text(
            "SELECT id, key, survey_run_id, reminder_of, created_at FROM announcement_send "
            "WHERE survey_run_id IS NOT NULL ORDER BY id"
        )
    ).all()
    kinds = {
        "invitation": "survey_invitation",
        "reminder": "survey_reminder",
        "share": "survey_share",
    }
    for send_id, key, run_id, reminder_of, created_at in old:
        kind, number, share_id = _survey_kind(key, reminder_of)
        bind.execute(
            sa.text(
                "INSERT INTO survey_send (id, key, run_id, kind, number, share_id, created_at) "
                "VALUES (:id, :key, :run_id, :kind, :number, :share_id, :created_at)"
            ),
            {
                "id": send_id,
                "key": key,
                "run_id": run_id,
                "kind": kind,
                "number": number,
                "share_id": share_id,
                "created_at": created_at,
            },
        )
        bind.execute(
            sa.text(
                "UPDATE delivery SET survey_send_id = :id, send_id = NULL, kind = :kind "
                "WHERE send_id = :id"
            ),
            {"id": send_id, "kind": kinds[kind]},
        )
        if kind == "invitation":
            bind.execute(
                sa.text(
                    "UPDATE survey_invitation SET tz = (SELECT d.tz FROM delivery d WHERE "
                    "d.survey_send_id = :id AND d.recipient = survey_invitation.user_id) "
                    "WHERE run_id = :run_id AND EXISTS (SELECT 1 FROM delivery d WHERE "
                    "d.survey_send_id = :id AND d.recipient = survey_invitation.user_id)"
                ),
                {"id": send_id, "run_id": run_id},
            )
    if old:
        bind.execute(sa.text("DELETE FROM announcement_send WHERE survey_run_id IS NOT NULL"))
    if bind.dialect.name == "postgresql":
        bind.execute(
            sa.text(
                "SELECT setval(pg_get_serial_sequence('survey_send', 'id'), "
                "COALESCE(MAX(id), 0) + 1, false) FROM survey_send"
            )
        )
    bind.execute(
        sa.text(
            "UPDATE delivery SET kind = 'announcement_reminder' WHERE send_id IN "
            "(SELECT id FROM announcement_send WHERE reminder_of IS NOT NULL)"
        )
    )
    # Not batch mode: on SQLite that would copy announcement_send, and dropping the old copy
    # fails while deliveries reference it (foreign keys are on). SQLite ≥ 3.35 drops a plain,
    # unindexed column in place.
    op.drop_index("ix_announcement_send_survey_run_id", table_name="announcement_send")
    op.drop_column("announcement_send", "survey_run_id")


def downgrade() -> None:
    op.add_column("announcement_send", sa.Column("survey_run_id", sa.Integer(), nullable=True))
    op.create_index(
        "ix_announcement_send_survey_run_id", "announcement_send", ["survey_run_id"], unique=False
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.text(
            "SELECT s.id, s.key, s.run_id, s.kind, r.survey_id, r.audience, s.created_at "
            "FROM survey_send s JOIN survey_run r ON r.id = s.run_id ORDER BY s.id"
        )
    ).all()
    invitations: dict[int, int] = {}
    for send_id, key, run_id, kind, survey_id, audience, created_at in rows:
        new_id = bind.execute(
            sa.text(
                "INSERT INTO announcement_send (key, announcement_id, template, audience, state, "
                "local_time, weekdays_only, quiet_hours, ack, owner, created_by, due_at, "
                "excluded, error, created_at, reminder_of, survey_run_id, report_channel, "
                "report_ts) VALUES (:key, '', "
                ":template, :audience, 'sending', false, false, '', false, '', 'survey', "
                ":created_at, '', '', :created_at, :reminder_of, :run_id, '', '') RETURNING id"
            ),
            {
                "key": key,
                "template": f"survey:{survey_id}",
                "audience": audience,
                "created_at": created_at,
                "reminder_of": invitations.get(run_id) if kind == "reminder" else None,
                "run_id": run_id,
            },
        ).scalar_one()
        if kind == "invitation":
            invitations[run_id] = new_id
        bind.execute(
            sa.text(
                "UPDATE delivery SET send_id = :new, survey_send_id = NULL "
                "WHERE survey_send_id = :id"
            ),
            {"new": new_id, "id": send_id},
        )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_constraint("uq_delivery_survey_send_id_recipient", type_="unique")
        batch_op.drop_index("ix_delivery_survey_send_id")
        batch_op.drop_constraint("fk_delivery_survey_send_id", type_="foreignkey")
        batch_op.drop_column("survey_send_id")
        batch_op.drop_column("platform")
        batch_op.drop_column("kind")
        batch_op.alter_column("send_id", existing_type=sa.Integer(), nullable=False)
        for column in ("recipient", "channel", "ts"):
            batch_op.alter_column(
                column, existing_type=_string(255), type_=_string(40), existing_nullable=False
            )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.alter_column("target", new_column_name="kind", existing_type=sa.String(8))
    with op.batch_alter_table("survey_invitation", schema=None) as batch_op:
        batch_op.drop_column("tz")
    op.drop_index("ix_survey_send_run_id", table_name="survey_send")
    op.drop_table("survey_send")
