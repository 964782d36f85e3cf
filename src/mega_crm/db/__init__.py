"""The database layer: models' Base and column types (base), engines per dialect (engines),
the Database facade with its sessions (database), the lanes of threads work runs on and SQLite's
group commit (lanes), raw statements for the hot paths (raw), and per-transaction caches (memos).

The names below are this package's surface; import them from here.
"""

from mega_crm.db.base import NAMING_CONVENTION, Base, UTCDateTime, new_id, utcnow
from mega_crm.db.database import DEFAULT_TIMEOUT_SECONDS, Database
from mega_crm.db.engines import (
    connection_options,
    driver_connect_args,
    normalize_database_url,
    write_conflict,
)
from mega_crm.db.lanes import DatabaseTimeout, Lane
from mega_crm.db.memos import Memo, Memos, memoized, memos_of
from mega_crm.db.raw import Pending, Query, RawConnection, as_datetime, as_json, as_shared_uuid, as_uuid

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "NAMING_CONVENTION",
    "Base",
    "Database",
    "DatabaseTimeout",
    "Lane",
    "Memo",
    "Memos",
    "Pending",
    "Query",
    "RawConnection",
    "UTCDateTime",
    "as_datetime",
    "as_json",
    "as_shared_uuid",
    "as_uuid",
    "connection_options",
    "driver_connect_args",
    "memoized",
    "memos_of",
    "new_id",
    "normalize_database_url",
    "utcnow",
    "write_conflict",
]
