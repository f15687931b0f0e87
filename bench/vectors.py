"""Synthetic CLIP-like embeddings and queries for the search benchmarks.

How the vectors are made (512-d by default, deterministic for a seed):

    x = normalise(a·mu + b·topic + c·subtopic + e·noise)

- `mu` is one shared direction: CLIP image embeddings live in a narrow cone, two
  unrelated images have a cosine of about 0.45 (a² = 0.45).
- 1000 topics, each with 20 subtopics (20k clusters in all); an item draws its subtopic
  with Zipf-like popularity (exponent 0.8), so a few clusters are large and most are
  small, as in real collections. Same topic: cosine ~0.65; same subtopic ~0.8.
- Real pictures sit between concepts (a dog on a beach): the subtopic part of an item
  is a blend w·sub1 + (1-w)·sub2 with a second subtopic of any topic and w uniform in
  [0.5, 1], so clusters are joined by continuous bridges rather than cleanly separated.
- `noise` is anisotropic Gaussian noise with a power-law spectrum (variance of
  component i ∝ (i+1)^-0.75) under a random rotation, carrying e² = 0.2 of the energy:
  embeddings have a decaying PCA spectrum, not a flat one.

Queries are not stored points. Three kinds, in equal shares:

- `image`: a fresh item drawn from the same process (a new photo of a known subject);
- `blend`: normalise(x1 + x2) of two fresh items of different topics (a joint query
  such as `flower*1 bee*1`);
- `text`: the modality gap of CLIP: normalise(g·gap + 0.35·subtopic + 0.25·topic + noise)
  with a fixed `gap` direction away from the image cone; its best items score only
  ~0.3-0.4, with thin margins between ranks (the hard case for approximate indexes).
"""

from __future__ import annotations

import numpy as np

A, B, C, E = 0.67, 0.447, 0.387, 0.447  # a² + b² + c² + e² = 1
N_TOPICS, N_SUB = 1000, 20


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


class Space:
    """The generative model; items and queries are drawn from it."""

    def __init__(self, dim: int = 512, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.mu = _unit(rng.standard_normal(dim, dtype=np.float32))
        self.gap = _unit(rng.standard_normal(dim, dtype=np.float32))
        self.topics = _unit(rng.standard_normal((N_TOPICS, dim), dtype=np.float32))
        self.subs = _unit(rng.standard_normal((N_TOPICS * N_SUB, dim), dtype=np.float32))
        p = 1.0 / np.arange(1, N_TOPICS * N_SUB + 1) ** 0.8
        rng.shuffle(p)
        self.p = p / p.sum()
        spectrum = 1.0 / np.arange(1, dim + 1) ** 0.75
        self.scale = np.sqrt(spectrum / spectrum.sum()).astype(np.float32)  # E|noise|² = 1
        q, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        self.rot = q.astype(np.float32)

    def noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return (rng.standard_normal((n, self.dim), dtype=np.float32) * self.scale) @ self.rot

    def _items(self, rng: np.random.Generator, sub: np.ndarray) -> np.ndarray:
        topic = sub // N_SUB
        other = rng.choice(len(self.p), len(sub), p=self.p)
        w = rng.uniform(0.5, 1.0, (len(sub), 1)).astype(np.float32)
        mix = _unit(w * self.subs[sub] + (1 - w) * self.subs[other])
        x = A * self.mu + B * self.topics[topic] + C * mix + E * self.noise(rng, len(sub))
        return _unit(x)

    def items(self, n: int, seed: int = 1, chunk: int = 100_000) -> np.ndarray:
        """n stored vectors, float32, unit length."""
        rng = np.random.default_rng(seed)
        out = np.empty((n, self.dim), dtype=np.float32)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            out[s:s + m] = self._items(rng, rng.choice(len(self.p), m, p=self.p))
        return out

    def queries(self, n: int, seed: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """n queries (float32, unit) and their kinds ('image', 'blend', 'text')."""
        rng = np.random.default_rng(seed)
        kinds = np.array(["image", "blend", "text"])[np.arange(n) % 3]
        out = np.empty((n, self.dim), dtype=np.float32)
        subs = rng.choice(len(self.p), (n, 2), p=self.p)
        for i, kind in enumerate(kinds):
            if kind == "image":
                out[i] = self._items(rng, subs[i, :1])[0]
            elif kind == "blend":
                a = subs[i, 0]
                b = (a + N_SUB * rng.integers(1, N_TOPICS)) % len(self.p)  # another topic
                out[i] = _unit(self._items(rng, np.array([a, b])).sum(0))
            else:
                s = subs[i, 0]
                t = 0.9 * self.gap + 0.35 * self.subs[s] + 0.25 * self.topics[s // N_SUB]
                out[i] = _unit(t + 0.3 * self.noise(rng, 1)[0])
        return out, kinds
