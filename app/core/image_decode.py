"""Decoding an input image (CONTRACT 3): header checks before any pixel is decoded, the decode
itself (reduced where the format allows), and normalisation to RGB at the working resolution.
Every refusal is `InvalidInput` with a message that says why. CPU bound and synchronous: the
intake (`app.core.image_intake`) runs it in a thread, within the decode memory budget."""

from __future__ import annotations

import io
import math
import re
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from app.core.errors import InvalidInput
from app.core.image_handoff import passes_as_is, png_handoff
from app.core.settings import Settings

MIN_SIDE = 64
# The Pillow plugins allowed to parse the data (no other parser ever sees it). The JPEG plugin
# also opens MPO, the multi-picture JPEG that many phones write; its first picture is used.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")
ACCEPTED_NAMES = "JPEG, PNG, WebP, GIF, BMP, TIFF"

# Signatures of the accepted formats: data that starts like one but does not open is damaged.
_ACCEPTED_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "JPEG"),
    (b"\x89PNG\r\n\x1a\n", 0, "PNG"),
    (b"WEBP", 8, "WebP"),
    (b"GIF8", 0, "GIF"),
    (b"BM", 0, "BMP"),
    (b"II*\x00", 0, "TIFF"),
    (b"MM\x00*", 0, "TIFF"),
)
# A few formats people send that Pillow cannot or must not decode here, named in the refusal.
_KNOWN_SIGNATURES: tuple[tuple[bytes, int, str], ...] = (
    (b"%PDF", 0, "PDF"),
    (b"<svg", -1, "SVG"),
    (b"ftypheic", 4, "HEIC"),
    (b"ftypheix", 4, "HEIC"),
    (b"ftypmif1", 4, "HEIF"),
    (b"ftypavif", 4, "AVIF"),
    (b"\x00\x00\x01\x00", 0, "ICO"),
    (b"8BPS", 0, "PSD"),
    (b"\xff\x0a", 0, "JPEG XL"),
    (b"\x00\x00\x00\x0cJXL ", 0, "JPEG XL"),
)

# Pillow's decompression-bomb limit is a module global; we set it for the few microseconds of
# `Image.open` (header parsing) only, under a lock, so that concurrent requests with different
# settings never see each other's value and nothing is changed at import time.
_PIXEL_LIMIT_LOCK = threading.Lock()


@dataclass(frozen=True)
class PreparedImage:
    """The normalised input: RGB, at the working resolution (both sides multiples of 8)."""

    # What the worker gets (app.core.image_handoff): the upload itself when it already is `image`,
    # else a lossless PNG of `image`.
    handoff: bytes
    width: int
    height: int
    image: Image.Image


