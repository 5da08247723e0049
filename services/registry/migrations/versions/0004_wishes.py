"""member wishes and estimated fields

Revision ID: registry_0004
Revises: registry_0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "registry_0004"
down_revision: str | Sequence[str] | None = "registry_0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the wishes and estimated columns (both empty lists for existing members)."""
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("wishes", sa.JSON(), server_default=sa.text("'[]'"), nullable=False)
        )
        batch_op.add_column(
            sa.Column("estimated", sa.JSON(), server_default=sa.text("'[]'"), nullable=False)
        )


def downgrade() -> None:
    """Drop them again."""
    with op.batch_alter_table("members", schema=None) as batch_op:
        batch_op.drop_column("estimated")
        batch_op.drop_column("wishes")
