"""Webhooks (CONTRACT 6): the result body POSTed to `webhook_url` once the request ends, signed.

How a delivery flows, and why:
- at submission, a `webhook_url` naming a literal non-public IP (or `localhost`) is refused at once
  (`app.core.webhook_urls.check_webhook_url`: cheap, no DNS); the request's public base URL is
  stored with it, so the body can name absolute output URLs later, with no HTTP request at hand;
- every terminal transition (app/lua/finish, cancel, reap) adds `0:<request id>` to the deliveries
  sorted set `RedisKeys.webhooks` (scored by when it is due) in the same atomic step as the end itself,
  and pushes a token to `RedisKeys.webhook_wake`: a delivery is never lost between the two, even when no
  API process runs at that moment;
- a `Deliverer` runs in every API process (replicas share the work): it claims due deliveries with
  one Lua call (app/core/lua/webhook_claim.lua), which also schedules each one's next attempt after a
  lease, so that a process dying mid-POST loses nothing and two replicas never make the same
  attempt; a 2xx removes that next attempt, a failure moves it to its backoff time
  (`retry_delay_s`: base, 2 base, 4 base... with `SDXL_WEBHOOK_BACKOFF_S` as base), 1 + 5 attempts
  in all; a refused address is never retried;
- the POST goes through app/fetch.py's address checks (resolved once, every address checked,
  connected to the checked address), follows no redirect, and has a 2 s connect deadline and a
  wall-clock bound on the whole attempt (`SDXL_WEBHOOK_TIMEOUT_S`, 5 s): httpx's own timeouts are
  per read, so a receiver trickling bytes would otherwise hold a slot for ever;
- fairness: `SDXL_WEBHOOK_CONCURRENCY` POSTs in flight per process, at most `SDXL_WEBHOOK_PER_HOST`
  of them to one host (app/core/webhook_hosts.py). A claimed attempt whose host is full is put back
  unmade (app/core/lua/webhook_defer.lua: same attempt number, due again in DEFER_S), so a host
  that hangs delays its own deliveries, not the other tenants'.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import ssl
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import anyio
import httpx
import redis

from app.core import job_metrics, lua_scripts
from app.core.answer_bodies import result_body
from app.core.errors import InvalidInput
from app.core.job_spec import JobSpec, Status
from app.core.lifecycle import as_text, decode_hash
from app.core.outbound_addresses import (
    AddressPolicy,
    AddressRefused,
    checked_addresses,
    default_policy,
    parse_ip_host,
)
from app.core.redis_clients import BLOCKING_SLICE_S
from app.core.redis_keys import RedisKeys, RequestField
from app.core.request_records import RequestRecord
from app.core.settings import Settings
from app.core.webhook_hosts import HostSlots, host_and_port, host_key

log = logging.getLogger("sdxl.webhooks")

MAX_RETRIES = 5  # CONTRACT 6: "retried with backoff up to 5 times"
ATTEMPTS = 1 + MAX_RETRIES
CONNECT_TIMEOUT_S = 2.0  # at most; never above the attempt's whole bound
# A claimed attempt's next attempt comes due this long after the attempt's bound if nobody reports
# back (the process died).
LEASE_MARGIN_S = 5.0
# A claimed attempt whose host is full is due again after a random delay in this range: soon enough
# to take a slot that frees, spread so that a host's put-back attempts do not all return at once.
DEFER_S = (0.2, 1.0)
USER_AGENT = "sdxl-img2img-webhook/1"


# --- pure pieces ---------------------------------------------------------------------------------


def sign(body: bytes, secret: str) -> str:
    """The `x-signature` header value: `sha256=<hex HMAC-SHA256 of the exact body bytes>`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def retry_delay_s(attempt: int, base_s: float) -> float | None:
    """Seconds between failed attempt `attempt` (0 = the first) and the next; None: no retry left."""
    if attempt >= MAX_RETRIES:
        return None
    return base_s * 2**attempt


def member(attempt: int, request_id: str) -> str:
    return f"{attempt}:{request_id}"


def parse_member(value: str | bytes) -> tuple[int, str]:
    text = as_text(value)
    attempt, _, request_id = text.partition(":")
    return int(attempt), request_id


