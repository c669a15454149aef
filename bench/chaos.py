"""The chaos run for longer (run by hand: `.venv/bin/python bench/chaos.py --minutes 10 --seed 1`).
Prints figures, asserts nothing; tests/test_chaos.py runs the same for two minutes and asserts.

A key with known credits, v1 and v2 clients (1 to 4 samples, random cancels), and for `--minutes`
SIGKILLs of workers, the API and Redis (AOF, `appendfsync always`) at random moments and at the worst
ones, each restarted at once (tests/chaos_run.py). Then: requests by kind and outcome, kills by
kind, how long after the chaos every process was back and every request had ended, the credit drift
(balance against the initial credits less the cost of the COMPLETED requests), the per-request keys
without a TTL."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.chaos_run import run_chaos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    began = time.monotonic()

    def log(line: str) -> None:
        print(f"{time.monotonic() - began:7.1f} s  {line}", flush=True)

    summary = run_chaos(args.minutes * 60, args.seed, log=log)
    print()
    for line in summary.lines():
        print(line)
    print(f"whole run: {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    main()
