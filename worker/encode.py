"""Output images to bytes: JPEG, PNG or WebP at the requested quality, deterministically.

Pillow writes no timestamps or other varying metadata for these formats, so the same pixels and
parameters always give the same bytes (CONTRACT 3b).
"""

from __future__ import annotations

import io

from PIL import Image

from app.core.job_spec import CONTENT_TYPES

# Pillow's format names for the contract's output formats.
_PIL_FORMATS = {"jpeg": "JPEG", "png": "PNG", "webp": "WEBP"}


def encode_image(image: Image.Image, output_format: str, quality: int = 95) -> bytes:
    """`image` as `output_format` bytes; `quality` (1-100) applies to jpeg and webp, PNG is lossless."""
    if output_format not in _PIL_FORMATS:
        raise ValueError(f"unknown output format {output_format!r}")
    if image.mode != "RGB":
        image = image.convert("RGB")
    options: dict[str, object] = {}
    if output_format == "jpeg":
        options = {"quality": quality}
    elif output_format == "webp":
        options = {"quality": quality, "method": 4}
    buffer = io.BytesIO()
    image.save(buffer, format=_PIL_FORMATS[output_format], **options)
    return buffer.getvalue()


def content_type(output_format: str) -> str:
    return CONTENT_TYPES[output_format]
