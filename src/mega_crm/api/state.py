"""The objects an app shares between its requests, in one typed place.

`create_app` builds one `AppState` and attaches it to the app; everything that needs the database,
the settings or the rate limiter (the request pipeline, /readyz, /metrics, the webhook worker)
reaches it through `app_state(app)`, never through loose attributes of Starlette's `app.state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.applications import Starlette

if TYPE_CHECKING:  # annotations only: this module is imported by layers those modules import
    from mega_crm.api.health import Readiness
    from mega_crm.auth.access import KeyCache
    from mega_crm.config import Settings
    from mega_crm.db import Database
    from mega_crm.leads.cursor import CursorCodec
    from mega_crm.leads.service import TotalsCache
    from mega_crm.ratelimit.limiter import RateLimiter

_ATTRIBUTE = "mega_crm"  # the one attribute of Starlette's app.state this app sets


@dataclass(frozen=True)
class AppState:
    """What one app's requests share; built once by `mega_crm.app.create_app`."""

    settings: Settings
    db: Database
    limiter: RateLimiter  # per-key rate limits (Redis, or in memory without MEGA_REDIS_URL)
    cursor_codec: CursorCodec  # signs listLeads' keyset cursors
    totals: TotalsCache  # listLeads' `total` per customer and filters
    secret_key: bytes  # MEGA_SECRET_KEY (webhook secrets, delivery cursors)
    readiness: Readiness  # /readyz's checks
    keys: KeyCache  # keys looked up before, for routes that confirm them in their statement

    def attach(self, app: Starlette) -> None:
        """Make this the state `app_state(app)` returns."""
        setattr(app.state, _ATTRIBUTE, self)


def app_state(app: Starlette) -> AppState:
    """The AppState attached to `app` (RuntimeError for an app `create_app` did not build)."""
    state = getattr(app.state, _ATTRIBUTE, None)
    if not isinstance(state, AppState):
        raise RuntimeError("this app has no AppState: build it with mega_crm.app.create_app")
    return state
