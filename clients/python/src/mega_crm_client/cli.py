"""The `mega-crm-client` command (needs the `[cli]` extra): import, export, listen.

Connection options default to MEGA_API_URL, MEGA_TOKEN and MEGA_CUSTOMER_ID. Exit status: 0 done,
1 the API refused (the error is printed), 2 bad usage or input, 130 interrupted (resume with
`--resume`).
"""

from __future__ import annotations

import csv
import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Annotated, Any, NoReturn

try:
    import typer
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    from rich.table import Table
except ImportError as exc:  # pragma: no cover - depends on the install
    raise SystemExit("mega-crm-client's CLI needs its extras: pip install 'mega-crm-client[cli]'") from exc

import httpx

from mega_crm_client import MegaClient, __version__
from mega_crm_client._exceptions import APIConnectionError, APIError
from mega_crm_client._retry import RetryEvent
from mega_crm_client.csv_import import CsvImport, CsvImportError, export_csv
from mega_crm_client.webhooks import (
    DELIVERY_HEADER,
    STANDARD_ID_HEADER,
    LeadUpdatedEvent,
    WebhookEvent,
    WebhookTestEvent,
    parse_event,
    verify_any,
)

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="MEGA CRM Lead API client: import and export CSV, receive webhooks locally.",
)
console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

ApiUrl = Annotated[
    str | None, typer.Option("--api-url", envvar="MEGA_API_URL", help="e.g. http://127.0.0.1:8000")
]
Token = Annotated[str | None, typer.Option("--token", envvar="MEGA_TOKEN", help="API key (mega_…).")]
CustomerId = Annotated[str | None, typer.Option("--customer-id", envvar="MEGA_CUSTOMER_ID")]


def fail(message: str, code: int = 2) -> NoReturn:
    console.print(f"[red]error:[/] {message}")
    raise typer.Exit(code)


@contextmanager
def api_errors() -> Iterator[None]:
    try:
        yield
    except APIError as exc:
        fail(str(exc), 1)
    except APIConnectionError as exc:
        fail(f"cannot reach the API: {exc}", 1)


def make_client(api_url: str | None, token: str | None, customer_id: str | None, **kwargs: Any) -> MegaClient:
    try:
        return MegaClient(api_url, token, customer_id, **kwargs)
    except ValueError as exc:
        fail(str(exc))


