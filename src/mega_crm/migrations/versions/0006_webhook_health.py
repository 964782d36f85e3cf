"""webhooks: endpoint health, secret rotation with an overlap, signature scheme, event details

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-30 00:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.add_column(sa.Column("disabled_reason", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("consecutive_failures", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("last_success_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("previous_secret_encrypted", sa.Text(), nullable=True))
        batch_op.add_column(
            sa.Column("previous_secret_expires_at", sa.DateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("signature_scheme", sa.String(length=32), server_default="mega", nullable=False)
        )

    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("details", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("webhook_events", schema=None) as batch_op:
        batch_op.drop_column("details")
    with op.batch_alter_table("webhooks", schema=None) as batch_op:
        batch_op.drop_column("signature_scheme")
        batch_op.drop_column("previous_secret_expires_at")
        batch_op.drop_column("previous_secret_encrypted")
        batch_op.drop_column("last_success_at")
        batch_op.drop_column("consecutive_failures")
        batch_op.drop_column("disabled_at")
        batch_op.drop_column("disabled_reason")
