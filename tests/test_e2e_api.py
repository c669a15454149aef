"""End to end: real API and worker subprocesses on a real Redis, `tiny` on the CPU, and the real
`segmind` SDK as the client (SegmindClient(base_url="http://127.0.0.1:PORT/v1"))."""

from __future__ import annotations

import base64
import io
import time

import httpx
import pytest
from PIL import Image
from segmind import SegmindClient
from segmind.exceptions import SegmindError
from segmind.v2 import InferenceFailed

from tests.stack import start_full_stack

pytestmark = pytest.mark.e2e
SLUG = "sdxl-img2img"


def png_b64(width: int = 128, height: int = 96, color: str = "teal") -> str:
    buffer = io.BytesIO()
    image = Image.new("RGB", (width, height), color)
    for x in range(0, width, 16):
        image.paste("orange", (x, 0, x + 8, height))
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGE = png_b64()
FAST = {"base_model": "tiny", "num_inference_steps": 20, "strength": 0.5}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = start_full_stack(tmp_path_factory.mktemp("stack"))
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def key(stack) -> str:
    return stack.create_key(name="e2e")


@pytest.fixture
def client(stack, key) -> SegmindClient:
    return SegmindClient(api_key=key, base_url=f"{stack.base_url}/v1", timeout=120)


@pytest.fixture
def http(stack, key):
    with httpx.Client(base_url=stack.base_url, headers={"x-api-key": key}, timeout=120) as client:
        yield client


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_sdk_run_returns_a_url_that_fetches_without_a_key(client):
    result = client.run(SLUG, image=IMAGE, prompt="a lighthouse", seed=42, **FAST)
    assert result["status"] == "COMPLETED"
    assert result["seeds"] == [42]
    assert isinstance(result["output"], str)
    response = httpx.get(result["output"], timeout=10)  # no key
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert decode(response.content).size == (128, 96)
    assert result["images"][0]["file_size"] == len(response.content)
    assert set(result["metrics"]) >= {"inference_time", "queue_time", "total_time"}


def test_sdk_submit_async_wait_and_status(client):
    job = client.submit_async(SLUG, image=IMAGE, prompt="a boat", seed=7, **FAST)
    assert job.submit_response["status"] == "QUEUED"
    assert job.status()["status"] in ("QUEUED", "PROCESSING", "COMPLETED")
    result = job.wait(timeout=120, interval=0.2)
    assert result["status"] == "COMPLETED" and result["seeds"] == [7]
    assert job.status()["status"] == "COMPLETED"


def test_sdk_run_sync_returns_jpeg_with_headers(client):
    response = client.run_sync(SLUG, image=IMAGE, prompt="a tree", seed=5, **FAST)
    assert response.headers["content-type"] == "image/jpeg"
    assert response.headers["x-seed-value"] == "5"
    assert float(response.headers["x-generation-time"]) > 0
    assert response.headers["x-cost"] == "1"
    assert decode(response.content).format == "JPEG"


def test_v1_same_request_gives_same_bytes(http):
    body = {"image": IMAGE, "prompt": "same", "seed": 11, **FAST}
    first = http.post(f"/v1/{SLUG}", json=body)
    second = http.post(f"/v1/{SLUG}", json=body)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content


def test_v1_base64_json(http):
    response = http.post(
        f"/v1/{SLUG}", json={"image": IMAGE, "prompt": "p", "base64": True, "samples": 2, **FAST}
    )
    assert response.status_code == 200
    body = response.json()
    assert len(body["images"]) == 2 and body["image"] == body["images"][0]
    assert len(body["seeds"]) == 2 and body["seeds"][1] == body["seeds"][0] + 1
    assert decode(base64.b64decode(body["images"][1])).size == (128, 96)


def test_v1_png_output_format(http):
    response = http.post(f"/v1/{SLUG}", json={"image": IMAGE, "prompt": "p", "output_format": "png", **FAST})
    assert response.headers["content-type"] == "image/png" and decode(response.content).format == "PNG"


