"""Near-copies: results that are the same picture, shown as one result.

A server's library is full of reposts: the same picture re-encoded, resized, cropped a
little. The ingestion stores identical bytes once per server (index/build.py), but a
re-encoded repost is another item, and the same bytes can be stored once per source
(a server's library and the global collection). A page of five copies of one picture
wastes the page, so the ranked list is grouped before it is paged:

- walking the ranking from the top, a result joins the first group whose leader has its
  content hash, or whose leader's vector is within COPY_COSINE of its own; else it leads
  a group of its own;
- groups keep the order of their leaders, and a page is a run of groups.

A result's group depends only on the results ranked above it, so the groups of a page do
not change when a deeper page is asked for: a copy never comes back as a result of its own
on a later page. The copies listed under a result are those found within the depth the
search read (the engine reads ahead of the page; a copy ranked far below could be missed
from the list, never shown twice).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

COPY_COSINE = 0.98  # two stored vectors this close are the same picture


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


def group(ranked: list[Ranked], threshold: float = COPY_COSINE) -> list[Group]:
    """`ranked` (best first) as groups of near-copies, in the order of their leaders."""
    groups: list[Group] = []
    by_hash: dict[str, int] = {}
    leaders = np.zeros((0, 0), dtype=np.float32)
    for r in ranked:
        h = getattr(r.item, "content_hash", "") or ""
        g = by_hash.get(h) if h else None
        if g is None and r.vector is not None and leaders.shape[0]:
            sims = leaders[: len(groups)] @ _unit(r.vector)
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                g = best
        if g is None:
            g = len(groups)
            groups.append(Group(r))
            if r.vector is not None:
                leaders = _append(leaders, _unit(r.vector), g)
            if h:
                by_hash[h] = g
        else:
            groups[g].copies.append(r)
    return groups


def _append(rows: np.ndarray, v: np.ndarray, at: int) -> np.ndarray:
    """`rows` with `v` at row `at`, grown by doubling (rows past the groups are unused)."""
    if rows.shape[0] <= at:
        grown = np.zeros((max(16, 2 * rows.shape[0]), v.shape[0]), dtype=np.float32)
        if rows.shape[0]:
            grown[: rows.shape[0]] = rows
        rows = grown
    rows[at] = v
    return rows


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    return v / max(float(np.linalg.norm(v)), 1e-12)
