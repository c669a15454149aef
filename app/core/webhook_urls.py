"""Which `webhook_url` values a submission accepts (CONTRACT 6), checked without DNS: what a request
line can carry, and no literal non-public host. A name is resolved and checked again at each
delivery (`app.core.webhooks`, through `app.core.outbound_addresses`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from app.core.errors import InvalidInput
from app.core.outbound_addresses import is_public_address, parse_ip_host
from app.core.settings import Settings

MAX_WEBHOOK_URL_CHARS = 2048


def check_webhook_url_syntax(url: str) -> None:
    """A URL a request line can carry as is: http(s), a host, at most 2,048 characters, and no
    space or control character (a CR/LF would split the request line into injected headers)."""
    if len(url) > MAX_WEBHOOK_URL_CHARS:
        raise InvalidInput(f"webhook_url is {len(url)} characters, more than {MAX_WEBHOOK_URL_CHARS}")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise InvalidInput("webhook_url must not contain spaces or control characters (CR, LF, tab...)")
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        raise InvalidInput("webhook_url is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https") or not host:
        raise InvalidInput("webhook_url must be an http or https URL with a host")


def check_webhook_url(url: str, settings: Settings) -> None:
    """At submission, without DNS: refuse a host that is a literal non-public IP or `localhost`
    (a name is checked again, resolved, at each delivery)."""
    check_webhook_url_syntax(url)
    if settings.allow_private_urls:
        return
    try:
        host = urlsplit(url).hostname or ""
    except ValueError:
        raise InvalidInput("webhook_url is not a valid URL") from None
    ip = parse_ip_host(host)
    local_name = host.rstrip(".") == "localhost" or host.rstrip(".").endswith(".localhost")
    if local_name or (ip is not None and not is_public_address(ip)):
        raise InvalidInput(f"webhook_url host {host} is not a public address; refused")
