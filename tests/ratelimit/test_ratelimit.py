"""Per-key rate limits: headers, 429, two buckets, per-customer overrides, env settings, shared Redis.

Limits are per hour or per day so that a test never straddles a window boundary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from mega_crm.admin import service as admin
from mega_crm.api.state import app_state
from mega_crm.app import create_app
from mega_crm.config import Settings
from mega_crm.db import Database
from mega_crm.security import ConfigurationError
from tests.conftest import REDIS_URL, TEST_SECRET, ContractClient, make_settings
from tests.fixtures.factories import Tenant, issue_token, lead, make_tenant
from tests.fixtures.hung import SilentListener, StallingProxy

LEADS = "/api/agents/crm/leads"
BULK = "/api/agents/crm/leads/bulk"
HEADERS = ("ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")

STORAGES = [
    pytest.param(None, id="memory"),
    pytest.param(
        "redis",
        id="redis",
        marks=pytest.mark.skipif(not REDIS_URL, reason="MEGA_TEST_REDIS_URL is not set"),
    ),
]


@pytest.fixture(params=STORAGES)
def limited(request: pytest.FixtureRequest, db_url: str, db: Any) -> Iterator[TestClient]:
    """A fresh app whose limiter counts in memory, or in the test Redis."""
    redis_url = REDIS_URL if request.param == "redis" else None
    with ContractClient(quiet_app(db_url, db, redis_url=redis_url), raise_server_exceptions=False) as c:
        yield c


def quiet_app(db_url: str, db: Any, **overrides: Any) -> FastAPI:
    """An app instance without the in-process webhook worker (nothing here needs it)."""
    return create_app(make_settings(db_url, webhook_worker_in_process=False, **overrides), db)


def quota(r: Any) -> tuple[int, int, int]:
    for name in HEADERS:
        assert name in r.headers, f"{name} missing on {r.status_code}: {dict(r.headers)}"
    return tuple(int(r.headers[name]) for name in HEADERS)  # type: ignore[return-value]


def get(c: TestClient, tenant: Tenant) -> Any:
    return c.get(LEADS, headers=tenant.headers)


def bulk(c: TestClient, tenant: Tenant) -> Any:
    return c.post(BULK, json={"leads": [lead()]}, headers=tenant.headers)


# --- headers ----------------------------------------------------------------------------------


def test_every_authenticated_response_carries_the_headers(limited: TestClient, db: Database) -> None:
    tenant = make_tenant(db, limits=("50/hour", "20/hour"))
    other = make_tenant(db)
    responses = [
        get(limited, tenant),  # 200
        limited.post(LEADS, json=lead(), headers=tenant.headers),  # 201
        limited.get(LEADS, params={"limit": 0}, headers=tenant.headers),  # 400
        limited.post(LEADS, json={"contact_name": 1}, headers=tenant.headers),  # 400 (body)
        limited.post(LEADS, content=b"{", headers={**tenant.headers, "content-type": "application/json"}),
        limited.get(LEADS, headers={**tenant.headers, "x-customer-id": str(other.customer_id)}),  # 403
    ]
    assert [r.status_code for r in responses] == [200, 201, 400, 400, 400, 403]
    remaining = [quota(r)[1] for r in responses]
    assert remaining == [49, 48, 47, 46, 45, 44]  # each one counted once
    assert quota(bulk(limited, tenant))[:2] == (20, 19)


def test_unauthenticated_responses_carry_no_headers(limited: TestClient, tenant: Tenant) -> None:
    for r in (
        limited.get(LEADS),
        limited.get(LEADS, headers={**tenant.headers, "Authorization": "Bearer mega_" + "0" * 64}),
        limited.get("/no-such-route", headers=tenant.headers),
    ):
        assert r.status_code in (401, 404)
        assert not any(name in r.headers for name in HEADERS)


def test_remaining_counts_down_and_reset_is_within_the_window(limited: TestClient, db: Database) -> None:
    tenant = make_tenant(db, limits=("3/hour", None))
    seen = [quota(get(limited, tenant)) for _ in range(3)]
    assert [(limit, remaining) for limit, remaining, _ in seen] == [(3, 2), (3, 1), (3, 0)]
    assert all(0 < reset <= 3600 for _, _, reset in seen), seen


@pytest.mark.parametrize(
    ("spec", "expected_limit"),
    [
        pytest.param("10/hour;3/day", 3, id="second-window-binds"),
        pytest.param("3/hour;10/day", 3, id="first-window-binds"),
        pytest.param("100/minute;2/hour;50/day", 2, id="middle-window-binds"),
    ],
)
def test_headers_describe_the_most_constraining_window(
    limited: TestClient, db: Database, spec: str, expected_limit: int
) -> None:
    tenant = make_tenant(db, limits=(spec, None))
    assert quota(get(limited, tenant))[:2] == (expected_limit, expected_limit - 1)


def test_the_tightest_window_is_chosen_by_what_remains(limited: TestClient, db: Database) -> None:
    tenant = make_tenant(db, limits=("4/hour;5/day", None))
    assert quota(get(limited, tenant))[:2] == (4, 3)  # 3 left of 4 binds before 4 left of 5
    admin.set_limits(db, tenant.customer_id, "10/hour;5/day", None)
    assert quota(get(limited, tenant))[:2] == (5, 3)  # 9 left of 10 per hour, 3 of 5 per day: the day


# --- 429 --------------------------------------------------------------------------------------


def test_over_the_limit_is_429_with_retry_after_and_writes_nothing(limited: TestClient, db: Database) -> None:
    tenant = make_tenant(db, limits=("2/hour", None))
    assert limited.post(LEADS, json=lead(), headers=tenant.headers).status_code == 201
    assert limited.post(LEADS, json=lead(), headers=tenant.headers).status_code == 201
    r = limited.post(LEADS, json=lead(contact_name="Refused"), headers=tenant.headers)
    assert r.status_code == 429
    assert r.json()["error"]["type"] == "rate_limit_error"
    limit, remaining, reset = quota(r)
    assert (limit, remaining) == (2, 0)
    assert 1 <= int(r.headers["retry-after"]) <= 3600
    assert reset <= 3600
    # Nothing was written: another key of the customer (its own budget) sees two leads.
    reader = issue_token(db, tenant, ["public_api:leads:read"])
    assert limited.get(LEADS, headers=reader).json()["total"] == 2


def test_after_reset_seconds_the_window_has_refilled(limited: TestClient, db: Database) -> None:
    """RateLimit-Reset / Retry-After say when the whole budget is back, not merely part of it."""
    tenant = make_tenant(db, limits=("2/2 seconds", None))
    assert get(limited, tenant).status_code == 200
    assert get(limited, tenant).status_code == 200
    refused = get(limited, tenant)
    assert refused.status_code == 429
    _, _, reset = quota(refused)
    assert 1 <= reset <= 2
    assert int(refused.headers["retry-after"]) == reset
    time.sleep(reset + 0.05)
    assert quota(get(limited, tenant))[:2] == (2, 1)  # a full budget again, less this request
    assert get(limited, tenant).status_code == 200


def test_limits_are_per_key(limited: TestClient, db: Database) -> None:
    tenant = make_tenant(db, limits=("1/hour", None))
    assert get(limited, tenant).status_code == 200
    assert get(limited, tenant).status_code == 429
    second_key = issue_token(db, tenant, ["public_api:leads:read"])
    assert limited.get(LEADS, headers=second_key).status_code == 200


def test_a_refused_request_does_not_spend_the_other_windows(limited: TestClient, db: Database) -> None:
    tenant = make_tenant(db, limits=("2/hour;4/day", None))
    assert [get(limited, tenant).status_code for _ in range(5)] == [200, 200, 429, 429, 429]
    # Lift the hour window: the day window has counted only the two requests that were served.
    admin.set_limits(db, tenant.customer_id, "100/hour;4/day", None)
    r = get(limited, tenant)
    assert r.status_code == 200
    assert quota(r)[:2] == (4, 1)


def test_the_bulk_bucket_is_independent_of_the_default_bucket(limited: TestClient, db: Database) -> None:
    tenant = make_tenant(db, limits=("2/hour", "1/hour"))
    r = bulk(limited, tenant)
    assert r.status_code == 200
    assert quota(r)[:2] == (1, 0)
    assert bulk(limited, tenant).status_code == 429
    # Bulk requests spent nothing of the default bucket...
    r = get(limited, tenant)
    assert r.status_code == 200
    assert quota(r)[:2] == (2, 1)
    assert get(limited, tenant).status_code == 200
    assert get(limited, tenant).status_code == 429
    # ...and an exhausted default bucket does not stop bulk (fresh customer, same limits).
    other = make_tenant(db, limits=("1/hour", "1/hour"))
    assert get(limited, other).status_code == 200
    assert get(limited, other).status_code == 429
    assert bulk(limited, other).status_code == 200


def test_create_and_list_share_the_default_bucket(limited: TestClient, db: Database) -> None:
    tenant = make_tenant(db, limits=("2/hour", "5/hour"))
    assert limited.post(LEADS, json=lead(), headers=tenant.headers).status_code == 201
    assert get(limited, tenant).status_code == 200
    assert limited.post(LEADS, json=lead(), headers=tenant.headers).status_code == 429


# --- configuration ----------------------------------------------------------------------------


def test_server_defaults_apply_without_an_override(limited: TestClient, db: Database) -> None:
    tenant = make_tenant(db, limits=(None, None))
    assert quota(get(limited, tenant))[0] == 60  # "60/minute;1000/hour": the minute window binds
    assert quota(bulk(limited, tenant))[0] == 10


def test_a_per_customer_override_takes_effect_on_the_next_request(limited: TestClient, db: Database) -> None:
    tenant = make_tenant(db, limits=(None, None))
    assert quota(get(limited, tenant))[0] == 60
    admin.set_limits(db, tenant.customer_id, "2/hour", "1/hour")
    assert quota(get(limited, tenant))[:2] == (2, 1)
    assert get(limited, tenant).status_code == 200
    assert get(limited, tenant).status_code == 429
    assert quota(bulk(limited, tenant))[:2] == (1, 0)
    # The override is the customer's: another customer keeps the server defaults.
    assert quota(get(limited, make_tenant(db, limits=(None, None))))[0] == 60
    # An empty override goes back to the server default.
    admin.set_limits(db, tenant.customer_id, "", "")
    assert quota(get(limited, tenant))[0] == 60


def test_a_bad_override_is_refused(db: Database, tenant: Tenant) -> None:
    for spec in ("lots", "3/fortnight", "3/minute;"):
        with pytest.raises(admin.AdminError):
            admin.set_limits(db, tenant.customer_id, spec, None)


def run_cli(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEGA_DATABASE_URL": db_url}
    env.pop("MEGA_REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "mega_crm.cli", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_an_override_set_with_the_cli_applies(db: Database, db_url: str) -> None:
    tenant = make_tenant(db, limits=(None, None))
    done = run_cli(
        db_url, "admin", "limits", "set", "--customer", str(tenant.customer_id),
        "--default", "2/hour", "--bulk", "1/day", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    with TestClient(quiet_app(db_url, db)) as c:
        assert quota(get(c, tenant))[:2] == (2, 1)
        assert quota(bulk(c, tenant))[:2] == (1, 0)


def test_env_settings_set_the_server_defaults(
    monkeypatch: pytest.MonkeyPatch, db_url: str, db: Database
) -> None:
    monkeypatch.setenv("MEGA_RATE_LIMIT_DEFAULT", "3/hour;100/day")
    monkeypatch.setenv("MEGA_RATE_LIMIT_BULK", "2/day")
    settings = Settings(database_url=db_url, secret_key=TEST_SECRET, webhook_worker_in_process=False)
    tenant = make_tenant(db, limits=(None, None))
    with TestClient(create_app(settings, db)) as c:
        assert quota(get(c, tenant))[:2] == (3, 2)
        assert quota(bulk(c, tenant))[:2] == (2, 1)
        # A customer override still wins over the env defaults.
        admin.set_limits(db, tenant.customer_id, "7/hour", None)
        assert quota(get(c, tenant))[:2] == (7, 6)  # a new window: counters are per limit


@pytest.mark.parametrize("variable", ["MEGA_RATE_LIMIT_DEFAULT", "MEGA_RATE_LIMIT_BULK"])
def test_a_bad_env_setting_stops_the_server_at_start(
    monkeypatch: pytest.MonkeyPatch, db_url: str, db: Database, variable: str
) -> None:
    monkeypatch.setenv(variable, "sixty a minute")
    with pytest.raises(ConfigurationError, match=variable):
        create_app(Settings(database_url=db_url, secret_key=TEST_SECRET), db)


# --- several processes, one budget ------------------------------------------------------------


@pytest.mark.skipif(not REDIS_URL, reason="MEGA_TEST_REDIS_URL is not set")
def test_processes_sharing_redis_share_one_budget(db_url: str, db: Database) -> None:
    """Two app instances (two server processes) on one Redis count against one budget per key."""
    apps = [quiet_app(db_url, db, redis_url=REDIS_URL) for _ in range(2)]
    tenant = make_tenant(db, limits=("3/hour", "1/hour"))
    with TestClient(apps[0]) as one, TestClient(apps[1]) as two:
        assert quota(get(one, tenant))[1] == 2
        assert quota(get(two, tenant))[1] == 1
        assert quota(get(one, tenant))[1] == 0
        assert get(two, tenant).status_code == 429
        assert get(one, tenant).status_code == 429
        assert bulk(two, tenant).status_code == 200
        assert bulk(one, tenant).status_code == 429


def test_without_redis_each_process_counts_alone(db_url: str, db: Database) -> None:
    """The in-process default: documents why MEGA_REDIS_URL matters with several processes."""
    apps = [quiet_app(db_url, db, redis_url=None) for _ in range(2)]
    tenant = make_tenant(db, limits=("1/hour", None))
    with TestClient(apps[0]) as one, TestClient(apps[1]) as two:
        assert get(one, tenant).status_code == 200
        assert get(two, tenant).status_code == 200
        assert get(one, tenant).status_code == 429


def test_an_unreachable_redis_lets_requests_through_unlimited(
    db_url: str, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A Redis outage must not take the API down with it: requests are served, uncounted, and logged."""
    tenant = make_tenant(db, limits=("1/hour", None))
    with TestClient(quiet_app(db_url, db, redis_url="redis://127.0.0.1:1/0")) as c:
        responses = [get(c, tenant) for _ in range(3)]
    assert [r.status_code for r in responses] == [200, 200, 200]
    assert not any(name in responses[0].headers for name in HEADERS)
    assert "rate-limit storage unavailable" in caplog.text


