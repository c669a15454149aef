"""The input image as the API hands it to the worker through Redis, and the worker's decode of it.

The upload's own bytes travel when, decoded as they are, they already are the working image: a
JPEG, PNG or WebP of one frame that decodes to RGB without transparency, with no EXIF orientation
to apply, at the working resolution. Anything else (rotated, resized, converted) travels as a
lossless PNG of the prepared image. Either way the worker's `decode_handoff` gives the pixels the
API prepared, bit for bit: the same Pillow decodes the same bytes (tests/test_image_handoff.py).

Why: re-encoding a 1024x1024 photo as PNG was 31 of the API's 39 ms of CPU per submission, for a
JPEG the worker decodes in 3 ms, and the upload is smaller in Redis than its PNG.
"""

from __future__ import annotations

import io

from PIL import Image, ImageFile

PASS_THROUGH_FORMATS = ("JPEG", "PNG", "WEBP")
# What a worker accepts from Redis: the pass-through formats (the re-encoded hand-off is a PNG).
HANDOFF_FORMATS = PASS_THROUGH_FORMATS
_ORIENTATION_TAG = 0x0112
# The EXIF orientations that ImageOps.exif_transpose turns or flips (any other value: none).
_TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))


def passes_as_is(im: ImageFile.ImageFile, header_size: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether the loaded `im` already is the working image, so that its file can travel unchanged:
    every transform of `app.core.image_decode.normalise` would leave it as it is."""
    if im.format not in PASS_THROUGH_FORMATS or getattr(im, "is_animated", False):
        return False
    # Decoded at its stored size (no JPEG draft reduction), which is the working size: no resize.
    if im.size != header_size or im.size != target:
        return False
    # Already RGB with nothing to composite: the conversion to RGB would change nothing.
    if im.mode != "RGB" or "transparency" in im.info:
        return False
    try:
        orientation = im.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # a damaged EXIF block: let the normalisation decide, as it always did
        return False
    return orientation not in _TRANSPOSING_ORIENTATIONS


def png_handoff(rgb: Image.Image) -> bytes:
    out = io.BytesIO()
    # Fast compression: the PNG only travels to the worker through Redis, and stays lossless.
    rgb.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def decode_handoff(data: bytes) -> Image.Image:
    """The worker's side: the stored input -> the RGB working image. The API decoded and checked
    these same bytes (size, pixel count, integrity) before it stored them."""
    im = Image.open(io.BytesIO(data), formats=HANDOFF_FORMATS)
    im.load()
    return im if im.mode == "RGB" else im.convert("RGB")
