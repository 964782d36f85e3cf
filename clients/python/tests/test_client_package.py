"""The distribution stands alone: httpx only (CLI extras under [cli]), no server package needed."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_depends_on_httpx_only() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert [d.split(">")[0] for d in project["dependencies"]] == ["httpx"]
    assert sorted(d.split(">")[0] for d in project["optional-dependencies"]["cli"]) == ["rich", "typer"]
    assert (ROOT / "src" / "mega_crm_client" / "py.typed").exists()


def test_imports_without_the_server_package() -> None:
    blocked = ["mega_crm", "fastapi", "sqlalchemy", "pydantic", "starlette", "cryptography"]
    code = (
        "import sys\n"
        f"for name in {blocked!r}: sys.modules[name] = None  # importing any of them fails\n"
        "import mega_crm_client, mega_crm_client.webhooks, mega_crm_client.csv_import, mega_crm_client.cli\n"
        "print(mega_crm_client.__version__)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0.1.0"


def test_the_signature_check_uses_the_standard_library_only() -> None:
    source = (ROOT / "src" / "mega_crm_client" / "webhooks.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported
