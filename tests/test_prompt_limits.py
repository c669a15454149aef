"""Prompt cost bounded (issue 10, item 10): absurd Automatic1111 weights are clamped to [0, 10], so
no prompt can turn its embeddings into NaN or infinity; a prompt or negative prompt over
SDXL_MAX_PROMPT_TOKENS CLIP tokens is refused (400 naming the limit and the count, refunded) before
any text encoder runs, alone in its batch; an output that is NaN, or all black from an input that is
not, is refused (FAILED 422, refunded, nothing stored) instead of being sold as an image."""

from __future__ import annotations

import math
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from pydantic import ValidationError

from app.core import api_keys
from app.core.models_config import ModelEntry
from app.core.settings import Settings
from tests import engine_fixtures as fx
from tests.conftest import REPO_ROOT
from tests.engine_fixtures import SIZE, engine_settings, generate_one, input_image, job, pixels, tiny_models
from tests.faults import balance, wait_request_end
from tests.stack import make_stack
from tests.test_batching import ended, queue_behind_blocker
from tests.test_e2e_api import FAST, IMAGE, SLUG
from worker.engine import GenerationRequest, GenerationResult
from worker.errors import PromptTooLong, TooManyDownweightedParts, UnusableOutput
from worker.output_checks import is_black, unusable_output
from worker.prompt_limits import MAX_DOWNWEIGHTED_PARTS, clip_token_count
from worker.prompts import MAX_WEIGHT, PromptEncoder, parse_weighted

UNUSABLE = UnusableOutput.default_message
# Session fixtures shared by the engine tests (pytest finds fixtures by name in the module).
engine, one_thread, tiny_dir = fx.engine, fx.one_thread, fx.tiny_dir
pytestmark = fx.QUIET_NUMPY


def test_an_infinite_weight_is_clamped():
    assert parse_weighted("(cat:1e400) dog") == [("cat", MAX_WEIGHT), (" dog", 1.0)]


def test_thousands_of_nested_brackets_stay_finite_and_in_range():
    for prompt in ("(" * 5000 + "cat" + ")" * 5000, "[" * 5000 + "cat" + "]" * 5000):
        [(text, weight)] = parse_weighted(prompt)
        assert text == "cat" and math.isfinite(weight) and 0.0 <= weight <= MAX_WEIGHT


def test_zero_times_infinity_is_not_nan():
    [(text, weight)] = parse_weighted("((cat:0):1e400)")
    assert text == "cat" and weight == 0.0


def test_a_negative_weight_is_clamped_to_zero_and_ordinary_weights_are_unchanged():
    assert parse_weighted("(cat:-5)") == [("cat", 0.0)]
    assert parse_weighted("(cat:1.3)") == [("cat", 1.3)]
    assert parse_weighted("((cat))") == [("cat", 1.1 * 1.1)]


# --- the CLIP-token cap (SDXL_MAX_PROMPT_TOKENS) and unusable outputs ------------------------------
# Engine tests run the real `tiny` pipeline; stack tests real API and worker subprocesses (the
# worker also serves `nan_vae`: tiny with a VAE whose decoder weights are NaN, loaded from disk).

LIMIT = 1000  # the default of SDXL_MAX_PROMPT_TOKENS
EMOJI = "\N{GRINNING FACE}" * 10_000  # the example: 4 byte tokens each, 40,002 in all
EMOJI_ERROR = "prompt is too long: 40,002 CLIP tokens, the limit is 1,000"
# "cat" is one token of tiny's vocabulary: 998 of them and the start and end tokens make 1,000.
AT_LIMIT = " ".join(["cat"] * (LIMIT - 2))
OVER_LIMIT = AT_LIMIT + " cat"


def test_the_limit_is_at_least_one_window():
    assert Settings().max_prompt_tokens == LIMIT
    with pytest.raises(ValidationError, match="SDXL_MAX_PROMPT_TOKENS"):
        Settings(SDXL_MAX_PROMPT_TOKENS=76)