# --- a Redis that accepts connections and never answers (issue 8, item 7) -----------------------


def outage_logs(caplog: Any) -> list[str]:
    return [r.getMessage() for r in caplog.records if "rate-limit storage" in r.getMessage()]


def test_a_redis_that_never_answers_is_skipped_by_the_breaker(
    db_url: str, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """One request waits for the timeout; the breaker then skips Redis: no request waits on it,
    and the outage is logged once, not per request."""
    tenant = make_tenant(db, limits=("1/hour", None))
    with SilentListener() as hung:
        app = quiet_app(
            db_url,
            db,
            redis_url=f"redis://127.0.0.1:{hung.port}/0",
            redis_timeout_seconds=0.2,
            redis_breaker_seconds=60,
        )
        with TestClient(app) as c:
            responses = [get(c, tenant) for _ in range(20)]
            scrape = c.get("/metrics").text  # the operator sees the breaker open (1)
        assert "\nmega_redis_circuit_state 1\n" in scrape, scrape[-400:]
        assert [r.status_code for r in responses] == [200] * 20  # served, unlimited
        assert not any(name in responses[-1].headers for name in HEADERS)
        assert hung.accepted == 1, "only the first request went to Redis"
    assert app_state(app).limiter.breaker.state == "open"
    assert len(outage_logs(caplog)) == 1, outage_logs(caplog)


def test_the_breaker_probes_redis_again_after_its_period(
    db_url: str, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    tenant = make_tenant(db, limits=("1/hour", None))
    with SilentListener() as hung:
        app = quiet_app(
            db_url,
            db,
            redis_url=f"redis://127.0.0.1:{hung.port}/0",
            redis_timeout_seconds=0.2,
            redis_breaker_seconds=0.5,
        )
        with TestClient(app) as c:
            assert get(c, tenant).status_code == 200
            assert get(c, tenant).status_code == 200
            assert hung.accepted == 1
            time.sleep(0.6)
            assert app_state(app).limiter.breaker.state == "half_open"
            assert get(c, tenant).status_code == 200  # the probe: it times out too
            assert get(c, tenant).status_code == 200  # skipped again
            assert hung.accepted == 2
    assert len(outage_logs(caplog)) == 1, outage_logs(caplog)


@pytest.mark.skipif(not REDIS_URL, reason="MEGA_TEST_REDIS_URL is not set")
def test_counting_resumes_when_redis_answers_again(
    db_url: str, db: Database, caplog: pytest.LogCaptureFixture
) -> None:
    """A real Redis behind a proxy that stops forwarding, then forwards again."""
    assert REDIS_URL
    target = urlsplit(REDIS_URL)
    tenant = make_tenant(db, limits=("1000/hour", None))
    with StallingProxy(target.port or 6379, target.hostname or "127.0.0.1") as proxy:
        app = quiet_app(
            db_url,
            db,
            redis_url=f"redis://127.0.0.1:{proxy.port}{target.path}",
            redis_timeout_seconds=0.2,
            redis_breaker_seconds=0.3,
        )
        with TestClient(app) as c:
            assert quota(get(c, tenant))[0] == 1000
            proxy.stall()
            stalled = [get(c, tenant) for _ in range(5)]
            assert [r.status_code for r in stalled] == [200] * 5
            assert not any(name in stalled[-1].headers for name in HEADERS)
            proxy.resume()
            time.sleep(0.4)
            deadline = time.monotonic() + 10
            while "ratelimit-limit" not in (r := get(c, tenant)).headers and time.monotonic() < deadline:
                time.sleep(0.1)
            limit, remaining, _ = quota(r)
            assert (limit, remaining < 999) == (1000, True)
    logs = outage_logs(caplog)
    assert len(logs) == 2, logs
    assert "unavailable" in logs[0]
    assert "available again" in logs[1]
    assert app_state(app).limiter.breaker.state == "closed"


def test_half_open_lets_exactly_one_probe_through() -> None:
    """Many request threads at the end of the open period: one tries Redis, the rest skip it."""
    import threading

    from mega_crm.failures import OutageLog
    from mega_crm.ratelimit.limiter import CircuitBreaker

    breaker = CircuitBreaker(0.05, OutageLog("test dependency", "nothing happens"))
    breaker.failed("down")
    assert breaker.state == "open"
    assert not breaker.allow()
    time.sleep(0.06)
    start = threading.Barrier(16)
    allowed: list[bool] = []

    def request() -> None:
        start.wait()
        allowed.append(breaker.allow())

    threads = [threading.Thread(target=request) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert allowed.count(True) == 1
    assert breaker.state == "half_open"
    breaker.succeeded()
    assert breaker.state == "closed"
    assert all(breaker.allow() for _ in range(3))


# --- the in-process counters (ratelimit.limiter.SweptMemoryStorage) ---------------------------


def test_the_in_process_counters_start_no_thread_per_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """limits' MemoryStorage started a 10 ms Timer thread whenever the last had ended: about
    100 thread starts a second under load, each holding up the request that started it."""
    import threading

    from mega_crm.ratelimit.limiter import RateLimiter

    limiter = RateLimiter()
    started: list[str] = []
    start = threading.Thread.start

    def counted(thread: threading.Thread) -> None:
        started.append(thread.name)
        start(thread)

    monkeypatch.setattr(threading.Thread, "start", counted)
    for i in range(5):
        assert limiter.hit(f"key-{i}", "default", "100/minute") is not None
        time.sleep(0.02)  # past the 10 ms timer: MemoryStorage would start another
    assert started == []


def test_expired_in_process_counters_are_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a timer, a later request sweeps the counters whose window has ended, so keys
    gone quiet do not hold memory; a window's expiry never waited for the sweep."""
    from mega_crm.ratelimit.limiter import RateLimiter, SweptMemoryStorage

    monkeypatch.setattr(SweptMemoryStorage, "SWEEP_SECONDS", 0.5)
    limiter = RateLimiter()
    storage = limiter.storage
    assert isinstance(storage, SweptMemoryStorage)
    first = limiter.hit("quiet-key", "default", "1/second")
    assert first is not None
    assert first.remaining == 0
    assert any("quiet-key" in key for key in storage.storage)
    time.sleep(1.1)  # the window has ended; the counter is still held, unswept
    assert any("quiet-key" in key for key in storage.storage)
    again = limiter.hit("quiet-key", "default", "1/second")  # not refused: the window expired
    assert again is not None
    assert again.remaining == 0
    time.sleep(1.1)
    limiter.hit("busy-key", "default", "1/second")  # the sweep, due, drops the quiet counter
    assert not any("quiet-key" in key for key in storage.storage)
    assert any("busy-key" in key for key in storage.storage)
