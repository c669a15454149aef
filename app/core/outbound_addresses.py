"""Where an outgoing HTTP request may go: the SSRF address policy and the one resolve-and-check step
that both the image fetch (`app.core.image_fetch`) and the webhook delivery (`app.core.webhooks`)
connect through. A host is resolved ONCE, every address it resolves to must pass the policy, and the
caller connects only to those addresses (no second lookup, so DNS rebinding cannot swap them). IP
spellings are read the way the OS resolver (inet_aton) reads them."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable
from urllib.parse import unquote

import anyio

from app.core.errors import InvalidInput
from app.core.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# The address policy: given one address the URL's host resolves to, may we connect to it?
AddressPolicy = Callable[[IPAddress], bool]


class AddressRefused(InvalidInput):
    """The URL's host is (or resolves to) an address the policy refuses: never worth a retry."""


_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64_WELL_KNOWN = ipaddress.ip_network("64:ff9b::/96")
_NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")

# --- the address policy (pure) -------------------------------------------------------------------


def is_public_address(ip: IPAddress) -> bool:
    """True only for a globally routable unicast address; IPv6 forms embedding an IPv4 address
    (IPv4-mapped, 6to4, NAT64) are judged by the IPv4 address inside."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.scope_id:
            return False
        if ip.ipv4_mapped is not None:
            return is_public_address(ip.ipv4_mapped)
        if ip.sixtofour is not None:
            return is_public_address(ip.sixtofour)
        if ip in _NAT64_WELL_KNOWN:
            return is_public_address(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.teredo is not None or ip in _NAT64_LOCAL or ip.is_site_local:
            return False
    if ip.version == 4 and ip in _CGNAT:
        return False
    return ip.is_global and not (
        ip.is_private
        or ip.is_loopback
        or ip.is_link_local
        or ip.is_multicast
        or ip.is_unspecified
        or ip.is_reserved
    )


def allow_any_address(ip: IPAddress) -> bool:
    """The policy under `SDXL_ALLOW_PRIVATE_URLS=1` (local use and tests)."""
    return True


def default_policy(settings: Settings) -> AddressPolicy:
    return allow_any_address if settings.allow_private_urls else is_public_address


def parse_inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """An IPv4 address as the OS resolver's inet_aton reads it, or None if `text` is not one.

    1 to 4 dot-separated parts, each decimal, octal (leading 0) or hex (0x); the last part fills
    the remaining bytes: `127.1`, `0177.0.0.1`, `0x7f.1` and `2130706433` are 127.0.0.1."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values = []
    for part in parts:
        lowered = part.lower()
        if not lowered.isascii():  # int() would read other scripts' digits; inet_aton does not
            return None
        try:
            if lowered.startswith("0x"):
                value = int(lowered[2:], 16)  # "0x" alone is refused, as by glibc
            elif len(lowered) > 1 and lowered.startswith("0"):
                value = int(lowered[1:], 8)
            elif lowered.isdigit():
                value = int(lowered, 10)
            else:
                return None
        except ValueError:
            return None
        if value < 0:
            return None
        values.append(value)
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for v in head:
        number = number << 8 | v
    number = number << (8 * (4 - len(head))) | last
    return ipaddress.IPv4Address(number)


def parse_ip_host(host: str) -> IPAddress | None:
    """The IP address a URL host names literally (any inet_aton spelling, or IPv6), else None."""
    host = unquote(host).strip("[]")
    if ":" in host:
        try:
            return ipaddress.IPv6Address(host)
        except ValueError:
            return None
    return parse_inet_aton(host.rstrip(".")) if host else None


async def _resolve(host: str, port: int, what: str) -> list[IPAddress]:
    """The addresses of `host`, looked up once (a literal IP in any spelling is not looked up)."""
    literal = parse_ip_host(host)
    if literal is not None:
        return [literal]
    try:
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError, OSError):
        raise InvalidInput(f"{what} host {host} could not be resolved") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(sockaddr[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise InvalidInput(f"{what} host {host} could not be resolved")
    return addresses


async def checked_addresses(
    host: str, port: int, policy: AddressPolicy, *, what: str = "image URL"
) -> list[IPAddress]:
    """`host` resolved once, every address checked with `policy`: connect only to these (no second
    lookup, so DNS rebinding cannot swap them). Also used for webhook POSTs (app/core/webhooks.py);
    `what` names the URL in error messages."""
    addresses = await _resolve(host, port, what)
    for ip in addresses:
        if not policy(ip):
            shown = host if parse_ip_host(host) == ip else f"{host} ({ip})"
            raise AddressRefused(f"{what} host {shown} is not a public address; refused")
    return addresses
