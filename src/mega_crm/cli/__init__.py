"""The `mega-crm` command: serve, worker, db, admin, demo.

The console script `mega-crm` (pyproject: mega_crm.cli:main) and `python -m mega_crm.cli` both
run `main`. The commands live in cli/admin.py (the operator's setup) and cli/serve.py (demo, db,
serve, worker); cli/base.py holds the command tree and what they share.
"""

from __future__ import annotations

from mega_crm.cli import admin as _admin  # noqa: F401 - registers the admin commands
from mega_crm.cli import serve as _serve  # noqa: F401 - registers demo, db, serve, worker
from mega_crm.cli.base import app

__all__ = ["app", "main"]


def main() -> None:
    """The `mega-crm` console script."""
    app()
