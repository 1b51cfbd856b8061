"""teams: conversation references for people and channels; room for Teams' long ids

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 09:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Teams conversation ids (a:…, 19:…@thread.tacv2;messageid=…) are longer than Slack's 40
# characters: PostgreSQL would refuse them. Entra object ids (36) still fit the user columns.
WIDENED = {
    "question_log": ("channel_id", "thread_ts"),
    "escalation": ("asker_channel", "asker_thread_ts", "support_channel", "support_ts"),
}


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.alter_column(
                    column, existing_type=_string(40), type_=_string(255), existing_nullable=False
                )
    op.create_table(
        "teams_person",
        sa.Column("user_id", _string(64), nullable=False),
        sa.Column("teams_id", _string(255), nullable=False),
        sa.Column("name", _string(200), nullable=False),
        sa.Column("tenant_id", _string(64), nullable=False),
        sa.Column("conversation_id", _string(255), nullable=False),
        sa.Column("service_url", _string(255), nullable=False),
        sa.Column("installed", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_table(
        "teams_conversation",
        sa.Column("conversation_id", _string(255), nullable=False),
        sa.Column("kind", _string(20), nullable=False),
        sa.Column("service_url", _string(255), nullable=False),
        sa.Column("tenant_id", _string(64), nullable=False),
        sa.Column("team_id", _string(255), nullable=False),
        sa.Column("team_group_id", _string(64), nullable=False),
        sa.Column("name", _string(200), nullable=False),
        sa.Column("installed", sa.Boolean(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("conversation_id"),
    )


def downgrade() -> None:
    op.drop_table("teams_conversation")
    op.drop_table("teams_person")
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.alter_column(
                    column, existing_type=_string(255), type_=_string(40), existing_nullable=False
                )
