"""console: one-time sign-in links and sessions of the comms lead's console

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-10 09:00:00

Only SHA-256 hashes of the link tokens and session ids are stored: a database reader cannot
sign in with them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "console_link",
        sa.Column("token_hash", _string(64), nullable=False),
        sa.Column("user_id", _string(64), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("expires_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("used_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    op.create_index("ix_console_link_user_id", "console_link", ["user_id"], unique=False)
    op.create_table(
        "console_session",
        sa.Column("id_hash", _string(64), nullable=False),
        sa.Column("user_id", _string(64), nullable=False),
        sa.Column("csrf", _string(64), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    op.create_index("ix_console_session_user_id", "console_session", ["user_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_console_session_user_id", table_name="console_session")
    op.drop_table("console_session")
    op.drop_index("ix_console_link_user_id", table_name="console_link")
    op.drop_table("console_link")