def working_size(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The working resolution: aspect kept, scaled down (never up) to at most `max_pixels`,
    then each side rounded down to a multiple of 8. Pure integer-exact arithmetic after one sqrt."""
    w, h = width, height
    if w * h > max_pixels:
        scale = math.sqrt(max_pixels / (w * h))
        w, h = max(1, math.floor(width * scale)), max(1, math.floor(height * scale))
        # Float rounding can leave the product a hair above the limit; step the longer side down.
        while w * h > max_pixels:
            if w >= h:
                w -= 1
            else:
                h -= 1
    return (w // 8) * 8, (h // 8) * 8


# Estimated peak bytes per decoded pixel of one decode (the decoder's buffer and the image, the
# conversion to RGB), measured on 8000x5000 images: PNG RGBA 9.5, GIF 6, PNG RGB 6. Pillow's WebP
# decoder keeps two RGBA canvases and copies the frame twice (16 to 17 measured).
DECODE_BYTES_PER_PIXEL = 12
DECODE_BYTES_PER_PIXEL_BY_FORMAT = {"WEBP": 18}


@dataclass
class OpenedImage:
    """An image whose header has been read and checked, not yet decoded."""

    data: bytes
    im: ImageFile.ImageFile
    header_size: tuple[int, int]
    target: tuple[int, int]
    resize_to: tuple[int, int] | None

    @property
    def decode_cost_bytes(self) -> int:
        """What decoding it will hold at its peak (after a JPEG draft: the reduced size)."""
        width, height = self.im.size
        per_pixel = DECODE_BYTES_PER_PIXEL_BY_FORMAT.get(self.im.format or "", DECODE_BYTES_PER_PIXEL)
        return width * height * per_pixel


def prepare_image(data: bytes, settings: Settings, resize_to: tuple[int, int] | None = None) -> PreparedImage:
    """Decode `data` and return it normalised to RGB at the working resolution (sync, CPU bound).

    `resize_to` (`img_width`/`img_height` of clients in the wild, CONTRACT 9): the size wanted for the
    upright image, aspect not kept, then capped to `max_pixels` and rounded down to multiples of 8."""
    return decode_opened(open_image(data, settings, resize_to))


def open_image(data: bytes, settings: Settings, resize_to: tuple[int, int] | None = None) -> OpenedImage:
    """Read and check the header (format, pixels, sides), and choose the decode size; no pixel yet."""
    if not data:
        raise InvalidInput("image is empty")
    if len(data) > settings.max_image_bytes:
        raise InvalidInput(f"image is {len(data)} bytes, more than the limit of {settings.max_image_bytes}")

    im = _open_checked(data, settings)
    width, height = im.size
    target = working_size(*(resize_to or (width, height)), settings.max_pixels)
    if min(target) < MIN_SIDE:
        raise InvalidInput(
            f"image of {width}x{height} px is too elongated: at the working resolution "
            f"{target[0]}x{target[1]} a side would be under {MIN_SIDE} px"
        )
    if im.format in ("JPEG", "MPO"):
        # Let libjpeg decode at 1/2, 1/4 or 1/8 scale when the working size allows it: a 40 MP
        # photo then costs a fraction of the time and memory. Deterministic, and never below
        # the size we resize to (draft keeps each side >= the size asked for).
        need = _scale_needed(width, height, target, resize_to)
        im.draft("RGB", (math.ceil(width * need), math.ceil(height * need)))
    return OpenedImage(data=data, im=im, header_size=(width, height), target=target, resize_to=resize_to)


def decode_opened(opened: OpenedImage) -> PreparedImage:
    """Decode every pixel (truncated or corrupt data is refused here, at submission), then the
    hand-off: the upload's own bytes when they already are the working image, else the image
    oriented, shrunk and converted to RGB, as a PNG (CPU bound)."""
    im = opened.im
    _load_fully(im)
    if passes_as_is(im, opened.header_size, opened.target):
        return PreparedImage(handoff=opened.data, width=im.width, height=im.height, image=im)
    rgb = normalise(opened)
    return PreparedImage(handoff=png_handoff(rgb), width=rgb.width, height=rgb.height, image=rgb)


def normalise(opened: OpenedImage) -> Image.Image:
    """The decoded image oriented (EXIF), converted to RGB and resized to the working resolution."""
    im, target, resize_to = opened.im, opened.target, opened.resize_to
    _load_fully(im)
    # A large decoded image is divided by an integer factor first, in its own mode, so that the
    # copies the colour conversions make are small (the file's format could not decode it reduced).
    im = _reduce_early(im, target, resize_to)

    loaded_size = im.size
    upright = _apply_orientation(im)
    if upright.size != loaded_size and not resize_to:
        # EXIF orientation turned the image a quarter: the working size of the upright image.
        # (Computed from the header size, not the draft-reduced one, so it never depends on draft.)
        target = (target[1], target[0])
    rgb = _to_rgb(upright)
    del im, upright  # the full-size buffers go before the resize allocates
    if rgb.size != target:
        rgb = rgb.resize(target, Image.Resampling.LANCZOS)
    return rgb


def _scale_needed(
    width: int, height: int, target: tuple[int, int], resize_to: tuple[int, int] | None
) -> float:
    """The smallest scale of the stored image that still covers the target on both sides."""
    need = max(target[0] / width, target[1] / height)
    if resize_to:  # the wanted size is the upright one: never below either orientation
        need = max(need, target[0] / height, target[1] / width)
    return need


# Modes Pillow's Image.reduce handles; palette, bilevel and 16-bit images are converted first anyway.
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA", "RGBX", "CMYK", "I", "F")


def _reduce_early(im: Image.Image, target: tuple[int, int], resize_to: tuple[int, int] | None) -> Image.Image:
    """A box-filter reduction by an integer factor that leaves at least twice the target on both
    sides (Pillow's reducing_gap=2 idea: the LANCZOS resize after it is indistinguishable)."""
    if im.mode not in _REDUCIBLE_MODES:
        return im
    factor = int(1 / (2 * _scale_needed(im.width, im.height, target, resize_to)))
    if factor < 2:
        return im
    return im.reduce(factor)


# --- helpers -----------------------------------------------------------------------------------


@contextmanager
def _pixel_limit(max_pixels: int) -> Iterator[None]:
    """Make Pillow's own bomb check refuse anything above `max_pixels` while the header is read."""
    with _PIXEL_LIMIT_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "Corrupt EXIF data" etc.: refused or ignored
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _too_many_pixels(width: int, height: int, settings: Settings) -> InvalidInput:
    return InvalidInput(
        f"image is {width}x{height} = {width * height} pixels, more than the limit of "
        f"{settings.max_input_pixels} pixels"
    )


def _open_checked(data: bytes, settings: Settings) -> ImageFile.ImageFile:
    """Read the header only, and refuse by format, pixel count and side before any decoding."""
    try:
        with _pixel_limit(settings.max_input_pixels):
            im = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        size = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = size.group(1) if size else "too many"
        raise InvalidInput(
            f"image has {pixels} pixels, more than the limit of {settings.max_input_pixels} pixels"
        ) from None
    except UnidentifiedImageError:
        raise InvalidInput(_not_an_image_message(data)) from None
    except Exception as exc:  # Pillow's plugins raise a zoo of types on a damaged header
        if isinstance(exc, MemoryError):
            raise
        raise InvalidInput(f"image data is truncated or corrupt: {_short(exc)}") from None

    width, height = im.size
    if width * height > settings.max_input_pixels:
        raise _too_many_pixels(width, height, settings)
    if width < MIN_SIDE or height < MIN_SIDE:
        raise InvalidInput(f"image is {width}x{height} px; each side must be at least {MIN_SIDE} px")
    return im


def _not_an_image_message(data: bytes) -> str:
    head = data[:512]
    for signature, offset, name in _ACCEPTED_SIGNATURES:
        if head[offset:].startswith(signature):
            return f"image data is truncated or corrupt (a damaged {name} file)"
    for signature, offset, name in _KNOWN_SIGNATURES:
        found = signature in head.lower() if offset < 0 else head[offset:].startswith(signature)
        if found:
            return f"unsupported image format {name}; accepted: {ACCEPTED_NAMES}"
    return f"image is not an image file (or not a supported format; accepted: {ACCEPTED_NAMES})"


def _load_fully(im: Image.Image) -> None:
    """Decode every pixel now, so that truncated or corrupt data is refused here and not later."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Someone turned on Pillow's global leniency; truncated data would pass silently.
        raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES must stay False in the API process")
    try:
        im.load()
    except Exception as exc:  # OSError, SyntaxError, ValueError, struct.error, EOFError, ...
        if isinstance(exc, MemoryError):
            raise
        raise InvalidInput(f"image data is truncated or corrupt: {_short(exc)}") from None


def _apply_orientation(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        # A damaged EXIF block: show the pixels as stored rather than refuse the photo.
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any decoded mode -> RGB; transparency composited on white, 16-bit scaled (not clipped)."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode.startswith("I;16") or mode in ("I", "F"):
        im = _high_depth_to_l(im)
        mode = "L"
    has_alpha = mode in ("RGBA", "RGBa", "LA", "La", "PA") or (
        mode in ("P", "L", "RGB", "1") and "transparency" in im.info
    )
    try:
        if has_alpha:
            rgba = im.convert("RGBA")
            white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, rgba).convert("RGB")
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"image colour mode {mode} is not supported: {_short(exc)}") from None


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey -> 8-bit grey by scaling the range; Pillow's convert would clip."""
    if im.mode == "F":
        _low, high = im.getextrema()
        scale = 255.0 if high <= 1.0 else (1.0 if high <= 255 else 255.0 / 65535.0)
        return im.point(lambda v: v * scale).convert("L")
    wide = im if im.mode == "I" else im.convert("I")
    _low, high = wide.getextrema()
    if im.mode == "I" and high <= 255:
        return wide.convert("L")
    return wide.point(lambda v: v * (1 / 257)).convert("L")


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."
