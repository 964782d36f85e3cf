"""The `mega-crm` command: serve, worker, db, admin, demo."""

from __future__ import annotations

import json
import logging
import sys
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from mega_crm.admin import service as admin
from mega_crm.config import get_settings
from mega_crm.db import Database
from mega_crm.security import ConfigurationError

app = typer.Typer(
    no_args_is_help=True, add_completion=False, help="MEGA CRM Lead API server and operator tools."
)
admin_app = typer.Typer(no_args_is_help=True, help="Set up customers, keys, stages, owners, fields, limits.")
customers_app = typer.Typer(no_args_is_help=True, help="Customers.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
stages_app = typer.Typer(no_args_is_help=True, help="Pipeline stages.")
owners_app = typer.Typer(no_args_is_help=True, help="Owners (team members).")
fields_app = typer.Typer(no_args_is_help=True, help="Custom field definitions.")
limits_app = typer.Typer(no_args_is_help=True, help="Per-customer rate limits.")
db_app = typer.Typer(no_args_is_help=True, help="Database schema.")
app.add_typer(admin_app, name="admin")
app.add_typer(db_app, name="db")
for sub, name in [
    (customers_app, "customers"), (keys_app, "keys"), (stages_app, "stages"),
    (owners_app, "owners"), (fields_app, "fields"), (limits_app, "limits"),
]:  # fmt: skip
    admin_app.add_typer(sub, name=name)

console = Console()
JsonFlag = Annotated[bool, typer.Option("--json", help="Print exactly one JSON object on stdout.")]
CustomerOpt = Annotated[str, typer.Option("--customer", help="Customer id (UUID).")]


def configure_logging(level: str, log_format: str | None = None) -> None:
    from mega_crm.observability.logging import configure_logging as configure

    configure(level, log_format)


def ensure_metrics_dir() -> bool:
    """Create PROMETHEUS_MULTIPROC_DIR when it is set but missing; -> whether it is set."""
    import os

    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path:
        os.makedirs(path, exist_ok=True)
    return bool(path)


def exit_zero_on_signals() -> None:
    """SIGTERM and SIGINT end the process with status 0 once its graceful stop is done: uvicorn
    (and the worker) stop on either, then re-raise it to the handler found at start, this one."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda _sig, _frame: None)


def fail(message: str) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@contextmanager
def operator_db() -> Iterator[Database]:
    """A migrated database, with operator mistakes turned into one-line errors."""
    settings = get_settings()
    from mega_crm.migrate import upgrade

    try:
        db = Database(
            settings.resolved_database_url,
            timeout=settings.db_timeout_seconds,
            statement_timeout=settings.db_statement_timeout_seconds,
        )
        upgrade(db.url)
    except Exception as exc:  # noqa: BLE001 - the operator needs one line, not a traceback
        fail(f"cannot open the database: {type(exc).__name__}: {str(exc).splitlines()[0]}")
    try:
        yield db
    except admin.AdminError as exc:
        fail(str(exc))
    finally:
        db.dispose()


def emit(as_json: bool, payload: dict[str, Any], human: Callable[[], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        human()


def _uuid(value: str, what: str) -> uuid.UUID:
    try:
        return admin.parse_uuid(value, what)
    except admin.AdminError as exc:
        fail(str(exc))


# --- admin ----------------------------------------------------------------------------------


@customers_app.command("create")
def customers_create(
    name: Annotated[str, typer.Option("--name", help="Customer name.")],
    customer_id: Annotated[str | None, typer.Option("--id", help="Use this UUID as the id.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create a customer with the default pipeline (first stage: new)."""
    cid = _uuid(customer_id, "--id") if customer_id else None
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
    cid = _uuid(customer, "--customer")
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
    kid = _uuid(key_id, "KEY_ID")
    with operator_db() as db:
        key = admin.revoke_key(db, kid)
    emit(as_json, {"id": str(key.id), "revoked": True}, lambda: console.print(f"Revoked key {key.id}"))


@keys_app.command("list")
def keys_list(customer: CustomerOpt, as_json: JsonFlag = False) -> None:
    """List a customer's keys (never their tokens)."""
    cid = _uuid(customer, "--customer")
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


def id_table(*columns: str) -> Table:
    """A table whose first column, `id`, is never cut or wrapped (ids are copied from it); the
    other columns wrap instead, at any terminal width."""
    table = Table(show_lines=False)
    table.add_column("id", no_wrap=True, min_width=36, overflow="ignore")
    for column in columns:
        table.add_column(column, overflow="fold")
    return table


def emit_listing(
    as_json: bool, key: str, rows: list[dict[str, Any]], columns: dict[str, Callable[[dict[str, Any]], str]]
) -> None:
    """Print `rows` (each with an "id") as `{key: rows}` JSON, or as an id_table whose other
    columns are `columns` (header -> the cell's text from a row)."""

    def human() -> None:
        table = id_table(*columns)
        for row in rows:
            table.add_row(row["id"], *(cell(row) for cell in columns.values()))
        console.print(table)

    emit(as_json, {key: rows}, human)


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
    cid = _uuid(customer, "--customer")
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
    cid = _uuid(customer, "--customer")
    with operator_db() as db:
        owners = admin.list_owners(db, cid)
    rows = [{"id": str(o.id), "name": o.name, "role_name": o.role_name} for o in owners]

    emit_listing(
        as_json, "owners", rows, {"name": lambda r: r["name"], "role": lambda r: r["role_name"] or ""}
    )


@fields_app.command("list")
def fields_list(customer: CustomerOpt, as_json: JsonFlag = False) -> None:
    """List a customer's custom field definitions (`lead_line` is built in, never listed)."""
    cid = _uuid(customer, "--customer")
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
    cid = _uuid(customer, "--customer")
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
    cid = _uuid(customer, "--customer")
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
    cid = _uuid(customer, "--customer")
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
    cid = _uuid(customer, "--customer")
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


# --- demo, db, serve ------------------------------------------------------------------------


def local_base_url(host: str, port: int) -> str:
    """The URL a client on this machine reaches `serve --host host --port port` at."""
    if host in ("", "0.0.0.0", "::"):  # every interface: loopback is one of them
        host = "127.0.0.1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


@app.command()
def demo(
    base_url: Annotated[
        str | None,
        typer.Option("--base-url", help="Default: from MEGA_HOST and MEGA_PORT, as `serve` binds."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Create the demo customer (once) and print a fresh all-scopes key with two curl commands."""
    settings = get_settings()
    base_url = (base_url or local_base_url(settings.host, settings.port)).rstrip("/")
    with operator_db() as db:
        customer, issued = admin.ensure_demo(db)
    auth = f'-H "Authorization: Bearer {issued.token}" -H "x-customer-id: {customer.id}"'
    exports = f"export TOKEN={issued.token} CUSTOMER_ID={customer.id}"
    create = (
        f"curl -s -X POST {base_url}/api/agents/crm/leads {auth} -H 'Content-Type: application/json' "
        '-d \'{"contact_name": "Ada Lovelace", "contact_email": "ada@example.com", '
        '"contact_phone": "(206) 555-0123", "custom_fields": {"lead_line": "buyer"}}\''
    )
    listing = f"curl -s '{base_url}/api/agents/crm/leads?include_custom_fields=true' {auth}"
    payload = {**issued.as_dict(), "base_url": base_url, "export": exports}
    payload.update({"curl_create": create, "curl_list": listing})

    def human() -> None:
        console.print(f"Demo customer: [bold]{customer.name}[/] {customer.id}")
        console.print("API key (shown once):")
        typer.echo(issued.token)
        console.print("\nFor the README's examples, set both in your shell:")
        typer.echo(exports)
        console.print("\nCreate a lead:")
        typer.echo(create)
        console.print("\nList leads:")
        typer.echo(listing)

    emit(as_json, payload, human)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply pending migrations."""
    with operator_db() as db:
        console.print(f"Database is up to date ({db.engine.url.render_as_string(hide_password=True)})")


def check_bind_address(host: str, port: int, workers: int) -> None:
    """Exits 2 with a one-line error unless `host`/`port`/`workers` can be served: uvicorn would
    otherwise report "running on :99999" (the kernel never sees that port), exit 3 on --workers 0,
    or print a traceback for a host that is not an address (e.g. bytes that are not UTF-8)."""
    import socket

    if not 1 <= port <= 65535:
        fail(f"--port must be 1-65535, got {port}")
    if workers < 1:
        fail(f"--workers must be at least 1, got {workers}")
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (OSError, UnicodeError) as exc:
        fail(f"--host {host!r} is not an address this machine can listen on ({exc})")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option("--host", help="Default: MEGA_HOST (127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Default: MEGA_PORT (8000).")] = None,
    workers: Annotated[int, typer.Option("--workers", help="Server processes (PostgreSQL only).")] = 1,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Do not deliver webhooks here (run `mega-crm worker`).")
    ] = False,
) -> None:
    """Apply pending migrations and serve the API (with the webhook delivery worker)."""
    import os
    import shutil
    import tempfile

    import uvicorn

    settings = get_settings()
    bind_host, bind_port = host or settings.host, settings.port if port is None else port
    check_bind_address(bind_host, bind_port, workers)
    if no_worker:
        settings = settings.model_copy(update={"webhook_worker_in_process": False})
        os.environ["MEGA_WEBHOOK_WORKER_IN_PROCESS"] = "0"  # for the --workers processes too
    configure_logging(settings.log_level, settings.log_format)
    if workers > 1 and settings.is_sqlite:
        fail("--workers > 1 needs PostgreSQL (set MEGA_DATABASE_URL); SQLite serves from one process")
    metrics_dir = None
    if not ensure_metrics_dir() and workers > 1 and settings.metrics_enabled:
        # Each process writes its samples here; /metrics (in any of them) adds them up.
        metrics_dir = tempfile.mkdtemp(prefix="mega-crm-metrics-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    with operator_db():
        pass
    try:
        from mega_crm.app import create_app

        if workers == 1:
            application: Any = create_app(settings)
        else:
            create_app(settings)  # fail fast on bad configuration before forking
            application = "mega_crm.asgi:app"
    except ConfigurationError as exc:
        fail(str(exc))
    from mega_crm.api.connections import raise_fd_limit, uvicorn_options
    from mega_crm.observability.logging import UVICORN_LOG_CONFIG

    raise_fd_limit()  # before uvicorn_options(), which sizes the backlog from it
    exit_zero_on_signals()
    try:
        uvicorn.run(
            application,
            host=bind_host,
            port=bind_port,
            workers=workers,
            log_level=settings.log_level.lower(),
            log_config=UVICORN_LOG_CONFIG,
            access_log=False,  # the request line of mega_crm.observability replaces it
            proxy_headers=bool(settings.forwarded_allow_ips),
            forwarded_allow_ips=settings.forwarded_allow_ips,
            **uvicorn_options(),  # header timeout, connection cap (mega_crm.api.connections)
        )
    finally:
        if metrics_dir:
            shutil.rmtree(metrics_dir, ignore_errors=True)


@app.command()
def worker(
    concurrency: Annotated[
        int | None, typer.Option("--concurrency", help="Attempts in flight at once.")
    ] = None,
) -> None:
    """Deliver webhooks until SIGTERM (any number of these may run against one PostgreSQL)."""
    import asyncio

    from mega_crm.security import load_secret_key
    from mega_crm.webhooks.worker import DeliveryWorker, run_until_signalled

    settings = get_settings()
    ensure_metrics_dir()
    if concurrency is not None:
        settings = settings.model_copy(update={"webhook_worker_concurrency": concurrency})
    configure_logging(settings.log_level, settings.log_format)
    try:
        key = load_secret_key(settings)
    except ConfigurationError as exc:
        fail(str(exc))
    if settings.webhook_allow_private_targets:
        logging.getLogger("mega_crm").warning(
            "MEGA_WEBHOOK_ALLOW_PRIVATE_TARGETS is set: webhooks may target http:// and private "
            "addresses. For development and tests only; never in production."
        )
    with operator_db() as db:
        exit_zero_on_signals()
        asyncio.run(run_until_signalled(DeliveryWorker(db, settings, key)))
    from mega_crm.observability.metrics import process_exited

    process_exited()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
