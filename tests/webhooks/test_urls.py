"""The SSRF rules: a table of URLs, written as IPs and reached through DNS, IPv4 and IPv6."""

from __future__ import annotations

import asyncio

import pytest
from fastapi.testclient import TestClient

from mega_crm.webhooks.delivery import AttemptResult, ClientPool, attempt_delivery, ssl_context
from mega_crm.webhooks.urls import UrlRefused, check_webhook_url
from tests.fixtures.factories import Tenant
from tests.webhooks.conftest import WEBHOOKS, Receiver

# What the fake DNS answers: name -> addresses.
DNS = {
    "public.example": ["93.184.216.34"],
    "public6.example": ["2606:2800:220:1:248:1893:25c8:1946"],
    "dual.example": ["93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946"],
    "loopback.example": ["127.0.0.1"],
    "loopback6.example": ["::1"],
    "private10.example": ["10.1.2.3"],
    "private172.example": ["172.20.0.5"],
    "private192.example": ["192.168.1.10"],
    "metadata.example": ["169.254.169.254"],
    "cgnat.example": ["100.100.0.1"],
    "ula.example": ["fd12:3456::1"],
    "linklocal6.example": ["fe80::1"],
    "mapped.example": ["::ffff:10.0.0.1"],
    "nat64.example": ["64:ff9b::a9fe:a9fe"],
    "multicast.example": ["239.1.1.1"],
    "unspecified.example": ["0.0.0.0"],
    "mixed.example": ["93.184.216.34", "10.0.0.1"],  # one bad answer is enough to refuse
    "empty.example": [],
}


def fake_resolver(host: str, _port: int) -> list[str]:
    if host not in DNS:
        raise OSError("NXDOMAIN")
    return DNS[host]


ALLOWED = [
    ("https://93.184.216.34/hook", "93.184.216.34"),
    ("https://8.8.8.8:8443/hook?x=1", "8.8.8.8"),
    ("https://[2606:4700:4700::1111]/hook", "2606:4700:4700::1111"),
    ("https://[::ffff:8.8.8.8]/hook", "8.8.8.8"),  # IPv4-mapped public: connect to the IPv4 itself
    ("https://public.example/hook", "93.184.216.34"),
    ("https://PUBLIC.example./hook", "93.184.216.34"),
    ("https://public6.example/hook", "2606:2800:220:1:248:1893:25c8:1946"),
    ("https://dual.example/hook", "93.184.216.34"),
]

REFUSED = [
    # (url, words the message must contain)
    ("http://public.example/hook", "https"),
    ("ftp://public.example/hook", "https"),
    ("https://user:pass@public.example/hook", "user name or password"),
    ("https://user@public.example/hook", "user name or password"),
    ("https://public.example/hook#frag", "fragment"),
    ("https:///hook", "no host"),
    ("https://public.example:0/", "port"),
    ("https://public.example:99999/", "port"),
    ("https://public .example/", "whitespace"),
    ("https://nxdomain.example/", "does not resolve"),
    ("https://empty.example/", "does not resolve"),
    # IPv4 literals
    ("https://127.0.0.1/", "loopback"),
    ("https://127.5.6.7/", "loopback"),
    ("https://10.0.0.1/", "private"),
    ("https://172.16.0.1/", "private"),
    ("https://172.31.255.255/", "private"),
    ("https://192.168.0.1/", "private"),
    ("https://169.254.169.254/latest/meta-data/", "link-local"),
    ("https://100.64.0.1/", "carrier-grade NAT"),
    ("https://100.127.255.254/", "carrier-grade NAT"),
    ("https://0.0.0.0/", "unspecified"),
    ("https://224.0.0.1/", "multicast"),
    ("https://255.255.255.255/", "broadcast"),
    ("https://240.0.0.1/", "reserved"),
    ("https://198.18.0.1/", "reserved"),
    ("https://192.0.2.1/", "documentation"),
    # odd spellings of IPv4 addresses
    ("https://2130706433/", "non-standard spelling"),  # decimal 127.0.0.1
    ("https://0x7f000001/", "non-standard spelling"),  # hex
    ("https://0x7f.0.0.1/", "non-standard spelling"),
    ("https://0177.0.0.1/", "non-standard spelling"),  # octal
    ("https://127.1/", "non-standard spelling"),  # short form
    ("https://127.0.1/", "non-standard spelling"),
    ("https://010.0.0.1/", "non-standard spelling"),  # leading zero = octal 8.0.0.1
    ("https://0/", "non-standard spelling"),
    ("https://169.254.43518/", "non-standard spelling"),
    # IPv6 literals
    ("https://[::1]/", "loopback"),
    ("https://[::]/", "unspecified"),
    ("https://[fe80::1]/", "link-local"),
    ("https://[fe80::1%25eth0]/", "zone id"),
    ("https://[fc00::1]/", "unique-local"),
    ("https://[fd00:ec2::254]/", "unique-local"),
    ("https://[ff02::1]/", "multicast"),
    ("https://[fec0::1]/", "site-local"),
    ("https://[2001:db8::1]/", "documentation"),
    ("https://[::ffff:127.0.0.1]/", "loopback"),  # IPv4-mapped
    ("https://[::ffff:169.254.169.254]/", "link-local"),
    ("https://[::ffff:a00:1]/", "private"),  # mapped, in hex
    ("https://[::127.0.0.1]/", "loopback"),  # IPv4-compatible
    ("https://[64:ff9b::127.0.0.1]/", "loopback"),  # NAT64
    ("https://[64:ff9b::a9fe:a9fe]/", "link-local"),
    ("https://[2002:a9fe:a9fe::1]/", "link-local"),  # 6to4 of 169.254.169.254
    ("https://[2001::1]/", "reserved"),  # Teredo
    # through DNS
    ("https://loopback.example/", "resolves to 127.0.0.1"),
    ("https://loopback6.example/", "loopback"),
    ("https://private10.example/", "private"),
    ("https://private172.example/", "private"),
    ("https://private192.example/", "private"),
    ("https://metadata.example/", "link-local"),
    ("https://cgnat.example/", "carrier-grade NAT"),
    ("https://ula.example/", "unique-local"),
    ("https://linklocal6.example/", "link-local"),
    ("https://mapped.example/", "private"),
    ("https://nat64.example/", "link-local"),
    ("https://multicast.example/", "multicast"),
    ("https://unspecified.example/", "unspecified"),
    ("https://mixed.example/", "private"),
]


