"""Per-key concurrency keeps the submission order also when two workers pop two of the key's
requests at the same moment and the one holding the younger request reaches the start step first
(a fresh-clone CI run saw the younger start first). The requests come from the real API; the two
workers' steps are the real start and finish scripts, called in the unlucky order on purpose."""

from __future__ import annotations

import httpx

from app.core.lifecycle import Lifecycle, failed_fields
from app.core.settings import Settings
from tests.test_e2e_api import FAST, IMAGE, SLUG


def test_the_older_request_starts_first_whoever_reaches_the_start_step_first(stack):
    key = stack.create_key(name="order", concurrency=1)
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=30) as http:
        ids = [
            http.post(f"/v2/{SLUG}", json={"image": IMAGE, "prompt": "p", **FAST}).json()["request_id"]
            for _ in range(3)
        ]
    client = stack.redis()
    lifecycle = Lifecycle(stack.keys, Settings().result_ttl_s)
    queue = stack.keys.rq_queue_key("tiny")
    assert [client.lpop(queue), client.lpop(queue)] == [i.encode() for i in ids[:2]]  # two workers' pops

    assert lifecycle.start(client, ids[1], "worker-b") == b"PARKED", "the younger waits its turn"
    assert lifecycle.start(client, ids[0], "worker-a") == b"OK"
    assert client.lrange(queue, 0, -1) == [ids[2].encode()], "the parked one is in no queue"

    assert lifecycle.finish(client, ids[0], "worker-a", failed_fields("x", 500)) == b"DONE"
    assert client.lrange(queue, 0, -1) == [ids[1].encode(), ids[2].encode()], "its turn: back in front"
    assert lifecycle.start(client, ids[2], "worker-a") == b"PARKED", "the youngest still waits"
    assert lifecycle.start(client, ids[1], "worker-b") == b"OK"
