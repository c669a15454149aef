"""`sdxl-img2img worker [--models a,b]`: one GPU (or CPU) worker with its models resident."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("worker", help="run one GPU (or CPU) worker")
    parser.add_argument(
        "--models",
        default=None,
        help="comma-separated base models (default: SDXL_WORKER_MODELS, else all of models.yaml)",
    )
    parser.set_defaults(handler=run)


def worker_models(requested: str | None, configured: list[str], known: list[str]) -> list[str]:
    names = [m.strip() for m in (requested or "").split(",") if m.strip()] or configured or known
    unknown = [m for m in names if m not in known]
    if unknown:
        raise SystemExit(f"unknown model(s) {', '.join(unknown)}: models.yaml has {', '.join(known)}")
    return names


def run(args: argparse.Namespace) -> int:
    from app.core.logging_setup import configure_logging
    from app.core.models_config import load_models_config
    from app.core.settings import load_settings
    from worker.service import run_worker

    settings = load_settings()
    configure_logging(settings, "worker")
    models = load_models_config(settings.models_file)
    names = worker_models(args.models, settings.worker_model_list, models.names)
    return run_worker(settings, models, names)
