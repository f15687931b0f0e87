"""Helpers shared by the tests of index/store/."""

from __future__ import annotations

import numpy as np

from index.store import NewItem

DIM = 16
MODEL = "builtin:tiny-shapes"


def unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def rand_vecs(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def clustered(n: int, dim: int, seed: int, n_clusters: int = 60, spread: float = 0.8) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((n_clusters, dim)))
    x = centres[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, dim)) / np.sqrt(
        dim
    )
    return unit(x)


def items(n: int, prefix: str = "/img/", **fields) -> list[NewItem]:
    return [NewItem(source=f"{prefix}{i}.png", title=f"t{i}", **fields) for i in range(n)]


