"""Near-copies: results that are the same picture, shown as one result.

A server's library is full of reposts: the same picture re-encoded, resized, cropped a
little. The ingestion stores identical bytes once per server (index/build.py), but a
re-encoded repost is another item, and the same bytes can be stored once per source
(a server's library and the global collection). A page of five copies of one picture
wastes the page, so the ranked list is grouped before it is paged:

- walking the ranking from the top, a result joins the first group whose leader is a copy
  of it, else it leads a group of its own; groups keep the order of their leaders, and a
  page is a run of groups.

Two items are copies when they have the same content hash (the same bytes); else, when
both have a perceptual hash (index/phash.py, made from the pixels at ingestion), when
their hashes differ in at most COPY_BITS of 256 bits; else (either was stored without
one: a collection from before the hash, a Milvus Lite collection that could not add the
field, imported vectors, a flat picture) when their vectors are within COPY_COSINE.

Where both hashes are known the cosine is not asked: the bundled 64-px model puts
distinct pictures of one shape at cosine >= 0.98 (which merged different pictures) and a
JPEG re-encode as low as 0.85, while the hash keeps resized and re-encoded copies within
COPY_BITS and distinct pictures beyond it. The cosine could still catch crops the hash
misses, but at 0.98 it also takes distinct pictures whose hashes are as near as the crops'
(no bound separates them), so a crop beyond COPY_BITS is shown as its own result
(measured: bench/RESULTS.md, "Near-copies by perceptual hash").

A result's group depends only on the results ranked above it, so the groups of a page do
not change when a deeper page is asked for: a copy never comes back as a result of its own
on a later page. The copies listed under a result are those found within the depth the
search read (the engine reads ahead of the page; a copy ranked far below could be missed
from the list, never shown twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .phash import HEX, valid

COPY_COSINE = 0.98  # two stored vectors this close are the same picture (no perceptual hash)
COPY_BITS = 12  # two perceptual hashes this close (of 256 bits) are the same picture
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.int32)
_WORDS = HEX // 16  # a hash as 64-bit words


@dataclass
class Ranked:
    """One ranked result before grouping: an item of one collection, its cosine with the
    query, its stored vector (None when copies are not looked for) and the floor of the
    collection it came from, for this query (None: no floor)."""

    item: object
    score: float
    vector: np.ndarray | None = None
    floor: float | None = None

    @property
    def weak(self) -> bool:
        return self.floor is not None and self.score < self.floor


@dataclass
class Group:
    leader: Ranked
    copies: list[Ranked] = field(default_factory=list)


def group(ranked: list[Ranked], threshold: float = COPY_COSINE,
          bits: int = COPY_BITS) -> list[Group]:
    """`ranked` (best first) as groups of near-copies, in the order of their leaders."""
    n = len(ranked)
    dim = next((np.asarray(r.vector).size for r in ranked if r.vector is not None), 0)
    vectors = np.zeros((n, dim), dtype=np.float32)  # unit vectors (zeros: none)
    has_vector = np.zeros(n, dtype=bool)
    hashes = np.zeros((n, _WORDS), dtype=np.uint64)  # perceptual hashes' bits
    has_hash = np.zeros(n, dtype=bool)
    for i, r in enumerate(ranked):
        if r.vector is not None:
            vectors[i], has_vector[i] = _unit(r.vector), True
        ph = getattr(r.item, "phash", None)
        if valid(ph):
            hashes[i], has_hash[i] = np.frombuffer(bytes.fromhex(ph), dtype=np.uint64), True
    groups: list[Group] = []
    by_hash: dict[str, int] = {}
    unhashed = 0  # leaders without a perceptual hash
    for i, r in enumerate(ranked):
        h = getattr(r.item, "content_hash", "") or ""
        g = by_hash.get(h) if h else None
        m = len(groups)
        if g is None and m:
            copy = None
            if has_hash[i]:  # the perceptual hashes decide where both are known
                copy = _bit_count(hashes[:m] ^ hashes[i]) <= bits
                if unhashed:  # leaders without one: the cosine, below
                    copy &= has_hash[:m]
            if has_vector[i] and (unhashed or not has_hash[i]):  # else the vectors
                near = vectors[:m] @ vectors[i] >= threshold
                if has_hash[i]:
                    near &= ~has_hash[:m]
                copy = near if copy is None else copy | near
            if copy is not None and copy.any():
                g = int(np.argmax(copy))  # the first such group (the best-ranked leader)
        if g is None:
            g = len(groups)
            groups.append(Group(r))
            unhashed += not has_hash[i]
            if g != i:  # rows 0..g-1 are the leaders', rows past i not yet read: row g
                # (a copy's, read already) takes leader g's values
                for a in (vectors, has_vector, hashes, has_hash):
                    a[g] = a[i]
            if h:
                by_hash[h] = g
        else:
            groups[g].copies.append(r)
    return groups


def _bit_count(words: np.ndarray) -> np.ndarray:
    """How many bits are set in each row of 64-bit words."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    return _POPCOUNT[words.view(np.uint8)].sum(axis=1)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)
