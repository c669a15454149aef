"""`tiny`: SDXL in shape, random weights from a fixed seed, its tokenizer shipped, built once and cached
atomically."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import torch

from tests import engine_fixtures as fx
from tests.conftest import REPO_ROOT
from worker.tiny import TOKENIZER_DIR, build_tiny, ensure_tiny, load_tokenizer

# Session fixtures shared by the engine tests (pytest finds fixtures by name in the module).
engine, one_thread, tiny_dir = fx.engine, fx.one_thread, fx.tiny_dir
pytestmark = fx.QUIET_NUMPY


def test_shipped_tokenizer_files_are_what_the_build_script_makes():
    script = TOKENIZER_DIR / "build.py"
    done = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, cwd=REPO_ROOT
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_tokenizer_is_a_clip_tokenizer_with_the_77_token_window():
    from transformers import CLIPTokenizer

    tokenizer = load_tokenizer()
    assert isinstance(tokenizer, CLIPTokenizer)
    assert tokenizer.model_max_length == 77
    ids = tokenizer("A cat, on a TABLE!").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a cat , on a table !"


def test_tiny_has_the_sdxl_architecture(engine):
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    pipe = engine.pipelines.get("tiny")
    assert isinstance(pipe, StableDiffusionXLImg2ImgPipeline)
    assert type(pipe.text_encoder) is CLIPTextModel
    assert type(pipe.text_encoder_2) is CLIPTextModelWithProjection
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.vae_scale_factor == 8
    assert pipe.unet.config.cross_attention_dim == (
        pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    )
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"


def test_build_is_deterministic_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    first, second = build_tiny(), build_tiny()
    assert torch.equal(torch.random.get_rng_state(), state)
    for name in ("unet", "vae", "text_encoder", "text_encoder_2"):
        a, b = getattr(first, name).state_dict(), getattr(second, name).state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name


def test_concurrent_builds_leave_one_whole_model(tmp_path: Path):
    barrier = threading.Barrier(3)
    results: list[Path] = []

    def build() -> None:
        barrier.wait()
        results.append(ensure_tiny(tmp_path))

    threads = [threading.Thread(target=build) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and len(set(results)) == 1
    built = results[0]
    assert built.parent == tmp_path / "tiny"
    assert [p.name for p in built.parent.iterdir()] == [built.name]  # no half-built scratch left
    assert (built / "model_index.json").is_file()