def body_bytes(body: dict[str, Any]) -> bytes:
    # The same serialisation as the API's JSONResponse, so the bytes match GET /v2/requests/{id}.
    return json.dumps(body, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()


# --- one delivery ---------------------------------------------------------------------------------


class Refused(Exception):
    """The webhook must not be sent: an unusable URL or an address the policy refuses."""


class Outcome(StrEnum):
    DELIVERED = "delivered"  # 2xx
    FAILED = "failed"  # anything else: retried
    REFUSED = "refused"  # the address is not allowed or the URL is unusable: never retried
    GONE = "gone"  # the request record expired: nothing left to send


@dataclass(frozen=True)
class Delivery:
    url: str
    body: bytes


async def load_delivery(aio: Any, keys: RedisKeys, request_id: str) -> Delivery | None:
    """The webhook URL and the result body exactly as GET /v2/requests/{id} gives it."""
    fields = decode_hash(await aio.hgetall(keys.request(request_id)))
    url = fields.get(RequestField.WEBHOOK)
    if not url or RequestField.STATUS not in fields or RequestField.SPEC not in fields:
        return None
    record = RequestRecord(
        request_id, Status(fields[RequestField.STATUS]), JobSpec.from_json(fields[RequestField.SPEC]), fields
    )
    outputs: list[bytes] | None = None
    result = record.result
    if record.status is Status.COMPLETED and record.spec.base64 and result:
        outputs = []
        for image in result["images"]:
            data = await aio.get(keys.output(request_id, image["file_name"]))
            if data is None:
                return None
            outputs.append(data)
    base_url = fields.get(RequestField.BASE_URL, "")
    return Delivery(url=url, body=body_bytes(result_body(record, base_url, outputs)))


async def post(
    url: str,
    body: bytes,
    headers: dict[str, str],
    policy: AddressPolicy,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout_s: float = 5.0,
) -> int:
    """POST `body` to `url` at an address checked by `policy`; returns the HTTP status. The whole
    call (resolve, connect, send, the answer's status line and headers) ends within `timeout_s`.

    Raises Refused when it must not be sent; InvalidInput (the host did not resolve),
    httpx.HTTPError or TimeoutError when it could not be sent this time."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError):
        raise Refused("webhook_url is not a valid URL") from None
    target = host_and_port(parsed)
    if target is None:
        raise Refused("webhook_url must be an http(s) URL with a host")
    host, port = target
    with anyio.fail_after(timeout_s):  # wall clock: httpx's timeouts below are per read
        try:
            addresses = await checked_addresses(host, port, policy, what="webhook_url")
        except AddressRefused as exc:
            raise Refused(str(exc)) from None
        extensions = {}
        if parsed.scheme == "https" and parse_ip_host(host) is None:
            extensions["sni_hostname"] = host  # dial the checked IP, verify the certificate for the name
        async with httpx.AsyncClient(
            trust_env=False,
            follow_redirects=False,
            timeout=httpx.Timeout(timeout_s, connect=min(CONNECT_TIMEOUT_S, timeout_s)),
            verify=ssl_context or ssl.create_default_context(),
        ) as client:
            failure: Exception | None = None
            for ip in addresses:
                request = client.build_request(
                    "POST",
                    parsed.copy_with(host=str(ip)),
                    content=body,
                    headers={**headers, "Host": parsed.netloc.decode("ascii")},
                    extensions=extensions,
                )
                try:
                    response = await client.send(request, stream=True)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    failure = exc  # try the next address
                    continue
                await response.aclose()  # the answer's body is not needed (nor read: it may be huge)
                return response.status_code
            raise failure or httpx.ConnectError("no address to connect to")


# --- the deliverer --------------------------------------------------------------------------------


class Deliverer:
    """Runs in each API process: claims due deliveries, POSTs them, schedules the retries."""

    def __init__(
        self,
        settings: Settings,
        keys: RedisKeys,
        aio: Any,
        *,
        policy: AddressPolicy | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.settings = settings
        self.keys = keys
        self.aio = aio
        self.policy = policy or default_policy(settings)
        self.ssl_context = ssl_context
        self.hosts = HostSlots(settings.webhook_per_host)
        self.lease_s = settings.webhook_timeout_s + LEASE_MARGIN_S
        self._tasks: set[asyncio.Task[Outcome]] = set()

    async def run(self) -> None:
        """Forever; Redis outages are waited out. Cancel the task to stop (in-flight POSTs stop too:
        their next attempt comes due after the lease)."""
        this = asyncio.current_task()
        try:
            while True:
                # Python 3.11's asyncio.wait_for, which redis-py wraps around every command it
                # writes, returns normally when a cancel lands as the write completes: the cancel is
                # lost but still counted here, so the loop stops anyway (else shutdown hangs).
                if this is not None and this.cancelling():
                    raise asyncio.CancelledError
                try:
                    await self.step()
                except redis.RedisError as exc:
                    log.warning("webhooks: Redis unavailable", extra={"error": str(exc)})
                    await asyncio.sleep(1)
                except Exception:
                    # Supervised: logged, and the loop goes on (bad members are dropped in `step`).
                    log.exception("webhooks: delivery loop step failed; going on")
                    await asyncio.sleep(1)
        finally:
            for task in self._tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def step(self) -> None:
        """Claim what is due (as many as there are free slots) and start it, or put it back when its
        host is full; else wait for a wake-up token or the next due time, at most BLOCKING_SLICE_S
        (below the Redis socket timeout)."""
        free = self.settings.webhook_concurrency - len(self._tasks)
        claimed, wait = await lua_scripts.run(
            self.aio,
            "webhook_claim",
            keys={"deliveries": self.keys.webhooks},
            args={"most": free, "lease": self.lease_s, "attempts": ATTEMPTS},
        )
        parsed: list[tuple[int, str]] = []
        for value in claimed:
            try:
                parsed.append(parse_member(value))
            except ValueError:
                # One bad record fails alone: dropped, and said, instead of stopping every delivery.
                await self.aio.zrem(self.keys.webhooks, value)
                log.error("webhooks: unreadable delivery dropped", extra={"member": repr(value)[:120]})
        urls = await self._webhook_urls([request_id for _, request_id in parsed])
        for (attempt, request_id), url in zip(parsed, urls, strict=True):
            host = host_key(url) if url else None
            if self.hosts.take(host):
                self._start(request_id, attempt, host)
            else:
                await self._defer(request_id, attempt)
        if claimed:
            return
        if free == 0:
            await asyncio.wait(self._tasks, timeout=BLOCKING_SLICE_S, return_when=asyncio.FIRST_COMPLETED)
            return
        wait_s = float(wait)
        timeout = BLOCKING_SLICE_S if wait_s < 0 else min(BLOCKING_SLICE_S, max(wait_s, 0.01))
        await self.aio.blpop([self.keys.webhook_wake], timeout=timeout)

    async def _webhook_urls(self, request_ids: list[str]) -> list[str | None]:
        """Each request's webhook URL (None: the record is gone; its attempt finds that out)."""
        if not request_ids:
            return []
        async with self.aio.pipeline(transaction=False) as pipe:
            for request_id in request_ids:
                pipe.hget(self.keys.request(request_id), RequestField.WEBHOOK)
            return [None if url is None else as_text(url) for url in await pipe.execute()]

    def _start(self, request_id: str, attempt: int, host: str | None) -> None:
        task = asyncio.create_task(self.deliver(request_id, attempt))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(lambda _: self.hosts.release(host))

    async def _defer(self, request_id: str, attempt: int) -> None:
        """Put a claimed attempt back unmade: its host has its fill in flight. Not a failure."""
        await lua_scripts.run(
            self.aio,
            "webhook_defer",
            keys={"deliveries": self.keys.webhooks},
            args={
                "claimed": member(attempt, request_id),
                "next": member(attempt + 1, request_id),
                "delay": random.uniform(*DEFER_S),
                "attempts": ATTEMPTS,
            },
        )

    async def deliver(self, request_id: str, attempt: int) -> Outcome:
        """One attempt; reports back to the deliveries set. Never raises (but for cancellation)."""
        try:
            outcome, status = await self._attempt(request_id, attempt)
        except Exception as exc:  # a bug must not kill the deliverer; the lease retries it
            log.exception(
                "webhook: attempt crashed", extra={"request_id": request_id, "attempt": attempt + 1}
            )
            outcome, status = Outcome.FAILED, str(exc)
        next_member = member(attempt + 1, request_id)
        try:
            delay = retry_delay_s(attempt, self.settings.webhook_backoff_s)
            if outcome is Outcome.FAILED and delay is not None:
                await lua_scripts.run(
                    self.aio,
                    "webhook_retry",
                    keys={"deliveries": self.keys.webhooks, "wake": self.keys.webhook_wake},
                    args={"member": next_member, "delay": delay},
                )
            else:
                await self.aio.zrem(self.keys.webhooks, next_member)
            await self.aio.hincrby(self.keys.metrics(job_metrics.WEBHOOKS), outcome.value, 1)
        except redis.RedisError as exc:
            # The next attempt stays scheduled after its lease: a success may be sent once more.
            log.warning(
                "webhook: could not record the outcome", extra={"request_id": request_id, "error": str(exc)}
            )
        level = logging.INFO if outcome is Outcome.DELIVERED else logging.WARNING
        log.log(
            level,
            f"webhook {outcome.value}",
            extra={"request_id": request_id, "attempt": attempt + 1, "status": status},
        )
        return outcome

    async def _attempt(self, request_id: str, attempt: int) -> tuple[Outcome, int | str | None]:
        delivery = await load_delivery(self.aio, self.keys, request_id)
        if delivery is None:
            return Outcome.GONE, None
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "x-request-id": request_id,
            "x-webhook-attempt": str(attempt + 1),
        }
        if self.settings.webhook_secret:
            headers["x-signature"] = sign(delivery.body, self.settings.webhook_secret)
        try:
            code = await post(
                delivery.url,
                delivery.body,
                headers,
                self.policy,
                ssl_context=self.ssl_context,
                timeout_s=self.settings.webhook_timeout_s,
            )
        except Refused as exc:
            return Outcome.REFUSED, str(exc)
        except InvalidInput as exc:  # the name did not resolve: DNS may answer next time
            return Outcome.FAILED, str(exc)
        except (httpx.HTTPError, TimeoutError, OSError) as exc:
            return Outcome.FAILED, f"{type(exc).__name__}: {exc}"
        return (Outcome.DELIVERED if 200 <= code < 300 else Outcome.FAILED), code
