"""Webhook fairness: a receiver that hangs delays its own deliveries, not other tenants'.

The end-to-end test runs a real API subprocess (no worker: requests are cancelled while QUEUED,
which ends them and queues their webhooks) on a real Redis, a real receiver that accepts and never
answers, and a real good receiver on another host. The hanging receiver counts the connections
open at once from the kernel's side (a peer that closed reads as EOF), so a count is never stale
because its thread has not woken yet."""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import socketserver
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import redis.asyncio as aioredis
from PIL import Image

from app.core import lua_scripts
from app.core.job_metrics import WEBHOOKS
from app.core.job_spec import Status
from app.core.lifecycle import as_text
from app.core.outbound_addresses import default_policy
from app.core.redis_keys import RedisKeys, RequestField
from app.core.webhook_hosts import HostSlots, host_key
from app.core.webhooks import ATTEMPTS, Deliverer, member, post
from tests.conftest import REDIS_URL
from tests.faults import wait_until
from tests.http_fixtures import Exchange, LocalHTTPServer
from tests.specs import make_spec
from tests.stack import make_stack

SLUG = "sdxl-img2img"
HANGING = 64
PER_HOST = 4
TIMEOUT_S = 2.0
BACKOFF_S = 0.2
GOOD_BOUND_S = 3.0  # before per-host slots: about 4 rounds of the timeout (32 s at 16 slots, 10 s)


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "olive").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


# --- a receiver that accepts and never answers -------------------------------------------------------


def peer_is_open(sock: socket.socket) -> bool:
    try:
        return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
    except BlockingIOError:
        return True  # nothing to read, not closed
    except OSError:
        return False