def parse_maps(maps: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in maps:
        column, sep, target = item.partition("=")
        if not sep or not column.strip():
            fail(f"--map takes COLUMN=FIELD, got {item!r}")
        pairs[column] = target
    return pairs


# --- import ---------------------------------------------------------------------------------------


class RetryDisplay:
    """Shows the client's waits (a 429's Retry-After, a 5xx backoff) in the progress line."""

    def __init__(self) -> None:
        self.progress: Progress | None = None
        self.task: Any = None

    def __call__(self, event: RetryEvent) -> None:
        note = f"waiting {event.delay:.1f}s ({event.reason})"
        if self.progress is not None:
            self.progress.update(self.task, note=note)
        else:
            console.print(f"[yellow]{note}[/]")


@app.command("import")
def import_csv(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The CSV file.")],
    map_: Annotated[
        list[str] | None,
        typer.Option(
            "--map",
            help="COLUMN=FIELD (contact_name, contact_email, contact_phone, first_name, "
            "last_name, stage_slug, lead_line, owner_id, source_platform, source_type, a custom "
            "field slug, or - to skip the column); repeat.",
        ),
    ] = None,  # fmt: skip
    on_duplicate: Annotated[str, typer.Option("--on-duplicate", help="update | skip")] = "update",
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Preview the first chunk and stop.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Go on with an interrupted import.")] = False,
    results: Annotated[
        Path | None, typer.Option("--results", help="Results CSV (default FILE.results.csv).")
    ] = None,
    api_url: ApiUrl = None,
    token: Token = None,
    customer_id: CustomerId = None,
) -> None:
    """Import leads from a CSV file (500 rows a request, de-duplicated by the server)."""
    if on_duplicate not in ("update", "skip"):
        fail("--on-duplicate must be update or skip")
    retry_display = RetryDisplay()
    # Many retries: a bulk budget of 10/minute makes a long import wait for its window often.
    client = make_client(api_url, token, customer_id, max_retries=50, on_retry=retry_display)
    with client, api_errors():
        try:
            job = CsvImport(
                client,
                file,
                results_path=results,
                overrides=parse_maps(map_ or []),
                on_duplicate="skip" if on_duplicate == "skip" else "update",
            )
        except (ValueError, CsvImportError, csv.Error) as exc:
            fail(str(exc))
        fmt = job.format
        delimiter = {"\t": "tab"}.get(fmt.delimiter, repr(fmt.delimiter))
        console.print(f"[bold]{file}[/]: encoding {fmt.encoding}, delimiter {delimiter}")
        if not resume:
            try:
                if not dry_run:
                    job.refuse_if_interrupted()
                preview = job.preview()
            except (CsvImportError, csv.Error) as exc:
                fail(str(exc))
            show_mapping(job)
            show_preview(preview)
            if dry_run:
                console.print("Dry run: nothing was written.")
                return
        elif dry_run:
            fail("--dry-run and --resume do not go together")
        columns = (
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} rows/s"),
            TimeRemainingColumn(),
            TextColumn("[yellow]{task.fields[note]}"),
        )
        started = time.monotonic()
        try:
            with Progress(*columns, console=console, transient=False) as progress:
                task = progress.add_task("importing", total=None, rate="-", note="")
                retry_display.progress, retry_display.task = progress, task
                # Counted beside the import (a pass over the file), not before it.
                threading.Thread(
                    target=lambda: progress.update(task, total=job.count_records()), daemon=True
                ).start()
                first_done: list[int] = []

                def on_chunk(report: Any) -> None:
                    if not first_done:
                        first_done.append(report.rows_done - report.chunk_rows)
                    elapsed = max(time.monotonic() - started, 1e-6)
                    rate = (report.rows_done - first_done[0]) / elapsed
                    progress.update(task, completed=report.rows_done, rate=f"{rate:,.0f}", note="")

                state = job.run(resume=resume, on_chunk=on_chunk)
        except (CsvImportError, csv.Error) as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            console.print(
                f"[yellow]interrupted[/]: run again with --resume (results so far in {job.results_path})"
            )
            raise typer.Exit(130) from None
        s = state.summary
        elapsed = time.monotonic() - started
        failed_style = "red" if s["failed"] else "default"
        console.print(
            f"{state.rows_done:,} rows in {elapsed:.1f}s: {s['created']:,} created, "
            f"{s['updated']:,} updated, {s['skipped']:,} skipped, [{failed_style}]{s['failed']:,} failed[/]"
        )
        console.print(f"Results: {job.results_path}")
        sys.stdout.write(json.dumps({"rows": state.rows_done, **s, "results": str(job.results_path)}) + "\n")


def show_mapping(job: CsvImport) -> None:
    table = Table("column", "field", title="Column mapping")
    for column, target in job.mapping.describe():
        table.add_row(column, target)
    console.print(table)
    if job.mapping.unmapped:
        console.print(
            "Not imported (unknown columns; map one with --map COLUMN=FIELD): "
            + ", ".join(repr(c) for c in job.mapping.unmapped)
        )


def show_preview(body: dict[str, Any]) -> None:
    s = body["summary"]
    console.print(
        f"Dry run of the first {s['total']} rows: {s['created']} would be created, {s['updated']} updated, "
        f"{s['skipped']} skipped, {s['failed']} failed"
    )
    failures = [r for r in body["results"] if r["status"] == "failed"][:10]
    if failures:
        table = Table("line", "errors", title="Rows that would fail")
        for r in failures:
            table.add_row(str(r["row_ref"]), "; ".join(r.get("errors") or []))
        console.print(table)


# --- export ---------------------------------------------------------------------------------------


