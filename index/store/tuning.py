"""The tuning policy: which FAISS index a collection gets, and its search-time knob.

Module-level names, looked up at call time, so that a benchmark or test can replace them
(assigning them on the `index.store` package assigns them here).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import faiss
import numpy as np

EXACT_LIMIT = 50_000  # 'auto' uses an exact index below this many items
TARGET_RECALL = 0.95  # recall@10 that tune() aims for on an approximate index
TUNE_MARGIN = 0.02  # tune() aims this far above TARGET_RECALL: calibration is a sample
CALIB_QUERIES = 50  # queries of each kind (item, blend, off-cone) used by tune()


def choose_factory(n: int) -> str:
    """The FAISS factory string 'auto' uses for a collection of n items.

    Exact below EXACT_LIMIT. Above it an inverted file with ~4·sqrt(n) lists and 8-bit
    scalar quantisation (a quarter of the memory of float32, supports add and remove
    in place); tune() then picks nprobe by measuring recall.
    """
    if n < EXACT_LIMIT:
        return "Flat"
    nlist = max(1, round(4 * math.sqrt(n)))
    return f"IVF{nlist},SQ8"


def rebuild_wanted(
    n: int, *, auto: bool, factory: str, fallback: bool, trainable: bool, trained_n: int
) -> bool:
    """Whether an index of `factory` holding n items should be replaced by another build."""
    if fallback:  # retry training once the collection has doubled
        return n >= 2 * max(trained_n, 1)
    if not auto:
        return False
    if factory == "Flat":
        return choose_factory(n) != "Flat"
    # approximate: back to exact only once even twice as many items would be exact
    # (no flapping around the limit); retrain what was trained once it has grown 4x
    if choose_factory(2 * n) == "Flat":
        return True
    return trainable and n >= 4 * max(trained_n, 1)


def tune(
    index: faiss.Index,
    calibration: tuple[np.ndarray, ...] | None = None,
) -> dict[str, int]:
    """Set an approximate index's search-time knob; return {knob: value} (saved with it).

    The knob is IVF's nprobe or HNSW's efSearch. With `calibration` = (queries, ids the
    query itself is (-1: none), exact top-10 ids[, group of each query]), it is the
    smallest power of two from a low start whose recall@10 reaches TARGET_RECALL +
    TUNE_MARGIN in every group (every kind of question, see calibration_queries), or
    where doubling stops paying (recall above the target and gaining under 0.003 over two
    doublings: the codes, not the probes, limit it), or the ceiling. Latency grows with the
    knob, so the smallest that is good enough is the one to keep: starting high (as a
    fixed nlist/16 did) costs 5-10x in latency at a million items for no recall.
    Without calibration the conservative default is kept (IVF: max(16, nlist/16);
    HNSW: 64). An exact index has no knob: {}.
    """
    k = knob(index)
    if k is None:
        return {}
    name, setter, default, ceiling, floor = k
    if calibration is None or not len(calibration[0]):
        setter(default)
        return {name: int(default)}
    goal = TARGET_RECALL + TUNE_MARGIN
    queries, self_ids, truth = calibration[:3]
    groups = calibration[3] if len(calibration) > 3 else np.zeros(len(queries), dtype=np.int64)
    value, history = min(floor, ceiling), []
    while True:
        setter(value)
        recall = min(
            recall_at_10(index, queries[groups == g], self_ids[groups == g], truth[groups == g])
            for g in np.unique(groups)
        )
        history.append(recall)
        if recall >= goal or value >= ceiling:
            break
        # saturated: above the target and flat over the last two doublings (4x the knob);
        # one flat step is not enough, recall often pauses and climbs again
        if recall >= TARGET_RECALL and len(history) >= 3 and recall - history[-3] < 0.003:
            break
        value = min(ceiling, value * 2)
    return {name: int(value)}


def unwrap(index: faiss.Index) -> faiss.Index:
    """The index under IDMap/IDMap2 and pre-transform wrappers."""
    idx = faiss.downcast_index(index)
    while isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
        idx = faiss.downcast_index(idx.index)
    return idx


def knob(index: faiss.Index) -> tuple[str, Callable[[int], None], int, int, int] | None:
    """(name, setter, default without calibration, ceiling, where tuning starts)."""
    inner = unwrap(index)
    if isinstance(inner, faiss.IndexIVF):

        def set_nprobe(v: int) -> None:
            inner.nprobe = int(v)

        default = min(inner.nlist, max(16, inner.nlist // 16))
        return "nprobe", set_nprobe, default, inner.nlist, 4
    if isinstance(inner, faiss.IndexHNSW):

        def set_ef(v: int) -> None:
            inner.hnsw.efSearch = int(v)

        return "efSearch", set_ef, 64, 1024, 16
    return None


def apply_params(index: faiss.Index, params: dict[str, int]) -> None:
    """Set the knob saved with an index (see tune) on a freshly loaded copy of it."""
    k = knob(index)
    if k is not None and k[0] in params:
        k[1](int(params[k[0]]))


def training_size(index: faiss.Index, n: int) -> int:
    """How many of n items a trainable index is trained on (64 per IVF list, >= 50k)."""
    ivf = faiss.try_extract_index_ivf(index)
    return min(n, max(50_000, 64 * (ivf.nlist if ivf is not None else 1)))


def calibration_queries(
    vecs: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries for tune(), made from 3m sampled stored vectors `vecs` (rows of `ids`).

    Three kinds, m each, because users ask three kinds of question:
    - a stored item itself (its own hit excluded): a search with a picture;
    - normalise(a + b) of two items: a joint query (`flower*1 bee*1`);
    - an item with the shared component of the collection taken out, normalise(a - mean):
      CLIP's text vectors sit outside the cone the image vectors fill (the modality gap),
      so a text query is far from every item and its top 10 are spread over more of the
      index than an image query's. These off-cone queries stand in for text (own hit
      excluded); without them tune() undershoots on text queries.
    Returns (queries float32, the id each query must not count as a hit (-1: none), the
    kind of each query: 0 item, 1 blend, 2 off-cone).
    """
    m = len(vecs) // 3
    own, a, b = vecs[:m], vecs[m : 2 * m], vecs[2 * m : 3 * m]
    blend = a + b
    blend /= np.maximum(np.linalg.norm(blend, axis=1, keepdims=True), 1e-12)
    off = b - vecs.mean(axis=0, keepdims=True)
    off /= np.maximum(np.linalg.norm(off, axis=1, keepdims=True), 1e-12)
    queries = np.ascontiguousarray(np.concatenate([own, blend, off]), dtype=np.float32)
    self_ids = np.concatenate([ids[:m], np.full(m, -1, dtype=np.int64), ids[2 * m : 3 * m]])
    return queries, self_ids, np.repeat(np.arange(3), m)


def recall_at_10(
    index: faiss.Index, queries: np.ndarray, self_ids: np.ndarray, truth: np.ndarray
) -> float:
    _, found = index.search(queries, 11)
    hits = total = 0
    for row, me, want in zip(found, self_ids, truth, strict=True):
        got = [int(i) for i in row if i >= 0 and i != me][:10]
        want_set = {int(i) for i in want if i >= 0}
        hits += len(want_set.intersection(got))
        total += len(want_set)
    return hits / total if total else 1.0


def top10_merge(
    best_s: np.ndarray, best_i: np.ndarray, scores: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-10 so far (scores, ids per query) merged with one more chunk's scores."""
    s = np.concatenate([best_s, scores], axis=1)
    i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
    keep = min(10, s.shape[1])
    part = np.argpartition(-s, keep - 1, axis=1)[:, :keep]
    return np.take_along_axis(s, part, 1), np.take_along_axis(i, part, 1)
