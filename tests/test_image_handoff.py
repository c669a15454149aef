"""The input image's hand-off to the worker (app/core/image_handoff.py): the upload's own bytes when
they already are the working image, else a lossless PNG of it. Whatever travels, the pixels the
worker gives the pipeline are the ones the PNG re-encode gave before, bit for bit, for every kind
of accepted input."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from app.core.errors import InvalidInput
from app.core.image_decode import normalise, open_image, prepare_image
from app.core.image_handoff import decode_handoff, png_handoff
from tests import image_factory as f
from tests.stack import sample_image_path


def rgb_png_with_transparent_colour() -> bytes:
    return f.encode(f.pattern(160, 120), "PNG", transparency=f.RED)


def oriented(fmt: str, orientation: int = 6) -> bytes:
    """`pattern(200, 96)` as `fmt` with an EXIF Orientation (PNG eXIf, WebP EXIF chunks)."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return f.encode(f.pattern(200, 96), fmt, exif=exif.tobytes())


def animated_png() -> bytes:
    frames = [f.pattern(160, 120), f.solid(160, 120, f.BLUE)]
    return f.encode(frames[0], "PNG", save_all=True, append_images=frames[1:])


# (id, bytes, resize_to, whether the upload itself travels)
CASES = [
    ("jpeg", f.jpeg(320, 240), None, True),
    ("jpeg-photo-1024", f.jpeg(1024, 1024, quality=90), None, True),
    ("png", f.png(320, 240), None, True),
    ("webp-lossless", f.webp(320, 240), None, True),
    ("webp-lossy", f.webp(320, 240, lossless=False), None, True),
    ("jpeg-resize-to-same", f.jpeg(320, 240), (320, 240), True),
    ("jpeg-resize-to-smaller", f.jpeg(320, 240), (160, 120), False),
    ("jpeg-sides-not-multiples-of-8", f.jpeg(321, 241), None, False),
    ("jpeg-scaled-down", f.jpeg(2000, 1500), None, False),
    # libjpeg's draft decodes it at half size, which is the working size: still not the file as is.
    ("jpeg-draft-to-working-size", f.jpeg(2496, 2496), None, False),
    *[
        (f"jpeg-exif-orientation-{o}", f.exif_rotated_jpeg(200, 96, orientation=o), None, o == 1)
        for o in range(1, 9)
    ],
    ("jpeg-exif-rotated-resize-to", f.exif_rotated_jpeg(200, 96, orientation=6), (200, 96), False),
    ("png-exif-orientation-6", oriented("PNG"), None, False),
    ("png-exif-orientation-1", oriented("PNG", 1), None, True),
    ("webp-exif-orientation-8", oriented("WEBP", 8), None, False),
    ("jpeg-cmyk", f.cmyk_jpeg(), None, False),
    ("jpeg-grey", f.grey_jpeg(), None, False),
    ("png-palette", f.palette_png(), None, False),
    ("png-palette-transparent", f.palette_png(transparent=True), None, False),
    ("png-rgba-clear", f.png_rgba(alpha=0), None, False),
    ("png-rgba-half", f.png_rgba(alpha=128), None, False),
    ("png-la", f.png_la(alpha=128), None, False),
    ("png-grey", f.grey_png(), None, False),
    ("png-bilevel", f.bilevel_png(), None, False),
    ("png-16-bit", f.png_16bit(), None, False),
    ("png-rgb-transparent-colour", rgb_png_with_transparent_colour(), None, False),
    ("png-animated", animated_png(), None, False),
    ("webp-rgba", f.webp_rgba(alpha=128), None, False),
    ("gif", f.gif_single(), None, False),
    ("gif-animated", f.gif_animated(), None, False),
    ("bmp", f.bmp(), None, False),
    ("tiff", f.tiff(), None, False),
    ("tiff-cmyk", f.cmyk_tiff(), None, False),
    ("tiff-16-bit", f.tiff_16bit(), None, False),
    ("sample", sample_image_path().read_bytes(), None, None),
]


def before_handoff(data: bytes, settings, resize_to) -> Image.Image:
    """What the worker decoded before the hand-off kept uploads: the normalised image re-encoded as
    PNG by the API, then `Image.open(...).convert("RGB")` in the worker."""
    png = png_handoff(normalise(open_image(data, settings, resize_to)))
    return Image.open(io.BytesIO(png)).convert("RGB")


@pytest.mark.parametrize(
    ("data", "resize_to", "travels_as_is"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_the_worker_decodes_the_pixels_of_the_png_re_encode(data, resize_to, travels_as_is, settings):
    prepared = prepare_image(data, settings, resize_to)
    if travels_as_is is not None:
        assert (prepared.handoff is data) is travels_as_is
    worker_image = decode_handoff(prepared.handoff)
    reference = before_handoff(data, settings, resize_to)
    assert worker_image.mode == "RGB"
    assert worker_image.size == reference.size == (prepared.width, prepared.height)
    assert worker_image.tobytes() == reference.tobytes()
    # The in-process path (`generate`) runs on `prepared.image`: the same pixels.
    assert prepared.image.mode == "RGB" and prepared.image.tobytes() == reference.tobytes()


def test_an_upload_that_would_travel_as_is_is_still_decoded_in_full_first(settings):
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        prepare_image(f.truncated(f.jpeg(320, 240)), settings)
    with pytest.raises(InvalidInput, match="truncated or corrupt"):
        prepare_image(f.corrupt_png(320, 240), settings)


def test_the_worker_opens_only_the_hand_off_formats():
    with pytest.raises(Image.UnidentifiedImageError):
        decode_handoff(f.bmp())
