"""teams places: room for Teams' conversation and activity ids where reports and invitations land

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-11 09:00:00

An announcement's delivery report and a survey invitation remember where they were posted, to
keep them up to date. On Teams that is a 1:1 conversation id (`a:…`, about 100 characters) and
an activity id: longer than the 40 characters Slack's ids needed, which PostgreSQL would refuse.
"""

from collections.abc import Sequence

import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WIDENED = {
    "announcement_send": ("report_channel", "report_ts"),
    "survey_invitation": ("channel", "ts"),
}


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def _alter(old: int, new: int) -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite does not enforce lengths; rebuilding announcement_send would break the
        # foreign keys that point at it.
        return
    for table, columns in WIDENED.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.alter_column(
                    column, existing_type=_string(old), type_=_string(new), existing_nullable=False
                )


def upgrade() -> None:
    _alter(40, 255)


def downgrade() -> None:
    _alter(255, 40)
