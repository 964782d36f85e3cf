"""The `mega-crm` command: serve, worker, db, admin, demo.

The console script `mega-crm` (pyproject: mega_crm.cli:main) and `python -m mega_crm.cli` both
run `main`. The commands live in cli/admin.py (the operator's setup) and cli/serve.py (demo, db,
serve, worker); cli/base.py holds the command tree and what they share.
"""

from __future__ import annotations

import sys

from pydantic import ValidationError

from mega_crm.cli import admin as _admin  # noqa: F401 - registers the admin commands
from mega_crm.cli import serve as _serve  # noqa: F401 - registers demo, db, serve, worker
from mega_crm.cli.base import app
from mega_crm.config import Settings

__all__ = ["app", "main"]


def main() -> None:
    """The `mega-crm` console script. A MEGA_* setting that does not parse is one line per
    setting on stderr (its name and the rule it breaks, not its value) and exit status 2."""
    try:
        app()
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        for error in exc.errors():
            name = "MEGA_" + "_".join(str(part) for part in error["loc"]).upper()
            print(f"error: {name}: {error['msg']}", file=sys.stderr)
        sys.exit(2)
