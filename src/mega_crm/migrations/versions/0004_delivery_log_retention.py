"""webhook_deliveries.completed_at index, for the delivery log's retention

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 20:50:00
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_webhook_deliveries_completed", "webhook_deliveries", ["completed_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_deliveries_completed", table_name="webhook_deliveries")
