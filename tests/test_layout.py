"""The house's boundaries at run time: what each side loads (import-linter checks the source)."""

import json
import subprocess
import sys


def loaded_modules(code: str, names: tuple[str, ...]) -> list[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {names!r} if m in sys.modules]))"
    out = subprocess.check_output([sys.executable, "-c", probe], text=True)
    return json.loads(out.strip().splitlines()[-1])


def test_worker_entry_loads_no_web_framework():
    # worker.service is what `sdxl-img2img worker` runs; worker.tasks is what RQ imports per job.
    code = "import worker.service, worker.tasks, worker.engine"
    assert loaded_modules(code, ("fastapi", "starlette", "uvicorn")) == []


def test_api_app_loads_no_gpu_stack():
    code = "from app.api.app_factory import create_app\napp = create_app()\nassert app.routes"
    assert loaded_modules(code, ("torch", "diffusers", "transformers", "worker")) == []


def test_cli_help_loads_neither_side():
    code = "from app.cli.main import build_parser\nbuild_parser().format_help()"
    assert loaded_modules(code, ("torch", "fastapi", "diffusers")) == []
