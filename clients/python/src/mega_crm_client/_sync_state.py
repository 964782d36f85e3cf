"""Where `leads.sync()` keeps its position between calls: a JSON file, or anything with load/save.

The position is the cursor that starts the page sync last read, plus the (id, updated_at) pairs
of that page already handed out. The last page has no `next_cursor`, so resuming from its start
and skipping what was seen is how a later call gets exactly what changed since (a lead updated
meanwhile has a new updated_at, so it is not skipped).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class SyncState(Protocol):
    """Storage for sync's position: `load()` returns what `save()` stored last, or None."""

    def load(self) -> dict[str, Any] | None: ...

    def save(self, state: dict[str, Any]) -> None: ...


class FileSyncState:
    """A SyncState in a JSON file, replaced atomically on every save."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return data if isinstance(data, dict) else None

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


class MemorySyncState:
    """A SyncState kept in memory (for one process's lifetime, or tests)."""

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None

    def load(self) -> dict[str, Any] | None:
        return self.state

    def save(self, state: dict[str, Any]) -> None:
        self.state = dict(state)


def as_sync_state(state: str | os.PathLike[str] | SyncState) -> SyncState:
    if isinstance(state, str | os.PathLike):
        return FileSyncState(state)
    return state


class SyncPosition:
    """The walk of one sync call: which leads to skip, and what to save after each page."""

    def __init__(self, saved: dict[str, Any] | None) -> None:
        saved = saved or {}
        self.cursor: str | None = saved.get("cursor")
        self.seen: set[tuple[str, str]] = {(str(i), str(u)) for i, u in saved.get("seen", [])}

    def page_read(
        self, page_cursor: str | None, leads: list[Any], next_cursor: str | None
    ) -> tuple[list[Any], dict[str, Any]]:
        """-> (the leads of this page to hand out, the state to save once they are handed out)."""
        fresh = [lead for lead in leads if (lead["id"], lead["updated_at"]) not in self.seen]
        if next_cursor is not None:
            self.cursor, self.seen = next_cursor, set()
        else:  # the last page: stay at its start, remember all of it
            self.cursor = page_cursor
            self.seen = {(lead["id"], lead["updated_at"]) for lead in leads}
        return fresh, {"cursor": self.cursor, "seen": sorted(self.seen)}
