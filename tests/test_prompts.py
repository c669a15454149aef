"""Automatic1111 prompt weights and long prompts (CONTRACT 3b), through both SDXL text encoders."""

from __future__ import annotations

import pytest
import torch

from tests import engine_fixtures as fx
from worker.prompts import PromptEncoder, parse_weighted
from worker.tiny import load_tokenizer

# Session fixtures shared by the engine tests (pytest finds fixtures by name in the module).
engine, one_thread, tiny_dir = fx.engine, fx.one_thread, fx.tiny_dir
pytestmark = fx.QUIET_NUMPY

W = 1.1


@pytest.mark.parametrize(
    "prompt, expected",
    [
        ("a cat", [("a cat", 1.0)]),
        ("", [("", 1.0)]),
        ("a (cat:1.3) on a mat", [("a ", 1.0), ("cat", 1.3), (" on a mat", 1.0)]),
        ("a (cat) here", [("a ", 1.0), ("cat", W), (" here", 1.0)]),
        ("a [cat] here", [("a ", 1.0), ("cat", 1 / W), (" here", 1.0)]),
        ("((cat))", [("cat", W * W)]),
        ("[[cat]]", [("cat", 1 / W / W)]),
        ("(a (b:1.5) c:0.5)", [("a ", 0.5), ("b", 0.75), (" c", 0.5)]),
        ("(cat: 1.25 )", [("cat", 1.25)]),
        ("(cat:.5)", [("cat", 0.5)]),
        # A weight of 1.0 merges with its neighbours: exactly the fragments of the plain prompt.
        ("a (cat:1.0) on a mat", [("a cat on a mat", 1.0)]),
        ("a ((cat:1.0)) dog", [("a ", 1.0), ("cat", W), (" dog", 1.0)]),
        # Escapes and stray brackets are text.
        (r"a \(cat\) dog", [("a (cat) dog", 1.0)]),
        (r"a \[x\] \\ y", [("a [x] \\ y", 1.0)]),
        ("a cat) dog]", [("a cat) dog]", 1.0)]),
        ("time: 12:30", [("time: 12:30", 1.0)]),
        ("a cat:1.3) dog", [("a cat:1.3) dog", 1.0)]),
        # Brackets that never close weigh the rest (as Automatic1111 does).
        ("a (cat dog", [("a ", 1.0), ("cat dog", W)]),
        ("a [cat dog", [("a ", 1.0), ("cat dog", 1 / W)]),
        ("(cat:1.2) (dog:1.2)", [("cat", 1.2), (" ", 1.0), ("dog", 1.2)]),
    ],
)
def test_parse_weighted(prompt, expected):
    got = parse_weighted(prompt)
    assert [text for text, _ in got] == [text for text, _ in expected]
    assert [weight for _, weight in got] == pytest.approx([weight for _, weight in expected])


def test_parsed_text_is_the_prompt_without_weight_syntax():
    prompt = "masterpiece, (portrait:1.2) of a [young] woman, ((detailed eyes)), (soft light:0.8)"
    assert "".join(t for t, _ in parse_weighted(prompt)) == (
        "masterpiece, portrait of a young woman, detailed eyes, soft light"
    )


@pytest.fixture(scope="module")
def encoder(engine):
    return PromptEncoder(engine.pipelines.get("tiny"))


def test_embeddings_have_the_sdxl_layout(encoder, engine):
    pipe = engine.pipelines.get("tiny")
    with torch.inference_mode():
        out = encoder.encode("a cat", "a dog")
    width = pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert out.embeds.shape == out.negative_embeds.shape == (1, 77, width)
    assert out.pooled.shape == out.negative_pooled.shape == (1, pipe.text_encoder_2.config.projection_dim)


def test_long_prompts_are_not_cut_and_negative_is_padded_to_match(encoder):
    long_prompt = " ".join(["a photo of a cat sitting on a wooden table"] * 12)
    tokens = len(load_tokenizer()(long_prompt).input_ids) - 2  # without start and end
    assert tokens > 2 * 75
    with torch.inference_mode():
        out = encoder.encode(long_prompt, "blurry")
    # Windows of 75 tokens plus start and end: at least three (more when a cut falls mid-phrase).
    assert out.embeds.shape[1] % 77 == 0 and out.embeds.shape[1] >= 3 * 77
    assert out.negative_embeds.shape == out.embeds.shape


def test_empty_negative_prompt_is_zero_conditioning_like_diffusers(encoder):
    with torch.inference_mode():
        out = encoder.encode("a cat", "")
    assert not out.negative_embeds.any() and not out.negative_pooled.any()


def test_weights_change_only_the_weighted_tokens_embeddings(encoder):
    with torch.inference_mode():
        plain = encoder.encode("a cat on a mat").embeds
        same = encoder.encode("a (cat:1.0) on a mat").embeds
        heavier = encoder.encode("a (cat:1.5) on a mat").embeds
    assert torch.equal(plain, same)
    changed = (heavier != plain).any(dim=-1)[0].nonzero().flatten().tolist()
    assert changed and set(changed) <= {1, 2, 3}  # around the "cat" token(s), after the start token


def test_tokenizer_splits_ordinary_english_into_words():
    tokens = load_tokenizer().tokenize("a photo of a cat sitting on a table, highly detailed")
    assert "cat</w>" in tokens and "detailed</w>" in tokens and ",</w>" in tokens
    assert len(tokens) < 20


@pytest.mark.parametrize(
    "prompt", ["a [cat] on a mat", "a (cat:0.5) on a mat", "a (cat:0) on a mat", "a (cat:-1) mat"]
)
def test_down_weights_and_odd_weights_encode(encoder, prompt):
    with torch.inference_mode():
        plain = encoder.encode("a cat on a mat").embeds
        weighted = encoder.encode(prompt).embeds
    assert weighted.shape == plain.shape and torch.isfinite(weighted).all()
    assert not torch.equal(weighted, plain)
