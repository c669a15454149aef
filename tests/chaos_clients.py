"""The clients of the chaos run (tests/chaos_run.py): threads that submit small `tiny` requests on v2
(polling them, cancelling some at random) and on v1 (sync), riding out the API and Redis being
killed under them. They only keep a ledger of what they were told; what counts at the end is what
the server holds (tests/chaos_audit.py)."""

from __future__ import annotations

import base64
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

from tests import image_factory

SLUG = "sdxl-img2img"
SIDES = (64, 96, 128)
IMAGES = {side: base64.b64encode(image_factory.jpeg(side, side)).decode() for side in SIDES}
MAX_OUTSTANDING = 3
ENDED = ("COMPLETED", "FAILED")  # v2 requests one client thread leaves running before it waits for one to end


def random_body(rng: random.Random) -> dict:
    """Small and fast: 20 steps at strength 0.2 to 0.35 run 4 to 7 denoising steps."""
    side = rng.choice(SIDES)
    return {
        "image": IMAGES[side],
        "prompt": "chaos",
        "base_model": "tiny",
        "num_inference_steps": 20,
        "strength": round(rng.uniform(0.2, 0.35), 2),
        "samples": rng.randint(1, 4),
        "seed": rng.randint(0, 2**32 - 1),
    }


@dataclass
class Ledger:
    """What the clients sent and were answered, shared by the client threads."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    submitted: Counter = field(default_factory=Counter)  # "v1" / "v2" -> submissions sent
    answers: Counter = field(default_factory=Counter)  # "v2 200", "v1 502", "v1 no answer", ...
    acknowledged: set[str] = field(default_factory=set)  # ids a 200 (v2) or x-request-id (v1) named
    completed_v1: set[str] = field(default_factory=set)  # ids v1 answered 200 (an image)
    cancels: Counter = field(default_factory=Counter)  # "sent", "202", "409", ...

    def note(self, kind: str, answer: str, request_id: str | None = None) -> None:
        with self.lock:
            self.answers[f"{kind} {answer}"] += 1
            if request_id:
                self.acknowledged.add(request_id)


class Client(threading.Thread):
    """One client thread: its own connection pool, its own seeded RNG, the shared ledger."""

    kind = ""
    timeout_s = 10.0

    def __init__(self, base_url: str, api_key: str, seed: int, ledger: Ledger, stop: threading.Event):
        super().__init__(name=f"{self.kind}-client-{seed}", daemon=True)
        self.http = httpx.Client(base_url=base_url, headers={"x-api-key": api_key}, timeout=self.timeout_s)
        self.rng = random.Random(seed)
        self.ledger = ledger
        self.stop = stop

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.step()
            except httpx.ConnectError:
                # No API to talk to (it is being restarted): nothing was sent.
                self.ledger.note(self.kind, "refused")
                self.stop.wait(0.3)
            except httpx.HTTPError:
                # The API died under the call: a submission may have been accepted all the same; it
                # is the server's to end, and the audit finds it there.
                self.ledger.note(self.kind, "no answer")
            except ValueError:
                self.ledger.note(self.kind, "body not JSON")  # never expected: every answer is JSON
            self.stop.wait(self.rng.uniform(0.05, 0.4))
        self.http.close()

    def step(self) -> None:
        raise NotImplementedError

    def post(self, version: str) -> httpx.Response:
        body = random_body(self.rng)
        with self.ledger.lock:
            self.ledger.submitted[self.kind] += 1
        try:
            return self.http.post(f"/{version}/{SLUG}", json=body)
        except httpx.ConnectError:
            with self.ledger.lock:
                self.ledger.submitted[self.kind] -= 1  # refused before anything was sent
            raise


class V2Client(Client):
    """Submits, keeps at most MAX_OUTSTANDING requests running, cancels a quarter of them after a
    random delay (queued or mid-run), polls the others until they end."""

    kind = "v2"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.outstanding: list[str] = []
        self.cancel_at: dict[str, float] = {}

    def step(self) -> None:
        if len(self.outstanding) < MAX_OUTSTANDING:
            self.submit()
        self.cancel_due()
        self.forget_ended()

    def submit(self) -> None:
        response = self.post("v2")
        request_id = response.json().get("request_id") if response.status_code == 200 else None
        self.ledger.note("v2", str(response.status_code), request_id)
        if request_id:
            self.outstanding.append(request_id)
            if self.rng.random() < 0.25:
                self.cancel_at[request_id] = time.monotonic() + self.rng.uniform(0, 1.5)

    def cancel_due(self) -> None:
        now = time.monotonic()
        for request_id, when in list(self.cancel_at.items()):
            if when <= now:
                del self.cancel_at[request_id]
                with self.ledger.lock:
                    self.ledger.cancels["sent"] += 1
                response = self.http.delete(f"/v2/requests/{request_id}")
                with self.ledger.lock:
                    self.ledger.cancels[str(response.status_code)] += 1

    def forget_ended(self) -> None:
        for request_id in list(self.outstanding):
            response = self.http.get(f"/v2/requests/{request_id}/status")
            if response.status_code == 404:
                # An acknowledged request the server no longer knows: the audit names it too.
                self.ledger.note("v2", "status 404", request_id)
                self.outstanding.remove(request_id)
            elif response.status_code in (200, 422) and response.json().get("status") in ENDED:
                self.outstanding.remove(request_id)
                self.cancel_at.pop(request_id, None)


class V1Client(Client):
    """Sync requests, one at a time; the request id comes back in `x-request-id`, on errors too."""

    kind = "v1"
    timeout_s = 70.0  # beyond SDXL_SYNC_TIMEOUT_S of the run

    def step(self) -> None:
        response = self.post("v1")
        request_id = response.headers.get("x-request-id")
        self.ledger.note("v1", str(response.status_code), request_id)
        if response.status_code == 200 and request_id:
            with self.ledger.lock:
                self.ledger.completed_v1.add(request_id)
