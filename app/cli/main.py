"""`sdxl-img2img`: the one entry point (CONTRACT section 7)."""

from __future__ import annotations

import argparse
import importlib

# Command modules, in help order. Each registers its subparser and sets `handler` on it.
COMMAND_MODULES = (
    "app.cli.up",
    "app.cli.api",
    "app.cli.worker",
    "app.cli.keys",
    "app.cli.generate",
    "app.cli.models",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdxl-img2img", description="Self-hosted, Segmind-compatible SDXL img2img server."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMMAND_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue  # a command not built yet
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    result = args.handler(args)
    return int(result or 0)
