"""URL fetching with its defences (CONTRACT 3), against real HTTP(S) servers on loopback addresses.

Refusal tests for loopback spellings run a real server behind the address and show both sides:
refused by default, fetched when `allow_private_urls` is on. So each spelling really reaches a
server, and it is the address policy, not a failed connection, that stops it.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Iterator

import anyio
import pytest

from app.core.errors import InvalidInput
from app.core.image_fetch import fetch_image_bytes
from app.core.image_intake import load_input_image
from app.core.outbound_addresses import is_public_address, parse_inet_aton
from app.core.settings import Settings
from tests import image_factory as f
from tests.http_fixtures import (
    LocalHTTPServer,
    client_ssl_context,
    endless_stream,
    gzip_encoded,
    redirect,
    redirect_chain,
    self_signed_certificate,
    serve_bytes,
    server_ssl_context,
    slow_drip,
    slow_headers,
    status,
    unresponsive_listener,
)

PNG = f.png(96, 64)
PUBLIC_ONLY = Settings(allow_private_urls=False)
PRIVATE_OK = Settings(allow_private_urls=True)


def fetch(url: str, settings: Settings, **kwargs: object) -> bytes:
    return anyio.run(lambda: fetch_image_bytes(url, settings, **kwargs))


def refusal(url: str, settings: Settings, **kwargs: object) -> tuple[str, float]:
    """The 400 message for `url`, and how long it took."""
    started = time.perf_counter()
    with pytest.raises(InvalidInput) as info:
        fetch(url, settings, **kwargs)
    assert info.value.status_code == 400
    return info.value.message, time.perf_counter() - started


@pytest.fixture
def server() -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer("127.0.0.1") as s:
        s.route("/img.png", serve_bytes(PNG, content_type="image/png"))
        yield s


@pytest.fixture
def server_v6() -> Iterator[LocalHTTPServer]:
    with LocalHTTPServer("::1") as s:
        s.route("/img.png", serve_bytes(PNG, content_type="image/png"))
        yield s


def only(*allowed: str):
    """An address policy allowing exactly these addresses (to tell two loopback servers apart)."""
    addresses = {ipaddress.ip_address(a) for a in allowed}
    return lambda ip: ip in addresses


# --- the address policy (pure) -------------------------------------------------------------------

NON_PUBLIC = [
    "127.0.0.1", "127.255.255.254", "10.0.0.1", "10.255.255.255", "172.16.0.1", "172.31.255.255",
    "192.168.0.1", "169.254.169.254", "100.64.0.1", "100.127.255.254", "0.0.0.0", "0.1.2.3",
    "224.0.0.1", "239.255.255.250", "255.255.255.255", "240.0.0.1", "198.18.0.1", "192.0.2.1",
    "198.51.100.7", "203.0.113.9", "192.0.0.1",
    "::1", "::", "fc00::1", "fd12:3456::1", "fe80::1", "fe80::1%2", "fec0::1", "ff02::1", "ff0e::1",
    "2001:db8::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::7f00:1",
    "2002:7f00:1::1", "2002:a00:1::1", "64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b:1::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
]  # fmt: skip
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "::ffff:8.8.8.8",
          "2002:808:808::1", "64:ff9b::808:808"]  # fmt: skip


@pytest.mark.parametrize("address", NON_PUBLIC)
def test_policy_refuses_non_public_addresses(address):
    assert is_public_address(ipaddress.ip_address(address)) is False


@pytest.mark.parametrize("address", PUBLIC)
def test_policy_allows_public_addresses(address):
    assert is_public_address(ipaddress.ip_address(address)) is True


@pytest.mark.parametrize(
    "spelling",
    ["127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1", "0x7F000001", "127.1", "0177.1", "127.0.1",
     "017700000001", "0", "10.1", "012.0.0.1", "0xa9fea9fe", "2852039166", "192.168.1", "1.2.3.4"],
)  # fmt: skip
def test_ip_spellings_are_read_as_the_os_reads_them(spelling):
    assert parse_inet_aton(spelling) == ipaddress.IPv4Address(socket.inet_aton(spelling))


@pytest.mark.parametrize(
    "text", ["example.com", "1.2.3.4.5", "256.1.1.1", "08.0.0.1", "1..1", "0x", "0x.1", ""]
)
def test_non_ip_hosts_are_not_read_as_ips(text):
    assert parse_inet_aton(text) is None


def test_ip_parser_agrees_with_inet_aton_on_many_spellings():
    parts = [
        "0",
        "00",
        "07",
        "08",
        "010",
        "0x",
        "0x7f",
        "0X1F",
        "0xg",
        "127",
        "255",
        "256",
        "65535",
        "16777215",
        "4294967295",
        "4294967296",
        "1e3",
        "",
        "-1",
        "+1",
        chr(0x661),
    ]  # fmt: skip  (an Arabic-Indic digit one)
    checked = 0
    for a in parts:
        for b in parts:
            for text in (a, f"{a}.{b}", f"{a}.1.{b}", f"1.{a}.2.{b}"):
                try:
                    expected = ipaddress.IPv4Address(socket.inet_aton(text))
                except (OSError, UnicodeError):
                    expected = None
                assert parse_inet_aton(text) == expected, text
                checked += 1
    assert checked == 4 * len(parts) ** 2


# --- every non-public address form is refused (and really reaches a server when allowed) --------

LOOPBACK_V4_FORMS = [
    "127.0.0.1", "2130706433", "0177.0.0.1", "0x7f.1", "0x7f000001", "127.1", "0177.1", "127.0.1",
    "localhost", "LocalHost", "0.0.0.0", "0", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]",
]  # fmt: skip


@pytest.mark.parametrize("host", LOOPBACK_V4_FORMS)
def test_loopback_spellings_are_refused_and_would_reach_the_server(host, server):
    url = f"http://{host}:{server.port}/img.png"
    message, elapsed = refusal(url, PUBLIC_ONLY)
    assert "not a public address" in message
    assert elapsed < 0.5
    assert server.requests == []
    assert fetch(url, PRIVATE_OK) == PNG  # the same URL does reach the server when allowed


def test_fully_qualified_localhost_is_refused(server):
    # "localhost." (trailing dot) is resolved by DNS rather than /etc/hosts: where it resolves,
    # to loopback, the policy refuses it; where it does not (this sandbox), it cannot be fetched.
    message, _ = refusal(f"http://LOCALHOST.:{server.port}/img.png", PUBLIC_ONLY)
    assert "not a public address" in message or "could not be resolved" in message
    assert server.requests == []


@pytest.mark.parametrize("host", ["[::1]", "[0:0:0:0:0:0:0:1]", "[::]"])
def test_ipv6_loopback_forms_are_refused_and_would_reach_the_server(host, server_v6):
    url = f"http://{host}:{server_v6.port}/img.png"
    message, _ = refusal(url, PUBLIC_ONLY)
    assert "not a public address" in message
    assert server_v6.requests == []
    assert fetch(url, PRIVATE_OK) == PNG


@pytest.mark.parametrize(
    "host",
    ["10.0.0.1", "172.16.0.1", "192.168.0.1", "169.254.169.254", "100.64.0.1", "224.0.0.1",
     "255.255.255.255", "240.0.0.1", "198.18.0.1", "0xa9fea9fe", "2852039166", "012.0.0.1", "10.1",
     "192.168.1", "[fc00::1]", "[fd00::1]", "[fe80::1]", "[fe80::1%25eth0]", "[fec0::1]", "[ff02::1]",
     "[2001:db8::1]", "[::ffff:10.0.0.1]", "[::ffff:a9fe:a9fe]", "[2002:a9fe:a9fe::1]",
     "[64:ff9b::a9fe:a9fe]", "[::7f00:1]"],
)  # fmt: skip
def test_private_and_special_addresses_are_refused_without_connecting(host):
    message, elapsed = refusal(f"http://{host}/a.png", PUBLIC_ONLY)
    assert "not a public address" in message, message
    assert elapsed < 0.5  # refused from the address alone: no connection was tried


def test_https_to_a_private_address_is_refused_too():
    message, _ = refusal("https://192.168.1.10/a.png", PUBLIC_ONLY)
    assert "not a public address" in message


def test_userinfo_does_not_hide_the_real_host(server):
    message, _ = refusal(f"http://example.com@127.0.0.1:{server.port}/img.png", PUBLIC_ONLY)
    assert "127.0.0.1" in message and "not a public address" in message


# --- schemes and malformed URLs ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("ftp://example.com/a.png", "must use http or https"),
        ("file:///etc/passwd", "must use http or https"),
        ("http://", "no host"),
        ("http:///a.png", "no host"),
        ("http://[::1/a.png", "not a valid URL"),
        ("http://host.invalid/a.png", "could not be resolved"),
        ("http://xn--/a.png", "could not be resolved"),  # a malformed IDNA label
        ("http://127.0.0.1:99999/a.png", "not a valid port"),
        ("http://" + "a" * 300 + ".com/", "could not be resolved"),
    ],
)
def test_bad_urls_are_refused(url, expected):
    message, _ = refusal(url, Settings(allow_private_urls=False, fetch_total_timeout_s=5))
    assert expected in message


# --- redirects -----------------------------------------------------------------------------------


def test_three_redirects_are_followed(server):
    first = redirect_chain(server, hops=3, final_url=server.url("/img.png"))
    assert fetch(first, PRIVATE_OK) == PNG
    assert [r.path for r in server.requests] == ["/hop0", "/hop1", "/hop2", "/img.png"]


def test_four_redirects_are_refused(server):
    first = redirect_chain(server, hops=4, final_url=server.url("/img.png"))
    message, _ = refusal(first, PRIVATE_OK)
    assert "redirected more than 3 times" in message
    assert [r.path for r in server.requests] == ["/hop0", "/hop1", "/hop2", "/hop3"]


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_every_redirect_status_is_followed_with_a_relative_location(code, server):
    url = server.route("/moved", redirect("/img.png", code))
    assert fetch(url, PRIVATE_OK) == PNG


def test_redirect_to_a_private_address_is_refused():
    # The policy allows 127.0.0.2 (standing in for a public host) and refuses 127.0.0.1.
    policy = only("127.0.0.2")
    with LocalHTTPServer("127.0.0.2") as public, LocalHTTPServer("127.0.0.1") as private:
        target = private.route("/secret.png", serve_bytes(PNG, content_type="image/png"))
        image = public.route("/img.png", serve_bytes(PNG, content_type="image/png"))
        bounce = public.route("/bounce", redirect(target))
        assert fetch(image, PUBLIC_ONLY, address_allowed=policy) == PNG  # the allowed host works
        message, _ = refusal(target, PUBLIC_ONLY, address_allowed=policy)  # direct: refused
        assert "127.0.0.1" in message and "not a public address" in message
        message, _ = refusal(bounce, PUBLIC_ONLY, address_allowed=policy)  # through a redirect
        assert "127.0.0.1" in message and "not a public address" in message
        assert private.requests == []  # the private server was never contacted
        assert [r.path for r in public.requests] == ["/img.png", "/bounce"]


def test_redirect_to_another_scheme_is_refused(server):
    url = server.route("/to-file", redirect("file:///etc/passwd"))
    message, _ = refusal(url, PRIVATE_OK)
    assert "must use http or https" in message


@pytest.mark.parametrize("location", ["http://[::1/x", "http://\x00/", "http://127.0.0.1:99999/"])
def test_redirect_to_an_invalid_url_is_refused(location, server):
    url = server.route("/garbage", redirect(location))
    message, _ = refusal(url, PRIVATE_OK)
    # Refused by us (port) or already by httpx's HTTP parser (bad Location header): a 400 either way.
    assert message.startswith("image URL") and ("valid" in message or "could not be fetched" in message)


def test_redirect_without_location_is_refused(server):
    url = server.route("/nowhere", status(302))
    message, _ = refusal(url, PRIVATE_OK)
    assert "302 without a Location" in message


# --- what the server answers ---------------------------------------------------------------------


@pytest.mark.parametrize("code", [403, 404, 500, 503])
def test_non_2xx_answers_are_refused_saying_so(code, server):
    url = server.route(f"/status{code}", status(code, b"nope"))
    message, _ = refusal(url, PRIVATE_OK)
    assert message == f"image URL answered HTTP {code}, not 2xx"


def test_the_original_host_header_is_sent_to_the_checked_address(server):
    assert fetch(f"http://localhost:{server.port}/img.png", PRIVATE_OK) == PNG
    (request,) = server.requests
    assert request.headers["host"] == f"localhost:{server.port}"
    assert request.client[0] == "127.0.0.1"


def test_content_type_is_not_trusted_the_bytes_decide(server):
    as_html = server.route("/png-as-html", serve_bytes(PNG, content_type="text/html"))
    assert anyio.run(load_input_image, as_html, PRIVATE_OK).width == 96
    html_as_png = server.route("/html-as-png", serve_bytes(f.html(), content_type="image/png"))
    with pytest.raises(InvalidInput, match="not an image"):
        anyio.run(load_input_image, html_as_png, PRIVATE_OK)


def test_gzip_encoded_image_is_decoded(server):
    url = server.route("/gz.png", gzip_encoded(PNG))
    assert fetch(url, PRIVATE_OK) == PNG


# --- limits: bytes and time ----------------------------------------------------------------------


def test_endless_stream_is_cut_at_the_byte_limit(server):
    settings = Settings(allow_private_urls=True, max_image_bytes=2_000_000)
    url = server.route("/endless", endless_stream())
    message, elapsed = refusal(url, settings)
    assert message == "image at URL is more than the limit of 2000000 bytes"
    assert elapsed < 2.0
    # The connection was dropped: the server's writes fail and it stops sending.
    time.sleep(0.3)
    (request,) = server.requests_for("/endless")
    sent = int(request.headers.get("x-sent-bytes", 0))
    time.sleep(0.3)
    assert int(request.headers.get("x-sent-bytes", 0)) == sent
    print(f"endless stream: refused after {elapsed:.3f} s; server managed to send {sent} bytes")


def test_declared_length_over_the_limit_is_refused_before_reading(server):
    settings = Settings(allow_private_urls=True, max_image_bytes=1_000_000)
    url = server.route("/big", serve_bytes(b"\x00" * 3_000_000, content_type="image/png"))
    message, elapsed = refusal(url, settings)
    assert message == "image at URL is 3000000 bytes, more than the limit of 1000000"
    assert elapsed < 1.0


def test_gzip_bomb_is_cut_at_the_byte_limit(server):
    settings = Settings(allow_private_urls=True, max_image_bytes=1_000_000)
    url = server.route("/bomb.png", gzip_encoded(b"\x00" * 50_000_000))  # ~50 KB on the wire
    message, elapsed = refusal(url, settings)
    assert message == "image at URL is more than the limit of 1000000 bytes"
    assert elapsed < 1.0


def test_slow_drip_hits_the_total_deadline(server):
    settings = Settings(allow_private_urls=True, fetch_total_timeout_s=1.0, fetch_connect_timeout_s=1.0)
    # One byte every 20 ms: every read succeeds, the whole body would take minutes.
    url = server.route("/drip.png", slow_drip(f.png(320, 240), interval_s=0.02))
    message, elapsed = refusal(url, settings)
    assert message == "image URL did not answer in full within 1 s"
    assert 0.9 <= elapsed < 1.8, elapsed
    print(f"slow drip: refused after {elapsed:.3f} s (deadline 1 s)")


def test_server_that_never_answers_hits_the_total_deadline(server):
    settings = Settings(allow_private_urls=True, fetch_total_timeout_s=1.0)
    url = server.route("/silent", slow_headers(30))
    message, elapsed = refusal(url, settings)
    assert "within 1 s" in message
    assert 0.9 <= elapsed < 1.8, elapsed


def test_connect_timeout():
    listener, fillers, port = unresponsive_listener()
    try:
        settings = Settings(allow_private_urls=True, fetch_connect_timeout_s=0.5, fetch_total_timeout_s=5)
        message, elapsed = refusal(f"http://127.0.0.1:{port}/a.png", settings)
    finally:
        for sock in [listener, *fillers]:
            sock.close()
    assert message == "image URL host 127.0.0.1 did not accept a connection within 0.5 s"
    assert 0.4 <= elapsed < 1.5, elapsed


def test_connection_refused_is_a_400(server):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    message, _ = refusal(f"http://127.0.0.1:{port}/a.png", PRIVATE_OK)
    assert "could not be reached" in message


# --- https: the checked IP is dialled, the certificate is checked against the name ---------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    directory = tmp_path_factory.mktemp("certs")
    return {
        "localhost": self_signed_certificate(directory, "localhost"),
        "other": self_signed_certificate(directory, "other.example"),
    }


def test_https_fetch_uses_the_name_for_sni_and_certificate(certificates):
    cert, key = certificates["localhost"]
    with LocalHTTPServer("127.0.0.1", ssl_context=server_ssl_context(cert, key)) as tls:
        tls.route("/img.png", serve_bytes(PNG, content_type="image/png"))
        url = f"https://localhost:{tls.port}/img.png"
        assert fetch(url, PRIVATE_OK, ssl_context=client_ssl_context(cert)) == PNG
        assert tls.requests[0].headers["host"] == f"localhost:{tls.port}"
        # Without trusting the certificate the fetch fails: verification is on.
        message, _ = refusal(url, PRIVATE_OK)
        assert "could not be reached" in message and "CERTIFICATE_VERIFY_FAILED" in message


def test_https_certificate_for_another_name_is_refused(certificates):
    cert, key = certificates["other"]
    with LocalHTTPServer("127.0.0.1", ssl_context=server_ssl_context(cert, key)) as tls:
        tls.route("/img.png", serve_bytes(PNG, content_type="image/png"))
        message, _ = refusal(
            f"https://localhost:{tls.port}/img.png", PRIVATE_OK, ssl_context=client_ssl_context(cert)
        )
        assert "could not be reached" in message
        assert "localhost" in message or "CERTIFICATE_VERIFY_FAILED" in message
        assert tls.requests == []