@pytest.mark.parametrize(("url", "address"), ALLOWED)
def test_public_https_targets_are_allowed(url: str, address: str) -> None:
    target = check_webhook_url(url, resolver=fake_resolver)
    assert target.address == address
    assert target.url.startswith("https://")


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_non_public_targets_are_refused_with_the_reason(url: str, reason: str) -> None:
    with pytest.raises(UrlRefused) as refused:
        check_webhook_url(url, resolver=fake_resolver)
    assert reason.lower() in str(refused.value).lower()


def test_the_table_is_large_enough() -> None:
    assert len(REFUSED) >= 30
    assert len(ALLOWED) >= 5


def test_the_allow_flag_opens_http_and_private_addresses_only() -> None:
    assert check_webhook_url("http://127.0.0.1:8080/x", allow_private=True).address == "127.0.0.1"
    assert check_webhook_url("https://loopback.example/", allow_private=True, resolver=fake_resolver)
    with pytest.raises(UrlRefused, match="user name"):
        check_webhook_url("http://u:p@127.0.0.1/", allow_private=True)
    with pytest.raises(UrlRefused, match="non-standard"):
        check_webhook_url("http://2130706433/", allow_private=True)
    with pytest.raises(UrlRefused, match="https"):
        check_webhook_url("gopher://127.0.0.1/", allow_private=True)


def test_urls_are_normalised() -> None:
    target = check_webhook_url("HTTPS://Public.Example:443/a/b?c=d", resolver=fake_resolver)
    assert target.url == "https://public.example/a/b?c=d"
    assert target.host_header == "public.example"
    target = check_webhook_url("https://public.example:8443", resolver=fake_resolver)
    assert target.url == "https://public.example:8443/"
    assert target.pinned_url == "https://93.184.216.34:8443/"


def test_registration_refuses_private_targets_with_a_400(strict_client: TestClient, tenant: Tenant) -> None:
    for url, reason in [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://localhost/hook", "loopback"),  # through the system resolver
        ("https://169.254.169.254/", "link-local"),
        ("https://[::1]/", "loopback"),
        ("http://93.184.216.34/", "https"),
        ("https://0x7f000001/", "non-standard spelling"),
    ]:
        r = strict_client.post(WEBHOOKS, json={"url": url}, headers=tenant.headers)
        assert r.status_code == 400, (url, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
        assert reason in r.json()["error"]["message"]


def test_registration_accepts_a_public_https_ip(strict_client: TestClient, tenant: Tenant) -> None:
    r = strict_client.post(WEBHOOKS, json={"url": "https://93.184.216.34/hooks/mega"}, headers=tenant.headers)
    assert r.status_code == 201, r.text


def test_a_name_that_rebinds_to_a_private_address_is_refused_at_delivery(receiver: Receiver) -> None:
    """Registered while the name pointed to a public address; by delivery time it points inside."""
    endpoint = receiver.endpoint()
    url = f"https://rebinding.example:{receiver.port}{endpoint.path}"
    answers = {"rebinding.example": ["93.184.216.34"]}

    def resolver(host: str, _port: int) -> list[str]:
        return answers[host]

    check_webhook_url(url, resolver=resolver)  # registration passes
    answers["rebinding.example"] = ["127.0.0.1"]

    async def attempt() -> AttemptResult:
        pool = ClientPool(tls=ssl_context(None), per_client_connections=1)
        try:
            return await attempt_delivery(
                pool,
                url=url,
                secret="mega_whsec_" + "0" * 64,
                delivery_id="d",
                event_type="lead.created",
                lead={},
                timeout_seconds=2,
                allow_private=False,
                resolver=resolver,
            )
        finally:
            await pool.aclose()

    result = asyncio.run(attempt())
    assert result.refused
    assert not result.succeeded
    assert "loopback" in (result.error or "")
    assert endpoint.quiet_for(0.1) == []
