"""Small generated pictures for tests that post images (the fake Discord's libraries)."""

from __future__ import annotations

import io
import random

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
