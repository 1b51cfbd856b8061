"""event handling: a retried Slack event is answered at least once and at most once

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 04:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("slack_event", schema=None) as batch_op:
        # Set once the event's work is done; a row without it after a crash is handled again
        # when Slack retries the event.
        batch_op.add_column(
            sa.Column("handled_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("slack_event", schema=None) as batch_op:
        batch_op.drop_column("handled_at")
