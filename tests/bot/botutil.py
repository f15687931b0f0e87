"""Helpers for the bot's tests (importable as `botutil`: tests/bot is on sys.path)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def noise_png(size: int = 64, seed: int = 0) -> bytes:
    """A picture unlike any gallery image (so it is no near-duplicate of a result)."""
    arr = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8")
    return png_bytes(Image.fromarray(arr))