def test_the_count_is_the_tokenizers_and_matches_the_windows(engine):
    pipe = engine.pipelines.get("tiny")
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
        assert clip_token_count(tokenizer, EMOJI) == 40_002 == len(tokenizer(EMOJI).input_ids)
        assert clip_token_count(tokenizer, AT_LIMIT) == LIMIT
        # Weight syntax is not counted: the brackets and `:1.3` never reach the encoders.
        assert clip_token_count(tokenizer, "(cat:1.3) [dog]") == clip_token_count(tokenizer, "cat dog")
    encoder = PromptEncoder(pipe)
    for prompt in ("cat", AT_LIMIT, "((a photo:1.2)) of [a cat] " * 40):
        windows = max(1, math.ceil((clip_token_count(pipe.tokenizer, prompt) - 2) / 75))
        with torch.inference_mode():
            assert encoder.encode(prompt).tokens == 77 * windows, prompt[:40]


def test_over_long_prompts_fail_alone_in_their_batch_before_any_encoder_runs(engine):
    pipe = engine.pipelines.get("tiny")
    encoder_calls: list[int] = []
    hooks = [
        encoder.register_forward_hook(lambda *_: encoder_calls.append(1))
        for encoder in (pipe.text_encoder, pipe.text_encoder_2)
    ]
    try:
        started = time.perf_counter()
        [refused] = engine.generate([GenerationRequest(job(prompt=EMOJI), input_image())])
        refused_s = time.perf_counter() - started
        assert encoder_calls == [], "refused on the tokenizers' count alone"
    finally:
        for hook in hooks:
            hook.remove()
    assert isinstance(refused, PromptTooLong) and refused.status_code == 400
    assert refused.message == EMOJI_ERROR
    started = time.perf_counter()
    generate_one(engine, prompt="a cat")
    normal_s = time.perf_counter() - started
    print(
        f"\nFIGURE | 10,000 emoji (40,002 tokens) refused by the engine in {refused_s:.3f} s;"
        f" a one-window job: {normal_s:.3f} s"
    )
    assert refused_s < 2.0

    too_long, negative, at_limit = engine.generate(
        [
            GenerationRequest(job(prompt=OVER_LIMIT, seed=1), input_image()),
            GenerationRequest(job(prompt="a cat", negative_prompt=OVER_LIMIT, seed=2), input_image()),
            GenerationRequest(job(prompt=AT_LIMIT, negative_prompt=AT_LIMIT, seed=3), input_image()),
        ]
    )
    assert str(too_long) == "prompt is too long: 1,001 CLIP tokens, the limit is 1,000"
    assert str(negative) == "negative_prompt is too long: 1,001 CLIP tokens, the limit is 1,000"
    assert isinstance(at_limit, GenerationResult) and len(at_limit.images) == 1
    assert at_limit.images == generate_one(engine, prompt=AT_LIMIT, negative_prompt=AT_LIMIT, seed=3).images


def test_down_weighted_parts_are_capped_as_each_costs_a_pass_of_the_encoders(engine):
    pipe = engine.pipelines.get("tiny")
    passes: list[int] = []
    hook = pipe.text_encoder.register_forward_hook(lambda *_: passes.append(1))
    try:
        allowed = "[cat] dog " * MAX_DOWNWEIGHTED_PARTS
        [result] = engine.generate([GenerationRequest(job(prompt=allowed), input_image())])
        assert isinstance(result, GenerationResult)
        assert len(passes) > MAX_DOWNWEIGHTED_PARTS, "one more encoder pass per down-weighted part"
        passes.clear()
        started = time.perf_counter()
        [refused] = engine.generate([GenerationRequest(job(prompt="[cat] dog " * 499), input_image())])
        refused_s = time.perf_counter() - started
        assert passes == []
    finally:
        hook.remove()
    assert isinstance(refused, TooManyDownweightedParts) and refused.status_code == 400
    assert str(refused) == (
        "prompt has too many down-weighted parts ([word] or a weight under 1): 499, the limit is 32"
    )
    print(f"\nFIGURE | 499 down-weighted parts in 1,000 tokens refused in {refused_s:.3f} s")
    # Parts of equal weight side by side are one part; weights of 1 and over are never capped.
    [(_, weight)] = parse_weighted("[" + "cat " * 900 + "]")
    assert weight < 1
    assert isinstance(generate_one(engine, prompt="(cat:1.2) dog " * 100), GenerationResult)


