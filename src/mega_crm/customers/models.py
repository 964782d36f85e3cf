"""A customer (tenant) and what it configures: pipeline stages, owners, custom fields."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint, Uuid
from sqlalchemy.orm import Mapped, mapped_column

from mega_crm.db import Base, UTCDateTime, new_id, utcnow


class Customer(Base):
    __tablename__ = "customers"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Per-customer overrides of the rate-limit buckets ("60/minute;1000/hour"); null = server default.
    rate_limit_default: Mapped[str | None] = mapped_column(String(200))
    rate_limit_bulk: Mapped[str | None] = mapped_column(String(200))
    # Bumped by every lead write, under this row's lock: orders lead timestamps by commit
    # (so keyset sync never skips a row) and keys the cached list totals.
    leads_version: Mapped[int] = mapped_column(Integer, default=0)
    leads_clock_us: Mapped[int] = mapped_column(BigInteger, default=0)  # last write time, µs since epoch


class Stage(Base):
    __tablename__ = "stages"
    __table_args__ = (UniqueConstraint("customer_id", "slug"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    slug: Mapped[str] = mapped_column(String(100))
    name: Mapped[str] = mapped_column(String(200))
    color: Mapped[str | None] = mapped_column(String(32))
    position: Mapped[int] = mapped_column(Integer, default=0)


class Owner(Base):
    __tablename__ = "owners"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    role_name: Mapped[str | None] = mapped_column(String(100))


class CustomFieldDefinition(Base):
    __tablename__ = "custom_field_definitions"
    __table_args__ = (UniqueConstraint("customer_id", "slug"),)

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True, default=new_id)
    customer_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("customers.id", ondelete="CASCADE"), index=True)
    slug: Mapped[str] = mapped_column(String(100))
    label: Mapped[str | None] = mapped_column(String(200))
