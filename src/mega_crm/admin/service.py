"""Operator actions (customers, keys, stages, owners, custom fields, limits): used by the CLI."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mega_crm.auth.models import ApiKey
from mega_crm.auth.scopes import ALL_SCOPES
from mega_crm.customers.models import Customer, CustomFieldDefinition, Owner, Stage
from mega_crm.db import Database, utcnow
from mega_crm.security import hash_api_token, new_api_token
from mega_crm.validation import text_refusal

DEFAULT_PIPELINE = [
    ("new", "New", "#3b82f6"),
    ("contacted", "Contacted", "#8b5cf6"),
    ("qualified", "Qualified", "#f59e0b"),
    ("won", "Won", "#10b981"),
    ("lost", "Lost", "#6b7280"),
]


class AdminError(ValueError):
    """Bad operator input; the message is shown as is."""


FIELD_SLUG = re.compile(r"[a-z][a-z0-9_]{0,63}")
STAGE_SLUG = re.compile(r"[a-z][a-z0-9_\-]{0,63}")
COLOR = re.compile(r"#[0-9a-fA-F]{6}")
# Names the API gives a meaning of its own: `lead_line` is handled by every lead write whether
# or not it is defined, and the Lead's own fields would be shadowed in `custom_fields`.
RESERVED_FIELD_SLUGS = frozenset(
    {"lead_line", "id", "contact_name", "contact_email", "contact_phone", "source_platform", "source_type",
     "stage_slug", "stage_id", "owner_id", "status", "created_at", "updated_at", "custom_fields", "row_ref"}
)  # fmt: skip


def check_field_slug(slug: str) -> str:
    """A custom field slug: [a-z][a-z0-9_]{0,63}, not a reserved name; AdminError otherwise."""
    if not FIELD_SLUG.fullmatch(slug):
        raise AdminError(f"field slug must match [a-z][a-z0-9_]{{0,63}}, got {slug!r}")
    if slug in RESERVED_FIELD_SLUGS:
        raise AdminError(f"field slug {slug!r} is reserved (the API handles it itself)")
    return slug


def check_stage(slug: str, color: str | None) -> None:
    """Stage slug [a-z][a-z0-9_-]{0,63} and colour #rrggbb (or none); AdminError otherwise."""
    if not STAGE_SLUG.fullmatch(slug):
        raise AdminError(f"stage slug must match [a-z][a-z0-9_-]{{0,63}}, got {slug!r}")
    if color is not None and not COLOR.fullmatch(color):
        raise AdminError(f"stage colour must be #rrggbb (six hex digits), got {color!r}")


def check_limit(spec: str) -> None:
    """A rate-limit string such as "60/minute;1000/hour". Each window must allow at least one
    request: "0/minute" would refuse every request (revoke the key for that), so it is refused."""
    from mega_crm.ratelimit.limiter import parse_limits  # the limits library: only when needed

    try:
        items = parse_limits(spec)
    except ValueError:
        raise AdminError(f"not a rate limit: {spec!r} (e.g. '60/minute;1000/hour')") from None
    if any(item.amount < 1 for item in items):
        raise AdminError(f"a rate limit must allow at least 1 request per window, got {spec!r}")


@dataclass
class IssuedKey:
    id: uuid.UUID
    token: str  # shown once, never stored
    scopes: list[str]
    customer_id: uuid.UUID
    name: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "token": self.token,
            "scopes": self.scopes,
            "customer_id": str(self.customer_id),
            "name": self.name,
        }


