"""Fetching an input image from an http(s) URL, safely (CONTRACT 3).

Defences, each because a public image API is fed hostile URLs:
- only http and https;
- SSRF: the host name is resolved ONCE, every address it resolves to must pass the address
  policy (public addresses only, unless `allow_private_urls`), and the connection goes to the
  address that was checked (no second DNS lookup, so DNS rebinding cannot swap it): for http the
  URL is rewritten to the IP and the original Host header is sent; for https the IP is dialled with
  the name as SNI, so the certificate is still verified against the name;
- IP spellings are read the way the OS resolver (inet_aton) reads them: `2130706433`,
  `0177.0.0.1`, `0x7f.1` and `127.1` are all 127.0.0.1;
- at most 3 redirects, each one checked again like the first URL;
- a byte limit enforced while streaming (an endless body stops at the limit), a connect timeout
  and a wall-clock deadline over the whole fetch (a slow-drip server cannot hold a request open);
- proxies and netrc from the environment are ignored (`trust_env=False`): the fetch must go
  where it was checked to go.
"""

from __future__ import annotations

import ssl
import zlib
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import anyio
import httpx

from app.core.errors import InvalidInput
from app.core.outbound_addresses import (
    AddressPolicy,
    checked_addresses,
    default_policy,
    parse_inet_aton,
    parse_ip_host,
)
from app.core.settings import Settings

MAX_REDIRECTS = 3
_REDIRECT_CODES = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_USER_AGENT = "sdxl-img2img-fetch/1"


# --- the fetch -----------------------------------------------------------------------------------


