"""PostgreSQL: mega_crm_write_conflict(), which fails a statement with serialization_failure

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 00:10:00

createLead reads a customer's configuration and the leads its contact matches before it takes
the customer's write lock, and writes in the round trip that takes it (leads.service.create_lead).
Its write statement checks, under the lock, that those leads are still the ones it read; when
they are not, it calls this function, which raises SQLSTATE 40001 (serialization_failure, the
code PostgreSQL gives a transaction that must be retried), and the create runs again, its reads
under the lock. A statement cannot raise an error of its own choosing without a function.
SQLite needs none: its write transactions run one at a time.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

# timestamptz: the checked write reads the customer's clock through it (it returns one or raises).
FUNCTION = """CREATE FUNCTION mega_crm_write_conflict(reason text) RETURNS timestamptz
LANGUAGE plpgsql AS $$
BEGIN
  RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE = reason;
END $$"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(FUNCTION)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS mega_crm_write_conflict(text)")
