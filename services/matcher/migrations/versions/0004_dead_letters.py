"""poison records: parked outbox rows, event digests, dead-letter originals

Revision ID: matcher_0004
Revises: matcher_0003
Create Date: 2026-12-01 15:00:00

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = 'matcher_0004'
down_revision: Union[str, Sequence[str], None] = 'matcher_0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('matcher_dead_letter_originals',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('topic', sa.String(length=200), nullable=False),
    sa.Column('partition', sa.Integer(), nullable=True),
    sa.Column('offset', sa.BigInteger(), nullable=True),
    sa.Column('original', sa.LargeBinary(), nullable=False),
    sa.Column('encoding', sa.String(length=10), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('matcher_outbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('parked_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('error', sa.Text(), nullable=True))

    with op.batch_alter_table('matcher_processed_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('digest', sa.String(length=64), nullable=True))


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('matcher_processed_events', schema=None) as batch_op:
        batch_op.drop_column('digest')

    with op.batch_alter_table('matcher_outbox', schema=None) as batch_op:
        batch_op.drop_column('error')
        batch_op.drop_column('parked_at')

    op.drop_table('matcher_dead_letter_originals')
