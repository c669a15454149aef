"""Test images of every kind the intake meets, made in memory with Pillow (no files, no network).

Every function returns the encoded bytes of a deterministic image; `pattern()` returns the PIL
image itself. Colours are chosen so that tests can check where things ended up after EXIF
rotation, alpha compositing and mode conversion:

- `pattern(w, h)`: left half RED, right half BLUE, with a grey gradient band in the middle rows;
- `solid(w, h, colour)`: one colour.

Decompression bombs are crafted from headers (`png_header_bomb`, `gif_header_bomb`,
`jpeg_header_bomb`) or are real (`png_zlib_bomb`, highly compressible IDAT data): none of them is
ever decoded by the code under test if it checks the header first.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

from PIL import Image

RED = (220, 20, 20)
BLUE = (20, 20, 220)
WHITE = (255, 255, 255)


# --- building blocks -----------------------------------------------------------------------------


def pattern(width: int = 320, height: int = 240) -> Image.Image:
    """RGB: left half RED, right half BLUE, a horizontal grey ramp across the middle fifth."""
    im = Image.new("RGB", (width, height), RED)
    im.paste(BLUE, (width // 2, 0, width, height))
    band_top, band_bottom = height * 2 // 5, height * 3 // 5
    for x in range(width):
        v = x * 255 // max(1, width - 1)
        im.paste((v, v, v), (x, band_top, x + 1, band_bottom))
    return im


def solid(width: int, height: int, colour: tuple[int, ...] = RED, mode: str = "RGB") -> Image.Image:
    return Image.new(mode, (width, height), colour)


def encode(im: Image.Image, fmt: str, **save_kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


# --- one function per accepted format ------------------------------------------------------------


def jpeg(width: int = 320, height: int = 240, *, quality: int = 92) -> bytes:
    return encode(pattern(width, height), "JPEG", quality=quality)


def png(width: int = 320, height: int = 240) -> bytes:
    return encode(pattern(width, height), "PNG")


def webp(width: int = 320, height: int = 240, *, lossless: bool = True) -> bytes:
    return encode(pattern(width, height), "WEBP", lossless=lossless)


def bmp(width: int = 320, height: int = 240) -> bytes:
    return encode(pattern(width, height), "BMP")


def tiff(width: int = 320, height: int = 240, *, compression: str | None = "tiff_lzw") -> bytes:
    kwargs = {"compression": compression} if compression else {}
    return encode(pattern(width, height), "TIFF", **kwargs)


def gif_animated(width: int = 160, height: int = 120, *, frames: int = 3) -> bytes:
    """Frame 0 is solid RED, later frames GREEN and BLUE: the intake must keep frame 0."""
    colours = [RED, (20, 200, 20), BLUE]
    images = [solid(width, height, colours[i % 3]).convert("P") for i in range(frames)]
    return encode(images[0], "GIF", save_all=True, append_images=images[1:], duration=100, loop=0)


# --- colour modes --------------------------------------------------------------------------------


def png_rgba(width: int = 160, height: int = 120, *, alpha: int = 0, colour=RED) -> bytes:
    """RGBA in `colour` with the given alpha everywhere (0 = fully transparent -> white)."""
    return encode(solid(width, height, (*colour, alpha), "RGBA"), "PNG")


def png_la(width: int = 160, height: int = 120, *, grey: int = 0, alpha: int = 0) -> bytes:
    return encode(solid(width, height, (grey, alpha), "LA"), "PNG")


def webp_rgba(width: int = 160, height: int = 120, *, alpha: int = 0, colour=RED) -> bytes:
    return encode(solid(width, height, (*colour, alpha), "RGBA"), "WEBP", lossless=True)


def cmyk_jpeg(width: int = 160, height: int = 120, *, cmyk=(0, 255, 255, 0)) -> bytes:
    """A CMYK JPEG (default cyan 0, magenta and yellow full: red)."""
    return encode(solid(width, height, cmyk, "CMYK"), "JPEG", quality=95)


def cmyk_tiff(width: int = 160, height: int = 120, *, cmyk=(0, 255, 255, 0)) -> bytes:
    return encode(solid(width, height, cmyk, "CMYK"), "TIFF")


def palette_png(width: int = 160, height: int = 120, *, transparent: bool = False) -> bytes:
    """Mode P: left half palette index 0 (RED), right half index 1 (BLUE); with `transparent`,
    index 0 is the transparent colour (-> white after compositing)."""
    im = Image.new("P", (width, height), 0)
    im.putpalette([*RED, *BLUE] + [0, 0, 0] * 254)
    im.paste(1, (width // 2, 0, width, height))
    kwargs = {"transparency": 0} if transparent else {}
    return encode(im, "PNG", **kwargs)


def grey_png(width: int = 160, height: int = 120, *, value: int = 100) -> bytes:
    return encode(solid(width, height, value, "L"), "PNG")


def grey_jpeg(width: int = 160, height: int = 120, *, value: int = 100) -> bytes:
    return encode(solid(width, height, value, "L"), "JPEG", quality=95)


def bilevel_png(width: int = 160, height: int = 120) -> bytes:
    """Mode 1: left half black, right half white."""
    im = Image.new("1", (width, height), 0)
    im.paste(1, (width // 2, 0, width, height))
    return encode(im, "PNG")


def png_16bit(width: int = 160, height: int = 120, *, value: int = 32768) -> bytes:
    """16-bit grey (Pillow mode I;16) at `value` of 65535: mid grey must stay mid grey (~128),
    not be clipped to white."""
    return encode(solid(width, height, value, "I;16"), "PNG")


def tiff_16bit(width: int = 160, height: int = 120, *, value: int = 32768) -> bytes:
    return encode(solid(width, height, value, "I;16"), "TIFF")


def exif_rotated_jpeg(width: int = 200, height: int = 100, *, orientation: int = 6) -> bytes:
    """`pattern(width, height)` stored as is, with EXIF Orientation set. Orientation 6 means
    "rotate 90 degrees clockwise to display": upright, the image is height x width with the RED
    half on top and BLUE at the bottom."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(pattern(width, height), "JPEG", quality=95, exif=exif.tobytes())


