"""`mega-crm demo`, `db upgrade`, `serve` and `worker`: running the server and the webhook
delivery worker."""

from __future__ import annotations

import logging
from typing import Annotated, Any

import typer

from mega_crm.admin import service as admin
from mega_crm.cli.base import (
    JsonFlag,
    app,
    configure_logging,
    console,
    db_app,
    emit,
    ensure_metrics_dir,
    exit_zero_on_signals,
    fail,
    operator_db,
)
from mega_crm.config import get_settings
from mega_crm.security import ConfigurationError


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
    """Apply pending migrations; say which revision the database went from and to."""
    from mega_crm.migrate import schema_revision

    before = schema_revision(get_settings().resolved_database_url)
    with operator_db() as db:
        after = schema_revision(db.url)
        where = db.engine.url.render_as_string(hide_password=True)
        if before == after:
            console.print(f"Database schema is current (revision {after}; {where})")
        else:
            was = before or "nothing"
            console.print(f"Database schema upgraded from {was} to revision {after} ({where})")


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
    from mega_crm.webhooks.running import run_until_signalled
    from mega_crm.webhooks.worker import DeliveryWorker

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
