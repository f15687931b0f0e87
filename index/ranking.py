"""Ranking a collection against a composed query.

`sum` is DESIGN.md's composition: q = sum_i w_i f_i/|f_i|, normalised, ranked by cosine.
Queries that mix an image with text can use another strategy, chosen by measurement
(see README, "Quality"). Every strategy returns one score per item, higher is better.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRATEGIES = ("sum", "zsum")


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


def zsum_scores(terms: list[WeightedVector], vectors: np.ndarray) -> np.ndarray:
    """Weighted sum of each term's cosine, standardised over the collection.

    An image term's cosines with other images spread far wider than a text's, so a plain
    sum lets the picture drown the words; standardising puts every term on one scale.
    """
    total = np.zeros(len(vectors), dtype=np.float32)
    for t in terms:
        s = vectors @ normalise(t.vector)
        total += t.weight * (s - s.mean()) / (s.std() + 1e-6)
    return total


def needs_full_scan(terms: list[WeightedVector], strategy: str) -> bool:
    return strategy == "zsum" and any(t.kind == "image" for t in terms)
