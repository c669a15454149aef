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

# Flags that map one-to-one onto request fields (CONTRACT 2); None = leave the API default.
_FIELDS: tuple[tuple[str, type, str], ...] = (
    ("negative_prompt", str, "what the image should not show (default: none)"),
    ("base_model", str, "a name from models.yaml (default: SDXL_DEFAULT_BASE_MODEL)"),
    ("scheduler", str, "one of the 30 sampler names, e.g. 'DPM++ 2M Karras' (default: UniPC)"),
    ("num_inference_steps", int, "20 to 100 (default 30)"),
    ("guidance_scale", float, "0.1 to 25 (default 6.5)"),
    ("strength", float, "0.1 to 1: how far from the input image (default 0.65)"),
    ("samples", int, "1 to 4 images (default 1); the files get -0, -1, ... suffixes"),
    ("seed", int, "0 to 2^64-1, or -1 for a random one (default -1)"),
    ("output_format", str, "jpeg, png or webp (default: from the --out suffix, else jpeg)"),
    ("output_quality", int, "1 to 100, for jpeg and webp (default 95)"),
)
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
    for field, kind, text in _FIELDS:
        parser.add_argument("--" + field.replace("_", "-"), dest=field, type=kind, default=None, help=text)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from app.core.models_config import load_models_config
    from app.core.request_model import validate_body
    from app.core.settings import load_settings

    settings = load_settings()
    models = load_models_config(settings.models_file)
    body: dict[str, Any] = {"image": args.image, "prompt": args.prompt}
    body.update({field: getattr(args, field) for field, _, _ in _FIELDS if getattr(args, field) is not None})
    if "output_format" not in body and args.out.suffix.lower() in _SUFFIX_FORMATS:
        body["output_format"] = _SUFFIX_FORMATS[args.out.suffix.lower()]
    try:
        params = validate_body(body, model_names=models.names, default_base_model=settings.default_base_model)
        prepared = _read_image(args.image, settings)
        return _generate(settings, models, params, prepared, args.out)
    except ServiceError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 1


def _read_image(source: str, settings: Any) -> Any:
    from app.core.errors import InvalidInput
    from app.core.image_intake import load_input_image, prepare_image

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
