"""`mega-crm admin`: customers, keys, stages, owners, custom fields and rate limits, through the
same services as the API (mega_crm.admin.service)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from mega_crm.admin import service as admin
from mega_crm.cli.base import (
    CustomerOpt,
    JsonFlag,
    console,
    customers_app,
    emit,
    emit_listing,
    fields_app,
    keys_app,
    limits_app,
    operator_db,
    owners_app,
    parse_id,
    stages_app,
)


@customers_app.command("create")
def customers_create(
    name: Annotated[str, typer.Option("--name", help="Customer name.")],
    customer_id: Annotated[str | None, typer.Option("--id", help="Use this UUID as the id.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a customer with the default pipeline (first stage: new)."""
    cid = parse_id(customer_id, "--id") if customer_id else None
    with operator_db() as db:
        customer = admin.create_customer(db, name, cid)
    payload = {"id": str(customer.id), "name": customer.name}
    emit(as_json, payload, lambda: console.print(f"Created customer [bold]{customer.name}[/] {customer.id}"))


@keys_app.command("issue")
def keys_issue(
    customer: CustomerOpt,
    scope: Annotated[list[str], typer.Option("--scope", help="A scope; repeat for several.")],
    name: Annotated[str | None, typer.Option("--name", help="A label for the key.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Issue a key. The token is shown once; only its hash is stored."""
    cid = parse_id(customer, "--customer")
    with operator_db() as db:
        issued = admin.issue_key(db, cid, scope, name)

    def human() -> None:
        console.print(f"Key {issued.id} for customer {issued.customer_id} ({', '.join(issued.scopes)})")
        console.print("Token (shown once, store it now):")
        typer.echo(issued.token)

    emit(as_json, issued.as_dict(), human)


@keys_app.command("revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="Key id (UUID).")], as_json: JsonFlag = False
) -> None:
    """Revoke a key; it stops working on the next request."""
    kid = parse_id(key_id, "KEY_ID")
    with operator_db() as db:
        key = admin.revoke_key(db, kid)
    emit(as_json, {"id": str(key.id), "revoked": True}, lambda: console.print(f"Revoked key {key.id}"))


@keys_app.command("list")
def keys_list(customer: CustomerOpt, as_json: JsonFlag = False) -> None:
    """List a customer's keys (never their tokens)."""
    cid = parse_id(customer, "--customer")
    with operator_db() as db:
        keys = admin.list_keys(db, cid)
    rows: list[dict[str, Any]] = [
        {
            "id": str(k.id),
            "name": k.name,
            "hint": k.token_hint + "…",
            "scopes": k.scopes,
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in keys
    ]

    emit_listing(
        as_json,
        "keys",
        rows,
        {
            "name": lambda r: r["name"] or "",
            "token": lambda r: r["hint"],
            "scopes": lambda r: " ".join(r["scopes"]),
            "revoked": lambda r: r["revoked_at"] or "",
        },
    )


@customers_app.command("list")
def customers_list(as_json: JsonFlag = False) -> None:
    """List every customer."""
    with operator_db() as db:
        customers = admin.list_customers(db)
    rows = [
        {
            "id": str(c.id),
            "name": c.name,
            "created_at": c.created_at.isoformat(),
            "rate_limit_default": c.rate_limit_default,
            "rate_limit_bulk": c.rate_limit_bulk,
        }
        for c in customers
    ]

    emit_listing(
        as_json,
        "customers",
        rows,
        {
            "name": lambda r: r["name"],
            "created": lambda r: r["created_at"],
            "limits (default / bulk)": lambda r: (
                f"{r['rate_limit_default'] or 'server'} / {r['rate_limit_bulk'] or 'server'}"
            ),
        },
    )


@stages_app.command("list")
def stages_list(customer: CustomerOpt, as_json: JsonFlag = False) -> None:
    """List a customer's pipeline stages, in order (the first is where new leads go)."""
    cid = parse_id(customer, "--customer")
    with operator_db() as db:
        stages = admin.list_stages(db, cid)
    rows: list[dict[str, Any]] = [
        {"id": str(st.id), "slug": st.slug, "name": st.name, "color": st.color, "position": st.position}
        for st in stages
    ]

    emit_listing(
        as_json,
        "stages",
        rows,
        {
            "position": lambda r: str(r["position"]),
            "slug": lambda r: r["slug"],
            "name": lambda r: r["name"],
            "color": lambda r: r["color"] or "",
        },
    )


@owners_app.command("list")
def owners_list(customer: CustomerOpt, as_json: JsonFlag = False) -> None:
    """List a customer's owners (team members)."""
    cid = parse_id(customer, "--customer")
    with operator_db() as db:
        owners = admin.list_owners(db, cid)
    rows = [{"id": str(o.id), "name": o.name, "role_name": o.role_name} for o in owners]

    emit_listing(
        as_json, "owners", rows, {"name": lambda r: r["name"], "role": lambda r: r["role_name"] or ""}
    )


@fields_app.command("list")
def fields_list(customer: CustomerOpt, as_json: JsonFlag = False) -> None:
    """List a customer's custom field definitions (`lead_line` is built in, never listed)."""
    cid = parse_id(customer, "--customer")
    with operator_db() as db:
        fields = admin.list_fields(db, cid)
    rows = [{"id": str(f.id), "slug": f.slug, "label": f.label} for f in fields]

    emit_listing(as_json, "fields", rows, {"slug": lambda r: r["slug"], "label": lambda r: r["label"] or ""})


@stages_app.command("add")
def stages_add(
    customer: CustomerOpt,
    slug: Annotated[str, typer.Option("--slug")],
    name: Annotated[str, typer.Option("--name")],
    color: Annotated[str | None, typer.Option("--color")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Append a stage to the customer's pipeline."""
    cid = parse_id(customer, "--customer")
    with operator_db() as db:
        stage = admin.add_stage(db, cid, slug, name, color)
    payload = {"id": str(stage.id), "slug": stage.slug, "name": stage.name, "color": stage.color}
    emit(as_json, payload, lambda: console.print(f"Added stage {stage.slug} ({stage.id})"))


@owners_app.command("add")
def owners_add(
    customer: CustomerOpt,
    name: Annotated[str, typer.Option("--name")],
    role: Annotated[str | None, typer.Option("--role")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Add a team member who can own leads."""
    cid = parse_id(customer, "--customer")
    with operator_db() as db:
        owner = admin.add_owner(db, cid, name, role)
    payload = {"id": str(owner.id), "name": owner.name, "role_name": owner.role_name}
    emit(as_json, payload, lambda: console.print(f"Added owner {owner.name} ({owner.id})"))


@fields_app.command("add")
def fields_add(
    customer: CustomerOpt,
    slug: Annotated[str, typer.Option("--slug")],
    label: Annotated[str | None, typer.Option("--label")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Define a custom field slug for the customer."""
    cid = parse_id(customer, "--customer")
    with operator_db() as db:
        field = admin.add_field(db, cid, slug, label)
    payload = {"id": str(field.id), "slug": field.slug, "label": field.label}
    emit(as_json, payload, lambda: console.print(f"Added custom field {field.slug} ({field.id})"))


@limits_app.command("set")
def limits_set(
    customer: CustomerOpt,
    default: Annotated[
        str | None, typer.Option("--default", help='e.g. "60/minute;1000/hour"; "" resets.')
    ] = None,
    bulk: Annotated[str | None, typer.Option("--bulk", help='e.g. "10/minute"; "" resets.')] = None,
    as_json: JsonFlag = False,
) -> None:
    """Override the customer's rate limits."""
    cid = parse_id(customer, "--customer")
    with operator_db() as db:
        c = admin.set_limits(db, cid, default, bulk)
    payload = {"customer_id": str(c.id), "default": c.rate_limit_default, "bulk": c.rate_limit_bulk}
    emit(
        as_json,
        payload,
        lambda: console.print(
            f"Limits for {c.id}: default={c.rate_limit_default or 'server default'} "
            f"bulk={c.rate_limit_bulk or 'server default'}"
        ),
    )
