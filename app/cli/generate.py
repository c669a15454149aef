"""`sdxl-img2img generate`: one generation in-process, no Redis, no server (CONTRACT 7).

For trying a model or a scheduler from the shell. Every request field of CONTRACT 2 is a flag (`_`
written `-`) and goes through the API's own validation, so the CLI accepts and refuses what the API
does. torch and the engine are imported inside the handler: `sdxl-img2img --help` stays fast and the
API-only install can still list this command.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from app.core.errors import ServiceError

# Fields with flags of their own or set otherwise (--image, --prompt; the webhook needs a server).
_NOT_FLAGS = {"image", "prompt", "webhook_url", "base64"}
# Where the CLI's default differs from the API's, or needs saying.
_HELP_NOTES = {
    "samples": "the files get -0, -1, ... suffixes",
    "output_format": "default: from the --out suffix, else jpeg",
    "scheduler": "e.g. 'DPM++ 2M Karras' (default UniPC)",
}
_SUFFIX_FORMATS = {".jpg": "jpeg", ".jpeg": "jpeg", ".png": "png", ".webp": "webp"}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "generate",
        help="one img2img generation in-process (no server, no Redis)",
        description="Run one img2img generation in this process and write the image(s) to --out.",
    )
    parser.add_argument(
        "--image", required=True, metavar="PATH_OR_URL", help="input image: a file or an http(s) URL"
    )
    parser.add_argument("--prompt", required=True, help="what the image should show")
    parser.add_argument("--out", required=True, type=Path, metavar="PATH", help="where to write the image")
    for rule in _flag_rules():
        parser.add_argument(
            "--" + rule.name.replace("_", "-"), dest=rule.name, type=rule.kind, default=None, help=_help(rule)
        )
    parser.set_defaults(handler=run)


def _flag_rules() -> list[Any]:
    """The request fields of CONTRACT 2 that are flags, read from the one declaration of the body."""
    from app.core.request_model import field_rules

    return [rule for name, rule in field_rules().items() if name not in _NOT_FLAGS]


def _help(rule: Any) -> str:
    """`--steps`'s help from the field: what it is, its range or choices, its default."""
    parts = [rule.description]
    short_choices = rule.choices is not None and len(rule.choices) <= 5  # not the 30 schedulers
    if short_choices or (rule.low is not None and rule.kind in (int, float)):
        parts.append(rule.allowed())
    if rule.name in _HELP_NOTES:
        parts.append(_HELP_NOTES[rule.name])
    elif rule.default not in (None, ""):
        parts.append(f"default {rule.default}")
    return "; ".join(part for part in parts if part)


def run(args: argparse.Namespace) -> int:
    from app.core.models_config import load_models_config
    from app.core.request_model import validate_body
    from app.core.settings import load_settings

    settings = load_settings()
    models = load_models_config(settings.models_file)
    body: dict[str, Any] = {"image": args.image, "prompt": args.prompt}
    flags = {rule.name: getattr(args, rule.name) for rule in _flag_rules()}
    body.update({name: value for name, value in flags.items() if value is not None})
    default_base_model = _default_base_model(settings)
    if "output_format" not in body and args.out.suffix.lower() in _SUFFIX_FORMATS:
        body["output_format"] = _SUFFIX_FORMATS[args.out.suffix.lower()]
    try:
        params = validate_body(body, model_names=models.names, default_base_model=default_base_model)
        prepared = _read_image(args.image, settings)
        return _generate(settings, models, params, prepared, args.out)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def _default_base_model(settings: Any) -> str:
    """The base model when --base-model is not given: SDXL_DEFAULT_BASE_MODEL when set; otherwise,
    on a machine without a GPU, `tiny` (built locally in seconds) rather than a real checkpoint that
    would be downloaded and run for minutes on the CPU."""
    if "default_base_model" in settings.model_fields_set:  # set by the environment or .env
        return settings.default_base_model
    import torch

    if settings.device == "cuda" or (settings.device == "auto" and torch.cuda.is_available()):
        return settings.default_base_model
    print("no GPU: using base model 'tiny' (name one with --base-model)", file=sys.stderr)
    return "tiny"


def _read_image(source: str, settings: Any) -> Any:
    from app.core.errors import InvalidInput
    from app.core.image_decode import prepare_image
    from app.core.image_intake import load_input_image

    if source.lower().startswith(("http://", "https://")):
        # The API's own fetch: same size and time limits, same address policy (SDXL_ALLOW_PRIVATE_URLS).
        return asyncio.run(load_input_image(source, settings))
    path = Path(source).expanduser()
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"cannot read image {path}: {exc.strerror or exc}") from None
    return prepare_image(data, settings)


def _generate(settings: Any, models: Any, params: Any, prepared: Any, out: Path) -> int:
    import diffusers
    import transformers

    from worker.engine import Engine, GenerationRequest

    # Loading bars are noise around one result line (`models pull` is where downloads show progress).
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    spec = params.to_job_spec(
        request_id=f"cli-{secrets.token_hex(6)}", width=prepared.width, height=prepared.height
    )
    started = time.perf_counter()
    engine = Engine(settings, models)
    [result] = engine.generate([GenerationRequest(spec=spec, image=prepared.image)])
    if isinstance(result, ServiceError):  # refused (prompt too long, an output that is not an image)
        raise result
    paths = output_paths(out, spec.samples)
    out.parent.mkdir(parents=True, exist_ok=True)
    for path, data, seed in zip(paths, result.images, result.seeds, strict=True):
        path.write_bytes(data)
        print(f"wrote {path} ({spec.width}x{spec.height} {spec.output_format}, seed {seed})")
    print(
        f"{spec.base_model} / {spec.scheduler}: inference {result.inference_time:.2f} s, "
        f"total {time.perf_counter() - started:.2f} s"
    )
    return 0


def output_paths(out: Path, samples: int) -> list[Path]:
    """`out` for one image; `name-0.ext`, `name-1.ext`, ... for several."""
    if samples == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(samples)]


__all__ = ["output_paths", "register"]
