"""Filtered search over the FAISS index: what a filter costs is paid once, then reused.

Exact about the filter: FAISS computes distances only for the ids a filter allows
(`IDSelectorBitmap`), or the allowed vectors are ranked exactly; the top k returned are the
top k of the allowed items, never "the top 100, then drop". What the search costs:

- Per filter, once (a `Plan`, kept in a small LRU keyed by the filter and a version that
  changes with every write to the collection and every load of its index): the allowed
  bitmap and ids, how many allowed items each IVF list holds, and a copy of either the
  allowed codes (own lists) or, for a small allowed set, the allowed vectors (all plans'
  copies together within MEMORY, the least recently used dropped first). Turning a page or asking the same filter again pays none
  of it.
- Per index version, once: the IVF list of every id (walked from the inverted lists), from
  which a filter's per-list counts are one bincount.
- Per search, by the index type and the number of allowed items:
  - few allowed (at most the codes an unfiltered IVF search scans, `exact_limit`; HNSW
    below EXACT_SHARE): the allowed vectors, kept as float16 (lossless: the store keeps
    vectors as float16) in a flat FAISS index, are ranked exactly;
  - IVF,SQ / IVF,Flat otherwise: the plan copies the allowed codes into an index of their
    own lists (same quantizer, same codes), list by list as searches first reach them; a
    search ranks the lists as usual and scans,
    among the nearest OWN_FACTOR x nprobe / share, those holding any allowed code: about
    OWN_FACTOR x the codes an unfiltered search scans, no id checked against a bitmap;
  - other IVF kinds, or no room in MEMORY for the own lists: the shared lists ranked by
    the quantizer, those holding no allowed item skipped, taken in order until they hold
    a budget of allowed items (the allowed items an unfiltered walk would meet / sqrt of
    the share, x BUDGET_FACTOR, at least the tuned nprobe lists), then further batches
    while a batch improves the top; FAISS scans them (`search_preassigned`) with the
    selector;
  - HNSW: efSearch grows with 1/share;
  - exact index (Flat): FAISS's exact search of the allowed ids.

The constants were chosen by bench/filters.py (figures in bench/RESULTS.md).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import faiss
import numpy as np

from .filtered import Allowed, PostFilter
from .tuning import unwrap

K = 10  # the depth the index's nprobe was tuned for
PLANS = 4  # filters kept (a few: the filters of the searches being paged)
EXACT_SHARE = 0.02  # HNSW: allowed shares below this are ranked exactly
EXACT_ITEMS = 65_536  # never more allowed vectors than this in one exact matrix
MEMORY = 256 << 20  # bytes: all the plans' copies of vectors or codes together
EXACT_FACTOR = 1.0  # exact when allowed <= this x the codes an unfiltered IVF walk scans
BUDGET_FACTOR = 1.0  # IVF: allowed items to cover, x (unfiltered walk's) / sqrt(share)
MORE_FACTOR = 1.0  # IVF: further lists per batch, x the first batch's (0: no further batch)
OWN_FACTOR = 1.5  # IVF, own lists: probe this x nprobe / share lists
OWN_MORE = 0.0  # IVF, own lists: as MORE_FACTOR (measured: no better than a higher OWN_FACTOR)
PATIENCE = 1  # IVF: stop after this many batches in a row that improve nothing
BUDGET_FLOOR = 256  # IVF: never cover fewer allowed items than this

Vectors = Callable[[np.ndarray], np.ndarray]  # float32 vectors of some ids, in that order
Found = tuple[np.ndarray, np.ndarray]  # (scores, ids), best first


@dataclass
class Plan:
    """What one filter costs once: the allowed items and what is derived from them."""

    allowed: Allowed
    per_list: np.ndarray | None = None  # IVF: allowed items in each list
    exact: faiss.Index | None = None  # the allowed vectors (row i: allowed.ids()[i])
    own: faiss.IndexIVF | None = None  # IVF: an index of the allowed codes only
    copy: _Copy | None = None  # how own's lists are filled (as searches reach them)
    held: int = 0  # bytes of exact or own


@dataclass
class _Copy:
    """The allowed ids grouped by IVF list, their places there, and the lists copied."""

    lists: faiss.ArrayInvertedLists  # own's lists (owned by own)
    ids: np.ndarray  # int64, grouped by list
    at: np.ndarray  # place of each in its list of the shared index
    bounds: np.ndarray  # list l's ids are ids[bounds[l]:bounds[l + 1]]
    done: np.ndarray  # bool per list: copied


class FilterCache:
    """The plans of the last few filters and the IVF list of each id, for one version of
    the collection (any other version drops them all). Not thread-safe: the collection
    calls it under its lock."""

    def __init__(self, plans: int = PLANS, memory: int = MEMORY):
        self.size = plans
        self.memory = memory
        self.version: Hashable = None
        self._plans: OrderedDict[PostFilter, Plan] = OrderedDict()
        self._lists: tuple[np.ndarray, np.ndarray] | None = None  # list_of_ids, this version
        self._cents: np.ndarray | None = None  # the IVF's centroids, this version
        self._paths: dict[str, list[int]] = {}  # path taken -> [searches, lists scanned]

    def plan(self, where: PostFilter, version: Hashable, allowed: Callable[[], Allowed]) -> Plan:
        """The plan of `where` at `version`, made with `allowed()` when not kept."""
        self._at(version)
        p = self._plans.get(where)
        if p is None:
            p = self._plans[where] = Plan(allowed())
            while len(self._plans) > self.size:
                self._plans.popitem(last=False)
        self._plans.move_to_end(where)
        return p

    def drop_plans(self) -> None:
        """Forget the filters (the IVF list of each id is kept): the next use of each
        pays again, as a filter not seen before does."""
        self._plans.clear()

    def stats(self) -> str:
        """Which paths the searches took, e.g. 'IVF 212 lists' or 'exact' (bench, logs)."""
        out = []
        for path, (calls, lists) in self._paths.items():
            out.append(f"{path} {lists / calls:.0f} lists" if lists else path)
        return ", ".join(out) or "none"

    def _took(self, path: str, lists: int = 0) -> None:
        seen = self._paths.setdefault(path, [0, 0])
        seen[0] += 1
        seen[1] += lists

    def search(
        self,
        index: faiss.Index,
        q: np.ndarray,
        depth: int,
        plan: Plan,
        params: dict[str, int],
        vectors: Vectors,
    ) -> Found:
        """The best `depth` allowed items for query q (float32, (dim,)); depth <= count."""
        allowed = plan.allowed
        inner = unwrap(index)
        direct = faiss.downcast_index(index)
        sel = faiss.IDSelectorBitmap(len(allowed.bits), faiss.swig_ptr(allowed.bits))
        if isinstance(inner, faiss.IndexIVF):
            if allowed.count <= exact_limit(inner, params):
                return self._exact(plan, q, depth, vectors)
            if isinstance(direct, faiss.IndexIVF):
                own = self._own_lists(direct, plan)
                if own is not None:
                    return self._in_own_lists(direct, own, plan, q, depth, params)
                return self._ivf(direct, plan, q, depth, params, sel)
            # an IVF under a transform (a PCA, ...): widen nprobe by the share instead
            share = allowed.count / max(int(index.ntotal), 1)
            nprobe = int(params.get("nprobe", inner.nprobe))
            sp = faiss.SearchParametersIVF(sel=sel, nprobe=min(inner.nlist, math.ceil(nprobe / share)))
        elif isinstance(inner, faiss.IndexHNSW):
            share = allowed.count / max(int(index.ntotal), 1)
            if share < EXACT_SHARE:  # a graph walk meets almost no allowed node
                return self._exact(plan, q, depth, vectors)
            ef = int(params.get("efSearch", inner.hnsw.efSearch))
            sp = faiss.SearchParametersHNSW(sel=sel, efSearch=max(depth, math.ceil(ef / share)))
        else:
            sp = faiss.SearchParameters(sel=sel)
        self._took(type(inner).__name__)
        scores, labels = index.search(q[None, :], depth, params=sp)
        return scores[0], labels[0]

    # -- internals ---------------------------------------------------------------------

    def _at(self, version: Hashable) -> None:
        if version != self.version:
            self.version = version
            self._plans.clear()
            self._lists = None
            self._cents = None

    def _ivf(
        self,
        ivf: faiss.IndexIVF,
        plan: Plan,
        q: np.ndarray,
        depth: int,
        params: dict[str, int],
        sel: faiss.IDSelector,
    ) -> Found:
        """The shared lists, with the selector: the nearest lists holding allowed items
        until they hold the budget, then further batches while they improve the top."""
        per_list = self._per_list(ivf, plan)
        count, nlist = plan.allowed.count, ivf.nlist
        nprobe = min(nlist, int(params.get("nprobe", ivf.nprobe)))
        share = count / max(int(ivf.ntotal), 1)
        met = nprobe * count / nlist  # allowed items an unfiltered walk meets, on average
        budget = min(count, max(BUDGET_FLOOR, BUDGET_FACTOR * met / math.sqrt(share)))
        x = np.ascontiguousarray(q[None, :], dtype=np.float32)
        wide = min(nlist, math.ceil(nprobe / share))
        lists, dists, held = self._ranked(ivf, x, wide, per_list)
        if held.sum() < budget and wide < nlist:
            wide = nlist  # the allowed items lie beyond the usual candidates: rank all lists
            lists, dists, held = self._ranked(ivf, x, wide, per_list)
        m = int(np.searchsorted(np.cumsum(held), budget)) + 1
        m = min(len(lists), max(m, nprobe))
        return self._walk("IVF", ivf, ivf, per_list, x, depth, (lists, dists, wide), m, sel,
                          MORE_FACTOR, None)

    def _walk(self, name: str, ivf: faiss.IndexIVF, scanned: faiss.IndexIVF,
              per_list: np.ndarray, x: np.ndarray, depth: int,
              ranked: tuple[np.ndarray, np.ndarray, int], first: int,
              sel: faiss.IDSelector | None, more: float,
              before: Callable[[np.ndarray], None] | None) -> Found:
        """Scan the `first` ranked lists (of `scanned`: the index or the allowed codes' own
        lists), then batches of `more` x as many further lists until PATIENCE batches
        in a row add nothing to the top K (ranking all lists when those ranked run out).
        `before(lists)` is called ahead of each scan (the own lists copy what they lack).

        Which lists are scanned depends on the query alone, not on `depth`: a deeper page
        reads further down the same ranking, so pages neither repeat nor skip an item."""
        lists, dists, wide = ranked
        if first == 0:  # no list holds an allowed id (the index does not hold them)
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        want, depth = depth, max(depth, K)
        if before is not None:
            before(lists[:first])
        scores, labels = self._scan(scanned, x, depth, lists[:first], dists[:first], sel)
        step, done, count, idle = max(1, math.ceil(more * first)), first, first, 0
        while more > 0:
            if done >= len(lists):
                if wide >= ivf.nlist:
                    break
                wide, seen = ivf.nlist, lists[:done]
                lists, dists, _ = self._ranked(ivf, x, wide, per_list)
                fresh = ~np.isin(lists, seen)
                lists, dists, done = lists[fresh], dists[fresh], 0
                continue
            batch = slice(done, min(len(lists), done + step))
            if before is not None:
                before(lists[batch])
            more_s, more_l = self._scan(scanned, x, depth, lists[batch], dists[batch], sel)
            count += batch.stop - done
            done = batch.stop
            both_s = np.concatenate([scores, more_s])
            both_l = np.concatenate([labels, more_l])
            top = np.argsort(-both_s, kind="stable")[:depth]
            best = top[:K]  # the stopping rule looks at the top K whatever the depth
            improved = bool(((best >= depth) & (both_l[best] >= 0)).any())
            scores, labels = both_s[top], both_l[top]
            idle = 0 if improved else idle + 1
            if idle >= PATIENCE:
                break
        self._took(name, count)
        return scores[:want], labels[:want]

    def _ranked(self, ivf: faiss.IndexIVF, x: np.ndarray, wide: int, per_list: np.ndarray):
        """The `wide` lists nearest x that hold allowed items: (lists, centroid scores,
        allowed items held), nearest first."""
        dq, iq = ivf.quantizer.search(x, wide)
        ok = iq[0] >= 0
        lists, dists = iq[0][ok], dq[0][ok]
        held = per_list[lists]
        keep = held > 0
        return lists[keep], dists[keep], held[keep]

    @staticmethod
    def _scan(ivf: faiss.IndexIVF, x: np.ndarray, depth: int, lists: np.ndarray,
              dists: np.ndarray, sel: faiss.IDSelector | None) -> Found:
        """FAISS's scan of these lists only (the allowed ids in them), best `depth` first."""
        assign = np.ascontiguousarray(lists[None, :], dtype=np.int64)
        cdist = np.ascontiguousarray(dists[None, :], dtype=np.float32)
        scores = np.empty((1, depth), dtype=np.float32)
        labels = np.empty((1, depth), dtype=np.int64)
        sp = faiss.SearchParametersIVF(nprobe=len(lists))
        if sel is not None:
            sp.sel = sel
        ivf.search_preassigned_c(
            1, faiss.swig_ptr(x), depth, faiss.swig_ptr(assign), faiss.swig_ptr(cdist),
            faiss.swig_ptr(scores), faiss.swig_ptr(labels), False, sp,
        )
        return scores[0], labels[0]

    def _where(self, ivf: faiss.IndexIVF) -> tuple[np.ndarray, np.ndarray]:
        """list_of_ids for this version's index (walked once per version)."""
        if self._lists is None:
            self._lists = list_of_ids(ivf)
        return self._lists

    def _per_list(self, ivf: faiss.IndexIVF, plan: Plan) -> np.ndarray:
        if plan.per_list is None:
            where_list = self._where(ivf)[0]
            # counted per passing post when those are known (an item posted twice in the
            # filter counts twice: this steers the budget, it decides no result)
            ids = plan.allowed.members
            if ids is None:
                ids = plan.allowed.ids()
            where = where_list[ids[ids < len(where_list)]]
            plan.per_list = np.bincount(where[where >= 0], minlength=ivf.nlist)
        return plan.per_list

    def _exact(self, plan: Plan, q: np.ndarray, depth: int, vectors: Vectors) -> Found:
        """The allowed items ranked exactly from their vectors (kept while memory allows)."""
        ids = plan.allowed.ids()
        flat = plan.exact
        self._took("exact")
        if flat is None:
            x = np.ascontiguousarray(vectors(ids), dtype=np.float32)
            flat = faiss.IndexScalarQuantizer(
                x.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
            flat.add(x)
            size = int(flat.sa_code_size()) * len(ids)
            if self._make_room(size):
                plan.exact, plan.held = flat, size
        scores, rows = flat.search(np.ascontiguousarray(q[None, :], dtype=np.float32), depth)
        found = rows[0] >= 0
        return scores[0][found], ids[rows[0][found]]

    def _make_room(self, size: int) -> bool:
        """Drop the copies of the least recently used plans until `size` more bytes fit;
        False (nothing dropped) when they never would."""
        if size > self.memory:
            return False
        used = sum(p.held for p in self._plans.values())
        for p in self._plans.values():
            if used + size <= self.memory:
                break
            used -= p.held
            p.exact, p.own, p.copy, p.held = None, None, None, 0
        return True

    def _own_lists(self, ivf: faiss.IndexIVF, plan: Plan) -> faiss.IndexIVF | None:
        """An index of the same lists to hold only the allowed codes, filled list by list
        as searches reach them (_fill); None for an IVF kind not copied here, or when it
        would not fit in memory."""
        if plan.own is not None:
            return plan.own
        if type(ivf) is faiss.IndexIVFScalarQuantizer:  # (not a subclass: codes may differ)
            own = faiss.IndexIVFScalarQuantizer(
                ivf.quantizer, ivf.d, ivf.nlist, ivf.sq.qtype, ivf.metric_type, ivf.by_residual
            )
            own.sq = ivf.sq
        elif type(ivf) is faiss.IndexIVFFlat:
            own = faiss.IndexIVFFlat(ivf.quantizer, ivf.d, ivf.nlist, ivf.metric_type)
        else:
            return None
        size = plan.allowed.count * (ivf.code_size + 8)
        if own.code_size != ivf.code_size or not self._make_room(size):
            return None
        own.is_trained = True
        where_list, where_at = self._where(ivf)
        ids = plan.allowed.ids()
        ids = ids[ids < len(where_list)]
        ids = ids[where_list[ids] >= 0]
        order = np.argsort(where_list[ids], kind="stable")  # grouped by list
        ids = np.ascontiguousarray(ids[order])
        lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        own.replace_invlists(lists, True)
        lists.this.disown()  # the index owns it now
        own.ntotal = len(ids)
        bounds = np.searchsorted(where_list[ids], np.arange(ivf.nlist + 1))
        plan.own, plan.held = own, size
        plan.copy = _Copy(lists, ids, where_at[ids], bounds, np.zeros(ivf.nlist, dtype=bool))
        return own

    @staticmethod
    def _fill(ivf: faiss.IndexIVF, plan: Plan, keys: np.ndarray) -> None:
        """Copy the allowed codes of these lists into the plan's own lists, those not yet
        copied: a first search copies only the lists it scans (a quarter of them for a
        10% filter at 1M), later searches the few more they reach."""
        c = plan.copy
        assert c is not None
        keys = keys[~c.done[keys]]
        if not len(keys):
            return
        c.done[keys] = True
        src, width = ivf.invlists, ivf.code_size
        for key in keys.tolist():
            a, b = int(c.bounds[key]), int(c.bounds[key + 1])
            if a == b:
                continue
            n, ptr = src.list_size(key), src.get_codes(key)
            codes = faiss.rev_swig_ptr(ptr, n * width).reshape(n, width)[c.at[a:b]]  # a copy
            src.release_codes(key, ptr)
            mine = c.ids[a:b]  # named: swig_ptr holds no reference
            c.lists.add_entries(key, b - a, faiss.swig_ptr(mine), faiss.swig_ptr(codes))

    def _in_own_lists(self, ivf: faiss.IndexIVF, own: faiss.IndexIVF, plan: Plan,
                      q: np.ndarray, depth: int, params: dict[str, int]) -> Found:
        """Search the allowed codes alone: the lists among the nearest OWN_FACTOR x nprobe /
        share that hold any (about as many codes as an unfiltered search scans, for a
        factor 1), then further batches while they improve the top (see _walk)."""
        per_list = self._per_list(ivf, plan)
        nprobe = min(ivf.nlist, int(params.get("nprobe", ivf.nprobe)))
        share = plan.allowed.count / max(int(ivf.ntotal), 1)
        reach = min(ivf.nlist, math.ceil(OWN_FACTOR * nprobe / share))
        x = np.ascontiguousarray(q[None, :], dtype=np.float32)
        if reach >= ivf.nlist and (centroids := self._centroids(ivf)) is not None:
            # every list: no ranking needed, only the lists holding allowed codes
            lists = np.flatnonzero(per_list)
            self._took("own lists", len(lists))
            self._fill(ivf, plan, lists)
            return self._scan(own, x, depth, lists, inner_products(centroids, x[0])[lists], None)
        wide = min(ivf.nlist, math.ceil(reach * (1 + OWN_MORE)))
        dq, iq = ivf.quantizer.search(x, wide)
        ok = iq[0] >= 0
        ranks, dists = iq[0][ok], dq[0][ok]
        holds = per_list[ranks] > 0
        first = int(holds[:reach].sum())
        lists, dists = ranks[holds], dists[holds]
        return self._walk("own lists", ivf, own, per_list, x, depth, (lists, dists, wide),
                          first, None, OWN_MORE, lambda keys: self._fill(ivf, plan, keys))

    def _centroids(self, ivf: faiss.IndexIVF) -> np.ndarray | None:
        """The coarse centroids (nlist, d) of this version's index; None for a quantizer
        that cannot give them back."""
        if self._cents is None:
            try:
                self._cents = ivf.quantizer.reconstruct_n(0, ivf.nlist)
            except RuntimeError:
                self._cents = np.zeros((0, ivf.d), dtype=np.float32)
        return self._cents if len(self._cents) else None


def inner_products(rows: np.ndarray, x: np.ndarray) -> np.ndarray:
    """rows @ x by FAISS (numpy's BLAS, beside FAISS's OpenMP threads, took 12 ms for a
    4000 x 512 product that FAISS does in 0.14 ms on this machine)."""
    out = np.empty(len(rows), dtype=np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.float32)
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.fvec_inner_products_ny(faiss.swig_ptr(out), faiss.swig_ptr(x), faiss.swig_ptr(rows),
                                 rows.shape[1], rows.shape[0])
    return out


def exact_limit(ivf: faiss.IndexIVF, params: dict[str, int]) -> int:
    """Allowed items at most which ranking them exactly costs about an unfiltered search:
    EXACT_FACTOR x the codes an unfiltered walk scans (nprobe lists of ntotal/nlist)."""
    nprobe = min(ivf.nlist, int(params.get("nprobe", ivf.nprobe)))
    scanned = nprobe * int(ivf.ntotal) / max(ivf.nlist, 1)
    return int(min(EXACT_ITEMS, EXACT_FACTOR * scanned))


def list_of_ids(ivf: faiss.IndexIVF) -> tuple[np.ndarray, np.ndarray]:
    """The IVF list holding each id (-1: none) and its place in that list, read from the
    inverted lists."""
    invlists = ivf.invlists
    parts, where, at = [], [], []
    for lst in range(ivf.nlist):
        size = invlists.list_size(lst)
        if size:
            ptr = invlists.get_ids(lst)
            parts.append(faiss.rev_swig_ptr(ptr, size).copy())
            invlists.release_ids(lst, ptr)
            where.append(np.full(size, lst, dtype=np.int32))
            at.append(np.arange(size, dtype=np.int32))
    if not parts:
        return np.full(0, -1, dtype=np.int32), np.zeros(0, dtype=np.int32)
    ids = np.concatenate(parts)
    lists = np.full(int(ids.max()) + 1, -1, dtype=np.int32)
    places = np.zeros(len(lists), dtype=np.int32)
    lists[ids] = np.concatenate(where)
    places[ids] = np.concatenate(at)
    return lists, places
