"""index.images: safe decoding, conversion to RGB, hashes, thumbnails."""

from __future__ import annotations

import hashlib
import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index.errors import ClipfindError, ImageError
from index.images import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    content_hash,
    open_image,
    thumbnail_jpeg,
)


def encode(im: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    im.save(out, format=fmt, **kw)
    return out.getvalue()


def error_of(data, **kw) -> str:
    with pytest.raises(ImageError) as e:
        open_image(data, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    assert isinstance(e.value, ClipfindError)
    return msg


def test_constants():
    assert IMAGE_EXTENSIONS == frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
    assert MAX_PIXELS == 40_000_000


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_decode_formats(fmt):
    src = Image.new("RGB", (32, 16), (220, 20, 20))
    im = open_image(encode(src, fmt), name="x")
    assert im.mode == "RGB" and im.size == (32, 16)
    r, g, b = im.getpixel((5, 5))
    assert r > 180 and g < 70 and b < 70


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    im = open_image(data)
    assert im.mode == "RGB" and im.getpixel((4, 4)) == (255, 0, 0)


def test_animated_webp_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((0, 255, 0), (0, 0, 255))]
    data = encode(frames[0], "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    im = open_image(data)
    assert im.getpixel((4, 4)) == (0, 255, 0)


def test_rgba_composited_on_white():
    src = Image.new("RGBA", (4, 2), (0, 0, 0, 0))
    src.putpixel((0, 0), (255, 0, 0, 255))
    im = open_image(encode(src, "PNG"))
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 0, 0)
    assert im.getpixel((1, 0)) == (255, 255, 255)


def test_palette_with_transparency():
    src = Image.new("P", (4, 1), 0)
    src.putpalette([0, 0, 0, 10, 200, 30] + [0] * (254 * 3))
    src.putpixel((1, 0), 1)
    data = encode(src, "PNG", transparency=0)
    im = open_image(data)
    assert im.mode == "RGB"
    assert im.getpixel((0, 0)) == (255, 255, 255)
    assert im.getpixel((1, 0)) == (10, 200, 30)


def test_grayscale_cmyk_and_16bit():
    assert open_image(encode(Image.new("L", (2, 2), 77), "PNG")).getpixel((0, 0)) == (77,) * 3
    cmyk = open_image(encode(Image.new("CMYK", (2, 2), (0, 255, 255, 0)), "JPEG"))
    r, g, b = cmyk.getpixel((0, 0))
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60
    arr = np.full((2, 2), 65535 // 2, dtype=np.uint16)
    sixteen = Image.fromarray(arr)
    im = open_image(encode(sixteen, "PNG"))
    assert im.mode == "RGB" and abs(im.getpixel((0, 0))[0] - 127) <= 1


def test_exif_orientation_applied():
    src = Image.new("RGB", (40, 20), (255, 0, 0))
    src.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    im = open_image(encode(src, "JPEG", exif=exif.tobytes(), quality=95))
    assert im.size == (20, 40)
    top, bottom = im.getpixel((10, 5)), im.getpixel((10, 35))
    assert top[0] > 200 and top[2] < 60  # the left (red) side is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_path_input(tmp_path: Path):
    p = tmp_path / "a.png"
    p.write_bytes(encode(Image.new("RGB", (3, 3)), "PNG"))
    assert open_image(p).size == (3, 3)
    (tmp_path / "fake.png").write_text("I am text, not a PNG")
    msg = error_of(tmp_path / "fake.png")
    assert msg.startswith(f"{tmp_path / 'fake.png'}: not an image (")
    msg = error_of(tmp_path / "missing.png", name="missing")
    assert msg.startswith("missing: cannot read the file (")


def test_truncated_jpeg():
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    data = encode(noise, "JPEG")
    msg = error_of(data[: len(data) // 2], name="half.jpg")
    assert msg.startswith("half.jpg: truncated or corrupt image")


def test_truncated_png():
    data = encode(Image.new("RGB", (64, 64), "green"), "PNG")
    msg = error_of(data[:60], name="cut.png")
    assert msg.startswith("cut.png: truncated or corrupt image")


def test_random_bytes_and_empty():
    junk = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    assert error_of(junk, name="junk").startswith("junk: not an image (")
    assert error_of(b"", name="empty").startswith("empty: not an image (empty")
    assert error_of(b"<html></html>").startswith("image: not an image (")


def test_unsupported_format_refused():
    tiff = encode(Image.new("RGB", (4, 4)), "TIFF")
    assert error_of(tiff, name="t.tif").startswith("t.tif: not an image (")


def _png_claiming(width: int, height: int) -> bytes:
    """A real 1×1 PNG whose IHDR is patched to claim width×height."""
    data = bytearray(encode(Image.new("RGB", (1, 1), "red"), "PNG"))
    # signature (8) + length (4) + b"IHDR" (4) + 13 bytes of IHDR data + CRC (4)
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def test_decompression_bomb_header():
    # 10^10 pixels: a decoder would try to allocate 30 GB. The "too large" answer (not
    # "corrupt", which decoding the 1-pixel IDAT would give) shows no pixel was decoded.
    msg = error_of(_png_claiming(100_000, 100_000), name="bomb.png")
    assert msg.startswith("bomb.png: image too large (100000×100000 pixels, limit 40000000)")


def test_bomb_between_our_and_pillows_limit_no_warning():
    # 10^8 pixels: over ours, over Pillow's warning threshold, under its error threshold.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        msg = error_of(_png_claiming(10_000, 10_000))
    assert "image too large (10000×10000 pixels, limit 40000000)" in msg


def test_small_max_pixels():
    data = encode(Image.new("RGB", (100, 100)), "PNG")
    assert "image too large (100×100 pixels, limit 5000)" in error_of(data, max_pixels=5000)
    assert open_image(data, max_pixels=10_000).size == (100, 100)


def test_content_hash():
    assert content_hash(b"abc") == hashlib.sha256(b"abc").hexdigest()
    assert len(content_hash(os.urandom(10))) == 64


def test_thumbnail_jpeg():
    big = Image.new("RGB", (2000, 1000), "orange")
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(big)))
    assert thumb.format == "JPEG" and thumb.size == (512, 256)
    small = Image.new("RGBA", (100, 50), (0, 0, 255, 128))
    t2 = Image.open(io.BytesIO(thumbnail_jpeg(small, max_side=256, quality=70)))
    assert t2.size == (100, 50) and t2.mode == "RGB"
    with pytest.raises(ValueError):
        thumbnail_jpeg(big, max_side=0)


def test_a_draft_decodes_a_big_jpeg_at_a_reduced_scale_but_never_below_the_side_asked():
    arr = (np.random.default_rng(0).random((1600, 2400, 3)) * 255).astype("uint8")
    out = io.BytesIO()
    Image.fromarray(arr).save(out, "JPEG")
    full = open_image(out.getvalue())
    drafted = open_image(out.getvalue(), draft=300)
    assert full.size == (2400, 1600)
    assert drafted.size[0] < 2400 and min(drafted.size) >= 300 and drafted.mode == "RGB"
    png = io.BytesIO()
    Image.fromarray(arr[:400, :600]).save(png, "PNG")
    assert open_image(png.getvalue(), draft=100).size == (600, 400)  # only JPEG has a draft mode