def _text(value: str | None, what: str, column: Any, *, required: bool = False) -> str | None:
    """`value` stripped, checked as the API checks text (validation.text_refusal) and against the
    length of the `column` it is stored in: PostgreSQL refuses a longer VARCHAR, SQLite would
    keep it, so the check makes both databases agree. AdminError naming `what` otherwise."""
    if value is None:
        return None
    value = value.strip()
    if required and not value:
        raise AdminError(f"{what} must not be empty")
    reason = text_refusal(value)
    if reason is not None:
        if "\x00" not in value:  # a command line's bytes that are not UTF-8 arrive as lone surrogates
            reason = "must be UTF-8 text (it has bytes that are not UTF-8)"
        raise AdminError(f"{what} {reason}")
    limit = column.type.length
    if limit is not None and len(value) > limit:
        raise AdminError(f"{what} must be at most {limit} characters (got {len(value)})")
    return value


def parse_uuid(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise AdminError(f"{what} must be a UUID, got {value!r}") from None


def _customer(session: Session, customer_id: uuid.UUID) -> Customer:
    customer = session.get(Customer, customer_id)
    if customer is None:
        raise AdminError(f"no customer {customer_id}")
    return customer


def create_customer(db: Database, name: str, customer_id: uuid.UUID | None = None) -> Customer:
    name = _text(name, "customer name (--name)", Customer.name, required=True) or ""
    with db.write_session() as session:
        if customer_id and session.get(Customer, customer_id) is not None:
            raise AdminError(f"customer {customer_id} already exists")
        customer = Customer(id=customer_id or uuid.uuid4(), name=name)
        session.add(customer)
        session.flush()
        for position, (slug, stage_name, color) in enumerate(DEFAULT_PIPELINE):
            session.add(
                Stage(customer_id=customer.id, slug=slug, name=stage_name, color=color, position=position)
            )
        return customer


def issue_key(db: Database, customer_id: uuid.UUID, scopes: list[str], name: str | None = None) -> IssuedKey:
    unknown = [s for s in scopes if s not in ALL_SCOPES]
    if unknown or not scopes:
        raise AdminError(f"scopes must be among {', '.join(ALL_SCOPES)}; got {', '.join(unknown) or 'none'}")
    scopes = sorted(set(scopes), key=ALL_SCOPES.index)
    name = _text(name, "key name (--name)", ApiKey.name)
    token = new_api_token()
    with db.write_session() as session:
        _customer(session, customer_id)
        key = ApiKey(
            customer_id=customer_id,
            name=name,
            token_hash=hash_api_token(token),
            token_hint=token[:9],
            scopes=scopes,
        )
        session.add(key)
        session.flush()
        return IssuedKey(key.id, token, scopes, customer_id, name)


def revoke_key(db: Database, key_id: uuid.UUID) -> ApiKey:
    with db.write_session() as session:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise AdminError(f"no key {key_id}")
        if key.revoked_at is None:
            key.revoked_at = utcnow()
        return key


def list_keys(db: Database, customer_id: uuid.UUID) -> list[ApiKey]:
    with db.read_session() as session:
        _customer(session, customer_id)
        return list(
            session.scalars(
                select(ApiKey).where(ApiKey.customer_id == customer_id).order_by(ApiKey.created_at)
            )
        )


def add_stage(db: Database, customer_id: uuid.UUID, slug: str, name: str, color: str | None) -> Stage:
    slug = _text(slug, "stage slug (--slug)", Stage.slug, required=True) or ""
    name = _text(name, "stage name (--name)", Stage.name, required=True) or ""
    color = _text(color, "stage color (--color)", Stage.color)
    check_stage(slug, color)
    with db.write_session() as session:
        _customer(session, customer_id)
        exists = session.scalar(select(Stage.id).where(Stage.customer_id == customer_id, Stage.slug == slug))
        if exists:
            raise AdminError(f"stage '{slug}' already exists for this customer")
        position = session.scalar(
            select(func.coalesce(func.max(Stage.position), -1) + 1).where(Stage.customer_id == customer_id)
        )
        stage = Stage(customer_id=customer_id, slug=slug, name=name, color=color, position=position)
        session.add(stage)
        session.flush()
        return stage


def add_owner(db: Database, customer_id: uuid.UUID, name: str, role: str | None) -> Owner:
    name = _text(name, "owner name (--name)", Owner.name, required=True) or ""
    role = _text(role, "owner role (--role)", Owner.role_name)
    with db.write_session() as session:
        _customer(session, customer_id)
        owner = Owner(customer_id=customer_id, name=name, role_name=role)
        session.add(owner)
        session.flush()
        return owner


def add_field(db: Database, customer_id: uuid.UUID, slug: str, label: str | None) -> CustomFieldDefinition:
    slug = check_field_slug(
        _text(slug, "field slug (--slug)", CustomFieldDefinition.slug, required=True) or ""
    )
    label = _text(label, "field label (--label)", CustomFieldDefinition.label)
    with db.write_session() as session:
        _customer(session, customer_id)
        exists = session.scalar(
            select(CustomFieldDefinition.id).where(
                CustomFieldDefinition.customer_id == customer_id, CustomFieldDefinition.slug == slug
            )
        )
        if exists:
            raise AdminError(f"custom field '{slug}' already exists for this customer")
        definition = CustomFieldDefinition(customer_id=customer_id, slug=slug, label=label)
        session.add(definition)
        session.flush()
        return definition


def set_limits(db: Database, customer_id: uuid.UUID, default: str | None, bulk: str | None) -> Customer:
    default = _text(default, "default limit (--default)", Customer.rate_limit_default)
    bulk = _text(bulk, "bulk limit (--bulk)", Customer.rate_limit_bulk)
    for spec in (default, bulk):
        if spec:
            check_limit(spec)
    with db.write_session() as session:
        customer = _customer(session, customer_id)
        if default is not None:
            customer.rate_limit_default = default or None
        if bulk is not None:
            customer.rate_limit_bulk = bulk or None
        return customer


def list_customers(db: Database) -> list[Customer]:
    with db.read_session() as session:
        return list(session.scalars(select(Customer).order_by(Customer.created_at, Customer.id)))


def list_stages(db: Database, customer_id: uuid.UUID) -> list[Stage]:
    with db.read_session() as session:
        _customer(session, customer_id)
        query = select(Stage).where(Stage.customer_id == customer_id).order_by(Stage.position, Stage.slug)
        return list(session.scalars(query))


def list_owners(db: Database, customer_id: uuid.UUID) -> list[Owner]:
    with db.read_session() as session:
        _customer(session, customer_id)
        query = select(Owner).where(Owner.customer_id == customer_id).order_by(Owner.name)
        return list(session.scalars(query))


def list_fields(db: Database, customer_id: uuid.UUID) -> list[CustomFieldDefinition]:
    with db.read_session() as session:
        _customer(session, customer_id)
        query = select(CustomFieldDefinition).where(CustomFieldDefinition.customer_id == customer_id)
        return list(session.scalars(query.order_by(CustomFieldDefinition.slug)))


DEMO_CUSTOMER_ID = uuid.UUID("00000000-0000-4000-8000-00000000de00")


def ensure_demo(db: Database) -> tuple[Customer, IssuedKey]:
    """The demo customer with owners and custom fields (created once), and a fresh all-scopes key."""
    with db.read_session() as session:
        exists = session.get(Customer, DEMO_CUSTOMER_ID) is not None
    if not exists:
        create_customer(db, "Demo Realty", DEMO_CUSTOMER_ID)
        add_owner(db, DEMO_CUSTOMER_ID, "Alex Agent", "Agent")
        add_owner(db, DEMO_CUSTOMER_ID, "Morgan Manager", "Manager")
        for slug, label in [  # (lead_line is built in)
            ("budget", "Budget"),
            ("neighborhood", "Neighborhood"),
        ]:
            add_field(db, DEMO_CUSTOMER_ID, slug, label)
    with db.read_session() as session:
        customer = _customer(session, DEMO_CUSTOMER_ID)
    return customer, issue_key(db, DEMO_CUSTOMER_ID, list(ALL_SCOPES), name="demo")
