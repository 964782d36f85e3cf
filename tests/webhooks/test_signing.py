"""The receivers' helper, the secrets' encryption, and the retry schedule."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from mega_crm.config import Settings
from mega_crm.db import Database
from mega_crm.webhooks import verify_signature
from mega_crm.webhooks.delivery import AttemptResult, retry_delay
from mega_crm.webhooks.models import FAILED, PENDING, SUCCEEDED
from mega_crm.webhooks.queue import ClaimedDelivery
from mega_crm.webhooks.signing import SecretBox, compute_signature, new_webhook_secret
from mega_crm.webhooks.worker import DeliveryWorker

SECRET = "mega_whsec_" + "ab" * 32
BODY = b'{"event":"lead.created"}'


def headers(timestamp: int, signature: str | None = None) -> dict[str, str]:
    return {
        "X-Mega-Timestamp": str(timestamp),
        "X-Mega-Signature": signature or compute_signature(SECRET, timestamp, BODY),
    }


def test_verify_signature_accepts_a_fresh_correct_signature() -> None:
    assert verify_signature(SECRET, headers(1_700_000_000), BODY, now=1_700_000_100)
    lower = {k.lower(): v for k, v in headers(1_700_000_000).items()}
    assert verify_signature(SECRET, lower, BODY, now=1_700_000_000)


@pytest.mark.parametrize(
    ("hdrs", "body", "secret"),
    [
        (headers(1_700_000_000), BODY + b"\n", SECRET),  # body changed
        (headers(1_700_000_000), BODY, "mega_whsec_" + "cd" * 32),  # other secret
        (headers(1_700_000_000 - 301), BODY, SECRET),  # too old
        (headers(1_700_000_000 + 301), BODY, SECRET),  # from the future
        ({"X-Mega-Signature": compute_signature(SECRET, 1_700_000_000, BODY)}, BODY, SECRET),  # no timestamp
        ({"X-Mega-Timestamp": "1700000000"}, BODY, SECRET),  # no signature
        (headers(1_700_000_000, "sha1=00"), BODY, SECRET),
        ({**headers(1_700_000_000), "X-Mega-Timestamp": "1700000001"}, BODY, SECRET),  # timestamp swapped
    ],
)
def test_verify_signature_rejects(hdrs: dict[str, str], body: bytes, secret: str) -> None:
    assert not verify_signature(secret, hdrs, body, now=1_700_000_000)


def test_tolerance_is_adjustable() -> None:
    old = headers(1_700_000_000)
    assert not verify_signature(SECRET, old, BODY, now=1_700_001_000)
    assert verify_signature(SECRET, old, BODY, tolerance=1_000, now=1_700_001_000)
    assert verify_signature(SECRET, old, BODY, tolerance=None, now=1_800_000_000)


def test_secrets_are_prefixed_random_hex() -> None:
    a, b = new_webhook_secret(), new_webhook_secret()
    assert a != b
    assert a.startswith("mega_whsec_")
    assert len(a) == len("mega_whsec_") + 64
    int(a.removeprefix("mega_whsec_"), 16)


def test_secret_box_round_trips_and_binds_the_webhook_id() -> None:
    box = SecretBox(b"server key")
    hook = uuid.uuid4()
    sealed = box.seal(hook, SECRET)
    assert SECRET not in sealed
    assert SECRET[11:] not in sealed
    assert box.open(hook, sealed) == SECRET
    with pytest.raises(ValueError, match="decrypt"):
        box.open(uuid.uuid4(), sealed)  # copied onto another webhook
    with pytest.raises(ValueError, match="decrypt"):
        SecretBox(b"another key").open(hook, sealed)


def test_backoff_is_exponential_with_jitter_capped_at_30s() -> None:
    for retry in range(1, 12):
        step = min(30.0, 1.0 * 2 ** (retry - 1))
        delays = [retry_delay(retry, 1.0) for _ in range(200)]
        assert all(step / 2 <= d <= step for d in delays)  # never sooner than half the step
        assert max(delays) - min(delays) > step / 4  # spread, not a fixed step
    assert max(retry_delay(20, 1.0) for _ in range(100)) <= 30.0


def _claim(attempts: int, retry_attempts: int) -> ClaimedDelivery:
    return ClaimedDelivery(
        id=uuid.uuid4(),
        lease_token=uuid.uuid4(),
        attempts=attempts,
        webhook_id=uuid.uuid4(),
        url="https://public.example/",
        timeout_seconds=10,
        retry_attempts=retry_attempts,
        secret_encrypted="",
        event_id=uuid.uuid4(),
        event_type="lead.created",
        lead={},
    )


def test_the_worker_judges_attempts(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'x.db'}", secret_key="k")
    worker = DeliveryWorker(Database(settings.resolved_database_url), settings, b"k")
    ok = AttemptResult(True, 200, None, 5)
    bad = AttemptResult(False, 500, "HTTP 500", 5)
    refused = AttemptResult(False, None, "refused: loopback", None, refused=True)
    assert worker._judge(_claim(0, 5), ok).status == SUCCEEDED
    retry = worker._judge(_claim(0, 5), bad)
    assert (retry.status, retry.attempts) == (PENDING, 1)
    assert retry.next_attempt_at is not None
    assert worker._judge(_claim(5, 5), bad).status == FAILED  # the 6th attempt was the last
    assert worker._judge(_claim(0, 0), bad).status == FAILED
    gone = worker._judge(_claim(0, 5), refused)  # refused by the address rules: no retries
    assert (gone.status, gone.attempts, gone.next_attempt_at) == (FAILED, 1, None)
