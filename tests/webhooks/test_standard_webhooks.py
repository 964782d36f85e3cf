"""Standard Webhooks signatures (issue 13.3), verified with the official `standardwebhooks`
library exactly as the README tells receivers to use it."""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook as StandardWebhook
from standardwebhooks.webhooks import WebhookVerificationError

from mega_crm.webhooks import verify_signature
from mega_crm.webhooks.signing import standard_webhooks_secret
from tests.fixtures.factories import Tenant, lead
from tests.webhooks.conftest import LEADS, WEBHOOKS, Receiver, register


def create_lead(client: TestClient, tenant: Tenant) -> dict[str, Any]:
    r = client.post(LEADS, json=lead(), headers=tenant.headers)
    assert r.status_code == 201, r.text
    return r.json()["lead"]


def receiver_key(secret: str) -> str:
    # Exactly the README's line (a receiver needs nothing of this project).
    return "whsec_" + base64.b64encode(bytes.fromhex(secret.removeprefix("mega_whsec_"))).decode()


def test_the_readme_conversion_is_the_servers() -> None:
    secret = "mega_whsec_" + "0f" * 32
    assert receiver_key(secret) == standard_webhooks_secret(secret)


def test_a_standard_webhooks_delivery_verifies_with_the_official_library(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, secret = register(wh_client, tenant, endpoint.url, signature_scheme="standard-webhooks")
    assert hook["signature_scheme"] == "standard-webhooks"
    created = create_lead(wh_client, tenant)
    [arrival] = endpoint.wait_for(1)
    payload = StandardWebhook(receiver_key(secret)).verify(arrival.body, arrival.headers)
    assert payload["lead"]["id"] == created["id"]
    assert arrival.headers["webhook-id"] == arrival.headers["x-mega-delivery"]
    assert arrival.headers["webhook-timestamp"] == arrival.headers["x-mega-timestamp"]
    assert arrival.headers["webhook-signature"].startswith("v1,")
    assert verify_signature(secret, arrival.headers, arrival.body)  # the X-Mega-* headers stay
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(receiver_key(secret)).verify(arrival.body + b" ", arrival.headers)
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(receiver_key("mega_whsec_" + "1" * 64)).verify(arrival.body, arrival.headers)


def test_the_mega_scheme_sends_no_standard_headers(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, _ = register(wh_client, tenant, endpoint.url)
    assert hook["signature_scheme"] == "mega"
    create_lead(wh_client, tenant)
    [arrival] = endpoint.wait_for(1)
    assert not {"webhook-id", "webhook-timestamp", "webhook-signature"} & set(arrival.headers)


def test_switching_schemes_and_rotating_with_an_overlap(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint()
    hook, old = register(wh_client, tenant, endpoint.url)
    r = wh_client.patch(
        f"{WEBHOOKS}/{hook['id']}",
        json={"signature_scheme": "standard-webhooks", "rotate_secret": True, "secret_overlap_seconds": 2},
        headers=tenant.headers,
    )
    assert r.status_code == 200, r.text
    assert r.json()["webhook"]["signature_scheme"] == "standard-webhooks"
    new = r.json()["secret"]
    rotated = time.time()
    create_lead(wh_client, tenant)
    [during] = endpoint.wait_for(1)
    assert len(during.headers["webhook-signature"].split(" ")) == 2  # space separated
    StandardWebhook(receiver_key(new)).verify(during.body, during.headers)
    StandardWebhook(receiver_key(old)).verify(during.body, during.headers)
    time.sleep(max(0.0, rotated + 2.5 - time.time()))
    create_lead(wh_client, tenant)
    _, after = endpoint.wait_for(2)
    StandardWebhook(receiver_key(new)).verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        StandardWebhook(receiver_key(old)).verify(after.body, after.headers)


@pytest.mark.parametrize("scheme", ["svix", "", None, "MEGA", 1])
def test_an_unknown_scheme_is_400(
    wh_client: TestClient, tenant: Tenant, receiver: Receiver, scheme: Any
) -> None:
    r = wh_client.post(
        WEBHOOKS, json={"url": receiver.endpoint().url, "signature_scheme": scheme}, headers=tenant.headers
    )
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
