"""Safe image decoding: bytes or a file in, one fully loaded RGB picture out.

Everything a member, an operator or a web server hands us goes through `open_image`:

- Only JPEG (and the multi-picture MPO JPEGs cameras write), PNG, WebP, GIF and BMP are decoded; other
  formats Pillow knows (EPS, which shells out to Ghostscript; TIFF; ICO; ...) are refused as
  "not an image", which keeps the attack surface small.
- The size is read from the header and checked against `max_pixels` *before* any pixel is
  decoded (decompression bombs); this does not depend on Pillow's process-wide
  `Image.MAX_IMAGE_PIXELS`.
- Animated GIF/WebP give their first frame; the EXIF orientation is applied.
- Transparency is composited on **white** (logos and cut-outs are usually drawn for a light
  page, and a black background would swallow dark line art); the result is always "RGB".

Every failure is an `ImageError` whose message starts with the image's name.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from index.errors import ImageError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".gif"})
MAX_PIXELS = 40_000_000

# Pillow format names that open_image decodes; everything else is "not an image".
# (Pillow's JPEG opener also returns multi-picture MPO files from cameras.)
DECODED_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP")

BACKGROUND = (255, 255, 255)

_FORMAT_HINT = "use a JPEG, PNG, WebP or GIF file"


def open_image(data: bytes | Path, *, name: str = "", max_pixels: int = MAX_PIXELS,
               draft: int | None = None) -> Image.Image:
    """Decode `data` (the bytes, or a path to read) into a loaded RGB image.

    `name` prefixes every error message (default: the path, or "image").
    `draft`: the image will only be shown at most this many pixels on a side, so a JPEG
    may be decoded at 1/2, 1/4 or 1/8 scale (still at least `draft` on each side), which
    for a phone photo is most of the work of a thumbnail. Not for the model's input: its
    pixels would differ from a full decode.
    Raises ImageError: not an image, truncated or corrupt, too large, unreadable file.
    """
    if isinstance(data, Path):
        label = name or str(data)
        try:
            with open(data, "rb") as f:
                return _decode(f, label, max_pixels, draft)
        except OSError as e:
            reason = e.strerror or type(e).__name__
            raise ImageError(f"{label}: cannot read the file ({reason})") from e
    label = name or "image"
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TypeError(f"open_image wants bytes or a Path, not {type(data).__name__}")
    if len(data) == 0:
        raise ImageError(f"{label}: not an image (empty file); {_FORMAT_HINT}")
    return _decode(io.BytesIO(data), label, max_pixels, draft)


def _decode(fp: BinaryIO, label: str, max_pixels: int, draft: int | None = None) -> Image.Image:
    try:
        im = _open_header(fp, label, max_pixels)
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise _too_large(label, _probe_size(fp), max_pixels, str(e)) from None
    except UnidentifiedImageError:
        if _is_empty(fp):
            raise ImageError(f"{label}: not an image (empty file); {_FORMAT_HINT}") from None
        raise ImageError(
            f"{label}: not an image (unrecognised or unsupported format); {_FORMAT_HINT}"
        ) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
        # The header was recognised but is malformed.
        raise _corrupt(label) from e

    with im:
        w, h = im.size
        if w <= 0 or h <= 0:
            raise _corrupt(label)
        if w * h > max_pixels:
            raise _too_large(label, (w, h), max_pixels)
        try:
            im.seek(0)  # first frame of an animation
            if draft and im.format == "JPEG":
                im.draft("RGB", (draft, draft))
            im.load()
        except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as e:
            raise _corrupt(label) from e
        if im.size != (w, h):  # a frame bigger than the header said
            w, h = im.size
            if w * h > max_pixels:
                raise _too_large(label, (w, h), max_pixels)
        try:
            oriented = ImageOps.exif_transpose(im)
        except Exception:  # a broken EXIF block must not lose the picture
            oriented = im
        try:
            return to_rgb(oriented)
        except (OSError, ValueError) as e:
            raise _corrupt(label) from e


def _open_header(fp: BinaryIO, label: str, max_pixels: int) -> Image.Image:
    """Image.open (reads the header only), without Pillow's global-limit warning."""
    with warnings.catch_warnings():
        # Our own limit is checked right after; Pillow's process-wide one only adds noise.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(fp, formats=_available_formats())


def _probe_size(fp: BinaryIO) -> tuple[int, int] | None:
    """The header size of an image Pillow's own bomb check refused to open.

    Mirrors Image.open's plugin loop without its size check; no pixel is decoded.
    """
    try:
        fp.seek(0)
        prefix = fp.read(16)
    except (OSError, ValueError):
        return None
    for fmt in _available_formats():
        factory, accept = Image.OPEN[fmt]
        try:
            if accept is not None and not accept(prefix):
                continue
            fp.seek(0)
            probe = factory(fp, "")
            return probe.size
        except Exception:  # any failure just means "not this format"
            continue
    return None


def _available_formats() -> tuple[str, ...]:
    """DECODED_FORMATS less any this Pillow build lacks (WebP is optional at build time)."""
    Image.init()
    return tuple(f for f in DECODED_FORMATS if f in Image.OPEN)


def _too_large(
    label: str, size: tuple[int, int] | None, max_pixels: int, fallback: str = ""
) -> ImageError:
    if size is not None:
        w, h = size
        what = f"{w}×{h} pixels"
    else:
        m = re.search(r"\((\d+) pixels\)", fallback)
        what = f"{m.group(1)} pixels" if m else "too many pixels"
    return ImageError(
        f"{label}: image too large ({what}, limit {max_pixels}); "
        f"scale it down below {max_pixels} pixels"
    )


def _corrupt(label: str) -> ImageError:
    return ImageError(f"{label}: truncated or corrupt image; re-save or re-download it")


def _is_empty(fp: BinaryIO) -> bool:
    try:
        fp.seek(0)
        return fp.read(1) == b""
    except (OSError, ValueError):
        return False


def to_rgb(im: Image.Image, background: tuple[int, int, int] = BACKGROUND) -> Image.Image:
    """A new RGB image: alpha composited on `background`, 16-bit scaled, CMYK/palette converted."""
    mode = im.mode
    if mode == "RGB":
        return im.copy()
    if mode.startswith("I") or mode == "F":
        # 16/32-bit grayscale: scale to 8 bits instead of letting convert() clip at 255.
        arr = np.asarray(im, dtype=np.float64)
        if mode != "F" and arr.size and arr.max() > 255:
            arr = arr / 257.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr).convert("RGB")
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (*background, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if mode == "1":
        return im.convert("L").convert("RGB")
    return im.convert("RGB")


def content_hash(data: bytes) -> str:
    """The sha256 of `data`, as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def thumbnail_jpeg(img: Image.Image, max_side: int = 512, quality: int = 85) -> bytes:
    """A JPEG of `img` whose longer side is at most `max_side` (never enlarged)."""
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    if not 1 <= quality <= 95:
        raise ValueError(f"quality must be in 1..95, got {quality}")
    thumb = to_rgb(img)
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()
