"""The bundled model's quality on a fresh shapes gallery: the four figures in the README.

Each query scores hits in its top 10 divided by what the gallery makes achievable,
min(10, number of images that satisfy it); a figure is the mean over its queries.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable

import numpy as np

from .synthetic import CONCEPTS, Scene, Shape

# A ranking function takes [(kind, payload, weight)] and returns item indices, best first.
RankFn = Callable[[list[tuple[str, object, float]]], np.ndarray]


def query_picture(concept: str, seed: int) -> Scene:
    """A picture of one object, as a member would attach it."""
    rng = random.Random(seed)
    colour, shape = concept.split()
    r = rng.uniform(0.15, 0.28)
    return Scene((Shape(colour, shape, rng.uniform(r, 1 - r), rng.uniform(r, 1 - r), r),),
                 tuple(rng.randint(0, 60) for _ in range(3)))  # type: ignore[arg-type]


def _score(order: np.ndarray, ok: np.ndarray, k: int = 10) -> float | None:
    achievable = min(k, int(ok.sum()))
    if achievable == 0:
        return None
    return float(ok[order[:k]].sum()) / achievable


def pairs(n: int = 40, seed: int = 7) -> list[tuple[str, str]]:
    every = [p for p in itertools.permutations(CONCEPTS, 2)]
    return random.Random(seed).sample(every, n)


def evaluate(scenes: list[Scene], rank: RankFn, n_pairs: int = 40) -> dict[str, float]:
    has = {c: np.array([s.contains(c) for s in scenes]) for c in CONCEPTS}
    figures: dict[str, list[float]] = {"single": [], "joint": [], "weighted": [], "image+text": []}

    def add(name, order, ok):
        s = _score(order, ok)
        if s is not None:
            figures[name].append(s)

    for c in CONCEPTS:
        add("single", rank([("text", c, 1.0)]), has[c])
    for i, (a, b) in enumerate(pairs(n_pairs)):
        both = has[a] & has[b]
        add("joint", rank([("text", a, 1.0), ("text", b, 1.0)]), both)
        add("weighted", rank([("text", a, 1.0), ("text", b, 2.0)]), has[b])
        add("image+text", rank([("image", query_picture(a, 1000 + i), 1.0), ("text", b, 1.0)]), both)
    return {k: float(np.mean(v)) for k, v in figures.items()}
