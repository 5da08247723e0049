"""weights adopted by staff

Revision ID: matcher_0005
Revises: matcher_0004
Create Date: 2026-12-01 14:40:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'matcher_0005'
down_revision: Union[str, Sequence[str], None] = 'matcher_0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('matcher_weights',
    sa.Column('seq', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('weights', sa.JSON(), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('set_by', sa.String(length=200), nullable=False),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('matcher_weights')