def test_v2_outputs_list_when_samples_above_one_and_base64(client):
    result = client.run(SLUG, image=IMAGE, prompt="p", samples=3, seed=100, **FAST)
    assert isinstance(result["output"], list) and len(result["output"]) == 3
    assert result["seeds"] == [100, 101, 102]
    assert [image["seed"] for image in result["images"]] == [100, 101, 102]
    fetched = [httpx.get(url, timeout=10).content for url in result["output"]]
    assert len(set(fetched)) == 3
    # The same request with base64: the same bytes (a batch of another size may differ by rounding).
    encoded = client.run(SLUG, image=IMAGE, prompt="p", samples=3, seed=100, base64=True, **FAST)
    assert [base64.b64decode(value) for value in encoded["output"]] == fetched


def test_multipart_upload(http):
    raw = base64.b64decode(IMAGE)
    response = http.post(
        f"/v1/{SLUG}",
        files={"image": ("in.png", raw, "image/png")},
        data={"prompt": "upload", "seed": "3", "base_model": "tiny", "num_inference_steps": "20"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-seed-value"] == "3"


BAD_FIELDS = [
    ("num_inference_steps", 19, "num_inference_steps must be between 20 and 100, got 19"),
    ("num_inference_steps", 101, "num_inference_steps"),
    ("num_inference_steps", "many", "num_inference_steps"),
    ("num_inference_steps", 20.5, "num_inference_steps"),
    ("guidance_scale", 0, "guidance_scale must be between 0.1 and 25"),
    ("guidance_scale", 26, "guidance_scale"),
    ("guidance_scale", "x", "guidance_scale"),
    ("strength", 0.05, "strength must be between 0.1 and 1"),
    ("strength", 1.5, "strength"),
    ("samples", 0, "samples must be between 1 and 4"),
    ("samples", 5, "samples"),
    ("samples", True, "samples"),
    ("seed", -2, "seed"),
    ("seed", 2**64, "seed"),
    ("seed", "abc", "seed"),
    ("scheduler", "Euler b", "scheduler must be one of"),
    ("scheduler", 3, "scheduler"),
    ("base_model", "sd15", "base_model must be one of"),
    ("base64", "maybe", "base64 must be true or false"),
    ("prompt", "", "prompt"),
    ("prompt", "x" * 10_001, "prompt"),
    ("prompt", 12, "prompt"),
    ("negative_prompt", "x" * 10_001, "negative_prompt"),
    ("output_format", "gif", "output_format"),
    ("output_quality", 0, "output_quality"),
    ("output_quality", 101, "output_quality"),
    ("image", "", "image"),
    ("image", "not an image at all", "image"),
    ("image", 5, "image"),
]


@pytest.mark.parametrize("version", ["v1", "v2"])
@pytest.mark.parametrize(
    ("field", "value", "message"), BAD_FIELDS, ids=[f"{f}={v!r}"[:40] for f, v, _ in BAD_FIELDS]
)
def test_bad_field_is_400_naming_the_field(http, version, field, value, message):
    body = {"image": IMAGE, "prompt": "p", **FAST, field: value}
    response = http.post(f"/{version}/{SLUG}", json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


def test_missing_required_fields(http):
    assert "image" in http.post(f"/v2/{SLUG}", json={"prompt": "p"}).json()["error"]
    assert "prompt" in http.post(f"/v2/{SLUG}", json={"image": IMAGE}).json()["error"]


def test_sdk_raises_on_400(client):
    with pytest.raises(SegmindError) as info:
        client.run_sync(SLUG, image=IMAGE, prompt="p", samples=9)
    assert info.value.status == 400 and "samples" in info.value.detail


def test_unknown_slug_and_unknown_id_are_json_404(http, stack):
    for version in ("v1", "v2"):
        response = http.post(f"/{version}/sdxl-txt2img", json={"prompt": "p"})
        assert response.status_code == 404 and response.json() == {"error": "Model not found"}
    missing = "0b7e1c1a-5f0e-4d7e-9a55-3b1d2a8f9c10"
    for path in (f"/v2/requests/{missing}/status", f"/v2/requests/{missing}"):
        response = http.get(path)
        assert response.status_code == 404 and response.json() == {"error": f"Request {missing} not found"}
    assert http.delete(f"/v2/requests/{missing}").status_code == 404
    assert http.get("/v2/requests/not-a-uuid/status").status_code == 404
    response = httpx.get(f"{stack.base_url}/no/such/route")
    assert response.status_code == 404 and "error" in response.json()
    response = http.get(f"/v1/{SLUG}")
    assert response.status_code == 405 and "error" in response.json()


def test_failed_job_is_422_and_sdk_raises_inference_failed(client, http):
    with pytest.raises(InferenceFailed) as info:
        client.run(SLUG, image=IMAGE, prompt="p", base_model="broken", num_inference_steps=20)
    assert "broken" in info.value.detail
    request_id = info.value.status_body["request_id"]
    status = http.get(f"/v2/requests/{request_id}/status")
    result = http.get(f"/v2/requests/{request_id}")
    assert status.status_code == result.status_code == 422
    assert status.json()["status"] == result.json()["status"] == "FAILED"
    assert result.json()["error"] and result.json()["output"] is None
    v1 = http.post(f"/v1/{SLUG}", json={"image": IMAGE, "prompt": "p", "base_model": "broken"})
    assert v1.status_code == 500 and "broken" in v1.json()["error"]


def wait_status(http, request_id, wanted, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = http.get(f"/v2/requests/{request_id}/status").json()
        if body["status"] in wanted:
            return body
        time.sleep(0.05)
    raise AssertionError(f"{request_id} never reached {wanted}; last {body}")


def test_queue_position_and_cancel_of_queued_requests(http):
    ids = [
        http.post(f"/v2/{SLUG}", json={"image": IMAGE, "prompt": "p", "base_model": "idle"}).json()[
            "request_id"
        ]
        for _ in range(3)
    ]
    positions = [http.get(f"/v2/requests/{rid}/status").json()["queue_position"] for rid in ids]
    assert positions == [0, 1, 2]
    started = time.monotonic()
    response = http.delete(f"/v2/requests/{ids[0]}")
    assert response.status_code == 202 and response.json() == {"request_id": ids[0], "status": "FAILED"}
    body = http.get(f"/v2/requests/{ids[0]}/status")
    assert body.status_code == 422 and body.json()["error"] == "cancelled"
    assert time.monotonic() - started < 3
    assert http.get(f"/v2/requests/{ids[1]}/status").json()["queue_position"] == 0
    # A DELETE retried (its first answer lost) answers as the first did.
    again = http.delete(f"/v2/requests/{ids[0]}")
    assert again.status_code == 202 and again.json() == {"request_id": ids[0], "status": "FAILED"}
    for rid in ids[1:]:
        http.delete(f"/v2/requests/{rid}")


def test_progress_while_processing_and_cancel_of_running_request(http):
    slow = {
        "image": png_b64(512, 512),
        "prompt": "p",
        "base_model": "tiny",
        "num_inference_steps": 100,
        "strength": 1,
    }
    request_id = http.post(f"/v2/{SLUG}", json=slow).json()["request_id"]
    body = wait_status(http, request_id, {"PROCESSING"})
    deadline = time.monotonic() + 30
    while body.get("progress", {}).get("step", 0) < 1 and time.monotonic() < deadline:
        body = http.get(f"/v2/requests/{request_id}/status").json()
    assert body["status"] == "PROCESSING" and body["progress"]["total"] == 100
    assert 1 <= body["progress"]["step"] < 100
    started = time.monotonic()
    assert http.delete(f"/v2/requests/{request_id}").json()["status"] == "PROCESSING"
    final = wait_status(http, request_id, {"FAILED", "COMPLETED"}, timeout=10)
    assert final["status"] == "FAILED" and final["error"] == "cancelled"
    assert time.monotonic() - started < 5


def test_metrics_after_a_job(client, stack):
    client.run(SLUG, image=IMAGE, prompt="metrics", seed=1, **FAST)
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{stack.base_url}/metrics", timeout=10).text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("sdxl_jobs_total", model="tiny", status="COMPLETED") >= 1
    assert value("sdxl_workers_alive") == 1
    assert value("sdxl_redis_up") == 1
    assert value("sdxl_job_inference_time_seconds_count", model="tiny") >= 1
    assert value("sdxl_job_queue_time_seconds_count", model="tiny") >= 1
    assert ("sdxl_queue_depth", (("model", "idle"),)) in samples
    routes = {dict(labels).get("route") for name, labels in samples if name == "sdxl_http_requests_total"}
    assert {"/v2/{slug}", "/v2/requests/{request_id}/status"} <= routes
    assert all("-" not in (route or "") or route == "unmatched" for route in routes)  # templates, not raw ids
