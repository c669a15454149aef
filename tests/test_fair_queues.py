"""Fair service (issue 10.13): a worker serving several models takes from their queues in turn (RQ's
round-robin dequeue strategy), so ten requests queued for one model do not hold up a request for
another until all ten have run."""

from __future__ import annotations

import httpx
import pytest
import yaml

from tests.faults import request_fields, wait_until
from tests.stack import REPO_ROOT, make_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG

pytestmark = pytest.mark.e2e


@pytest.fixture
def stack(tmp_path):
    models = yaml.safe_load((REPO_ROOT / "models.yaml").read_text())
    models["models"]["tiny_b"] = {"source": "builtin:tiny"}  # a second model, as cheap as the first
    models_file = tmp_path / "models.yaml"
    models_file.write_text(yaml.safe_dump(models))
    stack = make_stack(SDXL_MODELS_FILE=str(models_file))
    stack.start_api()
    yield stack
    stack.stop()


def submit(stack, key: str, base_model: str) -> str:
    body = {"image": IMAGE, "prompt": "fair", **FAST, "base_model": base_model}
    response = httpx.post(f"{stack.base_url}/v2/{SLUG}", json=body, headers={"x-api-key": key})
    assert response.status_code == 200, response.text
    return response.json()["request_id"]


def test_a_request_for_a_second_model_runs_before_the_first_models_backlog_drains(stack):
    key = stack.create_key(name="fair")
    # Everything is queued before the worker exists: the worker finds ten of A ahead of one of B.
    backlog = [submit(stack, key, "tiny") for _ in range(10)]
    other = submit(stack, key, "tiny_b")
    stack.start_worker(models="tiny,tiny_b")
    everything = [*backlog, other]
    wait_until(
        lambda: all(request_fields(stack, r).get("status") == "COMPLETED" for r in everything),
        120,
        "every request to complete",
    )
    started = {r: float(request_fields(stack, r)["started_at"]) for r in everything}
    order = sorted(everything, key=started.__getitem__)
    position = order.index(other)
    # Round robin: one of A, then B. Without it (RQ's default order) B would be the eleventh.
    assert position <= 2, f"the tiny_b request started {position + 1}th of 11"
    assert started[other] < max(started[r] for r in backlog)
