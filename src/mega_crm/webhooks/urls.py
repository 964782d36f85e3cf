"""Which webhook URLs may be called: public HTTPS only (the SSRF rules).

A URL is checked at registration and again before every attempt, and the attempt connects to
the very address that was checked (`Target.address`), so a DNS answer that changes between the
check and the connection (rebinding) cannot redirect a delivery inside the network.

`allow_private` (MEGA_WEBHOOK_ALLOW_PRIVATE_TARGETS, for development and tests) lets http:// and
non-public addresses through; everything else (userinfo, odd IP spellings) is refused regardless.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from mega_crm.validation import text_refusal, utf8_length

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 2048  # characters, as published
# Bytes of UTF-8, as stored: (customer, url) is a unique btree index, and PostgreSQL refuses an
# index row over 2704 bytes. 2,000 CJK characters are ~6 KB.
MAX_URL_BYTES = 2048


class UrlRefused(ValueError):
    """The URL may not be called; the message says why, for the API's 400."""


def _nets(*cidrs: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    return [ipaddress.ip_network(c) for c in cidrs]


# Checked in order, before the `ipaddress` module's own classification, so that the message
# names the precise reason. Embedded IPv4 (mapped, compatible, NAT64, 6to4) is unwrapped first.
DENY_TABLE: list[tuple[str, list[ipaddress.IPv4Network | ipaddress.IPv6Network]]] = [
    ("unspecified", _nets("0.0.0.0/8", "::/128")),
    ("loopback", _nets("127.0.0.0/8", "::1/128")),
    ("private (RFC 1918)", _nets("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")),
    ("carrier-grade NAT (RFC 6598)", _nets("100.64.0.0/10")),
    ("link-local (cloud metadata)", _nets("169.254.0.0/16", "fe80::/10")),
    ("unique-local (fc00::/7)", _nets("fc00::/7")),
    ("site-local (deprecated)", _nets("fec0::/10")),
    ("multicast", _nets("224.0.0.0/4", "ff00::/8")),
    ("broadcast", _nets("255.255.255.255/32")),
    (
        "reserved",
        _nets(
            "240.0.0.0/4",
            "192.0.0.0/24",  # IETF protocol assignments
            "198.18.0.0/15",  # benchmarking
            "192.88.99.0/24",  # 6to4 relay anycast
            "100::/64",  # discard-only
            "2001::/23",  # IETF protocol assignments, incl. Teredo 2001::/32
            "64:ff9b:1::/48",  # local-use NAT64
            "5f00::/16",  # SRv6 SIDs
        ),
    ),
    (
        "documentation",
        _nets("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32", "3fff::/20"),
    ),
]

_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form stands for (mapped, compatible, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64 or (ip in _IPV4_COMPATIBLE and int(ip) > 1):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def address_refusal(ip: IPAddress) -> str | None:
    """Why `ip` is not a public unicast address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return "an IPv6 address with a zone id"
        inner = embedded_ipv4(ip)
        if inner is not None:
            reason = address_refusal(inner)
            return f"{reason} (as IPv4 embedded in IPv6)" if reason else None
    for reason, networks in DENY_TABLE:
        if any(ip.version == net.version and ip in net for net in networks):
            return reason
    if ip.is_loopback or ip.is_link_local or ip.is_multicast or ip.is_unspecified:
        return "not a public unicast address"
    if ip.is_private or ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (`address`) and what to say to it (host name, TLS SNI)."""

    url: str  # normalised: lower-case scheme and host, no default port
    scheme: str
    host: str  # the name as written (IDNA), or the IP literal
    port: int
    path: str  # path + query, as sent on the request line
    address: str  # the checked IP to connect to

    @property
    def is_ip_literal(self) -> bool:
        return _parse_ip(self.host) is not None

    @property
    def pinned_url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.scheme}://{host}:{self.port}{self.path}"

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def _parse_ip(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


_NUMERIC_LABEL = re.compile(r"^(0x[0-9a-f]*|[0-9]+)$", re.IGNORECASE)
_HOST_LABEL = re.compile(r"^(?!-)[a-z0-9_-]{1,63}(?<!-)$")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])"
_CANONICAL_IPV4 = re.compile(rf"^{_OCTET}(\.{_OCTET}){{3}}$")


