"""Secret rotation with an overlap (issue 13.2): both secrets sign during it, the new one alone
after it; the receiver helper accepts the list."""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient

from mega_crm.webhooks import verify_signature
from mega_crm.webhooks.signing import compute_signature
from tests.fixtures.factories import Tenant, lead
from tests.webhooks.conftest import LEADS, WEBHOOKS, Arrival, Receiver, register


def create_lead(client: TestClient, tenant: Tenant) -> None:
    r = client.post(LEADS, json=lead(), headers=tenant.headers)
    assert r.status_code == 201, r.text


def rotate(client: TestClient, tenant: Tenant, hook_id: str, **fields: Any) -> str:
    r = client.patch(f"{WEBHOOKS}/{hook_id}", json={"rotate_secret": True, **fields}, headers=tenant.headers)
    assert r.status_code == 200, r.text
    return r.json()["secret"]


def hex_mac(secret: str, arrival: Arrival) -> str:
    message = arrival.headers["x-mega-timestamp"].encode() + b"." + arrival.body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def test_during_the_overlap_both_secrets_sign_then_only_the_new_one(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, old = register(wh_client, tenant, endpoint.url)
    new = rotate(wh_client, tenant, hook["id"], secret_overlap_seconds=3)
    rotated_at = time.time()
    create_lead(wh_client, tenant)
    [during] = endpoint.wait_for(1)
    # Exactly as documented: the new secret's signature first, then the previous one's.
    expected = f"sha256={hex_mac(new, during)},sha256={hex_mac(old, during)}"
    assert during.headers["x-mega-signature"] == expected
    assert verify_signature(new, during.headers, during.body)
    assert verify_signature(old, during.headers, during.body)
    assert not verify_signature("mega_whsec_" + "0" * 64, during.headers, during.body)

    time.sleep(max(0.0, rotated_at + 3.5 - time.time()))
    create_lead(wh_client, tenant)
    _, after = endpoint.wait_for(2)
    assert after.headers["x-mega-signature"] == f"sha256={hex_mac(new, after)}"
    assert verify_signature(new, after.headers, after.body)
    assert not verify_signature(old, after.headers, after.body)


def test_at_most_two_secrets_are_live(wh_client: TestClient, tenant: Tenant, receiver: Receiver) -> None:
    endpoint = receiver.endpoint()
    hook, first = register(wh_client, tenant, endpoint.url)
    second = rotate(wh_client, tenant, hook["id"], secret_overlap_seconds=600)
    third = rotate(wh_client, tenant, hook["id"], secret_overlap_seconds=600)
    create_lead(wh_client, tenant)
    [arrival] = endpoint.wait_for(1)
    assert arrival.headers["x-mega-signature"].count("sha256=") == 2
    assert verify_signature(third, arrival.headers, arrival.body)
    assert verify_signature(second, arrival.headers, arrival.body)
    assert not verify_signature(first, arrival.headers, arrival.body)


def test_rotating_without_an_overlap_ends_an_earlier_one(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, first = register(wh_client, tenant, endpoint.url)
    second = rotate(wh_client, tenant, hook["id"], secret_overlap_seconds=600)
    third = rotate(wh_client, tenant, hook["id"])  # default 0: today's behaviour
    create_lead(wh_client, tenant)
    [arrival] = endpoint.wait_for(1)
    assert "," not in arrival.headers["x-mega-signature"]
    assert verify_signature(third, arrival.headers, arrival.body)
    assert not verify_signature(second, arrival.headers, arrival.body)
    assert not verify_signature(first, arrival.headers, arrival.body)


@pytest.mark.parametrize(
    "body",
    [
        {"rotate_secret": True, "secret_overlap_seconds": 86_401},
        {"rotate_secret": True, "secret_overlap_seconds": -1},
        {"rotate_secret": True, "secret_overlap_seconds": "60"},
        {"rotate_secret": True, "secret_overlap_seconds": 1.5},
        {"secret_overlap_seconds": 60},
        {"rotate_secret": False, "secret_overlap_seconds": 60},
    ],
)
def test_a_bad_overlap_is_400_and_changes_nothing(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver, body: dict[str, Any]
) -> None:
    hook, secret = register(wh_client, tenant, receiver.endpoint().url)
    r = wh_client.patch(f"{WEBHOOKS}/{hook['id']}", json=body, headers=tenant.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert "secret" not in r.json()
    after = wh_client.get(f"{WEBHOOKS}/{hook['id']}", headers=tenant.headers).json()["webhook"]
    assert after["updated_at"] == hook["updated_at"]


def test_the_longest_overlap_is_a_day(wh_client: TestClient, tenant: Tenant, receiver: Receiver) -> None:
    hook, _ = register(wh_client, tenant, receiver.endpoint().url)
    rotate(wh_client, tenant, hook["id"], secret_overlap_seconds=86_400)


def test_verify_signature_takes_a_list() -> None:
    body, ts = b'{"event":"lead.created"}', str(int(time.time()))
    a, b = "mega_whsec_" + "a" * 64, "mega_whsec_" + "b" * 64
    sig_a, sig_b = compute_signature(a, ts, body), compute_signature(b, ts, body)
    for header in (f"{sig_a},{sig_b}", f"{sig_b}, {sig_a}", f"v1,xyz,{sig_a}", sig_a):
        assert verify_signature(a, {"X-Mega-Timestamp": ts, "X-Mega-Signature": header}, body), header
    for header in (sig_b, f"{sig_b},{sig_b}", "", ",", sig_a.upper()):
        assert not verify_signature(a, {"X-Mega-Timestamp": ts, "X-Mega-Signature": header}, body), header