async def fetch_image_bytes(
    url: str,
    settings: Settings,
    *,
    address_allowed: AddressPolicy | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> bytes:
    """GET `url` within the limits of CONTRACT 3 and return the body.

    `address_allowed` replaces the policy chosen by `settings.allow_private_urls` (tests use it to
    allow one loopback address and not another); `ssl_context` replaces the system trust store
    (tests use it to trust a self-signed certificate)."""
    policy = address_allowed or default_policy(settings)
    timeout = httpx.Timeout(settings.fetch_total_timeout_s, connect=settings.fetch_connect_timeout_s)
    try:
        with anyio.fail_after(settings.fetch_total_timeout_s):
            async with httpx.AsyncClient(
                trust_env=False,
                follow_redirects=False,
                timeout=timeout,
                verify=ssl_context or _system_ssl_context(),
                # A fresh connection per hop: a pooled TLS connection opened for one name must
                # not carry a request for another name after a redirect.
                limits=httpx.Limits(max_keepalive_connections=0),
            ) as client:
                return await _follow(client, url, settings, policy)
    except TimeoutError:
        raise InvalidInput(
            f"image URL did not answer in full within {settings.fetch_total_timeout_s:g} s"
        ) from None


async def _follow(client: httpx.AsyncClient, url: str, settings: Settings, policy: AddressPolicy) -> bytes:
    current = _parse_url(url)
    for hop in range(MAX_REDIRECTS + 1):
        response = await _open(client, current, settings, policy)
        try:
            if response.status_code in _REDIRECT_CODES:
                location = response.headers.get("location")
                if not location:
                    raise InvalidInput(f"image URL answered HTTP {response.status_code} without a Location")
                if hop == MAX_REDIRECTS:
                    raise InvalidInput(f"image URL redirected more than {MAX_REDIRECTS} times")
                try:
                    joined = str(current.join(location))
                except (httpx.InvalidURL, ValueError):
                    raise InvalidInput("image URL redirected to an invalid URL") from None
                current = _parse_url(joined)
                continue
            if not 200 <= response.status_code < 300:
                raise InvalidInput(f"image URL answered HTTP {response.status_code}, not 2xx")
            return await _read_limited(response, settings.max_image_bytes)
        finally:
            await response.aclose()
    raise AssertionError("unreachable")  # the loop either returns or raises


def _parse_url(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        parsed = _parse_legacy_ip_url(url)
    if parsed.scheme not in _DEFAULT_PORTS:
        raise InvalidInput(f"image URL must use http or https, not {parsed.scheme or 'no scheme'}")
    if not parsed.raw_host:  # raw_host: the ASCII form; `host` would decode IDNA and may raise
        raise InvalidInput("image URL has no host")
    if parsed.port is not None and not 0 < parsed.port <= 65535:
        raise InvalidInput(f"image URL port {parsed.port} is not a valid port")
    return parsed


def _parse_legacy_ip_url(url: str) -> httpx.URL:
    """httpx refuses hosts like `0177.0.0.1` that the OS resolver accepts; rewrite such a host to
    its canonical IPv4 form so that it is judged (and refused) as the address it really is."""
    try:
        parts = urlsplit(url)
        ip = parse_inet_aton(parts.hostname or "")
        if ip is not None:
            netloc = f"{ip}:{parts.port}" if parts.port else str(ip)
            return httpx.URL(parts._replace(netloc=netloc).geturl())
    except (httpx.InvalidURL, ValueError):
        pass
    raise InvalidInput("image URL is not a valid URL")


async def _open(
    client: httpx.AsyncClient, url: httpx.URL, settings: Settings, policy: AddressPolicy
) -> httpx.Response:
    """Resolve, check every address, then send to the first address that accepts a connection."""
    host = url.raw_host.decode("ascii")
    port = url.port or _DEFAULT_PORTS[url.scheme]
    addresses = await checked_addresses(host, port, policy)

    extensions = {}
    if url.scheme == "https" and parse_ip_host(host) is None:
        extensions["sni_hostname"] = host
    headers = {
        "Host": url.netloc.decode("ascii"),
        "User-Agent": _USER_AGENT,
        "Accept": "image/*",
        "Accept-Encoding": "gzip, deflate, identity",
    }
    failure: Exception | None = None
    for ip in addresses:
        request = client.build_request(
            "GET", url.copy_with(host=str(ip)), headers=headers, extensions=extensions
        )
        try:
            return await client.send(request, stream=True)
        except httpx.ConnectTimeout as exc:
            failure = exc
        except httpx.ConnectError as exc:
            failure = exc
        except httpx.TimeoutException:
            raise InvalidInput(
                f"image URL did not answer within {settings.fetch_total_timeout_s:g} s"
            ) from None
        except httpx.HTTPError as exc:
            raise InvalidInput(f"image URL could not be fetched: {_describe(exc)}") from None
    if isinstance(failure, httpx.ConnectTimeout):
        raise InvalidInput(
            f"image URL host {host} did not accept a connection within {settings.fetch_connect_timeout_s:g} s"
        )
    raise InvalidInput(f"image URL host {host} could not be reached: {_describe(failure)}")


async def _read_limited(response: httpx.Response, limit: int) -> bytes:
    declared = response.headers.get("content-length")
    if declared and declared.strip().isdigit() and int(declared) > limit:
        raise InvalidInput(f"image at URL is {int(declared)} bytes, more than the limit of {limit}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in _decoded_body(response, limit):
            size += len(chunk)
            if size > limit:
                raise InvalidInput(f"image at URL is more than the limit of {limit} bytes")
            chunks.append(chunk)
    except httpx.TimeoutException:
        raise InvalidInput("image URL stopped sending data (read timeout)") from None
    except httpx.HTTPError as exc:
        raise InvalidInput(f"image URL body could not be read: {_describe(exc)}") from None
    return b"".join(chunks)


async def _decoded_body(response: httpx.Response, limit: int) -> AsyncIterator[bytes]:
    """The body, gzip/deflate undone by us with a bound on the output: httpx's own decoder would
    inflate each network chunk whole (about 1000x), a zip bomb's way into memory."""
    encoding = response.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        async for chunk in response.aiter_raw():
            yield chunk
        return
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise InvalidInput(f"image URL answered with unsupported Content-Encoding {encoding}")
    # wbits 47 = zlib or gzip header, detected; raw deflate (what some servers send) is wbits -15.
    inflater = zlib.decompressobj(47)
    first = True
    try:
        async for raw in response.aiter_raw():
            if first and encoding == "deflate" and raw[:1] and (raw[0] & 0x0F) != 8:
                inflater = zlib.decompressobj(-15)
            first = False
            data = raw
            while data:
                # limit + 1 per call: enough to notice that the limit is passed, never more.
                out = inflater.decompress(data, limit + 1)
                yield out
                data = inflater.unconsumed_tail
        yield inflater.flush()
    except zlib.error:
        raise InvalidInput(f"image URL body is not valid {encoding} data") from None


def _describe(exc: BaseException | None) -> str:
    if exc is None:
        return "no address to connect to"
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


_SSL_CONTEXT: ssl.SSLContext | None = None


def _system_ssl_context() -> ssl.SSLContext:
    """httpx's default verification context, built on first use and shared (it costs ~10 ms)."""
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        _SSL_CONTEXT = httpx.create_ssl_context()
    return _SSL_CONTEXT
