"""A real HTTP(S) server on a loopback address, in a thread, for tests that fetch URLs.

Usage::

    with LocalHTTPServer() as server:                      # 127.0.0.1, a free port
        url = server.route("/cat.png", serve_bytes(png_bytes, content_type="image/png"))
        first = redirect_chain(server, hops=4, final_url=url)
        ...
        server.requests  # what arrived: method, path, headers

Responders (what a route does) are built by the functions below: `serve_bytes`, `redirect`,
`slow_drip`, `slow_headers`, `endless_stream`, `status`. A responder is any callable taking the
`Exchange` of one request; write your own for anything else.

The server answers each request in its own daemon thread; `stop()` (or leaving the `with` block)
tells long-running responders (slow drip, endless stream) to end, and closes the socket.
Bind another loopback address with `LocalHTTPServer(host="127.0.0.2")` (Linux routes the whole
127/8 to loopback). `LocalHTTPServer(ssl_context=...)` serves HTTPS; `self_signed_certificate`
makes a certificate for a name with the `openssl` command.
"""

from __future__ import annotations

import contextlib
import gzip
import http.server
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    client: tuple[str, int]


@dataclass
class Exchange:
    """One request being answered: write the status and headers, then the body."""

    handler: http.server.BaseHTTPRequestHandler
    stopping: threading.Event
    request: RecordedRequest

    def start(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.handler.send_response(status)
        for name, value in (headers or {}).items():
            self.handler.send_header(name, value)
        self.handler.end_headers()
        self.handler.wfile.flush()

    def write(self, data: bytes) -> bool:
        """Send body bytes now; False once the client has gone away or the server is stopping."""
        if self.stopping.is_set():
            return False
        try:
            self.handler.wfile.write(data)
            self.handler.wfile.flush()
            return True
        except OSError:
            return False

    def wait(self, seconds: float) -> bool:
        """Sleep, but wake up when the server stops; False if it is stopping."""
        return not self.stopping.wait(seconds)


Responder = Callable[[Exchange], None]


# --- responders ----------------------------------------------------------------------------------


def serve_bytes(
    body: bytes,
    *,
    content_type: str | None = "application/octet-stream",
    status: int = 200,
    headers: dict[str, str] | None = None,
    send_length: bool = True,
) -> Responder:
    """Answer `status` with `body`. `send_length=False` leaves the length out (close-delimited)."""

    def respond(ex: Exchange) -> None:
        head = dict(headers or {})
        if content_type:
            head.setdefault("Content-Type", content_type)
        if send_length:
            head.setdefault("Content-Length", str(len(body)))
        ex.handler.close_connection = True
        ex.start(status, head)
        ex.write(body)

    return respond


def status(code: int, body: bytes = b"", content_type: str = "text/plain") -> Responder:
    return serve_bytes(body, content_type=content_type, status=code)


def gzip_encoded(body: bytes, *, content_type: str = "image/png") -> Responder:
    """`body` gzip-compressed with `Content-Encoding: gzip` (a zip bomb when `body` is zeros)."""
    compressed = gzip.compress(body, compresslevel=9)
    return serve_bytes(compressed, content_type=content_type, headers={"Content-Encoding": "gzip"})


def redirect(location: str, code: int = 302) -> Responder:
    return serve_bytes(b"", content_type=None, status=code, headers={"Location": location})


def slow_drip(
    body: bytes,
    *,
    interval_s: float = 0.1,
    chunk_size: int = 1,
    content_type: str = "image/png",
) -> Responder:
    """Headers at once (with the full Content-Length), then `chunk_size` bytes every `interval_s`:
    each read succeeds, so only a deadline on the whole fetch stops it."""

    def respond(ex: Exchange) -> None:
        ex.handler.close_connection = True
        ex.start(200, {"Content-Type": content_type, "Content-Length": str(len(body))})
        for i in range(0, len(body), chunk_size):
            if not ex.wait(interval_s) or not ex.write(body[i : i + chunk_size]):
                return

    return respond


def slow_headers(delay_s: float, then: Responder | None = None) -> Responder:
    """Accept the connection and say nothing for `delay_s`, then answer with `then` (default 200)."""

    def respond(ex: Exchange) -> None:
        if ex.wait(delay_s):
            (then or serve_bytes(b"late"))(ex)

    return respond


def endless_stream(
    *, chunk: bytes = b"\x89PNG\r\n\x1a\n" + b"\x00" * 65_528, content_type: str = "image/png"
) -> Responder:
    """A body without end (no Content-Length, close-delimited): sends `chunk` until the client
    hangs up or the server stops. Counts what it sent in `ex.request.headers['x-sent-bytes']`."""

    def respond(ex: Exchange) -> None:
        ex.handler.close_connection = True
        ex.start(200, {"Content-Type": content_type})
        sent = 0
        while ex.write(chunk):
            sent += len(chunk)
            ex.request.headers["x-sent-bytes"] = str(sent)

    return respond


def redirect_chain(server: LocalHTTPServer, hops: int, final_url: str, *, prefix: str = "/hop") -> str:
    """Register `hops` redirects on `server` ending at `final_url`; returns the first URL."""
    target = final_url
    for i in reversed(range(hops)):
        target = server.route(f"{prefix}{i}", redirect(target))
    return target


# --- the server ----------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._answer()

    def _answer(self) -> None:
        owner = self.server.owner
        record = RecordedRequest(
            method=self.command,
            path=self.path,
            headers={k.lower(): v for k, v in self.headers.items()},
            client=self.client_address[:2],
        )
        with owner._lock:
            owner.requests.append(record)
            responder = owner._routes.get(self.path.split("?", 1)[0])
        ex = Exchange(self, owner._stopping, record)
        if responder is None:
            serve_bytes(b"not found", content_type="text/plain", status=404)(ex)
        else:
            responder(ex)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    owner: LocalHTTPServer

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client hanging up mid-body is what several tests do on purpose


@dataclass
class LocalHTTPServer:
    host: str = "127.0.0.1"
    port: int = 0
    ssl_context: ssl.SSLContext | None = None
    requests: list[RecordedRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._routes: dict[str, Responder] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # lifecycle
    def start(self) -> LocalHTTPServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        server_class = type("_BoundServer", (_Server,), {"address_family": family})
        server = server_class((self.host, self.port), _Handler, bind_and_activate=True)
        server.owner = self
        if self.ssl_context is not None:
            # Handshake in the request's thread (on first read), not in the accepting loop.
            server.socket = self.ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> LocalHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # routes
    @property
    def base_url(self) -> str:
        scheme = "https" if self.ssl_context is not None else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def url(self, path: str = "/") -> str:
        return self.base_url + path

    def route(self, path: str, responder: Responder) -> str:
        """Serve `path` with `responder`; returns the full URL of it."""
        with self._lock:
            self._routes[path] = responder
        return self.url(path)

    def requests_for(self, path: str) -> list[RecordedRequest]:
        with self._lock:
            return [r for r in self.requests if r.path.split("?", 1)[0] == path]


def unresponsive_listener(host: str = "127.0.0.1") -> tuple[socket.socket, list[socket.socket], int]:
    """A listening socket whose accept queue is full, so that a new connect() hangs (SYNs are
    dropped): for connect-timeout tests. Returns (listener, fillers, port); close them all after."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((host, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):  # fill the queue; the kernel takes backlog+1 and then drops
        filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        filler.setblocking(False)
        with contextlib.suppress(BlockingIOError):  # non-blocking connect: "in progress"
            filler.connect((host, port))
        fillers.append(filler)
    time.sleep(0.05)
    return listener, fillers, port


def self_signed_certificate(directory: Path, name: str = "localhost") -> tuple[Path, Path]:
    """A self-signed EC certificate for DNS name `name` (its own CA); returns (cert, key) paths.
    Needs the `openssl` command."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context


def client_ssl_context(cert: Path) -> ssl.SSLContext:
    """A client context trusting exactly `cert`, with hostname checking on."""
    return ssl.create_default_context(cafile=str(cert))
