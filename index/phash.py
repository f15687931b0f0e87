"""A perceptual hash of a picture: bits that survive resizing and re-encoding.

Kept with every item at ingestion (index/build.py) so that near-copies are recognised by
what the picture looks like, not by the model's vector (index/nearcopies.py).

The picture is shrunk to 32×32 by area averaging and taken to luma and chroma (YCbCr).
Its layout is the 2-D DCT's lowest frequencies, the constant term left out: 8×8 of the
luma, 4×4 of each chroma plane (93 numbers; the chroma tells a red shape from a blue one
of the same brightness). A resize or a JPEG round trip barely moves them; a brightness
or contrast change shifts or scales them all alike. The hash is the signs of BITS fixed
±1 projections of those numbers (SimHash): two pictures' Hamming distance grows with the
angle between their layouts, and many bits average out the noise that makes a plain
64-bit pHash (one bit per coefficient, against their median) flip several bits on
flat pictures, where most coefficients sit near the median (measured in bench/RESULTS.md,
"Near-copies by perceptual hash").

A picture with no layout to speak of (one flat colour) has no hash: None.
Stored as BITS/4 hex digits; `hamming` counts the bits two hashes differ in.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image

SIDE = 32  # the picture the DCT is taken of
LUMA, CHROMA = 8, 4  # the lowest LUMA×LUMA (CHROMA×CHROMA) frequencies kept
BITS = 256
HEX = BITS // 4
FLAT = 2.0 * SIDE  # layout norm under this (RMS under 2 levels): one flat colour


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    m = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    m[0] /= np.sqrt(2.0)
    return m


_DCT = _dct_matrix(SIDE)
_WIDTH = LUMA * LUMA - 1 + 2 * (CHROMA * CHROMA - 1)


def _projection() -> np.ndarray:
    """BITS × _WIDTH signs, from sha256 (the same on every machine and numpy, forever)."""
    need = BITS * _WIDTH
    stream = b"".join(hashlib.sha256(b"clipfind phash %d" % i).digest()
                      for i in range((need + 255) // 256))
    bits = np.unpackbits(np.frombuffer(stream, dtype=np.uint8))[:need]
    return (bits.astype(np.float64) * 2 - 1).reshape(BITS, _WIDTH)


_PROJ = _projection()


def layout(img: Image.Image) -> np.ndarray:
    """The picture's low frequencies (luma 8×8, chroma 4×4 each, constant terms out)."""
    rgb = img if img.mode == "RGB" else img.convert("RGB")  # (open_image's are: no copy)
    # exact area averages: Pillow's reducing_gap shortcut (an integer reduce first) puts the
    # boxes elsewhere for each size, and moved a screenshot's 0.8x copy 26 bits, not 7
    small = rgb.resize((SIDE, SIDE), Image.Resampling.BOX)
    ycc = np.asarray(small.convert("YCbCr"), dtype=np.float64)
    parts = []
    for plane, n in ((0, LUMA), (1, CHROMA), (2, CHROMA)):
        d = _DCT[:n] @ ycc[..., plane] @ _DCT[:n].T
        parts.append(d.reshape(-1)[1:])
    return np.concatenate(parts)


def phash(img: Image.Image) -> str | None:
    """The perceptual hash of a decoded picture as BITS/4 hex digits; None when the
    picture is one flat colour (no layout to hash)."""
    v = layout(img)
    if float(np.linalg.norm(v)) < FLAT:
        return None
    value = int.from_bytes(np.packbits(_PROJ @ v > 0).tobytes(), "big")
    return f"{value:0{HEX}x}"


def hamming(a: str, b: str) -> int:
    """How many of the BITS bits hashes `a` and `b` differ in."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def valid(h: object) -> bool:
    """Whether `h` is a hash of this kind ('', None or anything else: not known)."""
    if not isinstance(h, str) or len(h) != HEX:
        return False
    try:
        int(h, 16)
    except ValueError:
        return False
    return True


def storable(h: object) -> bool:
    """Whether `h` may be stored as an item's hash: one of this kind, '' (the picture has
    none: one flat colour) or None (not known)."""
    return h is None or h == "" or valid(h)
