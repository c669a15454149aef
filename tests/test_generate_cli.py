"""`sdxl-img2img generate` (CONTRACT 7), run as the installed console script in a subprocess."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tests import engine_fixtures as fx
from tests.conftest import REPO_ROOT, TEST_CACHE_DIR
from tests.engine_fixtures import input_image

# Session fixtures shared by the engine tests (pytest finds fixtures by name in the module).
engine, one_thread, tiny_dir = fx.engine, fx.one_thread, fx.tiny_dir

CLI = REPO_ROOT / ".venv" / "bin" / "sdxl-img2img"


def _run(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {
        **os.environ,
        "SDXL_CACHE_DIR": str(TEST_CACHE_DIR),
        "SDXL_DEFAULT_BASE_MODEL": "tiny",
        "SDXL_MODELS_FILE": str(REPO_ROOT / "models.yaml"),
        "SDXL_DEVICE": "cpu",
        **env,
    }
    return subprocess.run(
        [str(CLI), "generate", *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=240,
    )


@pytest.fixture
def image_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.png"
    input_image(96).resize((96, 72)).save(path)
    return path


def test_generate_writes_decodable_images(tiny_dir, image_file, tmp_path):
    out = tmp_path / "out" / "cat.webp"
    done = _run(
        [
            "--image", str(image_file),
            "--prompt", "a (cat:1.2) on a table",
            "--negative-prompt", "blurry",
            "--scheduler", "DPM++ 2M Karras",
            "--num-inference-steps", "20",
            "--guidance-scale", "5",
            "--strength", "0.5",
            "--samples", "2",
            "--seed", "18446744073709551615",
            "--output-quality", "80",
            "--out", str(out),
        ],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    first, second = out.with_name("cat-0.webp"), out.with_name("cat-1.webp")
    for path in (first, second):
        with Image.open(path) as image:
            assert image.format == "WEBP" and image.size == (96, 72)
    assert "seed 18446744073709551615" in done.stdout and "seed 0" in done.stdout


def test_generate_single_image_with_explicit_format(tiny_dir, image_file, tmp_path):
    out = tmp_path / "result.bin"
    done = _run(
        ["--image", str(image_file), "--prompt", "a house", "--output-format", "png", "--out", str(out)],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr
    with Image.open(out) as image:
        assert image.format == "PNG"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num-inference-steps", "19"], "num_inference_steps must be between 20 and 100, got 19"),
        (["--scheduler", "Euler b"], "scheduler must be one of"),
        (["--base-model", "nope"], "base_model must be one of"),
    ],
)
def test_generate_refuses_what_the_api_refuses(image_file, tmp_path, extra, message):
    done = _run(
        ["--image", str(image_file), "--prompt", "x", "--out", str(tmp_path / "o.jpg"), *extra], tmp_path
    )
    assert done.returncode == 1
    assert message in done.stderr
    assert not (tmp_path / "o.jpg").exists()


def test_generate_names_the_model_that_cannot_load(image_file, tmp_path):
    models = tmp_path / "models.yaml"
    models.write_text(
        "models:\n  ghost:\n    source: nobody-here/no-such-sdxl-model\n  tiny:\n    source: builtin:tiny\n"
    )
    done = _run(
        [
            "--image",
            str(image_file),
            "--prompt",
            "x",
            "--base-model",
            "ghost",
            "--out",
            str(tmp_path / "o.jpg"),
        ],
        tmp_path,
        SDXL_MODELS_FILE=str(models),
        HF_HUB_OFFLINE="1",
        HF_HOME=str(tmp_path / "hf"),
    )
    assert done.returncode == 1
    assert "model 'ghost' could not be loaded from 'nobody-here/no-such-sdxl-model'" in done.stderr


def test_generate_reports_an_unreadable_image(tmp_path):
    done = _run(
        ["--image", str(tmp_path / "missing.png"), "--prompt", "x", "--out", str(tmp_path / "o.jpg")],
        tmp_path,
    )
    assert done.returncode == 1
    assert "cannot read image" in done.stderr


def test_the_command_module_imports_without_torch():
    code = (
        "import argparse, sys; from app.cli import generate; "
        "generate.register(argparse.ArgumentParser().add_subparsers()); assert 'torch' not in sys.modules"
    )
    done = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "python"), "-c", code], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