@dataclass
class HangingReceiver:
    """Reads each POST's head, records it, then holds the connection until the client closes it."""

    host: str = "127.0.0.2"
    attempts: dict[str, list[int]] = field(default_factory=dict)  # request id -> x-webhook-attempt seen
    held_s: list[float] = field(default_factory=list)  # how long each closed connection was held
    peak_open: int = 0

    def __post_init__(self) -> None:
        owner = self
        self.lock = threading.Lock()
        self._open: set[socket.socket] = set()

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = self.request.recv(65536)
                    if not chunk:
                        return
                    head += chunk
                owner._arrived(self.request, head)
                started = time.monotonic()
                try:
                    while self.request.recv(65536):  # the body, then EOF when the client gives up
                        pass
                except OSError:
                    pass
                with owner.lock:
                    owner._open.discard(self.request)
                    owner.held_s.append(time.monotonic() - started)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            block_on_close = False
            allow_reuse_address = True
            request_queue_size = 128

        self.server = Server((self.host, 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def _arrived(self, sock: socket.socket, head: bytes) -> None:
        headers = dict(
            line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:] if ": " in line
        )
        lowered = {name.lower(): value for name, value in headers.items()}
        with self.lock:
            self._open = {s for s in self._open if peer_is_open(s)}
            self._open.add(sock)
            self.peak_open = max(self.peak_open, len(self._open))
            self.attempts.setdefault(lowered["x-request-id"], []).append(int(lowered["x-webhook-attempt"]))

    def url(self) -> str:
        return f"http://{self.host}:{self.server.server_address[1]}/hook"

    def seen(self) -> dict[str, list[int]]:
        with self.lock:
            return {request_id: list(found) for request_id, found in self.attempts.items()}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- pure pieces ----------------------------------------------------------------------------------


def test_host_key_is_lowercased_host_and_port():
    assert host_key("HTTP://Hooks.Example.COM/a") == "hooks.example.com:80"
    assert host_key("https://hooks.example.com./b?x=1") == "hooks.example.com:443"
    assert host_key("http://hooks.example.com:8080/") == "hooks.example.com:8080"
    assert host_key("http://[::1]:9000/") == "[::1]:9000"
    assert host_key("http://127.0.0.1:1/") != host_key("http://127.0.0.1:2/")
    assert host_key("ftp://example.com/") is None
    assert host_key("not a url") is None


def test_host_slots_hold_per_host_and_free_on_release():
    slots = HostSlots(per_host=2)
    assert [slots.take("a:80") for _ in range(3)] == [True, True, False]
    assert slots.take("b:80")  # another host is not held back by a's
    slots.release("a:80")
    assert slots.take("a:80") and not slots.take("a:80")
    assert all(slots.take(None) for _ in range(5))  # no host: the POST refuses it, never held
    slots.release("b:80")
    assert slots.in_flight("b:80") == 0 and "b:80" not in slots._in_flight


# --- the put-back step (Lua, real Redis) -----------------------------------------------------------


def claim(client, keys: RedisKeys, most: int = 10) -> list[bytes]:
    claimed, _ = lua_scripts.run(
        client,
        "webhook_claim",
        keys={"deliveries": keys.webhooks},
        args={"most": most, "lease": 15, "attempts": ATTEMPTS},
    )
    return claimed


def defer(client, keys: RedisKeys, attempt: int, request_id: str, delay: float = 0.5) -> int:
    return lua_scripts.run(
        client,
        "webhook_defer",
        keys={"deliveries": keys.webhooks},
        args={
            "claimed": f"{attempt}:{request_id}",
            "next": f"{attempt + 1}:{request_id}",
            "delay": delay,
            "attempts": ATTEMPTS,
        },
    )


def test_defer_puts_the_same_attempt_back_and_drops_its_lease(settings, redis_client):
    keys = RedisKeys(settings.redis_prefix)
    now = float(redis_client.time()[0])
    redis_client.zadd(keys.webhooks, {"2:a": now - 1})
    assert claim(redis_client, keys) == [b"2:a"]
    assert redis_client.zrange(keys.webhooks, 0, -1) == [b"3:a"]  # the lease
    assert defer(redis_client, keys, 2, "a") == 1
    scores = dict(redis_client.zrange(keys.webhooks, 0, -1, withscores=True))
    assert set(scores) == {b"2:a"}  # the same attempt, not counted as made
    redis_now = float(redis_client.time()[0])
    assert redis_now - 1 < scores[b"2:a"] < redis_now + 2
    assert claim(redis_client, keys) == []  # not due again before its delay


def test_defer_of_the_last_attempt_puts_it_back(settings, redis_client):
    keys = RedisKeys(settings.redis_prefix)
    last = ATTEMPTS - 1
    redis_client.zadd(keys.webhooks, {f"{last}:z": float(redis_client.time()[0]) - 1})
    assert claim(redis_client, keys) == [f"{last}:z".encode()]
    assert redis_client.zcard(keys.webhooks) == 0  # no lease after the last attempt
    assert defer(redis_client, keys, last, "z") == 1
    assert redis_client.zrange(keys.webhooks, 0, -1) == [f"{last}:z".encode()]


def test_defer_after_the_lease_was_claimed_elsewhere_adds_nothing(settings, redis_client):
    keys = RedisKeys(settings.redis_prefix)
    redis_client.zadd(keys.webhooks, {"0:b": float(redis_client.time()[0]) - 1})
    assert claim(redis_client, keys) == [b"0:b"]
    redis_client.zadd(keys.webhooks, {"1:b": 0})  # this process stalled past its lease ...
    assert claim(redis_client, keys) == [b"1:b"]  # ... and another deliverer made attempt 2
    assert defer(redis_client, keys, 0, "b") == 0
    assert redis_client.zrange(keys.webhooks, 0, -1) == [b"2:b"]  # only that one's lease


# --- the wall-clock bound on one attempt ----------------------------------------------------------


def trickle_headers_forever(ex: Exchange) -> None:
    """A status line, then one header byte every 0.2 s: each read succeeds, the head never ends."""
    ex.handler.close_connection = True
    if not ex.write(b"HTTP/1.1 200 OK\r\nX-Slow: "):
        return
    while ex.wait(0.2) and ex.write(b"a"):
        pass


def test_a_receiver_trickling_bytes_is_cut_at_the_attempt_bound(settings):
    with LocalHTTPServer() as server:
        url = server.route("/trickle", trickle_headers_forever)
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            asyncio.run(post(url, b"{}", {}, default_policy(settings), timeout_s=1.0))
        elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 1.6, elapsed  # httpx's per-read timeout (1 s) alone never fires here
    assert len(server.requests_for("/trickle")) == 1


# --- the delivery loop stops when cancelled, however busy ------------------------------------------


def test_the_busy_delivery_loop_stops_on_every_cancel(settings, hanging):
    """Cancelled at 20 moments while it claims, puts back and POSTs 64 deliveries to a full host,
    the loop ends within the attempt bound each time (an API process's shutdown waits for it).
    Python 3.11's wait_for inside redis-py can swallow such a cancel; the loop must stop anyway."""
    settings = settings.model_copy(
        update={"webhook_per_host": PER_HOST, "webhook_timeout_s": 1.0, "webhook_concurrency": 16}
    )
    keys = RedisKeys(settings.redis_prefix)
    spec = make_spec(request_id="h", scheduler="Euler", num_inference_steps=4, guidance_scale=7.5)
    fields = {
        RequestField.STATUS: Status.FAILED.value,
        RequestField.SPEC: spec.to_json(),
        RequestField.ERROR: "cancelled",
        RequestField.WEBHOOK: hanging.url(),
        RequestField.BASE_URL: "",
    }

    async def scenario() -> list[float]:
        aio = aioredis.Redis.from_url(REDIS_URL)
        stop_times = []
        try:
            for n in range(HANGING):
                await aio.hset(keys.request(f"h{n}"), mapping=fields)
            for k in range(20):
                await aio.delete(keys.webhooks)
                now = float((await aio.time())[0])
                await aio.zadd(keys.webhooks, {member(0, f"h{n}"): now - 1 for n in range(HANGING)})
                task = asyncio.create_task(Deliverer(settings, keys, aio).run())
                await asyncio.sleep(0.013 * k)
                task.cancel()
                cancelled = time.monotonic()
                await asyncio.wait([task], timeout=5)
                assert task.done(), f"cancelled after {0.013 * k:.3f} s, still running 5 s later"
                stop_times.append(time.monotonic() - cancelled)
            return stop_times
        finally:
            await aio.aclose()

    stop_times = asyncio.run(scenario())
    assert max(stop_times) < 1.0 + 0.5, stop_times


# --- end to end: 64 deliveries to a hanging host, one to a good host --------------------------------


@pytest.fixture(scope="module")
def hanging():
    receiver = HangingReceiver()
    yield receiver
    receiver.close()


@pytest.fixture(scope="module")
def fair_stack():
    stack = make_stack(
        SDXL_WEBHOOK_TIMEOUT_S=str(TIMEOUT_S),
        SDXL_WEBHOOK_BACKOFF_S=str(BACKOFF_S),
        SDXL_WEBHOOK_PER_HOST=str(PER_HOST),
        SDXL_WEBHOOK_CONCURRENCY="16",
    )
    stack.start_api()
    yield stack
    stack.stop()


def end_with_webhook(client: httpx.Client, body: dict, webhook_url: str) -> str:
    """Submit (QUEUED: no worker) and cancel: the request ends, its webhook is due."""
    response = client.post(f"/v2/{SLUG}", json={**body, "webhook_url": webhook_url})
    assert response.status_code == 200, response.text
    request_id = response.json()["request_id"]
    assert client.delete(f"/v2/requests/{request_id}").status_code == 202
    return request_id


def test_a_hanging_host_neither_delays_another_host_nor_holds_more_than_its_slots(fair_stack, hanging):
    good_arrivals: list[float] = []

    def good(ex: Exchange) -> None:
        good_arrivals.append(time.monotonic())
        ex.start(200, {"Content-Length": "0"})

    body = {"image": png_b64(), "prompt": "p", "num_inference_steps": 20, "strength": 0.5}
    key = fair_stack.create_key(name="fairness")
    with (
        LocalHTTPServer() as good_server,
        httpx.Client(base_url=fair_stack.base_url, headers={"x-api-key": key}, timeout=30) as client,
    ):
        good_url = good_server.route("/good", good)
        hanging_ids = [end_with_webhook(client, body, hanging.url()) for _ in range(HANGING)]
        good_id = end_with_webhook(client, body, good_url)
        good_ended = time.monotonic()
        wait_until(lambda: good_arrivals, 20, "the good webhook")
        delay_s = good_arrivals[0] - good_ended
        print(f"\ngood webhook {delay_s * 1000:.0f} ms after its request ended, behind {HANGING} hanging")
        assert delay_s <= GOOD_BOUND_S

        # The hanging ones are cut at the bound, counted as failures and retried: nothing lost.
        wait_until(
            lambda: any(2 in found for found in hanging.seen().values()), 20, "a hanging webhook's retry"
        )
        seen_before = hanging.seen()
        members = [as_text(m) for m in fair_stack.redis().zrange(fair_stack.keys.webhooks, 0, -1)]
        seen_after = hanging.seen()
        metrics = fair_stack.redis().hgetall(fair_stack.keys.metrics(WEBHOOKS))

    assert good_id not in {m.split(":", 1)[1] for m in members}
    scheduled = {request_id: int(n) for n, request_id in (m.split(":", 1) for m in members)}
    assert sorted(scheduled) == sorted(hanging_ids) and len(members) == HANGING  # one each, none lost
    for request_id, next_attempt in scheduled.items():
        before, after = seen_before.get(request_id, []), seen_after.get(request_id, [])
        # Attempts reach the receiver numbered 1, 2, 3 ...: a put-back one is not counted as made.
        assert after == list(range(1, len(after) + 1)), (request_id, after)
        assert len(before) <= next_attempt <= len(after) + 1, (request_id, next_attempt, after)
    assert hanging.peak_open == PER_HOST  # reached, never passed
    assert int(metrics[b"failed"]) >= PER_HOST and int(metrics[b"delivered"]) == 1
    # Each hanging POST was cut at the attempt's bound (counted from the head's arrival: less).
    assert hanging.held_s and max(hanging.held_s) < TIMEOUT_S + 0.5, hanging.held_s
