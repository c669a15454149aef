"""The request body is declared once (`Img2ImgRequest`): the OpenAPI schema, the validation and
its error messages, and the CLI's `generate --help` all say what that declaration says."""

from __future__ import annotations

import subprocess
import sys

import pytest

from app.api.app_factory import create_app
from app.core.errors import InvalidInput
from app.core.request_model import Img2ImgRequest, field_rules, validate_body
from tests.conftest import REPO_ROOT

NUMERIC = [name for name, rule in field_rules().items() if rule.kind in (int, float)]


def validate(**fields):
    return validate_body(
        {"image": "x", "prompt": "p", **fields}, model_names=["tiny"], default_base_model="tiny"
    )


def test_the_openapi_schema_is_the_declaration(settings):
    schema = create_app(settings).openapi()
    body = schema["paths"]["/v2/{slug}"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == set(Img2ImgRequest.model_fields)
    assert body["required"] == ["image", "prompt"]
    for name, rule in field_rules().items():
        shown = body["properties"][name]
        if rule.low is not None and rule.kind in (int, float):
            assert (shown["minimum"], shown["maximum"]) == (rule.low, rule.high), name
        if not rule.required and rule.default is not None:
            assert shown["default"] == rule.default, name
        if rule.choices:
            assert tuple(shown["enum"]) == rule.choices, name


def test_defaults_come_from_the_declaration():
    params = validate()
    for name, rule in field_rules().items():
        if name not in ("image", "prompt", "base_model"):
            assert getattr(params, name) == rule.default, name
    assert params.base_model == "tiny"


@pytest.mark.parametrize("name", NUMERIC)
def test_range_errors_are_worded_from_the_declaration(name):
    rule = field_rules()[name]
    below = rule.low - 1
    with pytest.raises(InvalidInput) as raised:
        validate(**{name: below})
    fmt = (lambda v: str(int(v))) if rule.kind is int else (lambda v: f"{v:g}")
    assert (
        raised.value.message
        == f"{name} must be between {fmt(rule.low)} and {fmt(rule.high)}, got {fmt(below)}"
    )


def test_the_contract_example_error():
    with pytest.raises(InvalidInput) as raised:
        validate(num_inference_steps=19)
    assert raised.value.message == "num_inference_steps must be between 20 and 100, got 19"


def test_cli_help_shows_each_fields_range_and_default():
    shown = subprocess.run(
        [sys.executable, "-m", "app.cli", "generate", "--help"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"COLUMNS": "400", "PATH": "/usr/bin:/bin"},
    ).stdout
    # one entry per option, its wrapped lines joined
    entries = [" ".join(entry.split()) for entry in shown.split("\n  --")[1:]]
    lines = {"--" + entry.split()[0]: entry for entry in entries}
    for name in NUMERIC:
        rule = field_rules()[name]
        line = lines["--" + name.replace("_", "-")]
        assert rule.allowed() in line, line
        if name != "samples":
            assert f"default {rule.default:g}" in line, line
