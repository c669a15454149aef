"""Image decoding and normalisation (CONTRACT 3), on real images made with Pillow."""

from __future__ import annotations

import base64
import io
import time
import warnings
from pathlib import Path

import anyio
import pytest
from PIL import Image

from app.core.errors import InvalidInput
from app.core.image_decode import prepare_image, working_size
from app.core.image_intake import NOT_BASE64, decode_base64_image, load_input_bytes, load_input_image
from app.core.settings import Settings
from tests import image_factory as f
from tests.http_fixtures import LocalHTTPServer, serve_bytes

SAMPLE = Path(__file__).resolve().parent.parent / "app" / "cli" / "assets" / "sample.jpg"


def make_settings(**overrides: object) -> Settings:
    return Settings(**overrides)


@pytest.fixture
def settings() -> Settings:  # overrides conftest's: these tests need no Redis
    return make_settings()


def close(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


def refused(data: bytes, settings: Settings) -> str:
    with pytest.raises(InvalidInput) as info:
        prepare_image(data, settings)
    assert info.value.status_code == 400
    return info.value.message


# --- accepted formats ----------------------------------------------------------------------------


@pytest.mark.parametrize("maker", [f.jpeg, f.png, f.webp, f.bmp, f.tiff], ids=lambda m: m.__name__)
def test_accepted_formats_decode_to_rgb_at_their_size(maker, settings):
    prepared = prepare_image(maker(320, 240), settings)
    assert (prepared.width, prepared.height) == (320, 240)
    assert prepared.image.mode == "RGB"
    assert close(prepared.image.getpixel((10, 10)), f.RED)
    assert close(prepared.image.getpixel((310, 230)), f.BLUE)


def test_a_transformed_image_is_handed_off_as_a_lossless_png(settings):
    prepared = prepare_image(f.jpeg(321, 241), settings)  # sides rounded down to 320x240: resized
    decoded = Image.open(io.BytesIO(prepared.handoff))
    assert decoded.format == "PNG" and decoded.mode == "RGB"
    assert decoded.size == (prepared.width, prepared.height)
    assert decoded.tobytes() == prepared.image.tobytes()


def test_animated_gif_keeps_the_first_frame(settings):
    prepared = prepare_image(f.gif_animated(160, 120, frames=3), settings)
    assert (prepared.width, prepared.height) == (160, 120)
    r, g, b = prepared.image.getpixel((80, 60))
    assert r > 150 and g < 100 and b < 100  # frame 0 is red; frames 1 and 2 are green and blue


def test_same_bytes_give_the_same_result(settings):
    data = f.jpeg(1000, 750)
    assert prepare_image(data, settings).handoff == prepare_image(data, settings).handoff


def test_the_shipped_sample_image_is_accepted(settings):
    data = SAMPLE.read_bytes()
    assert len(data) < 60_000
    prepared = prepare_image(data, settings)
    assert (prepared.width, prepared.height) == (512, 384)


# --- colour modes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("maker", "left", "right"),
    [
        (lambda: f.png_rgba(alpha=0), f.WHITE, f.WHITE),  # fully transparent -> white
        (lambda: f.png_rgba(alpha=128), (237, 137, 137), (237, 137, 137)),  # half red over white
        (lambda: f.webp_rgba(alpha=0), f.WHITE, f.WHITE),
        (lambda: f.png_la(grey=0, alpha=0), f.WHITE, f.WHITE),
        (lambda: f.png_la(grey=0, alpha=255), (0, 0, 0), (0, 0, 0)),
        (lambda: f.palette_png(), f.RED, f.BLUE),
        (lambda: f.palette_png(transparent=True), f.WHITE, f.BLUE),  # index 0 transparent
        (lambda: f.grey_png(value=100), (100, 100, 100), (100, 100, 100)),
        (lambda: f.grey_jpeg(value=100), (100, 100, 100), (100, 100, 100)),
        (lambda: f.bilevel_png(), (0, 0, 0), f.WHITE),
        (lambda: f.png_16bit(value=32768), (128, 128, 128), (128, 128, 128)),  # scaled, not clipped
        (lambda: f.tiff_16bit(value=65535), f.WHITE, f.WHITE),
        (lambda: f.tiff_16bit(value=8192), (32, 32, 32), (32, 32, 32)),
        (lambda: f.cmyk_jpeg(), (255, 0, 0), (255, 0, 0)),
        (lambda: f.cmyk_tiff(cmyk=(255, 255, 0, 0)), (0, 0, 255), (0, 0, 255)),
    ],
    ids=[
        "rgba-transparent",
        "rgba-half",
        "webp-rgba",
        "la-transparent",
        "la-opaque",
        "palette",
        "palette-transparency",
        "grey",
        "grey-jpeg",
        "1-bit",
        "16-bit-png",
        "16-bit-tiff-max",
        "16-bit-tiff-low",
        "cmyk-jpeg",
        "cmyk-tiff",
    ],
)
def test_colour_modes_become_rgb(maker, left, right, settings):
    prepared = prepare_image(maker(), settings)
    assert prepared.image.mode == "RGB"
    w, h = prepared.width, prepared.height
    assert close(prepared.image.getpixel((5, h // 2)), left), prepared.image.getpixel((5, h // 2))
    assert close(prepared.image.getpixel((w - 6, h // 2)), right), prepared.image.getpixel((w - 6, h // 2))


# --- EXIF orientation ----------------------------------------------------------------------------


def test_exif_orientation_6_is_turned_upright(settings):
    # Stored 200x100 red|blue, "rotate 90 clockwise to display": upright 100x200, red on top.
    prepared = prepare_image(f.exif_rotated_jpeg(200, 100, orientation=6), settings)
    assert (prepared.width, prepared.height) == (96, 200)
    # (x=10: off the grey band, which runs down the middle once upright)
    assert close(prepared.image.getpixel((10, 10)), f.RED)
    assert close(prepared.image.getpixel((10, 190)), f.BLUE)


def test_exif_orientation_3_is_turned_half_way(settings):
    prepared = prepare_image(f.exif_rotated_jpeg(200, 104, orientation=3), settings)
    assert (prepared.width, prepared.height) == (200, 104)
    assert close(prepared.image.getpixel((10, 10)), f.BLUE)
    assert close(prepared.image.getpixel((190, 10)), f.RED)


def test_exif_rotation_of_a_large_photo_uses_the_upright_working_size(settings):
    # 3000x2000 stored, orientation 8: upright 2000x3000; JPEG draft decoding must not change it.
    prepared = prepare_image(f.exif_rotated_jpeg(3000, 2000, orientation=8), settings)
    assert (prepared.width, prepared.height) == working_size(2000, 3000, settings.max_pixels)
    assert prepared.height > prepared.width
    # Orientation 8 (rotate 90 counter-clockwise to display): the left (red) half ends at the bottom.
    assert close(prepared.image.getpixel((20, prepared.height - 10)), f.RED, 20)
    assert close(prepared.image.getpixel((20, 10)), f.BLUE, 20)


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("maker", "expected"),
    [
        (f.svg, "unsupported image format SVG"),
        (f.pdf, "unsupported image format PDF"),
        (f.ico, "unsupported image format ICO"),
        (f.ppm, "not an image"),
        (f.html, "not an image"),
        (f.text, "not an image"),
        (lambda: b"\x00" * 1000, "not an image"),
    ],
    ids=["svg", "pdf", "ico", "ppm", "html", "text", "zeros"],
)
def test_non_images_are_refused(maker, expected, settings):
    assert expected in refused(maker(), settings)


def test_empty_data_is_refused(settings):
    assert refused(b"", settings) == "image is empty"


@pytest.mark.parametrize(
    "data",
    [
        f.truncated(f.jpeg(), 0.6),
        f.truncated(f.png(), 0.6),
        f.truncated(f.webp(), 0.6),
        f.truncated(f.gif_single(), 0.6),
        f.truncated(f.bmp(), 0.6),
        f.truncated(f.tiff(), 0.6),
        f.corrupt_png(),
        f.corrupt_jpeg(),
    ],
    ids=["jpeg", "png", "webp", "gif", "bmp", "tiff", "corrupt-png", "corrupt-jpeg"],
)
def test_truncated_and_corrupt_images_are_refused(data, settings):
    assert "truncated or corrupt" in refused(data, settings)


@pytest.mark.parametrize(("width", "height"), [(32, 32), (63, 200), (200, 63)])
def test_a_side_under_64_px_is_refused(width, height, settings):
    message = refused(f.encode(f.pattern(width, height), "PNG"), settings)
    assert f"{width}x{height}" in message and "at least 64 px" in message


def test_64_px_is_enough(settings):
    prepared = prepare_image(f.encode(f.pattern(64, 64), "PNG"), settings)
    assert (prepared.width, prepared.height) == (64, 64)


def test_an_extremely_elongated_image_is_refused(settings):
    # 64 x 40000: within the pixel limits, but scaled to 1.5 MP it would be 48 px wide.
    message = refused(f.encode(f.solid(64, 40_000, f.RED), "PNG"), settings)
    assert "too elongated" in message


def test_more_bytes_than_the_limit_are_refused():
    data = f.png(320, 240)
    message = refused(data, make_settings(max_image_bytes=len(data) - 1))
    assert "more than the limit" in message
    assert prepare_image(data, make_settings(max_image_bytes=len(data))).width == 320


def test_pixel_limit_is_exact():
    settings = make_settings(max_input_pixels=100 * 80)
    assert prepare_image(f.encode(f.pattern(100, 80), "PNG"), settings).width == 96
    message = refused(f.encode(f.pattern(100, 81), "PNG"), settings)
    assert "8100" in message and "more than the limit of 8000 pixels" in message


# --- decompression bombs: refused from the header, fast, without decoding ------------------------


@pytest.mark.parametrize(
    ("maker", "pixels"),
    [
        (f.png_header_bomb, 100_000 * 100_000),
        (f.gif_header_bomb, 65_535 * 65_535),
        (f.jpeg_header_bomb, 65_500 * 65_500),
        (f.png_zlib_bomb, 8000 * 8000),  # a real, complete 64 MP PNG of ~60 KB
    ],
    ids=[
        "png-header-100000x100000",
        "gif-header-65535x65535",
        "jpeg-header-65500x65500",
        "png-zlib-8000x8000",
    ],
)
def test_decompression_bombs_are_refused_before_decoding(maker, pixels, settings):
    data = maker()  # built (and cached) outside the timed part
    saved_limit = Image.MAX_IMAGE_PIXELS
    started = time.perf_counter()
    message = refused(data, settings)
    elapsed = time.perf_counter() - started
    assert f"{pixels} pixels" in message and "more than the limit of 40000000 pixels" in message
    # Decoding 64 MP would take far longer and allocate 64+ MB; 10^10 pixels would not fit at all.
    assert elapsed < 0.05, elapsed
    assert saved_limit == Image.MAX_IMAGE_PIXELS  # Pillow's global is restored after the call


def test_pillow_global_limit_is_not_what_decides(settings):
    # A limit above Pillow's own default (2 x 89 MP) is honoured: the per-call limit is used.
    big = make_settings(max_input_pixels=200_000_000)
    message = refused(f.png_header_bomb(15_000, 14_000), big)  # 210 MP
    assert "210000000 pixels" in message
    assert "more than the limit of 200000000" in message


def test_bomb_check_leaves_no_warning_filter_behind(settings):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        refused(f.png_header_bomb(), settings)
        warnings.warn("after", Image.DecompressionBombWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["after"]  # a warning again, not an error


# --- working resolution --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        ((4000, 3000), (1448, 1080)),
        ((100, 67), (96, 64)),
        ((64, 64), (64, 64)),
        ((1024, 1024), (1024, 1024)),
        ((1025, 1023), (1024, 1016)),
        ((1536, 1024), (1536, 1024)),  # exactly 1.5 MP: unchanged
        ((1537, 1024), (1536, 1016)),
        ((6000, 4000), (1536, 1024)),  # exactly 1.5 MP after scaling by 0.256
    ],
)
def test_working_size_examples(size, expected):
    assert working_size(*size, 1_572_864) == expected


def test_working_size_properties():
    limit = 1_572_864
    for width in range(64, 9000, 397):
        for height in range(64, 9000, 411):
            w, h = working_size(width, height, limit)
            assert w % 8 == 0 and h % 8 == 0
            assert w * h <= limit
            assert w <= width and h <= height  # never upscales
            if width * height > limit:  # scaled down: the aspect ratio is kept within rounding
                assert abs(w / h - width / height) / (width / height) < 0.05 + 16 / min(w, h)
                assert w * h > limit * 0.9


def test_large_photo_is_scaled_to_the_working_resolution(settings):
    data = f.jpeg(4000, 3000, quality=80)
    started = time.perf_counter()
    prepared = prepare_image(data, settings)
    elapsed = time.perf_counter() - started
    assert (prepared.width, prepared.height) == (1448, 1080)
    assert prepared.width * prepared.height <= settings.max_pixels
    assert close(prepared.image.getpixel((20, 20)), f.RED, 20)
    assert close(prepared.image.getpixel((1428, 1060)), f.BLUE, 20)
    assert elapsed < 3, elapsed


def test_a_large_png_gets_the_same_working_size_as_a_jpeg(settings):
    # No draft decoding for PNG: the size must still come out the same.
    prepared = prepare_image(f.encode(f.solid(4000, 3000, f.RED), "PNG"), settings)
    assert (prepared.width, prepared.height) == (1448, 1080)


def test_small_images_are_never_upscaled():
    settings = make_settings(max_pixels=1_572_864)
    prepared = prepare_image(f.png(100, 67), settings)
    assert (prepared.width, prepared.height) == (96, 64)


# --- base64 --------------------------------------------------------------------------------------


def test_data_url_and_bare_base64_forms_decode(settings):
    data = f.png(96, 64)
    b64 = base64.b64encode(data).decode()
    urlsafe = base64.urlsafe_b64encode(data).decode()
    wrapped = "\n".join(b64[i : i + 76] for i in range(0, len(b64), 76))
    forms = [
        f"data:image/png;base64,{b64}",
        f"DATA:image/png;charset=binary;BASE64,{b64}",
        b64,
        b64.rstrip("="),
        urlsafe,
        urlsafe.rstrip("="),
        wrapped,
        f"  data:image/png;base64,{wrapped}\r\n",
    ]
    for form in forms:
        assert decode_base64_image(form, settings) == data, form[:40]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not base64 at all!", NOT_BASE64),
        ("abcde", NOT_BASE64),  # one char past a group: never valid base64
        ("@@@@", NOT_BASE64),
        ("   ", "image is empty"),
        ("data:image/png;base64,", "image is empty"),
        ("data:image/png,rawbytes", "must be base64-encoded"),
        ("data:image/png;base64", "has no ','"),
        ("data:text/plain;base64,aGVsbG8=", "not an image type"),
    ],
)
def test_bad_base64_is_refused(text, expected, settings):
    with pytest.raises(InvalidInput) as info:
        decode_base64_image(text, settings)
    assert expected in info.value.message


def test_base64_size_limit_is_checked_before_decoding():
    settings = make_settings(max_image_bytes=1000)
    assert len(decode_base64_image(base64.b64encode(b"x" * 1000).decode(), settings)) == 1000
    with pytest.raises(InvalidInput, match="more than the limit of 1000"):
        decode_base64_image(base64.b64encode(b"x" * 1001).decode(), settings)
    huge = "A" * 40_000_000  # 30 MB once decoded: refused from its length, quickly
    started = time.perf_counter()
    with pytest.raises(InvalidInput, match="more than the limit"):
        decode_base64_image(huge, make_settings())
    assert time.perf_counter() - started < 1.0


# --- load_input_image: every source kind ---------------------------------------------------------


def test_load_input_image_from_base64_and_data_url(settings):
    data = f.jpeg(200, 150)
    b64 = base64.b64encode(data).decode()
    for source in (b64, f"data:image/jpeg;base64,{b64}"):
        prepared = anyio.run(load_input_image, source, settings)
        assert (prepared.width, prepared.height) == (200, 144)


def test_load_input_image_from_url():
    settings = make_settings(allow_private_urls=True)
    with LocalHTTPServer() as server:
        url = server.route("/photo.webp", serve_bytes(f.webp(256, 192), content_type="image/webp"))
        prepared = anyio.run(load_input_image, url, settings)
    assert (prepared.width, prepared.height) == (256, 192)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("ftp://example.com/a.png", "must use http or https"),
        ("file:///etc/passwd", "must use http or https"),
        ("gopher://127.0.0.1:6379/_INFO", "must use http or https"),
        ("", "image is empty"),
        ("/etc/passwd", "not an image"),  # valid base64 (of 8 junk bytes), so: not an image
        ("/etc/passwd.png", NOT_BASE64),
        ("C:\\images\\cat.png", NOT_BASE64),
        (base64.b64encode(b"plain text, not an image").decode(), "not an image"),
    ],
)
def test_load_input_image_refusals(source, expected, settings):
    with pytest.raises(InvalidInput) as info:
        anyio.run(load_input_image, source, settings)
    assert expected in info.value.message


def test_load_input_bytes_for_uploaded_files(settings):
    prepared = anyio.run(load_input_bytes, f.bmp(128, 96), settings)
    assert (prepared.width, prepared.height) == (128, 96)
    with pytest.raises(InvalidInput, match="not an image"):
        anyio.run(load_input_bytes, f.text(), settings)
