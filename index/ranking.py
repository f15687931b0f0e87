"""Ranking a collection against a composed query.

`sum` is DESIGN.md's composition: q = sum_i w_i f_i/|f_i|, normalised, ranked by cosine.
Queries that mix an image with text can use another strategy, chosen by measurement
(see README, "Quality"). Every strategy returns one score per item, higher is better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("sum", "zsum")  # how queries with image terms are ranked; text-only always "sum"


@dataclass(frozen=True)
class WeightedVector:
    vector: np.ndarray  # (d,), any norm
    weight: float
    kind: str  # "text" | "image"


def normalise(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def compose(terms: list[WeightedVector]) -> np.ndarray:
    """The normalised weighted sum of the normalised term vectors."""
    q = sum(t.weight * normalise(t.vector) for t in terms)
    return normalise(q)


def zsum_scores(terms: list[WeightedVector], vectors: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """Weighted sum of each term's cosine, standardised by its spread over `sample`.

    An image term's cosines with other images spread far wider than a text's, so a plain
    sum lets the picture drown the words; standardising puts every term on one scale.
    `sample` is a random subset of the collection's vectors, which estimates that spread.
    """
    total = np.zeros(len(vectors), dtype=np.float32)
    for t in terms:
        u = normalise(t.vector)
        ref = sample @ u
        total += t.weight * ((vectors @ u) - ref.mean()) / (ref.std() + 1e-6)
    return total