def tiny_png(side: int = 32) -> bytes:
    return encode(pattern(side, side), "PNG")


# --- broken data ---------------------------------------------------------------------------------


def truncated(data: bytes, keep: float = 0.6) -> bytes:
    """The first `keep` fraction of `data` (a download cut short)."""
    return data[: max(1, int(len(data) * keep))]


def corrupt_png(width: int = 160, height: int = 120) -> bytes:
    """A PNG whose IDAT payload is overwritten with junk (header intact, pixels undecodable)."""
    data = bytearray(png(width, height))
    start = data.index(b"IDAT") + 4
    for i in range(start + 2, min(len(data) - 16, start + 200)):
        data[i] = 0xA5
    return bytes(data)


def corrupt_jpeg(width: int = 320, height: int = 240) -> bytes:
    """A JPEG whose scan header is damaged (9 components claimed): the decoder fails mid-load."""
    data = bytearray(jpeg(width, height))
    sos = data.index(b"\xff\xda")
    data[sos + 4] = 9
    return bytes(data)


def gif_single(width: int = 160, height: int = 120) -> bytes:
    """A one-frame GIF of `pattern` (for truncation tests: cutting it cuts the only frame)."""
    return encode(pattern(width, height).convert("P"), "GIF")


# --- decompression bombs (header claims many pixels) ---------------------------------------------


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header (IHDR RGB 8-bit) claiming width x height, with a tiny IDAT: decoding it
    would allocate width*height*3 bytes (30 GB by default)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


@functools.lru_cache(maxsize=4)
def png_zlib_bomb(width: int = 8000, height: int = 8000) -> bytes:
    """A real, complete grey PNG of width x height zeros: a few tens of KB that inflate to
    width*height bytes. Cached: building it costs a fraction of a second."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    compressor = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte 0, then zeros
    parts = [compressor.compress(row) for _ in range(height)]
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def gif_header_bomb(width: int = 65_535, height: int = 65_535) -> bytes:
    """GIF89a whose screen and single frame claim width x height, with one byte of pixel data."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + bytes([0, 0, 0, 255, 255, 255])
    frame = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return header + frame + b";"


def jpeg_header_bomb(width: int = 65_500, height: int = 65_500) -> bytes:
    """A small real JPEG whose SOF marker is patched to claim width x height."""
    data = bytearray(jpeg(64, 64))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# --- things that are not (accepted) images -------------------------------------------------------


def svg() -> bytes:
    return (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="200" height="200">'
        b'<rect width="200" height="200" fill="red"/></svg>'
    )


def pdf() -> bytes:
    return b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"


def html() -> bytes:
    return b"<!doctype html><html><body><h1>Not found</h1></body></html>"


def text() -> bytes:
    return b"hello, this is plain text and not an image\n"


def ico(side: int = 64) -> bytes:
    """A real image in a format Pillow reads but the service does not accept."""
    return encode(pattern(side, side), "ICO", sizes=[(side, side)])


def ppm(width: int = 160, height: int = 120) -> bytes:
    return encode(pattern(width, height), "PPM")