@app.command("export")
def export(
    file: Annotated[Path, typer.Argument(dir_okay=False, help="Where to write the CSV ('-' for stdout).")],
    status: Annotated[str | None, typer.Option("--status")] = None,
    stage_id: Annotated[str | None, typer.Option("--stage-id")] = None,
    search: Annotated[str | None, typer.Option("--search")] = None,
    lead_line: Annotated[str | None, typer.Option("--lead-line")] = None,
    created_since: Annotated[str | None, typer.Option("--created-since", help="ISO-8601")] = None,
    updated_since: Annotated[str | None, typer.Option("--updated-since", help="ISO-8601")] = None,
    api_url: ApiUrl = None,
    token: Token = None,
    customer_id: CustomerId = None,
) -> None:
    """Export every matching lead to CSV (streamed page by page)."""
    filters = {
        "status": status, "stage_id": stage_id, "search": search, "lead_line": lead_line,
        "created_since": created_since, "updated_since": updated_since,
    }  # fmt: skip
    client = make_client(api_url, token, customer_id)
    with client, api_errors(), Progress(console=console) as progress:
        task = progress.add_task("exporting", total=None)

        def on_page(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        if str(file) == "-":
            written = export_csv(client, sys.stdout, on_page=on_page, **filters)
        else:
            with file.open("w", encoding="utf-8", newline="") as f:
                written = export_csv(client, f, on_page=on_page, **filters)
    console.print(f"{written:,} leads exported to {file}")


# --- listen ---------------------------------------------------------------------------------------


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_event(event: WebhookEvent) -> str:
    """One line for a delivery's event: the type, the lead (id and contact details), and for
    lead.updated each changed field as `name: before → after`."""
    lead = event.lead
    who = " ".join(str(v) for v in (lead.get("contact_name"), lead.get("contact_email"),
                                     lead.get("contact_phone")) if v)  # fmt: skip
    if isinstance(event, WebhookTestEvent):
        return f"webhook.test (example lead {lead['id']} {who})"
    line = f"{event.event} lead {lead['id']} {who}".rstrip()
    if isinstance(event, LeadUpdatedEvent):
        after: dict[str, Any] = dict(lead)
        before: dict[str, Any] = dict(event.previous)
        changes = [
            f"{name}: {_short(before.get(name))} → {_short(after.get(name))}" for name in event.changed_fields
        ]
        line += " | changed " + "; ".join(changes)
    return line


class Receiver(BaseHTTPRequestHandler):
    """Verifies each delivery with any of the secrets (X-Mega-Signature or Standard Webhooks'
    webhook-signature), prints it, answers (or forwards it)."""

    secrets: list[str] = []
    forward_to: str | None = None
    tolerance: float | None = 300
    seen: set[str] = set()
    lock = threading.Lock()
    server_version = f"mega-crm-client-listen/{__version__}"

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length)
        headers = {k: v for k, v in self.headers.items()}
        delivery = escape(self.headers.get(DELIVERY_HEADER) or self.headers.get(STANDARD_ID_HEADER) or "?")
        stamp = time.strftime("%H:%M:%S")
        schemes = sorted({name for s in self.secrets for name in verify_any(s, headers, raw, self.tolerance)})
        if not schemes:
            out.print(f"{stamp} [red]✗ bad signature[/] delivery {delivery} ({len(raw)} bytes): answered 400")
            self._answer(400, {"error": "signature does not verify"})
            return
        with self.lock:
            repeat = delivery in self.seen
            self.seen.add(delivery)
        try:
            summary = describe_event(parse_event(raw))
        except ValueError as exc:
            summary = f"unparsed body: {exc}"
        note = " [yellow](repeat)[/]" if repeat else ""
        status = 200
        if self.forward_to:
            status = self._forward(raw)
            note += f" → {self.forward_to} answered {status}"
        # The body's text is the sender's: printed as text, never as rich markup.
        line = f"delivery {delivery}{note}: {escape(summary)}"
        out.print(f"{stamp} [green]✓ verified[/] ({', '.join(schemes)}) {line}")
        self._answer(status, {"received": True})

    def _forward(self, raw: bytes) -> int:
        assert self.forward_to is not None
        keep = {
            k: v
            for k, v in self.headers.items()
            if k.lower().startswith(("x-mega-", "webhook-")) or k.lower() == "content-type"
        }
        try:
            return httpx.post(self.forward_to, content=raw, headers=keep, timeout=30).status_code
        except httpx.HTTPError as exc:
            out.print(f"[red]forward failed[/]: {type(exc).__name__}: {exc}")
            return 502

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server's signature
        pass  # each delivery is printed by do_POST


@app.command()
def listen(
    port: Annotated[int, typer.Option("--port", help="Port to listen on.")] = 9000,
    secret: Annotated[
        list[str] | None,
        typer.Option(
            "--secret",
            envvar="MEGA_WEBHOOK_SECRET",
            help="Signing secret (mega_whsec_…); repeat for several (e.g. around a rotation). "
            "Deliveries verify by X-Mega-Signature or by the Standard Webhooks headers.",
        ),
    ] = None,  # fmt: skip
    forward_to: Annotated[
        str | None,
        typer.Option("--forward-to", help="Also POST each verified delivery here; its status is the answer."),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind.")] = "127.0.0.1",
    tolerance: Annotated[float, typer.Option("--tolerance", help="Largest timestamp age, seconds.")] = 300,
) -> None:
    """Receive webhook deliveries locally: verify (either signature scheme), print, answer 200
    (like `stripe listen`)."""
    if not secret:
        fail("--secret is required (the mega_whsec_… shown when the webhook was created)")
    handler = type("BoundReceiver", (Receiver,), {
        "secrets": list(secret), "forward_to": forward_to, "tolerance": tolerance, "seen": set(),
    })  # fmt: skip
    server = ThreadingHTTPServer((host, port), handler)
    console.print(f"Listening on http://{host}:{server.server_port}/ (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
