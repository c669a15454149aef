"""GPU faults (issue 10 item 8): out of memory fails only what it must and the worker serves on; a
fatal device error hands the requests back and ends the worker non-zero, for a restart.

Real API and worker subprocesses on the shared Redis (unique prefix), on the CPU. The model is a copy
of `tiny` whose UNet is `tests.faulty_components.FaultyUNet`, named in its `model_index.json` as
`save_pretrained` writes a component of another library, and served through models.yaml like any
local directory; the workers run the real `sdxl-img2img worker` command after importing that module
(`python -m tests.faulty_components`). The UNet raises what a control file says, with the exception
classes torch raises on CUDA (`torch.OutOfMemoryError`, `torch.AcceleratorError`), and logs each
fault it raised, so the tests count the engine calls that failed.

Batches of two form within SDXL_BATCH_WINDOW_MS (the second request is sent while the worker waits
for companions of the first); one call is proven by the shared `started_at`. With guidance, the
UNet sees 2 latents per image: a batch of two requests is 4, each half 2.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from app.core import worker_registry
from tests import image_factory
from tests.conftest import REPO_ROOT, TEST_CACHE_DIR
from tests.faults import balance, heartbeat, request_fields, wait_until
from tests.stack import Stack, make_stack

pytestmark = pytest.mark.e2e
SLUG = "sdxl-img2img"
IMAGE = base64.b64encode(image_factory.jpeg(64, 64)).decode()
FAULTY = "faulty"  # served by the module's worker (out-of-memory tests)
FATAL = "faulty_fatal"  # the same weights, served only by the workers of the fatal test
LAUNCHER = "tests.faulty_components"
# Literals of tests/faulty_components and worker/gpu_faults.py (importing them would load torch here).
FAULT_FILE_ENV = "SDXL_TEST_FAULT_FILE"
FATAL_DEVICE_EXIT_CODE = 70


class FaultFile:
    """What the FaultyUNet of the workers given this file raises, and the faults it raised."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.log = Path(f"{path}.log")
        self.set("")

    def set(self, mode: str) -> None:
        self.path.write_text(mode)
        self.log.write_text("")

    def raised(self) -> list[str]:
        return self.log.read_text().splitlines()


