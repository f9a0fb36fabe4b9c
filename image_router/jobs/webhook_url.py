"""Where a webhook may be sent: public addresses only, pinned, unless the operator allows.

A webhook URL is the client's, but the request comes from inside the operator's
network, so a URL naming ``127.0.0.1``, ``10.0.0.1`` or the cloud's metadata address
(``169.254.169.254``) would let a client reach what it must not (SSRF). The check runs
at submission (``400``) and again before every delivery, on the addresses the name
resolves to *then*; the delivery connects to the vetted address itself (no second
resolution, so no DNS rebinding between check and connect) and follows no redirect.

Every resolved address must be global (Python's ``ipaddress.is_global``, after
unwrapping IPv4-mapped, 6to4 and Teredo IPv6 forms): this excludes loopback, RFC 1918,
link-local, CGNAT, ``0.0.0.0/8``, ULA, documentation and reserved ranges. An
operator's ``jobs.webhook_allow_cidrs`` lifts that for the networks it lists (an
in-cluster receiver; the tests' loopback receiver) — and only there is ``http://``
accepted, since a public receiver has no excuse for plain text.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

from image_router.errors import InvalidWebhookUrl, WebhookUrlForbidden

__all__ = ["Resolver", "Target", "resolve_target", "system_resolver"]

Resolver = Callable[[str, int], list[str]]  # host, port -> addresses
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAX_URL = 2048


@dataclass(frozen=True, slots=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    address: str  # the vetted address the delivery connects to
    path: str  # with the query


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookUrlForbidden(f"webhook: {host} does not resolve ({exc})", field="webhook") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _unwrapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if address.sixtofour is not None:
            return address.sixtofour
        if address.teredo is not None:
            return address.teredo[1]
    return address


def allowed(address: str, allow: Sequence[str]) -> bool:
    """Public, or inside a network the operator listed."""
    ip = _unwrapped(ipaddress.ip_address(address.split("%", 1)[0]))
    if any(ip in ipaddress.ip_network(cidr, strict=False) for cidr in allow):
        return True
    return ip.is_global and not ip.is_multicast


def parse(url: str) -> tuple[str, str, int, str]:
    """Scheme, host, port and path of a webhook URL, or :class:`InvalidWebhookUrl`."""
    if len(url) > MAX_URL:
        raise InvalidWebhookUrl(f"webhook: at most {MAX_URL} characters", field="webhook")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidWebhookUrl(f"webhook: not a URL ({exc})", field="webhook") from None
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise InvalidWebhookUrl("webhook: an https:// URL", field="webhook")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise InvalidWebhookUrl("webhook: no user, password or fragment", field="webhook")
    if "%" in parts.hostname:
        raise InvalidWebhookUrl("webhook: no IPv6 zone", field="webhook")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80), path


def resolve_target(url: str, allow: Sequence[str], resolver: Resolver = system_resolver) -> Target:
    """The URL vetted, and the address to connect to; refused with
    :class:`WebhookUrlForbidden` when any address it resolves to is not allowed."""
    scheme, host, port, path = parse(url)
    addresses = resolver(host, port)
    if not addresses:
        raise WebhookUrlForbidden(f"webhook: {host} resolves to no address", field="webhook")
    refused = [a for a in addresses if not allowed(a, allow)]
    if refused:
        raise WebhookUrlForbidden(
            f"webhook: {host} resolves to {refused[0]}, which is not a public address", field="webhook"
        )
    if scheme == "http" and not allow:
        raise InvalidWebhookUrl("webhook: an https:// URL (http only to networks the operator allows)", field="webhook")
    return Target(url, scheme, host, port, addresses[0], path)
