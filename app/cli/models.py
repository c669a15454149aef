"""`sdxl-img2img models list|pull`: see the configured base models, download their weights ahead of time.

Hub checkpoints go to the Hugging Face cache (`HF_HOME`, a volume in the Docker image), where the
worker's `from_pretrained` finds them; a worker started after `models pull` loads without any
download. `builtin:tiny` is built into `SDXL_CACHE_DIR`; local directories and files are checked.
huggingface_hub (worker extra) is imported inside the handler only: `models list` works on the API
image too.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from app.core.models_config import (
    BUILTIN_SDXL_RANDOM,
    ModelEntry,
    ModelsConfig,
    ModelsConfigError,
    load_models_config,
)
from app.core.settings import Settings, SettingsError, load_settings

# What a diffusers pipeline repo needs besides its weights: every config, the tokenizers' files.
_CONFIG_PATTERNS = ["*.json", "*.txt", "*.model", "tokenizer*/*"]
# Weights live in component folders (`unet/`, `vae/`, ...); `*/` leaves out the multi-GB single-file
# checkpoints that many repos also keep at their root, which from_pretrained never reads.
_VARIANTS = ("fp16", "bf16", "fp32", "non_ema", "ema")


class PullError(Exception):
    """One model could not be made available; the message is one line for a person."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models", help="list or download base models", description="List or download base models."
    )
    actions = parser.add_subparsers(dest="models_command", required=True, metavar="ACTION")

    listing = actions.add_parser("list", help="the models in models.yaml and where each comes from")
    listing.set_defaults(handler=_list)

    pull = actions.add_parser(
        "pull",
        help="download checkpoints ahead of time, with progress bars",
        description="Download the weights of the named models (default: every model in models.yaml) "
        "into the Hugging Face cache (HF_HOME), build builtin:tiny, check local paths.",
    )
    pull.add_argument("names", nargs="*", metavar="NAME", help="base model names (default: all)")
    pull.set_defaults(handler=_pull)


def _load() -> tuple[Settings, ModelsConfig]:
    settings = load_settings()
    return settings, load_models_config(settings.models_file)


def _list(args: argparse.Namespace) -> int:
    try:
        settings, config = _load()
    except (SettingsError, ModelsConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    width = max(len(name) for name in config.names)
    for name, entry in config.models.items():
        default = "  (default)" if name == settings.default_base_model else ""
        variant = f"  variant={entry.variant}" if entry.variant else ""
        print(f"{name:<{width}}  {entry.source_kind:<11}  {entry.source}{variant}{default}")
    return 0


def _pull(args: argparse.Namespace) -> int:
    try:
        settings, config = _load()
    except (SettingsError, ModelsConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    unknown = [n for n in args.names if n not in config.models]
    if unknown:
        print(
            f"error: unknown model {', '.join(unknown)} (models.yaml has: {', '.join(config.names)})",
            file=sys.stderr,
        )
        return 1
    names = args.names or config.names
    failed = 0
    for name in names:
        entry = config.models[name]
        start = time.monotonic()
        try:
            where = pull_model(entry, settings)
        except PullError as exc:
            print(f"error: {name}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(f"{name}: ready in {where} ({time.monotonic() - start:.1f} s)", flush=True)
    return 1 if failed else 0


def pull_model(entry: ModelEntry, settings: Settings) -> str:
    """Make one model's weights available locally; returns where they are. Raises PullError."""
    kind = entry.source_kind
    if kind == "builtin":
        if entry.source == BUILTIN_SDXL_RANDOM:
            return "built in memory at each start (nothing to pull)"
        return _build_tiny(settings)
    if kind in ("directory", "safetensors"):
        where = _check_local(entry.source, kind)
    else:
        where = _download(entry.source, entry.revision, _pipeline_patterns(entry.variant))
    if entry.vae:
        if ModelEntry(source=entry.vae).source_kind == "hub":
            # A VAE repo keeps its config and weights at the root (not in component folders).
            patterns = (["config.json", "diffusion_pytorch_model.safetensors"], None)
            _download(entry.vae, None, patterns)
        else:
            _check_local(entry.vae, "directory")
    return where


def _pipeline_patterns(variant: str | None) -> tuple[list[str], list[str] | None]:
    """allow_patterns and ignore_patterns for one diffusers pipeline repo and variant."""
    if variant:
        # from_pretrained(variant=...) reads `<name>.<variant>.safetensors` (or its shards).
        return [*_CONFIG_PATTERNS, f"*/*.{variant}.safetensors", f"*/*.{variant}-*.safetensors"], None
    others = [f"*.{v}.*" for v in _VARIANTS] + [f"*.{v}-*" for v in _VARIANTS]
    return [*_CONFIG_PATTERNS, "*/*.safetensors"], others


def _check_local(source: str, kind: str) -> str:
    path = Path(source).expanduser()
    if kind == "safetensors":
        if not path.is_file():
            raise PullError(f"file not found: {path}")
    elif not (path / "model_index.json").is_file() and not (path / "config.json").is_file():
        raise PullError(f"not a diffusers directory (no model_index.json or config.json): {path}")
    return str(path)


def _download(repo_id: str, revision: str | None, patterns: tuple[list[str], list[str] | None]) -> str:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            GatedRepoError,
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise PullError("huggingface_hub is not installed (pip install 'sdxl-img2img[worker]')") from None

    allow, ignore = patterns
    try:
        # snapshot_download draws huggingface_hub's tqdm bars; HF_TOKEN is honoured for gated repos.
        return snapshot_download(repo_id, revision=revision, allow_patterns=allow, ignore_patterns=ignore)
    except GatedRepoError:
        raise PullError(f"{repo_id} is gated: accept its licence on the hub and set HF_TOKEN") from None
    except RepositoryNotFoundError:
        raise PullError(f"repository {repo_id} not found (or private: set HF_TOKEN)") from None
    except RevisionNotFoundError:
        raise PullError(f"revision {revision!r} not found in {repo_id}") from None
    except LocalEntryNotFoundError as exc:
        # Offline (HF_HUB_OFFLINE=1) or the hub unreachable, and nothing in the cache.
        raise PullError(f"cannot download {repo_id}: {_first_line(exc)}") from None
    except (HfHubHTTPError, OSError) as exc:
        raise PullError(f"cannot download {repo_id}: {_first_line(exc)}") from None


def _build_tiny(settings: Settings) -> str:
    try:
        from worker.tiny import ensure_tiny
    except ImportError as exc:
        raise PullError(f"cannot build builtin:tiny: {exc} (pip install 'sdxl-img2img[worker]')") from None
    return str(ensure_tiny(settings.cache_dir))


def _first_line(exc: Any) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
