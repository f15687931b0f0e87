"""Small generated pictures for tests that post or index images, and their file bytes."""

from __future__ import annotations

import io
import random

from PIL import Image

from index.synthetic import Scene, Shape, render


def pic(colour: str, shape: str, seed: int, size: int = 96) -> bytes:
    """A PNG of one shape; `seed` moves it and tints the background (distinct bytes)."""
    rng = random.Random(seed)
    r = rng.uniform(0.2, 0.3)
    scene = Scene((Shape(colour, shape, rng.uniform(r, 1 - r), rng.uniform(r, 1 - r), r),),
                  (rng.randint(0, 40), rng.randint(0, 40), rng.randint(0, 40)))
    buf = io.BytesIO()
    render(scene, size).save(buf, "PNG")
    return buf.getvalue()


def encoded(img: Image.Image, scale: float = 1.0, quality: int | None = None) -> bytes:
    """`img` as file bytes: PNG, or JPEG at `quality`; resized by `scale` first (a
    re-encoded copy of a picture, as members repost them)."""
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG" if quality else "PNG", **({"quality": quality} if quality else {}))
    return buf.getvalue()
