"""Prompt cost bounded (issue 10, item 10): absurd Automatic1111 weights are clamped to [0, 10], so
no prompt can turn its embeddings into NaN or infinity."""

from __future__ import annotations

import math

from worker.prompts import MAX_WEIGHT, parse_weighted


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
