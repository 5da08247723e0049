"""numbered member changes, so a solve reads only what changed

Revision ID: matcher_0007
Revises: matcher_0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "matcher_0007"
down_revision: str | Sequence[str] | None = "matcher_0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """The change number per member (0 for existing rows) and the counter row."""
    with op.batch_alter_table("matcher_members", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("change_seq", sa.BigInteger(), server_default="0", nullable=False)
        )
        batch_op.create_index("ix_matcher_members_change_seq", ["change_seq"], unique=False)
    counters = op.create_table(
        "matcher_member_changes",
        sa.Column("name", sa.String(length=20), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.bulk_insert(counters, [{"name": "members", "seq": 0}])


def downgrade() -> None:
    """Drop them again."""
    op.drop_table("matcher_member_changes")
    with op.batch_alter_table("matcher_members", schema=None) as batch_op:
        batch_op.drop_index("ix_matcher_members_change_seq")
        batch_op.drop_column("change_seq")
