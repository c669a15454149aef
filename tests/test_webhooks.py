"""Webhooks (CONTRACT 6): real API and worker subprocesses on a real Redis, a real HTTP receiver.

The receiver is defined here, not taken from tests/http_fixtures.py: that server drops POST bodies,
and the signature can only be checked against the exact bytes that arrived."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import http.server as http_server
import io
import itertools
import json
import threading
import time
from dataclasses import dataclass, field

import httpx
import pytest
import redis.asyncio as aioredis
from PIL import Image

from app.core import lua_scripts
from app.core.errors import InvalidInput
from app.core.job_spec import Status
from app.core.lifecycle import Lifecycle, failed_fields
from app.core.outbound_addresses import is_public_address
from app.core.redis_keys import RedisKeys, RequestField
from app.core.settings import Settings
from app.core.webhook_urls import check_webhook_url
from app.core.webhooks import ATTEMPTS, Deliverer, Outcome, member, retry_delay_s, sign
from tests.conftest import REDIS_URL
from tests.faults import wait_request_end, wait_until
from tests.specs import make_spec
from tests.stack import make_stack, start_full_stack

SLUG = "sdxl-img2img"
SECRET = "s3cret-for-tests"
BACKOFF_S = 0.2


def png_b64() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "teal").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGE = png_b64()
FAST = {"image": IMAGE, "prompt": "p", "num_inference_steps": 20, "strength": 0.5}


# --- a receiver that keeps what arrived -----------------------------------------------------------


@dataclass
class Arrival:
    at: float
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """Answers POST /<path> with the codes given by `script(path, codes)` in turn (the last one
    repeats; 200 when none), and records every arrival."""

    arrivals: list[Arrival] = field(default_factory=list)
    scripts: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        owner = self
        self.lock = threading.Lock()

        class Handler(http_server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with owner.lock:
                    owner.arrivals.append(
                        Arrival(
                            time.monotonic(), self.path, {k.lower(): v for k, v in self.headers.items()}, body
                        )
                    )
                    codes = owner.scripts.get(self.path, [200])
                    code = codes.pop(0) if len(codes) > 1 else codes[0]
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http_server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def url(self, path: str, codes: list[int] | None = None) -> str:
        with self.lock:
            self.scripts[path] = list(codes or [200])
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def at(self, path: str) -> list[Arrival]:
        with self.lock:
            return [a for a in self.arrivals if a.path == path]

    def wait_for(self, path: str, count: int, timeout: float = 60) -> list[Arrival]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(found := self.at(path)) >= count:
                return found
            time.sleep(0.05)
        raise TimeoutError(f"{path}: {len(self.at(path))} of {count} webhook POSTs arrived")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_full_stack(
        tmp_path_factory.mktemp("stack"), SDXL_WEBHOOK_SECRET=SECRET, SDXL_WEBHOOK_BACKOFF_S=str(BACKOFF_S)
    )
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def http(stack):
    with httpx.Client(
        base_url=stack.base_url, headers={"x-api-key": stack.create_key(name="hooks")}, timeout=60
    ) as client:
        yield client


def submit(http: httpx.Client, webhook_url: str, **body) -> str:
    response = http.post(f"/v2/{SLUG}", json={**FAST, **body, "webhook_url": webhook_url})
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def wait_terminal(http: httpx.Client, request_id: str, timeout: float = 60) -> dict:
    return wait_request_end(lambda: http.get(f"/v2/requests/{request_id}").json(), timeout)


def assert_signed(arrival: Arrival) -> None:
    expected = "sha256=" + hmac.new(SECRET.encode(), arrival.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(arrival.headers["x-signature"], expected)


# --- pure pieces ----------------------------------------------------------------------------------


def test_signature_is_hmac_sha256_of_the_body():
    # RFC 4231 test case 2.
    digest = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert sign(b"what do ya want for nothing?", "Jefe") == f"sha256={digest}"
    assert sign(b"what do ya want for nothing!", "Jefe") != f"sha256={digest}"


def test_retry_schedule_doubles_five_times_then_stops():
    assert [retry_delay_s(n, 1.0) for n in range(7)] == [1, 2, 4, 8, 16, None, None]
    assert [retry_delay_s(n, BACKOFF_S) for n in range(5)] == pytest.approx([0.2, 0.4, 0.8, 1.6, 3.2])
    assert ATTEMPTS == 6


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/hook",
        "http://10.1.2.3:8080/hook",
        "http://[::1]/hook",
        "https://169.254.169.254/latest",
        "http://2130706433/hook",
        "http://0177.0.0.1/hook",
        "http://localhost/hook",
        "http://api.localhost./hook",
    ],
)
def test_submission_refuses_a_literal_private_host(url, settings):
    private_off = settings.model_copy(update={"allow_private_urls": False})
    with pytest.raises(InvalidInput, match="webhook_url"):
        check_webhook_url(url, private_off)
    check_webhook_url(url, settings)  # allowed with SDXL_ALLOW_PRIVATE_URLS=1


def test_submission_accepts_public_hosts_without_dns(settings):
    private_off = settings.model_copy(update={"allow_private_urls": False})
    for url in ("https://hooks.example.com/x", "http://93.184.216.34/x", "https://no-such-host.invalid/x"):
        check_webhook_url(url, private_off)


# --- the terminal transitions queue the delivery (Lua, real Redis) ---------------------------------


def processing_record(client, keys: RedisKeys, request_id: str, webhook: bool) -> None:
    fields = {
        RequestField.STATUS: "PROCESSING",
        RequestField.WORKER: "w1",
        RequestField.ATTEMPTS: 2,
        RequestField.SPEC: "{}",
    }
    if webhook:
        fields[RequestField.WEBHOOK] = "http://127.0.0.1:9/hook"
    client.hset(keys.request(request_id), mapping=fields)


def test_reap_to_worker_lost_queues_the_delivery(settings, redis_client):
    keys = RedisKeys(settings.redis_prefix)
    lifecycle = Lifecycle(keys, settings.result_ttl_s)
    processing_record(redis_client, keys, "lost", webhook=True)
    assert lifecycle.reap(redis_client, "lost", "w1", keys.queue_name("tiny")) == b"FAILED"
    assert redis_client.zrange(keys.webhooks, 0, -1) == [b"0:lost"]
    assert redis_client.llen(keys.webhook_wake) == 1


def test_finish_queues_a_delivery_only_when_a_webhook_was_given(settings, redis_client):
    keys = RedisKeys(settings.redis_prefix)
    lifecycle = Lifecycle(keys, settings.result_ttl_s)
    processing_record(redis_client, keys, "plain", webhook=False)
    processing_record(redis_client, keys, "hooked", webhook=True)
    outputs = {"hooked-0.jpg": b"jpeg"}
    assert lifecycle.finish(redis_client, "plain", "w1", failed_fields("x", 500)) == b"DONE"
    assert redis_client.zcard(keys.webhooks) == 0
    assert lifecycle.finish(redis_client, "hooked", "w1", failed_fields("x", 500), outputs) == b"DONE"
    assert redis_client.zrange(keys.webhooks, 0, -1) == [b"0:hooked"]
    assert redis_client.get(keys.output("hooked", "hooked-0.jpg")) == b"jpeg"  # outputs still stored


def test_claim_takes_each_due_attempt_once_and_leases_the_next(settings, redis_client):
    keys = RedisKeys(settings.redis_prefix)

    def claim(keys: list[str], args: list[int]) -> list:
        [most, lease, attempts] = args
        return lua_scripts.run(
            redis_client,
            "webhook_claim",
            keys={"deliveries": keys[0]},
            args={"most": most, "lease": lease, "attempts": attempts},
        )

    now = float(redis_client.time()[0])
    redis_client.zadd(keys.webhooks, {"0:a": now - 2, "5:b": now - 1, "0:c": now + 100})
    claimed, wait = claim(keys=[keys.webhooks], args=[10, 15, ATTEMPTS])
    assert claimed == [b"0:a", b"5:b"]
    assert 13 < float(wait) <= 16  # next due: a's next attempt, after the lease
    assert claim(keys=[keys.webhooks], args=[10, 15, ATTEMPTS])[0] == []  # nothing twice
    scores = dict(redis_client.zrange(keys.webhooks, 0, -1, withscores=True))
    assert set(scores) == {b"1:a", b"0:c"}  # b's attempt 6 was the last: no seventh scheduled
    assert now + 13 < scores[b"1:a"] < now + 17


# --- the deliverer against real Redis, in process ----------------------------------------------------


def test_deliverer_refuses_a_private_address_at_delivery_and_does_not_retry(settings, receiver):
    """A name (or anything that passed submission) that turns out private is refused, not retried."""
    keys = RedisKeys(settings.redis_prefix)
    url = receiver.url("/private-at-delivery")
    spec = make_spec(request_id="r1", scheduler="Euler", num_inference_steps=4, guidance_scale=7.5)

    async def scenario() -> Outcome:
        aio = aioredis.Redis.from_url(REDIS_URL)
        try:
            fields = {
                RequestField.STATUS: Status.FAILED.value,
                RequestField.SPEC: spec.to_json(),
                RequestField.ERROR: "x",
                RequestField.WEBHOOK: url,
                RequestField.BASE_URL: "",
            }
            await aio.hset(keys.request("r1"), mapping=fields)
            await aio.zadd(keys.webhooks, {member(1, "r1"): time.time() + 60})  # as a claim leaves it
            deliverer = Deliverer(settings, keys, aio, policy=is_public_address)
            outcome = await deliverer.deliver("r1", 0)
            assert await aio.zcard(keys.webhooks) == 0  # no retry left scheduled
            return outcome
        finally:
            await aio.aclose()

    assert asyncio.run(scenario()) is Outcome.REFUSED
    assert receiver.at("/private-at-delivery") == []


# --- end to end -------------------------------------------------------------------------------------


def test_completed_request_posts_the_result_body_signed(http, receiver):
    url = receiver.url("/completed")
    request_id = submit(http, url, seed=5)
    result = wait_terminal(http, request_id)
    (arrival,) = receiver.wait_for("/completed", 1)
    assert result["status"] == "COMPLETED"
    assert json.loads(arrival.body) == http.get(f"/v2/requests/{request_id}").json()
    assert json.loads(arrival.body)["output"].startswith(str(http.base_url))  # absolute output URL
    assert_signed(arrival)
    assert arrival.headers["x-request-id"] == request_id
    assert arrival.headers["content-type"] == "application/json"
    # The outcome is counted after the POST returns: give the deliverer a moment.
    metric = 'sdxl_webhooks_total{outcome="delivered"}'
    wait_until(lambda: metric in http.get("/metrics").text, 10, "the delivery to be counted")


def test_base64_request_posts_the_images_inline(http, receiver):
    url = receiver.url("/base64")
    request_id = submit(http, url, seed=6, base64=True)
    wait_terminal(http, request_id)
    (arrival,) = receiver.wait_for("/base64", 1)
    body = json.loads(arrival.body)
    assert body == http.get(f"/v2/requests/{request_id}").json()
    Image.open(io.BytesIO(base64.b64decode(body["output"]))).load()
    assert_signed(arrival)


def test_failed_request_is_delivered(http, receiver):
    url = receiver.url("/failed")
    request_id = submit(http, url, base_model="broken")
    result = wait_terminal(http, request_id)
    (arrival,) = receiver.wait_for("/failed", 1)
    body = json.loads(arrival.body)
    assert result["status"] == body["status"] == "FAILED"
    assert "broken" in body["error"] and body == result
    assert_signed(arrival)


def test_cancelled_queued_request_is_delivered(http, receiver):
    url = receiver.url("/cancelled")
    request_id = submit(http, url, base_model="idle")
    time.sleep(0.5)
    assert receiver.at("/cancelled") == []  # nothing before the end
    assert http.delete(f"/v2/requests/{request_id}").status_code == 202
    (arrival,) = receiver.wait_for("/cancelled", 1)
    body = json.loads(arrival.body)
    assert body["status"] == "FAILED" and body["error"] == "cancelled"
    assert_signed(arrival)


def test_retries_with_growing_gaps_until_a_2xx(http, receiver):
    url = receiver.url("/flaky", [500, 503, 200])
    request_id = submit(http, url, base_model="idle")
    http.delete(f"/v2/requests/{request_id}")
    arrivals = receiver.wait_for("/flaky", 3, timeout=20)
    time.sleep(6 * BACKOFF_S)
    arrivals = receiver.at("/flaky")
    assert len(arrivals) == 3
    assert [a.headers["x-webhook-attempt"] for a in arrivals] == ["1", "2", "3"]
    assert len({a.body for a in arrivals}) == 1  # the same body each time
    gaps = [b.at - a.at for a, b in itertools.pairwise(arrivals)]
    assert gaps[0] >= BACKOFF_S * 0.9 and gaps[1] >= 2 * BACKOFF_S * 0.9
    assert gaps[1] > gaps[0]


def test_gives_up_after_five_retries(stack, http, receiver):
    url = receiver.url("/down", [500])
    request_id = submit(http, url, base_model="idle")
    http.delete(f"/v2/requests/{request_id}")
    receiver.wait_for("/down", ATTEMPTS, timeout=30)
    time.sleep(5 * BACKOFF_S)  # no seventh POST (and, below, none scheduled)
    arrivals = receiver.at("/down")
    assert len(arrivals) == ATTEMPTS
    gaps = [b.at - a.at for a, b in itertools.pairwise(arrivals)]
    for n, gap in enumerate(gaps):
        assert gap >= BACKOFF_S * 2**n * 0.9, gaps
    assert gaps[-1] > gaps[0] * 8
    assert stack.redis().zcard(stack.keys.webhooks) == 0  # nothing left scheduled


def test_private_webhook_is_a_400_at_submission_and_never_contacted(tmp_path, receiver):
    strict = make_stack(SDXL_ALLOW_PRIVATE_URLS="0", SDXL_WEBHOOK_SECRET=SECRET)
    strict.start_api()
    try:
        key = strict.create_key(name="strict")
        url = receiver.url("/never")
        response = httpx.post(
            f"{strict.base_url}/v2/{SLUG}",
            json={**FAST, "webhook_url": url},
            headers={"x-api-key": key},
            timeout=30,
        )
        assert response.status_code == 400
        assert "webhook_url" in response.json()["error"]
        assert strict.redis().zcard(strict.keys.webhooks) == 0
    finally:
        strict.stop()
    assert receiver.at("/never") == []


def test_settings_default_backoff_is_one_second():
    assert Settings.model_fields["webhook_backoff_s"].default == 1.0