def broken_vae(tiny_dir: Path, directory: Path, *, weight: float, bias: float) -> Path:
    """tiny's VAE with the decoder's last convolution set to `weight` and `bias`, saved to disk."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(tiny_dir / "vae")
    with torch.no_grad():
        vae.decoder.conv_out.weight.fill_(weight)
        vae.decoder.conv_out.bias.fill_(bias)
    vae.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module")
def broken_engine(tiny_dir, one_thread, tmp_path_factory):
    """`nan_vae` decodes every latent to NaN; `black_vae` to -10 everywhere, which is all black."""
    from worker.engine import Engine

    root = tmp_path_factory.mktemp("vaes")
    models = tiny_models(
        nan_vae=ModelEntry(
            source="builtin:tiny", vae=str(broken_vae(tiny_dir, root / "nan", weight=math.nan, bias=0))
        ),
        black_vae=ModelEntry(
            source="builtin:tiny", vae=str(broken_vae(tiny_dir, root / "black", weight=0, bias=-10))
        ),
    )
    return Engine(engine_settings(), models)


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # NaN to 8-bit
def test_a_nan_output_is_refused_where_pil_would_have_made_it_black(broken_engine):
    pipe = broken_engine.pipelines.get("nan_vae")
    latents = torch.zeros(1, 4, 8, 8)
    with torch.inference_mode():
        decoded = pipe.image_processor.postprocess(pipe.vae.decode(latents).sample, output_type="np")
    assert np.isnan(decoded).all()
    assert not np.asarray(pipe.image_processor.numpy_to_pil(decoded)[0]).any(), "as 8-bit: all black"
    [refused] = broken_engine.generate(
        [GenerationRequest(job(base_model="nan_vae", samples=2), input_image())]
    )
    assert isinstance(refused, UnusableOutput) and refused.status_code == 422
    assert str(refused) == UNUSABLE


def test_an_all_black_output_is_refused_unless_the_input_was_black(broken_engine):
    black = Image.new("RGB", (SIZE, SIZE))
    refused, accepted = broken_engine.generate(
        [
            GenerationRequest(job(base_model="black_vae", seed=1), input_image()),
            GenerationRequest(job(base_model="black_vae", seed=2), black),
        ]
    )
    assert isinstance(refused, UnusableOutput)
    assert isinstance(accepted, GenerationResult) and not pixels(accepted.images[0]).any()
    assert is_black(black) and not is_black(input_image())
    assert not unusable_output(np.full((8, 8, 3), 0.51 / 255, np.float32), input_image()), "rounds to 1"
    assert unusable_output(np.full((8, 8, 3), 0.5 / 255, np.float32), input_image()), (
        "rounds to 0 (half to even)"
    )
    assert unusable_output(np.full((8, 8, 3), np.inf, np.float32), black), "never finite"


# --- through the real stack -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(tiny_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    models = yaml.safe_load((REPO_ROOT / "models.yaml").read_text())
    nan = broken_vae(tiny_dir, root / "nan_vae", weight=math.nan, bias=0)
    models["models"]["nan_vae"] = {"source": "builtin:tiny", "vae": str(nan)}
    (root / "models.yaml").write_text(yaml.safe_dump(models))
    stack = make_stack(SDXL_MODELS_FILE=str(root / "models.yaml"), SDXL_MAX_BATCH="4")
    stack.start_api()
    stack.start_worker(models="tiny,nan_vae")
    yield stack
    stack.stop()


E2E = pytest.mark.e2e


def v1(stack, key: str, **fields: object) -> httpx.Response:
    body = {"image": IMAGE, "prompt": "a cat", **FAST, **fields}
    return httpx.post(f"{stack.base_url}/v1/{SLUG}", json=body, headers={"x-api-key": key}, timeout=120)


def v2_status(stack, key: str, request_id: str) -> httpx.Response:
    return httpx.get(f"{stack.base_url}/v2/requests/{request_id}/status", headers={"x-api-key": key})


@E2E
def test_v1_over_long_prompt_is_a_400_naming_limit_and_count_and_costs_nothing(stack):
    key = stack.create_key(name="emoji", credits=5)
    v1(stack, key)  # a first job pays the worker's one-time costs
    started = time.perf_counter()
    normal = v1(stack, key)
    normal_s = time.perf_counter() - started
    started = time.perf_counter()
    response = v1(stack, key, prompt=EMOJI)
    refused_s = time.perf_counter() - started
    print(f"\nFIGURE | v1, 10,000 emoji: 400 after {refused_s:.2f} s; a normal v1 job: {normal_s:.2f} s")
    assert normal.status_code == 200
    assert response.status_code == 400 and response.json() == {"error": EMOJI_ERROR}
    assert balance(stack, key) == 3, "the two normal jobs only"


@E2E
def test_v1_prompt_at_the_limit_is_accepted_and_charged(stack):
    key = stack.create_key(name="at-limit", credits=5)
    response = v1(stack, key, prompt=AT_LIMIT, negative_prompt=AT_LIMIT)
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    assert balance(stack, key) == 4


@E2E
def test_v2_over_long_negative_prompt_fails_with_the_reason_and_is_refunded(stack):
    key = stack.create_key(name="negative", credits=5)
    submitted = httpx.post(
        f"{stack.base_url}/v2/{SLUG}",
        json={"image": IMAGE, "prompt": "a cat", "negative_prompt": OVER_LIMIT, **FAST},
        headers={"x-api-key": key},
    )
    assert submitted.status_code == 200, submitted.text
    status = wait_request_end(lambda: v2_status(stack, key, submitted.json()["request_id"]))
    assert status.status_code == 422
    assert status.json()["status"] == "FAILED"
    assert status.json()["error"] == "negative_prompt is too long: 1,001 CLIP tokens, the limit is 1,000"
    assert balance(stack, key) == 5, "refunded"


@E2E
def test_an_over_long_request_fails_alone_in_a_batch(stack):
    key = stack.create_key(name="batch")
    bodies = [
        {"image": IMAGE, "prompt": OVER_LIMIT, **FAST, "seed": 1},
        {"image": IMAGE, "prompt": "a cat", **FAST, "seed": 2},
        {"image": IMAGE, "prompt": "a cat", "negative_prompt": EMOJI, **FAST, "seed": 3},
    ]
    ids = queue_behind_blocker(stack, key, bodies)
    records = ended(stack, ids)
    assert [r["status"] for r in records] == ["FAILED", "COMPLETED", "FAILED"]
    assert len({r["started_at"] for r in records}) == 1, "one batch"
    assert records[0]["error"] == "prompt is too long: 1,001 CLIP tokens, the limit is 1,000"
    assert records[2]["error"] == "negative_prompt is too long: 40,002 CLIP tokens, the limit is 1,000"
    assert api_keys.get_key(stack.redis(), stack.keys, key).used == 2, "the blocker and the one that ran"


@E2E
def test_a_nan_output_fails_422_refunded_and_nothing_is_stored(stack):
    key = stack.create_key(name="nan", credits=5)
    response = v1(stack, key, base_model="nan_vae")
    assert response.status_code == 422 and response.json() == {"error": UNUSABLE}
    request_id = response.headers["x-request-id"]
    assert v2_status(stack, key, request_id).json()["error"] == UNUSABLE
    assert list(stack.redis().scan_iter(match=f"{stack.prefix}:out:{request_id}:*")) == []
    assert balance(stack, key) == 5, "refunded"
