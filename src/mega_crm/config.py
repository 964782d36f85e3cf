"""One settings object, read from MEGA_* environment variables."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SQLITE_PATH = "./mega-crm.db"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MEGA_", extra="ignore")

    database_url: str | None = Field(
        default=None, description="Database URL; unset means an embedded SQLite file ./mega-crm.db"
    )
    database_listen_url: str | None = Field(
        default=None,
        description="PostgreSQL URL (direct, not through a transaction pooler) the webhook worker "
        "LISTENs on; unset: the database URL, or polling when that is behind a transaction pooler",
    )
    redis_url: str | None = Field(default=None, description="Redis URL for shared rate-limit counters")
    secret_key: str | None = Field(
        default=None,
        description="Key for cursor signing and webhook-secret encryption; "
        "generated beside the SQLite file when unset, required on PostgreSQL",
    )
    redis_timeout_seconds: float = Field(
        default=0.25,
        gt=0,
        description="Longest wait for Redis (connect, each answer) before serving unlimited",
    )
    redis_breaker_seconds: float = Field(
        default=10.0, ge=0, description="After a Redis failure, how long requests skip it (served unlimited)"
    )
    rate_limit_default: str = "60/minute;1000/hour"
    rate_limit_bulk: str = "10/minute"
    default_phone_region: str = "US"
    idempotency_ttl_hours: float = 24.0
    db_pool_size: int = Field(default=10, ge=1)
    db_threads: int = Field(
        default=4,
        ge=1,
        description="PostgreSQL: threads running request SQL (reads and writes; slow work has 2 "
        "more). More only queue for Python's GIL: 10 cost createLead a quarter of its throughput",
    )
    db_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="Longest a request waits for the database (queue, pool checkout, connect, "
        "statements) before a 503; also PostgreSQL's connect timeout and SQLite's busy timeout",
    )
    db_statement_timeout_seconds: float = Field(
        default=30.0, ge=0, description="PostgreSQL statement_timeout of the server's connections (0: none)"
    )
    log_level: str = "info"
    max_body_bytes: int = Field(
        default=5 * 1024 * 1024, description="Largest request body accepted (413 above)"
    )
    header_timeout_seconds: float = Field(
        default=10.0, gt=0, description="A connection's request head must arrive within this (else closed)"
    )
    max_connections: int = Field(
        default=10000,
        ge=16,
        description="Open connections before the oldest idle one is closed for each new one "
        "(at most what the file-descriptor limit allows)",
    )
    # Webhooks
    webhook_allow_private_targets: bool = False
    webhook_retry_base_seconds: float = 1.0
    webhook_worker_concurrency: int = 16
    webhook_lease_seconds: float = 60.0
    webhook_worker_in_process: bool = Field(
        default=True, description="Run the delivery worker inside `mega-crm serve` (off: --no-worker)"
    )
    webhook_endpoint_concurrency: int = Field(
        default=0, description="Attempts in flight per webhook in one worker; 0 = a quarter of the worker's"
    )
    webhook_poll_seconds: float = Field(default=1.0, description="Longest idle wait between claims")
    webhook_shutdown_grace_seconds: float = Field(
        default=10.0, description="On SIGTERM, how long in-flight attempts may finish before release"
    )
    webhook_log_retention_days: float = Field(
        default=30.0,
        ge=0,
        description="Finished deliveries are deleted this long after they finished (0: kept forever)",
    )
    webhook_disable_after_failures: int = Field(
        default=15,
        ge=0,
        description="A webhook is disabled after this many deliveries in a row ended failed (0: never)",
    )
    webhook_ca_file: str | None = Field(
        default=None, description="Extra CA bundle (PEM) trusted for HTTPS deliveries, beside certifi's"
    )
    # Operations (observability, health, serving)
    metrics_enabled: bool = Field(default=True, description="Serve Prometheus metrics at GET /metrics")
    metrics_token: str | None = Field(
        default=None, description="When set, GET /metrics needs 'Authorization: Bearer <token>'"
    )
    log_format: str | None = Field(
        default=None, pattern="^(json|text)$", description="json or text; unset: json unless stdout is a tty"
    )
    readyz_timeout_seconds: float = Field(
        default=2.0, gt=0, description="How long GET /readyz waits for the database and Redis"
    )
    forwarded_allow_ips: str | None = Field(
        default=None,
        description="Proxies (comma-separated IPs/networks, or *) whose X-Forwarded-For/-Proto are trusted",
    )
    host: str = Field(default="127.0.0.1", description="Address `mega-crm serve` binds (and `demo` prints)")
    port: int = Field(default=8000, ge=1, le=65535, description="Port `mega-crm serve` binds")

    @property
    def resolved_database_url(self) -> str:
        from mega_crm.db import normalize_database_url

        return normalize_database_url(self.database_url or f"sqlite:///{DEFAULT_SQLITE_PATH}")

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")

    def sqlite_path(self) -> Path | None:
        url = self.resolved_database_url
        if not url.startswith("sqlite"):
            return None
        raw = url.split(":///", 1)[1] if ":///" in url else ""
        return Path(raw) if raw and raw != ":memory:" else None


@lru_cache
def get_settings() -> Settings:
    return Settings()
