"""CSV import and export on top of the client (standard library only; the CLI adds the display).

Import: `detect_format` (encoding, delimiter), `map_headers` (columns -> lead fields), then
`CsvImport.run`, which sends the rows in chunks of 500 and records each chunk's results in a
results CSV and a state file beside it, so that an interrupted import resumes where it stopped:

* every chunk's Idempotency-Key is `csv-<run id>-<chunk index>`, the run id chosen when the
  import starts and kept in the state file; a chunk whose answer was lost is sent again with the
  same key and the server replays its stored answer instead of writing it twice;
* the state file (`<results>.state.json`) is replaced atomically after the chunk's result rows are
  on disk; on resume the results CSV is cut back to the length recorded there (dropping a chunk
  written only in part) and the import goes on from the next chunk.

Keys are remembered by the server for MEGA_IDEMPOTENCY_TTL_HOURS (default 24): resume within that.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import itertools
import json
import os
import queue
import re
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from mega_crm_client._client import API_PREFIX, BULK_CHUNK_SIZE, MegaClient, _bulk_call, _Call
from mega_crm_client._exceptions import ConflictError
from mega_crm_client._types import Lead, OnDuplicate

# --- reading ----------------------------------------------------------------------------------

DELIMITERS = ",;\t|"
SNIFF_BYTES = 64 * 1024


@dataclass(frozen=True)
class CsvFormat:
    """How a file is written: `encoding` (a Python codec name: utf-8-sig, utf-8 or cp1252/latin-1)
    and `delimiter`."""

    encoding: str
    delimiter: str


def detect_encoding(path: Path) -> str:
    """utf-8-sig when the file starts with a UTF-8 BOM, utf-8 when all of it decodes as UTF-8,
    else cp1252 (Windows-1252, Excel's default), or latin-1 when a byte is undefined in cp1252."""
    with path.open("rb") as f:
        head = f.read(3)
        if head == codecs.BOM_UTF8:
            return "utf-8-sig"
        f.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8")()
        try:
            while block := f.read(1 << 20):
                decoder.decode(block)
            decoder.decode(b"", final=True)
            return "utf-8"
        except UnicodeDecodeError:
            pass
        f.seek(0)
        try:
            while block := f.read(1 << 20):
                block.decode("cp1252")
            return "cp1252"
        except UnicodeDecodeError:
            return "latin-1"


def detect_delimiter(sample: str) -> str:
    """The delimiter of a CSV sample: among , ; tab |, the one that splits the header into two or
    more fields and the most of the following records into as many; ties go to more fields.
    A single-column file, or one no candidate splits, is taken as comma-separated."""
    best, best_score = ",", (-1, 0)
    for delimiter in DELIMITERS:
        reader = csv.reader(io.StringIO(sample), delimiter=delimiter)
        records = [r for r in itertools.islice(reader, 100) if any(v.strip() for v in r)]
        if not records or len(records[0]) < 2:
            continue
        width = len(records[0])
        score = (sum(1 for r in records[1:] if len(r) == width), width)
        if score > best_score:
            best, best_score = delimiter, score
    return best


def detect_format(path: str | os.PathLike[str]) -> CsvFormat:
    """Encoding and delimiter of the CSV at `path`."""
    path = Path(path)
    encoding = detect_encoding(path)
    with path.open(encoding=encoding, newline="") as f:
        sample = f.read(SNIFF_BYTES)
    # Sniff whole lines only: a cut-off last line misleads the sniffer.
    if len(sample) == SNIFF_BYTES and "\n" in sample:
        sample = sample[: sample.rfind("\n")]
    return CsvFormat(encoding, detect_delimiter(sample))


@dataclass(frozen=True)
class CsvRow:
    """One non-blank record: the file line it starts on (1 = the header) and its values."""

    line: int
    values: list[str]


def read_rows(f: IO[str], delimiter: str) -> tuple[list[str], Iterator[CsvRow]]:
    """(header, the records after it). Blank lines and records with only empty values are skipped;
    a quoted value may span lines (the record's line is the one it starts on)."""
    reader = csv.reader(f, delimiter=delimiter)
    header = next(reader, [])
    while header and not any(v.strip() for v in header):
        header = next(reader, [])

    def records() -> Iterator[CsvRow]:
        previous_end = reader.line_num
        for values in reader:
            start = previous_end + 1
            previous_end = reader.line_num
            if any(v.strip() for v in values):
                yield CsvRow(start, values)

    return header, records()


# --- mapping headers to lead fields ---------------------------------------------------------

LEAD_FIELDS = (
    "contact_name", "contact_email", "contact_phone", "first_name", "last_name", "stage_slug",
    "source_platform", "source_type", "owner_id", "lead_line",
)  # fmt: skip
IGNORE = "-"
CUSTOM_PREFIX = "custom:"

# Normalised header (lower case, runs of other characters as "_") -> field.
SYNONYMS: dict[str, str] = {
    **dict.fromkeys(
        ["name", "full_name", "fullname", "contact_name", "contact", "client_name", "customer_name",
         "lead_name"], "contact_name"),
    **dict.fromkeys(["first_name", "firstname", "first", "given_name", "forename"], "first_name"),
    **dict.fromkeys(["last_name", "lastname", "last", "surname", "family_name"], "last_name"),
    **dict.fromkeys(
        ["email", "e_mail", "email_address", "e_mail_address", "mail", "contact_email"], "contact_email"),
    **dict.fromkeys(
        ["phone", "phone_number", "mobile", "mobile_phone", "mobile_number", "tel", "telephone", "cell",
         "cell_phone", "contact_phone", "phone_no"], "contact_phone"),
    **dict.fromkeys(["stage", "stage_slug", "pipeline_stage"], "stage_slug"),
    **dict.fromkeys(["source_platform", "platform"], "source_platform"),
    **dict.fromkeys(["source_type"], "source_type"),
    **dict.fromkeys(["owner_id"], "owner_id"),
    **dict.fromkeys(["lead_line", "line"], "lead_line"),
}  # fmt: skip


def slugify(header: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", header.strip().lower()).strip("_")


@dataclass
class ColumnMap:
    """Which column feeds which field: `fields` maps a column index to a lead field (one of
    LEAD_FIELDS) or `custom:<slug>`; `unmapped` lists the columns sent nowhere."""

    header: list[str]
    fields: dict[int, str]
    unmapped: list[str] = field(default_factory=list)

    def custom_slugs(self) -> list[str]:
        return [f.removeprefix(CUSTOM_PREFIX) for f in self.fields.values() if f.startswith(CUSTOM_PREFIX)]

    def drop_custom(self, slugs: Sequence[str]) -> None:
        """Stop sending custom fields the server does not know (they become unmapped)."""
        for index, target in list(self.fields.items()):
            if target.startswith(CUSTOM_PREFIX) and target.removeprefix(CUSTOM_PREFIX) in slugs:
                del self.fields[index]
                self.unmapped.append(self.header[index])

    def describe(self) -> list[tuple[str, str]]:
        return [(self.header[i], target) for i, target in sorted(self.fields.items())]


def map_headers(header: Sequence[str], overrides: Mapping[str, str] | None = None) -> ColumnMap:
    """Map CSV columns to lead fields by their names (SYNONYMS); other columns are tried as custom
    field slugs (`custom:<slug>`, kept only if the server knows the slug: see `CsvImport.preview`).

    `overrides` maps a column name (as in the header, or its slug) to a field: one of LEAD_FIELDS,
    `custom:<slug>`, a bare slug (taken as a custom field), or "-"/"" to ignore the column.
    ValueError for an override naming no column.
    """
    overrides = dict(overrides or {})
    by_name = {name.strip(): i for i, name in enumerate(header)}
    by_slug = {slugify(name): i for i, name in enumerate(header)}
    chosen: dict[int, str] = {}
    for column, target in overrides.items():
        index = by_name.get(column.strip(), by_slug.get(slugify(column)))
        if index is None:
            raise ValueError(f"--map {column}={target}: no column {column!r} in the header")
        target = target.strip()
        if target in ("", IGNORE):
            chosen[index] = IGNORE
        elif target in LEAD_FIELDS or target.startswith(CUSTOM_PREFIX):
            chosen[index] = target
        else:
            chosen[index] = CUSTOM_PREFIX + slugify(target)
    targets = [t for t in chosen.values() if t != IGNORE]
    if len(targets) != len(set(targets)):
        raise ValueError("--map: two columns are mapped to the same field")
    taken = set(targets)
    fields: dict[int, str] = {}
    unmapped: list[str] = []
    for index, name in enumerate(header):
        slug = slugify(name)
        if index in chosen:
            target = chosen[index]
        elif slug in SYNONYMS:  # a second column for a field already fed is listed, not sent
            target = SYNONYMS[slug] if SYNONYMS[slug] not in taken else IGNORE
        elif slug and CUSTOM_PREFIX + slug not in taken:
            target = CUSTOM_PREFIX + slug
        else:  # no name, or a second column for the same field: listed, not guessed
            target = IGNORE
        if target == IGNORE:
            unmapped.append(name)
            continue
        taken.add(target)
        fields[index] = target
    return ColumnMap(list(header), fields, unmapped)


def row_to_lead(row: CsvRow, mapping: ColumnMap) -> dict[str, Any]:
    """The bulk row for a CSV record: mapped non-empty values, first + last name joined when there
    is no name column, custom fields under `custom_fields`, `row_ref` = the record's line."""
    lead: dict[str, Any] = {"row_ref": str(row.line)}
    custom: dict[str, Any] = {}
    first = last = ""
    values = row.values
    for index, target in mapping.fields.items():
        if index >= len(values):
            continue
        value = values[index].strip()
        if not value:
            continue
        if target.startswith(CUSTOM_PREFIX):
            custom[target[len(CUSTOM_PREFIX) :]] = value
        elif target == "first_name":
            first = value
        elif target == "last_name":
            last = value
        else:
            lead[target] = value
    if "contact_name" not in lead and (first or last):
        lead["contact_name"] = f"{first} {last}".strip()
    if custom:
        lead["custom_fields"] = custom
    return lead


# --- importing ----------------------------------------------------------------------------------

RESULT_COLUMNS = ["line", "status", "lead_id", "matched_by", "errors"]
IN_PROGRESS_WAIT_SECONDS = 45.0  # the server frees a dead request's key after 30 s


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@dataclass
class ImportState:
    """What `<results>.state.json` holds between chunks."""

    source_sha256: str
    encoding: str
    delimiter: str
    fields: dict[str, str]  # column index (as text: JSON keys) -> field
    on_duplicate: str
    run_id: str
    chunks_done: int = 0
    rows_done: int = 0
    results_bytes: int = 0
    summary: dict[str, int] = field(
        default_factory=lambda: {"created": 0, "updated": 0, "skipped": 0, "failed": 0}
    )
    finished: bool = False

    def save(self, path: Path) -> None:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(asdict(self), f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> ImportState:
        return cls(**json.loads(path.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class ChunkReport:
    """After each chunk is recorded: rows done so far, the chunk's rows and its summary counts."""

    rows_done: int
    chunk_rows: int
    summary: dict[str, int]


class CsvImportError(Exception):
    """A problem with the file or the state of an import (shown to the user as is)."""


class CsvImport:
    """One CSV file's import into the API through `client`.

    `results_path` defaults to `<file>.results.csv`; the state file is `<results>.state.json`.
    """

    def __init__(
        self,
        client: MegaClient,
        path: str | os.PathLike[str],
        *,
        results_path: str | os.PathLike[str] | None = None,
        overrides: Mapping[str, str] | None = None,
        on_duplicate: OnDuplicate = "update",
        chunk_size: int = BULK_CHUNK_SIZE,
    ) -> None:
        self.client = client
        self.path = Path(path)
        self.results_path = Path(results_path) if results_path else self.path.with_suffix(".results.csv")
        self.state_path = self.results_path.with_name(self.results_path.name + ".state.json")
        self.on_duplicate: OnDuplicate = on_duplicate
        self.chunk_size = chunk_size
        self.format = detect_format(self.path)
        with self._open() as f:
            header, _ = read_rows(f, self.format.delimiter)
        if not header:
            raise CsvImportError(f"{self.path} has no header line")
        self.mapping = map_headers(header, overrides)

    def check_mapping(self) -> None:
        """CsvImportError unless some column feeds a name, an email or a phone (a lead needs one)."""
        contact = {"contact_name", "contact_email", "contact_phone", "first_name", "last_name"}
        if not set(self.mapping.fields.values()) & contact:
            raise CsvImportError(
                "no column maps to a name, email or phone; use --map COLUMN=contact_email (etc.)"
            )

    def _open(self) -> IO[str]:
        return self.path.open(encoding=self.format.encoding, newline="")

    def leads(self, f: IO[str]) -> Iterator[tuple[CsvRow, dict[str, Any]]]:
        _, records = read_rows(f, self.format.delimiter)
        for row in records:
            yield row, row_to_lead(row, self.mapping)

    def chunks(self, f: IO[str]) -> Iterator[list[tuple[CsvRow, dict[str, Any]]]]:
        chunk: list[tuple[CsvRow, dict[str, Any]]] = []
        for item in self.leads(f):
            chunk.append(item)
            if len(chunk) == self.chunk_size:
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    def count_records(self) -> int:
        """How many records (non-blank rows after the header) the file has."""
        with self._open() as f:
            _, records = read_rows(f, self.format.delimiter)
            return sum(1 for _ in records)

    def preview(self) -> dict[str, Any]:
        """A dry run of the first chunk: the server's answer (nothing is written). Custom-field
        columns whose slug the server does not know are dropped from the mapping (listed in
        `mapping.unmapped`), so the import sends only fields that land somewhere."""
        self.check_mapping()
        with self._open() as f:
            first = next(self.chunks(f), [])
        if not first:
            raise CsvImportError(f"{self.path} has no data rows")
        leads = [lead for _, lead in first]
        # A custom column empty in every previewed row would go unchecked: probe its slug too.
        present = {slug for lead in leads for slug in lead.get("custom_fields", {})}
        probe = {slug: None for slug in self.mapping.custom_slugs() if slug not in present}
        if probe:
            leads[0] = {**leads[0], "custom_fields": {**leads[0].get("custom_fields", {}), **probe}}
        body = self.client._request(_dry_run_call(leads, self.on_duplicate))
        unknown = list(body.get("unknown_custom_fields") or [])
        self.mapping.drop_custom(unknown)
        result: dict[str, Any] = body
        return result

    def run(
        self, *, resume: bool = False, on_chunk: Callable[[ChunkReport], None] | None = None
    ) -> ImportState:
        """Import every row (or, with `resume`, the rows after the last recorded chunk). Returns the
        final state (summary counts). CsvImportError when resuming is impossible (no state, or the
        file changed) or when an unfinished import would be started over.

        Three threads overlap so the server is never kept waiting: one reads and encodes the next
        chunks, the caller's sends them one after another (in order: rows merge in file order),
        one records each answer (results rows, fsync, state file). A chunk answered but not yet
        recorded when the process dies is sent again on resume, under the same key: replayed.
        """
        digest = file_digest(self.path)
        if resume:
            state = self._resume_state(digest)
        else:
            self.check_mapping()
            self.refuse_if_interrupted()
            state = ImportState(
                source_sha256=digest,
                encoding=self.format.encoding,
                delimiter=self.format.delimiter,
                fields={str(k): v for k, v in self.mapping.fields.items()},
                on_duplicate=self.on_duplicate,
                run_id=uuid.uuid4().hex,
            )
            with self.results_path.open("w", encoding="utf-8", newline="") as out:
                csv.writer(out).writerow(RESULT_COLUMNS)
            state.results_bytes = self.results_path.stat().st_size
            state.save(self.state_path)
        with (
            self._open() as f,
            self.results_path.open("r+", encoding="utf-8", newline="") as out,
            ThreadPoolExecutor(1, thread_name_prefix="mega-import-record") as recorder,
            closing(read_ahead(self._encoded_chunks(f, state.chunks_done))) as chunks,
        ):
            out.truncate(state.results_bytes)
            out.seek(state.results_bytes)
            record = _Recorder(state, self.state_path, out, on_chunk)
            for index, lines, content in chunks:
                record.raise_if_failed()
                body = self._send(f"csv-{state.run_id}-{index}", content)
                recorder.submit(record, lines, body)
        record.raise_if_failed()
        state.finished = True
        state.save(self.state_path)
        return state

    def _encoded_chunks(self, f: IO[str], skip: int) -> Iterator[tuple[int, list[int], bytes]]:
        """(chunk index, the records' lines, the bulk request body) of each chunk after `skip`."""
        for index, chunk in enumerate(self.chunks(f)):
            if index < skip:
                continue
            payload = {
                "leads": [lead for _, lead in chunk],
                "on_duplicate": self.on_duplicate,
                "dry_run": False,
            }
            content = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
            yield index, [row.line for row, _ in chunk], content

    def refuse_if_interrupted(self) -> None:
        """CsvImportError when an import into the same results file was started and not finished:
        starting over would send its chunks again under new keys, and rows that match no existing
        lead (no email or phone) would be created twice."""
        try:
            state = ImportState.load(self.state_path)
        except (OSError, ValueError, TypeError):
            return
        if not state.finished:
            raise CsvImportError(
                f"an import into {self.results_path} was interrupted: run again with --resume to "
                f"finish it, or delete {self.state_path} to start over"
            )

    def _resume_state(self, digest: str) -> ImportState:
        if not self.state_path.exists() or not self.results_path.exists():
            raise CsvImportError(f"nothing to resume: {self.state_path} does not exist")
        state = ImportState.load(self.state_path)
        if state.source_sha256 != digest:
            raise CsvImportError(f"{self.path} changed since the import started; start a new import")
        # The mapping and format the import started with, so that chunks and keys are the same.
        self.format = CsvFormat(state.encoding, state.delimiter)
        self.mapping.fields = {int(k): v for k, v in state.fields.items()}
        self.on_duplicate = "skip" if state.on_duplicate == "skip" else "update"
        return state

    def _send(self, key: str, content: bytes) -> dict[str, Any]:
        call = _Call("POST", f"{API_PREFIX}/leads/bulk", headers={"Idempotency-Key": key}, content=content)
        deadline = time.monotonic() + IN_PROGRESS_WAIT_SECONDS
        while True:
            try:
                body: dict[str, Any] = self.client._request(call)
                return body
            except ConflictError as exc:
                # The same chunk sent by the process that was killed is still claimed: wait it out.
                if not exc.in_progress or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)


class _Recorder:
    """Writes each chunk's results and then the state that counts it, in chunk order (called on
    one thread). After a failure (e.g. a full disk) it records nothing more and the import stops."""

    def __init__(
        self,
        state: ImportState,
        state_path: Path,
        out: IO[str],
        on_chunk: Callable[[ChunkReport], None] | None,
    ) -> None:
        self.state, self.state_path, self.out, self.on_chunk = state, state_path, out, on_chunk
        self.writer = csv.writer(out)
        self.error: BaseException | None = None

    def __call__(self, lines: list[int], body: dict[str, Any]) -> None:
        if self.error is not None:
            return
        try:
            for line, result in zip(lines, body["results"], strict=True):
                errors = "; ".join(result.get("errors") or [])
                lead_id, matched_by = result.get("lead_id") or "", result.get("matched_by") or ""
                self.writer.writerow([line, result["status"], lead_id, matched_by, errors])
            self.out.flush()
            os.fsync(self.out.fileno())  # the rows are on disk before the state counts them
            state = self.state
            state.chunks_done += 1
            state.rows_done += len(lines)
            state.results_bytes = self.out.tell()
            for name in state.summary:
                state.summary[name] += int(body["summary"][name])
            state.save(self.state_path)
            if self.on_chunk is not None:
                self.on_chunk(ChunkReport(state.rows_done, len(lines), dict(body["summary"])))
        except BaseException as exc:  # noqa: BLE001 - handed to the sending thread
            self.error = exc

    def raise_if_failed(self) -> None:
        if self.error is not None:
            raise self.error


T = TypeVar("T")


def read_ahead(items: Iterator[T], depth: int = 2) -> Generator[T, None, None]:
    """`items`, produced on a thread of their own up to `depth` ahead of the consumer."""
    ready: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        ready.put(("item", item), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            ready.put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            ready.put(("error", exc))

    threading.Thread(target=produce, name="mega-import-read", daemon=True).start()
    try:
        while True:
            kind, value = ready.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        stop.set()


def _dry_run_call(leads: list[dict[str, Any]], on_duplicate: OnDuplicate) -> Any:
    return _bulk_call(leads, on_duplicate, True, str(uuid.uuid4()))


# --- exporting ----------------------------------------------------------------------------------

EXPORT_COLUMNS = [
    "id", "contact_name", "contact_email", "contact_phone", "status", "stage", "owner",
    "source_platform", "source_type", "interaction_count", "last_interaction_at", "created_at", "updated_at",
]  # fmt: skip
EXTRA_CUSTOM_COLUMN = "other_custom_fields"


def export_row(lead: Lead, custom_columns: Sequence[str]) -> list[Any]:
    stage = lead.get("current_stage")
    owner = lead.get("owner")
    custom = dict(lead.get("custom_fields") or {})
    base = [
        lead["id"], lead.get("contact_name"), lead.get("contact_email"), lead.get("contact_phone"),
        lead.get("status"), stage["slug"] if stage else None, owner["name"] if owner else None,
        lead.get("source_platform"), lead.get("source_type"), lead.get("interaction_count"),
        lead.get("last_interaction_at"), lead.get("created_at"), lead.get("updated_at"),
    ]  # fmt: skip
    values = [custom.pop(slug, None) for slug in custom_columns]
    extra = json.dumps(custom, ensure_ascii=False) if custom else ""
    return [("" if v is None else v) for v in base + values] + [extra]


def export_csv(
    client: MegaClient,
    out: IO[str],
    *,
    on_page: Callable[[int, int], None] | None = None,
    **filters: Any,
) -> int:
    """Write every lead matching `filters` to `out` as CSV (following the cursor, updated_at
    ascending, so each lead appears once even while others are written). Custom fields become
    columns named after the slugs seen on the first page; slugs first seen later go, as JSON, in
    `other_custom_fields`. `on_page(rows_written, total)` after each page. Returns rows written."""
    params = {
        "limit": 100,
        "include_custom_fields": True,
        "sort_by": "updated_at",
        "sort_dir": "asc",
        **filters,
    }
    writer = csv.writer(out)
    written = 0
    custom_columns: list[str] | None = None
    while True:
        page = client.leads.list(**params)
        if custom_columns is None:
            custom_columns = sorted({slug for lead in page.leads for slug in lead.get("custom_fields") or {}})
            writer.writerow(EXPORT_COLUMNS + custom_columns + [EXTRA_CUSTOM_COLUMN])
        for lead in page.leads:
            writer.writerow(export_row(lead, custom_columns))
        written += len(page.leads)
        if on_page is not None:
            on_page(written, page.total)
        if page.next_cursor is None:
            return written
        params["cursor"] = page.next_cursor


__all__ = [
    "CsvFormat",
    "CsvImport",
    "ImportState",
    "detect_format",
    "export_csv",
    "map_headers",
    "row_to_lead",
]
