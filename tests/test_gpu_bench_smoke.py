"""The GPU benchmark cannot rot: its smoke mode (the same code, on the CPU with `tiny`) runs here."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.e2e
ROWS = (
    "latency p50, engine, batch 1",
    "latency p90, whole stack (v1)",
    "images/s, 8 clients, batching on",
    "images/s, 8 clients, batching off",
    "cold start to first image, no compile cache",
    "cold start to first image, compile cache",
    "resident-model switch",
    "peak GPU memory",
)


def test_the_smoke_mode_prints_the_whole_table():
    run = subprocess.run(
        ["bash", "bench/run_gpu.sh", "--smoke"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "| figure" in out and "plain diffusers" in out and "ratio" in out
    for label in ROWS:
        [line] = [line for line in out.splitlines() if line.startswith(f"| {label}")]
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == 4, line
        if not label.startswith("peak GPU memory"):  # no GPU memory on the CPU
            assert re.fullmatch(r"\d+(\.\d+)? (ms|s|img/s)", cells[1]), line
            assert re.fullmatch(r"\d+\.\d\d", cells[3]), line
