"""What every `mega-crm` command shares: the command tree (typer apps), the console, the
operator's database, and how results and errors are printed (--json or for people)."""

from __future__ import annotations

import json
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
    """The server's logging (MEGA_LOG_LEVEL, MEGA_LOG_FORMAT), imported only when needed."""
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
    """Exit 2 with `error: message` on stderr."""
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
    """Print `payload` as one JSON line (--json), or call `human` to print it for people."""
    if as_json:
        sys.stdout.write(json.dumps(payload) + "\n")
    else:
        human()


def parse_id(value: str, what: str) -> uuid.UUID:
    """`value` as a UUID, or exit 2 naming the option or argument `what` it came from."""
    try:
        return admin.parse_uuid(value, what)
    except admin.AdminError as exc:
        fail(str(exc))


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