def faulty_model(directory: Path) -> Path:
    """A copy of `tiny` whose UNet is FaultyUNet (same weights and config)."""
    from worker.tiny import ensure_tiny

    target = directory / "faulty-tiny"
    shutil.copytree(ensure_tiny(TEST_CACHE_DIR), target)
    index = json.loads((target / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    index["unet"] = [LAUNCHER, "FaultyUNet"]  # what save_pretrained writes for that class
    (target / "model_index.json").write_text(json.dumps(index))
    return target


@pytest.fixture(scope="module")
def directory(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gpu-faults")


@pytest.fixture(scope="module")
def fault(directory) -> FaultFile:
    return FaultFile(directory / "fault")


@pytest.fixture(scope="module")
def stack(directory, fault):
    models = yaml.safe_load((REPO_ROOT / "models.yaml").read_text())
    source = str(faulty_model(directory))
    models["models"] |= {FAULTY: {"source": source}, FATAL: {"source": source}}
    models_file = directory / "models.yaml"
    models_file.write_text(yaml.safe_dump(models))
    stack = make_stack(SDXL_MODELS_FILE=str(models_file), SDXL_MAX_BATCH="2", SDXL_BATCH_WINDOW_MS="1500")
    stack.start_api()
    stack.start_worker(models=FAULTY, env={FAULT_FILE_ENV: str(fault.path)}, module=LAUNCHER)
    yield stack
    stack.stop()


def body(model: str, seed: int) -> dict[str, Any]:
    return {
        "image": IMAGE,
        "prompt": "a lighthouse",
        "seed": seed,
        "base_model": model,
        "num_inference_steps": 20,
        "strength": 0.5,
        "output_format": "png",
    }


def submit(stack: Stack, key: str, model: str, seed: int) -> str:
    response = httpx.post(
        f"{stack.base_url}/v2/{SLUG}", json=body(model, seed), headers={"x-api-key": key}, timeout=30
    )
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def ended(stack: Stack, ids: list[str], timeout: float = 60) -> list[dict[str, str]]:
    def check():
        records = [request_fields(stack, rid) for rid in ids]
        return records if all(r["status"] in ("COMPLETED", "FAILED") for r in records) else None

    return wait_until(check, timeout, f"{len(ids)} requests to end", interval=0.1)


def status(stack: Stack, key: str, request_id: str) -> httpx.Response:
    return httpx.get(
        f"{stack.base_url}/v2/requests/{request_id}/status", headers={"x-api-key": key}, timeout=10
    )


def test_a_batch_out_of_memory_runs_again_in_halves_and_both_complete(stack, fault):
    fault.set("oom-over:2")  # 4 latents do not fit, 2 do
    key = stack.create_key(name="oom-split", credits=10)
    ids = [submit(stack, key, FAULTY, seed) for seed in (1, 2)]
    records = ended(stack, ids)

    assert [r["status"] for r in records] == ["COMPLETED", "COMPLETED"], records
    assert records[0]["started_at"] == records[1]["started_at"], "the two ran as one batch"
    assert fault.raised() == ["oom-over:2 4"], "the batch ran out of memory once; each half fitted"
    assert balance(stack, key) == 8, "each charged once, nothing refunded"
    assert [p.poll() for p in stack.workers] == [None]


def test_a_request_that_never_fits_fails_out_of_gpu_memory_refunded_and_the_worker_serves_on(stack, fault):
    fault.set("oom")
    key = stack.create_key(name="oom-always", credits=10)
    alone = submit(stack, key, FAULTY, 3)
    [record] = ended(stack, [alone])
    response = status(stack, key, alone)
    assert response.status_code == 422 and response.json()["error"] == "out of GPU memory", response.text
    assert record["error_status"] == "500"
    assert fault.raised() == ["oom 2", "oom 2"], "a request alone runs once more after the cache is freed"
    assert balance(stack, key) == 10, "refunded"

    # A batch that never fits: the whole, then each half once (the split is their retry).
    fault.set("oom")
    ids = [submit(stack, key, FAULTY, seed) for seed in (4, 5)]
    records = ended(stack, ids)
    assert [(r["status"], r["error"]) for r in records] == [("FAILED", "out of GPU memory")] * 2
    assert fault.raised() == ["oom 4", "oom 2", "oom 2"]
    assert balance(stack, key) == 10

    # The worker kept serving: with the fault gone, the next request completes on it.
    fault.set("")
    after = submit(stack, key, FAULTY, 6)
    [done] = ended(stack, [after])
    assert done["status"] == "COMPLETED", done
    assert done["worker"] == record["worker"], "on the same worker process"
    assert [p.poll() for p in stack.workers] == [None]
    assert balance(stack, key) == 9


def test_a_fatal_device_error_hands_the_requests_back_and_the_worker_exits_for_a_restart(stack, directory):
    client = stack.redis()
    fault = FaultFile(directory / "fault-fatal")  # no fault while the worker warms up
    env = {FAULT_FILE_ENV: str(fault.path)}
    doomed = stack.start_worker(models=FATAL, env=env, module=LAUNCHER)
    [doomed_id] = worker_registry.live_workers_serving(client, stack.keys, FATAL)
    fault.set("fatal")
    key = stack.create_key(name="fatal", credits=10)
    ids = [submit(stack, key, FATAL, seed) for seed in (7, 8)]

    assert doomed.wait(timeout=60) == FATAL_DEVICE_EXIT_CODE
    assert fault.raised() == ["fatal 4"], "one call, never retried on a poisoned context"
    records = [request_fields(stack, rid) for rid in ids]
    assert [(r["status"], r["worker"], r["attempts"]) for r in records] == [("QUEUED", "", "1")] * 2
    assert all("error" not in r and "refunded" not in r for r in records)
    assert [json.loads(status(stack, key, rid).text)["status"] for rid in ids] == ["QUEUED"] * 2
    assert balance(stack, key) == 8, "handed back with their credits still reserved"
    # It left the registries itself (its heartbeat key would otherwise live for SDXL_JOB_LOST_S / 4).
    assert heartbeat(stack, doomed_id) is None
    assert doomed_id not in worker_registry.live_workers(client, stack.keys)
    assert client.zscore(stack.keys.processing, ids[0]) is None

    # The supervisor's restart: a fresh process on the same (now healthy) device runs them.
    fault.set("")
    stack.start_worker(models=FATAL, env=env, module=LAUNCHER)
    records = ended(stack, ids)
    assert [(r["status"], r["attempts"]) for r in records] == [("COMPLETED", "2")] * 2, records
    assert all(r["worker"] != doomed_id for r in records)
    assert balance(stack, key) == 8, "charged once each"
