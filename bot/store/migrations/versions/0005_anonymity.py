"""anonymity: a key per survey run, and "you said, we did" shares

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("survey_run", schema=None) as batch_op:
        # The run key's salt (erased at close) and the key's fingerprint.
        batch_op.add_column(
            sa.Column("key_salt", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
        )
        batch_op.add_column(
            sa.Column(
                "key_check",
                sqlmodel.sql.sqltypes.AutoString(length=64),
                nullable=False,
                server_default="",
            )
        )
    op.create_table(
        "survey_share",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("created_by", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["survey_run.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("survey_share", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_survey_share_run_id"), ["run_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("survey_share", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_survey_share_run_id"))
    op.drop_table("survey_share")
    with op.batch_alter_table("survey_run", schema=None) as batch_op:
        batch_op.drop_column("key_check")
        batch_op.drop_column("key_salt")
