"""Raw-socket clients against a real API subprocess (issue 10 item 15): too many or too large
request headers are a 431 in JSON; a client that disconnects while sending its body is logged at
INFO, never as an unexpected error with a traceback."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.stack import LOG_DIR

pytestmark = pytest.mark.e2e


def exchange(stack, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(raw)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def status_and_body(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize(
    "headers",
    [
        b"".join(b"x-h%d: v\r\n" % i for i in range(150)),  # too many
        b"x-big: " + b"a" * 40_000 + b"\r\n",  # too large
    ],
)
def test_oversized_headers_are_a_431(stack, headers):
    raw = b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + headers + b"connection: close\r\n\r\n"
    status, body = status_and_body(exchange(stack, raw))
    assert status == 431
    assert "headers too large" in body["error"]


def test_normal_headers_pass(stack):
    raw = b"GET /healthz HTTP/1.1\r\nhost: x\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(20))
    status, _ = status_and_body(exchange(stack, raw + b"connection: close\r\n\r\n"))
    assert status == 200


def test_client_gone_mid_body_is_logged_at_info(stack):
    key = stack.create_key(name="gone")
    raw = (
        b"POST /v2/sdxl-img2img HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        + f"x-api-key: {key}\r\ncontent-length: 100000\r\n\r\n".encode()
        + b'{"prompt": "p", "image": "'
    )
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(raw)
        time.sleep(0.5)
    time.sleep(1.0)
    log = "".join(path.read_text() for path in LOG_DIR.glob(f"{stack.prefix}-api-*.log"))
    assert "client disconnected before sending its whole body" in log, log[-2000:]
    assert "unexpected error" not in log and "Traceback" not in log, log[-2000:]
