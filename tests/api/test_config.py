"""Configuration: the database URL forms people write, the embedded default, the server secret."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from mega_crm.config import Settings
from mega_crm.db import normalize_database_url
from mega_crm.security import ConfigurationError, load_secret_key


@pytest.mark.parametrize(
    ("written", "used"),
    [
        ("postgresql://postgres@127.0.0.1:5432/db", "postgresql+psycopg://postgres@127.0.0.1:5432/db"),
        ("postgres://u:p%40ss@db.internal/crm", "postgresql+psycopg://u:p%40ss@db.internal/crm"),
        ("postgresql+psycopg2://u@h/db", "postgresql+psycopg://u@h/db"),
        ("postgresql+psycopg://u@h/db", "postgresql+psycopg://u@h/db"),
        ("sqlite:///relative/path.db", "sqlite:///relative/path.db"),
        ("sqlite:////abs/path.db", "sqlite:////abs/path.db"),
        ("sqlite+pysqlite:///x.db", "sqlite:///x.db"),
        ("  sqlite:///spaces.db  ", "sqlite:///spaces.db"),
    ],
)
def test_database_urls_in_the_forms_people_write(written: str, used: str) -> None:
    assert normalize_database_url(written) == used


def test_unset_database_url_means_the_embedded_sqlite_file() -> None:
    settings = Settings(database_url=None)
    assert settings.resolved_database_url == "sqlite:///./mega-crm.db"
    assert settings.is_sqlite


def test_sqlite_without_a_secret_key_generates_one_private_file_once(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'crm.db'}", secret_key=None)
    first = load_secret_key(settings)
    key_file = tmp_path / "crm.db.secret"
    assert key_file.is_file()
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert load_secret_key(settings) == first  # reused, not regenerated
    assert len(first) >= 32


def test_postgresql_refuses_to_start_without_a_secret_key() -> None:
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:5432/test", secret_key=None)
    with pytest.raises(ConfigurationError, match="MEGA_SECRET_KEY"):
        load_secret_key(settings)


def test_the_secret_key_from_the_environment_wins(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'crm.db'}", secret_key="from-env")
    assert load_secret_key(settings) == b"from-env"
    assert not (tmp_path / "crm.db.secret").exists()