def parse_webhook_url(raw: str, *, allow_private: bool = False) -> tuple[str, str, int, str]:
    """Syntax rules only (no DNS) -> (normalised url, host, port, path+query)."""
    if not isinstance(raw, str) or not raw.strip():
        raise UrlRefused("url is required.")
    if len(raw) > MAX_URL_LENGTH or utf8_length(raw) > MAX_URL_BYTES:
        raise UrlRefused(_TOO_LONG)
    if (reason := text_refusal(raw)) is not None:
        raise UrlRefused(f"url {reason}.")
    if any(c.isspace() or ord(c) < 0x20 or c == "\\" for c in raw):
        raise UrlRefused("url must not contain whitespace, control characters or backslashes.")
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if scheme != "https" and not (allow_private and scheme == "http"):
        raise UrlRefused("url must use https.")
    if "@" in parts.netloc:
        raise UrlRefused("url must not contain a user name or password.")
    if parts.fragment or raw.endswith("#"):
        raise UrlRefused("url must not contain a fragment (#…).")
    default = 443 if scheme == "https" else 80
    try:
        port = parts.port if parts.port is not None else default
    except ValueError:
        raise UrlRefused("url has an invalid port.") from None
    if not 1 <= port <= 65535:
        raise UrlRefused("url has an invalid port.")
    if parts.netloc.startswith("["):
        literal = (parts.hostname or "").strip()
        if "%" in literal:
            raise UrlRefused("url must not use an IPv6 zone id.")
        ip = _parse_ip(literal)
        if not isinstance(ip, ipaddress.IPv6Address):
            raise UrlRefused("url has an invalid IPv6 address.")
        host = str(ip)
    else:
        host = _normalise_host_name(parts.hostname or "")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    host_part = f"[{host}]" if ":" in host else host
    netloc = host_part if port == default else f"{host_part}:{port}"
    url = f"{scheme}://{netloc}{path}"
    if utf8_length(url) > MAX_URL_BYTES:  # an IDNA host may be longer than it was written
        raise UrlRefused(_TOO_LONG)
    return url, host, port, path


_TOO_LONG = f"url must be at most {MAX_URL_LENGTH} characters and {MAX_URL_BYTES} bytes of UTF-8."


def _normalise_host_name(hostname: str) -> str:
    host = hostname.rstrip(".").lower()
    if not host:
        raise UrlRefused("url has no host.")
    labels = host.split(".")
    # WHATWG URL parsers read a host whose last label is numeric as an IPv4 address, in
    # decimal, octal or hex, with 1-4 parts ("2130706433", "0x7f.1", "0177.0.0.1"): only the
    # canonical dotted-decimal form is accepted, so every spelling of an address is the one we check.
    if _NUMERIC_LABEL.match(labels[-1]):
        if not _CANONICAL_IPV4.match(host):
            raise UrlRefused(
                f"url host {hostname!r} is an IP address in a non-standard spelling; "
                "write IPv4 addresses as four decimal numbers (a.b.c.d)."
            )
        return host
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        raise UrlRefused(f"url host {hostname!r} is not a valid host name.") from None
    if len(ascii_host) > 253 or not all(_HOST_LABEL.match(label) for label in ascii_host.split(".")):
        raise UrlRefused(f"url host {hostname!r} is not a valid host name.")
    return ascii_host


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_webhook_url(raw: str, *, allow_private: bool = False, resolver: Resolver | None = None) -> Target:
    """The whole rule: syntax, then every address the host resolves to. Raises UrlRefused."""
    url, host, port, path = parse_webhook_url(raw, allow_private=allow_private)
    scheme = url.split(":", 1)[0]
    literal = _parse_ip(host)
    if literal is not None:
        addresses = [str(literal)]
    else:
        try:
            addresses = (resolver or system_resolver)(host, port)
        except (OSError, UnicodeError):
            raise UrlRefused(f"url host {host!r} does not resolve.") from None
        if not addresses:
            raise UrlRefused(f"url host {host!r} does not resolve.")
    checked: list[IPAddress] = []
    for text in addresses:
        ip = _parse_ip(text.split("%", 1)[0])
        if ip is None:
            raise UrlRefused(f"url host {host!r} resolves to an unusable address {text!r}.")
        if not allow_private:
            reason = address_refusal(ip)
            if reason:
                where = "is" if literal is not None else f"resolves to {ip}, which is"
                raise UrlRefused(
                    f"url host {host!r} {where} {reason}; webhooks must target public addresses."
                )
        checked.append(ip)
    first = checked[0]
    # An IPv4-mapped IPv6 address is that IPv4 address: connect to it as such.
    if isinstance(first, ipaddress.IPv6Address) and first.ipv4_mapped is not None:
        first = first.ipv4_mapped
    return Target(url=url, scheme=scheme, host=host, port=port, path=path, address=str(first))


@functools.lru_cache(maxsize=1024)
def check_literal_webhook_url(raw: str, *, allow_private: bool = False) -> Target | None:
    """`check_webhook_url` for a URL whose host is an IP literal, else None (it needs DNS).

    Without DNS the answer depends on nothing but the arguments, so it is remembered: the
    worker checks such URLs before every attempt without a thread hop or a repeated parse.
    A refusal raises UrlRefused (and is not remembered).
    """
    _url, host, _port, _path = parse_webhook_url(raw, allow_private=allow_private)
    if _parse_ip(host) is None:
        return None
    return check_webhook_url(raw, allow_private=allow_private)
