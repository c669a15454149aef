"""Content blocks (CONTRACT 3c), through real API and worker subprocesses on `tiny`:

- a blocked term in the prompt ends the request FAILED with the contract's error, without running,
  refunded (the real segmind SDK raises InferenceFailed with the reason; v1 answers 422);
- the negative prompt is never checked;
- the safety checker: a small image classifier with random weights made from a fixed seed, saved
  with save_pretrained into a temporary directory and loaded by the worker as any Hugging Face
  classifier is (SDXL_SAFETY_CHECKER=<dir>): one whose `nsfw` score is always high flags every
  output (FAILED, refunded, nothing stored), one whose score is always low lets them through;
- a key made `keys create --unmoderated` skips both; a checker that cannot load stops the worker.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import httpx
import pytest
from segmind import SegmindClient
from segmind.v2 import InferenceFailed

from app.core.content_blocks import (
    OUTPUT_FLAGGED,
    PROMPT_BLOCKED,
    BlockedTermsError,
    parse_blocked_terms,
)
from tests.faults import balance, wait_request_end
from tests.stack import make_stack
from tests.test_e2e_api import FAST, IMAGE, SLUG
from tests.test_keys_cli import CLI

pytestmark = pytest.mark.e2e
CREDITS = 20
TERMS = "# words no prompt may hold\nlighthouse\nre:forbidd?en\\w*\n"


def build_classifier(directory: Path, nsfw_bias: float) -> Path:
    """A tiny ViT image classifier (labels `normal`, `nsfw`), random weights from a fixed seed; the
    bias of its head decides which label wins whatever the image."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(0)
    config = ViTConfig(
        image_size=32,
        patch_size=16,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        id2label={0: "normal", 1: "nsfw"},
        label2id={"normal": 0, "nsfw": 1},
    )
    model = ViTForImageClassification(config)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, nsfw_bias]))
    model.save_pretrained(directory)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def moderated_stack(tmp: Path, nsfw_bias: float):
    terms = tmp / "blocked.txt"
    terms.write_text(TERMS)
    classifier = build_classifier(tmp / "classifier", nsfw_bias)
    stack = make_stack(SDXL_BLOCKED_TERMS_FILE=str(terms), SDXL_SAFETY_CHECKER=str(classifier))
    stack.start_api()
    stack.start_worker("tiny")
    return stack


@pytest.fixture(scope="module")
def flagging(tmp_path_factory):
    stack = moderated_stack(tmp_path_factory.mktemp("flagging"), nsfw_bias=8.0)
    yield stack
    stack.stop()


@pytest.fixture(scope="module")
def passing(tmp_path_factory):
    stack = moderated_stack(tmp_path_factory.mktemp("passing"), nsfw_bias=-8.0)
    yield stack
    stack.stop()


def sdk(stack, key: str) -> SegmindClient:
    return SegmindClient(api_key=key, base_url=f"{stack.base_url}/v1", timeout=120)


def outputs_stored(stack, request_id: str) -> list[bytes]:
    return list(stack.redis().scan_iter(match=f"{stack.prefix}:out:{request_id}:*"))


def test_blocked_terms_file_rules():
    terms = parse_blocked_terms(TERMS + "red apple  # a comment after a term\n")
    assert terms.blocks("a LightHouse at dusk") and terms.blocks("lighthouse, storm")
    assert not terms.blocks("lighthouses at dusk"), "whole words only"
    assert terms.blocks("the forbidden city") and terms.blocks("forbiden fruit")
    assert terms.blocks("a Red Apple") and not terms.blocks("a red apples tree")
    assert not terms.blocks("words no prompt may hold"), "a comment is not a term"
    assert not parse_blocked_terms("# only a comment\n\n").blocks("anything")
    with pytest.raises(BlockedTermsError, match="line 2"):
        parse_blocked_terms("fine\nre:(unclosed\n")


def test_blocked_prompt_fails_through_the_sdk_and_is_refunded(passing):
    key = passing.create_key(name="blocked", credits=CREDITS)
    with pytest.raises(InferenceFailed) as info:
        sdk(passing, key).run(SLUG, image=IMAGE, prompt="A lighthouse in a storm", **FAST)
    assert info.value.detail == PROMPT_BLOCKED
    request_id = info.value.status_body["request_id"]
    assert balance(passing, key) == CREDITS, "refunded"
    status = httpx.get(f"{passing.base_url}/v2/requests/{request_id}/status", headers={"x-api-key": key})
    assert status.status_code == 422 and status.json()["error"] == PROMPT_BLOCKED
    assert outputs_stored(passing, request_id) == []


def test_v1_blocked_prompt_is_422(passing):
    key = passing.create_key(name="blocked-v1", credits=CREDITS)
    response = httpx.post(
        f"{passing.base_url}/v1/{SLUG}",
        json={"image": IMAGE, "prompt": "forbidden fruit", **FAST},
        headers={"x-api-key": key},
        timeout=120,
    )
    assert response.status_code == 422 and response.json() == {"error": PROMPT_BLOCKED}
    assert balance(passing, key) == CREDITS


def test_negative_prompt_is_never_checked_and_a_passing_classifier_keeps_outputs(passing):
    key = passing.create_key(name="negative", credits=CREDITS)
    response = httpx.post(
        f"{passing.base_url}/v1/{SLUG}",
        json={"image": IMAGE, "prompt": "a harbour", "negative_prompt": "lighthouse, forbidden", **FAST},
        headers={"x-api-key": key},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/jpeg"
    assert balance(passing, key) == CREDITS - 1


def test_flagged_output_fails_refunded_and_is_never_stored(flagging):
    key = flagging.create_key(name="flagged", credits=CREDITS)
    with httpx.Client(base_url=flagging.base_url, headers={"x-api-key": key}, timeout=120) as http:
        v1 = http.post(f"/v1/{SLUG}", json={"image": IMAGE, "prompt": "a harbour", **FAST})
        assert v1.status_code == 422 and v1.json() == {"error": OUTPUT_FLAGGED}
        request_id = v1.headers["x-request-id"]
        assert outputs_stored(flagging, request_id) == []
        queued = http.post(f"/v2/{SLUG}", json={"image": IMAGE, "prompt": "a harbour", "samples": 2, **FAST})
        v2_id = queued.json()["request_id"]
        ended = wait_request_end(lambda: http.get(f"/v2/requests/{v2_id}/status"), 120)
        assert ended.status_code == 422 and ended.json()["error"] == OUTPUT_FLAGGED
        assert http.get(f"/v2/requests/{v2_id}").json()["output"] is None
    assert balance(flagging, key) == CREDITS, "both refunded"


def test_unmoderated_key_skips_both_checks(flagging, tmp_path):
    made = subprocess.run(
        [str(CLI), "keys", "create", "--name", "trusted", "--credits", str(CREDITS), "--unmoderated"],
        env={**os.environ, **flagging.env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    response = httpx.post(
        f"{flagging.base_url}/v1/{SLUG}",
        json={"image": IMAGE, "prompt": "a lighthouse", **FAST},
        headers={"x-api-key": key},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert balance(flagging, key) == CREDITS - 1


def test_a_checker_that_cannot_load_stops_the_worker(tmp_path):
    stack = make_stack(SDXL_SAFETY_CHECKER=str(tmp_path / "no-such-classifier"))
    try:
        process = stack.start_worker("tiny", wait=False)
        assert process.wait(timeout=120) == 2
        assert stack.live_workers() == 0
    finally:
        stack.stop()
