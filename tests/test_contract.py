import json
import os
import subprocess
import sys

from app.core.job_spec import JobSpec, Status
from app.core.redis_keys import RedisKeys
from app.core.scheduler_names import SCHEDULER_NAMES
from tests.specs import make_spec


def test_contract_imports_neither_torch_nor_fastapi():
    code = (
        "import sys, app.core.job_spec, app.core.redis_keys, app.core.scheduler_names,"
        " app.core.models_config, app.core.settings;"
        "print(json.dumps([m for m in ('torch', 'fastapi', 'diffusers') if m in sys.modules]))"
    )
    out = subprocess.check_output([sys.executable, "-c", "import json;" + code], text=True)
    assert json.loads(out) == []


def test_status_terminal():
    assert Status.COMPLETED.is_terminal() and Status.FAILED.is_terminal()
    assert not Status.QUEUED.is_terminal() and not Status.PROCESSING.is_terminal()


def test_jobspec_round_trip_and_seeds_wrap():
    spec = make_spec(request_id="r1", strength=0.65, samples=3, seed=2**64 - 2, input_key="k")
    data = json.loads(spec.to_json())
    data["field_from_a_newer_version"] = 1
    assert JobSpec.from_json(json.dumps(data)) == spec
    assert spec.seeds() == [2**64 - 2, 2**64 - 1, 0]
    assert spec.file_name(1) == "r1-1.png"


def test_thirty_scheduler_names():
    assert len(SCHEDULER_NAMES) == 30 == len(set(SCHEDULER_NAMES))


def test_keys_are_prefixed():
    keys = RedisKeys("abc")
    assert keys.request("x").startswith("abc:") and keys.queue_name("tiny") == "abc.tiny"


def test_seed_minus_one_draws_32_bit_seeds_apart_in_each_forked_process():
    from app.core.request_model import validate_body

    params = validate_body(
        {"image": "aGVsbG8=", "prompt": "p", "seed": -1}, model_names=["tiny"], default_base_model="tiny"
    )

    def draws() -> list[int]:
        specs = [params.to_job_spec(request_id="r", width=64, height=64, input_key="k") for _ in range(64)]
        return [spec.seed for spec in specs]

    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a forked API process (uvicorn's supervisor, a pre-forking server) draws its own
        os.write(write, json.dumps(draws()).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        in_child = json.loads(pipe.read())
    os.waitpid(child, 0)
    here = draws()
    assert all(0 <= seed < 2**32 for seed in here + in_child)
    assert len(set(here)) == 64 and not set(here) & set(in_child)
