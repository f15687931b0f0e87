"""Filtered search over the FAISS index: what a filter costs is paid once, then reused.

Exact about the filter: FAISS computes distances only for the ids a filter allows
(`IDSelectorBitmap`), or the allowed vectors are ranked exactly; the top k returned are the
top k of the allowed items, never "the top 100, then drop". What the search costs:

- Per filter, once (a `Plan`, kept in a small LRU keyed by the filter): the allowed
  bitmap and ids, how many allowed items each IVF list holds, and, from the filter's
  second query on, a copy of either the allowed codes (own lists) or, for a small allowed
  set, the allowed vectors (all plans' copies together within MEMORY, the least recently
  used dropped first). A filter asked once copies nothing: its first query, and that
  query's page turns, walk the shared lists with the selector (`_shared` says why pages
  stay on one path). Turning a page or asking the same filter again pays none of it.
  Posts appended to the collection extend the kept plans and their copies (`appended`);
  any other change of the posts drops the plans, any change of the index but items added
  in place drops what was derived from it (`index_changed`).
- Per index version, once: the IVF list of every id (walked from the inverted lists; the
  ends of the lists that grew read for items added since), from which a filter's per-list
  counts are one bincount.
- Per search, by the index type and the number of allowed items (the first query of an
  IVF filter: the shared lists, as below for "other IVF kinds"):
  - few allowed (at most the codes an unfiltered IVF search scans, `exact_limit`; HNSW
    below EXACT_SHARE): the allowed vectors, kept as float16 (lossless: the store keeps
    vectors as float16) in a flat FAISS index, are ranked exactly;
  - IVF,SQ / IVF,Flat otherwise: the plan copies the allowed codes into an index of their
    own lists (same quantizer, same codes), list by list as searches first reach them; a
    search ranks the lists as usual and scans,
    among the nearest OWN_FACTOR x nprobe / share, those holding any allowed code: about
    OWN_FACTOR x the codes an unfiltered search scans, no id checked against a bitmap;
  - a filter's first query, other IVF kinds, or no room in MEMORY for the own lists: the
    shared lists ranked by the quantizer, those holding no allowed item skipped, taken in
    order until they hold a budget of allowed items (the allowed items an unfiltered walk would meet / sqrt of
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

from .filtered import Allowed, PostFacts, PostFilter
from .routes import Routes
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
    where: PostFilter | None = None  # the filter (None: made without one, tests)
    used: bool = False  # searched at least once
    per_list: np.ndarray | None = None  # IVF: allowed items in each list
    exact: faiss.Index | None = None  # the allowed vectors (row i: exact_ids[i])
    exact_ids: np.ndarray | None = None
    own: faiss.IndexIVF | None = None  # IVF: an index of the allowed codes only
    copy: _Copy | None = None  # how own's lists are filled (as searches reach them)
    held: int = 0  # bytes of exact and own together

    def drop_copies(self) -> None:
        """Forget what was derived from the index or copied from it (kept: the allowed set)."""
        self.per_list = None
        self.free()

    def free(self) -> None:
        """Forget the copies that hold memory (the exact vectors, the own lists)."""
        self.exact, self.exact_ids, self.own, self.copy, self.held = None, None, None, None, 0


@dataclass
class _Copy:
    """The allowed ids grouped by IVF list, their places there, and the lists copied."""

    lists: faiss.ArrayInvertedLists  # own's lists (owned by own)
    ids: np.ndarray  # int64, grouped by list, in the order of the shared list
    at: np.ndarray  # place of each in its list of the shared index
    bounds: np.ndarray  # list l's ids are ids[bounds[l]:bounds[l + 1]]
    done: np.ndarray  # bool per list: copied


class FilterCache:
    """The plans of the last few filters, for one version of the post facts (another
    version drops them; posts appended extend them, `appended`), and the IVF list of each
    id, for one version of the index (`index_changed`; items added in place extend it).
    Not thread-safe: the collection calls it under its lock.

    first_shared: a plan's first search, and every page of its query, walks the shared
    lists (`_ivf`, no copy made); the copies (own lists, exact vectors) are made when
    another query asks the same filter. False: every search of an IVF plan uses them."""

    def __init__(self, plans: int = PLANS, memory: int = MEMORY, first_shared: bool = True):
        self.size = plans
        self.memory = memory
        self.first_shared = first_shared
        self.version: Hashable = None
        self.index_version: Hashable = None
        self._plans: OrderedDict[PostFilter, Plan] = OrderedDict()
        self._lists: tuple[np.ndarray, np.ndarray] | None = None  # list_of_ids, this index
        self._sizes: np.ndarray | None = None  # each list's size when _lists was made
        self._cents: np.ndarray | None = None  # the IVF's centroids, this index
        self._routes = Routes()  # (filter, query) -> whether it walks the shared lists
        self._paths: dict[str, list[int]] = {}  # path taken -> [searches, lists scanned]

    def plan(self, where: PostFilter, version: Hashable, allowed: Callable[[], Allowed]) -> Plan:
        """The plan of `where` at `version` (of the post facts), made with `allowed()` when
        not kept."""
        self._at(version)
        p = self._plans.get(where)
        if p is None:
            p = self._plans[where] = Plan(allowed(), where)
            while len(self._plans) > self.size:
                self._plans.popitem(last=False)
        self._plans.move_to_end(where)
        return p

    def index_changed(self, version: Hashable) -> None:
        """The index the searches get is `version` (its loads and removals: anything but
        items added in place): when another, what was derived from the old one goes, the
        plans' copies with it (their allowed sets stay: they follow the posts)."""
        if version != self.index_version:
            self.index_version = version
            self._lists = self._sizes = self._cents = None
            for p in self._plans.values():
                p.drop_copies()

    def appended(self, new: PostFacts, index: faiss.Index, vectors: Vectors) -> None:
        """Posts were appended (their facts `new`) and their new items, if any, added to
        `index` in place: each kept plan gains the items the new posts let through, and
        its copies gain them too."""
        for p in self._plans.values():
            if p.where is None:
                continue
            gained = new.allowed(p.where)
            if gained.count:
                self._extend(p, gained, index, vectors)

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
            if isinstance(direct, faiss.IndexIVF) and self._shared(plan, q):
                return self._ivf(direct, plan, q, depth, params, sel)
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

    def _shared(self, plan: Plan, q: np.ndarray) -> bool:
        """Whether this search walks the shared lists rather than the plan's copies.

        A plan's first search does (nothing copied for a filter asked once), and so does
        every later search of the same query with the same filter: its page turns read
        further down the same ranking, whatever happened to the plan meanwhile (evicted
        and made again, its copies dropped). Another query makes and uses the copies, as
        do its own page turns. Remembered for recent filters and queries (routes.py)."""
        if not self.first_shared:
            return False
        shared = self._routes.get(plan.where, q)
        if shared is None:
            shared = not plan.used
            self._routes.put(plan.where, q, shared)
        plan.used = True
        return bool(shared)

    def _extend(self, plan: Plan, gained: Allowed, index: faiss.Index, vectors: Vectors) -> None:
        """Add to a plan the items `gained` lets through (appended posts), and to its copies
        the items it did not allow yet; a copy that no longer fits is dropped."""
        before = plan.allowed
        plan.allowed, fresh = before.union(gained)
        ivf = faiss.downcast_index(index)
        where = self._where(ivf) if isinstance(ivf, faiss.IndexIVF) else None
        if plan.per_list is not None and where is not None:
            counted = gained.members if before.members is not None else None
            counted = fresh if counted is None else counted
            counted = counted[counted < len(where[0])]
            lists = where[0][counted]
            plan.per_list = plan.per_list + np.bincount(lists[lists >= 0], minlength=ivf.nlist)
        if not len(fresh):
            return
        if plan.exact is not None:
            x = np.ascontiguousarray(vectors(fresh), dtype=np.float32)
            size = int(plan.exact.sa_code_size()) * len(fresh)
            if self._make_room(size, keep=plan):
                plan.exact.add(x)
                plan.exact_ids = np.concatenate([plan.exact_ids, fresh])
                plan.held += size
            else:
                plan.drop_copies()
        if plan.copy is not None and where is not None:
            size = len(fresh) * (ivf.code_size + 8)
            if self._make_room(size, keep=plan):
                self._add_to_own(ivf, plan, fresh, where)
                plan.held += size
            else:
                plan.drop_copies()

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
        """list_of_ids for this version's index (walked once per version; items added
        since in place are read from the ends of the lists that grew)."""
        if self._lists is None:
            self._lists, self._sizes = list_of_ids(ivf), list_sizes(ivf)
        elif self._sizes is not None and int(self._sizes.sum()) != int(ivf.ntotal):
            sizes = list_sizes(ivf)
            if (sizes < self._sizes).any():  # not an append (index_changed was not told)
                self._lists, self._sizes = list_of_ids(ivf), sizes
            else:
                self._lists = appended_to_lists(ivf, self._lists, self._sizes, sizes)
                self._sizes = sizes
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
        flat, ids = plan.exact, plan.exact_ids
        self._took("exact")
        if flat is None or ids is None:
            ids = plan.allowed.ids()
            x = np.ascontiguousarray(vectors(ids), dtype=np.float32)
            flat = faiss.IndexScalarQuantizer(
                x.shape[1], faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT
            )
            flat.add(x)
            size = int(flat.sa_code_size()) * len(ids)
            if self._make_room(size, keep=plan):
                plan.exact, plan.exact_ids = flat, ids
                plan.held += size
        scores, rows = flat.search(np.ascontiguousarray(q[None, :], dtype=np.float32), depth)
        found = rows[0] >= 0
        return scores[0][found], ids[rows[0][found]]

    def _make_room(self, size: int, keep: Plan | None = None) -> bool:
        """Drop the copies of the least recently used plans (but `keep`'s) until `size`
        more bytes fit; False (nothing dropped) when they never would."""
        used = sum(p.held for p in self._plans.values())
        kept = keep.held if keep is not None else 0
        if size + kept > self.memory:
            return False
        for p in self._plans.values():
            if used + size <= self.memory:
                break
            if p is not keep:
                used -= p.held
                p.free()
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
        if own.code_size != ivf.code_size:
            return None
        if plan.exact is not None:  # the allowed set outgrew the exact path (posts appended)
            plan.held -= int(plan.exact.sa_code_size()) * int(plan.exact.ntotal)
            plan.exact = plan.exact_ids = None
        if not self._make_room(size, keep=plan):
            return None
        own.is_trained = True
        where_list, where_at = self._where(ivf)
        ids = plan.allowed.ids()
        ids = ids[ids < len(where_list)]
        ids = ids[where_list[ids] >= 0]
        order = np.lexsort((where_at[ids], where_list[ids]))  # by list, as in the shared one
        ids = np.ascontiguousarray(ids[order])
        lists = faiss.ArrayInvertedLists(ivf.nlist, ivf.code_size)
        own.replace_invlists(lists, True)
        lists.this.disown()  # the index owns it now
        own.ntotal = len(ids)
        bounds = np.searchsorted(where_list[ids], np.arange(ivf.nlist + 1))
        plan.own = own
        plan.held += size
        plan.copy = _Copy(lists, ids, where_at[ids], bounds, np.zeros(ivf.nlist, dtype=bool))
        return own

    @staticmethod
    def _add_to_own(ivf: faiss.IndexIVF, plan: Plan, fresh: np.ndarray,
                    where: tuple[np.ndarray, np.ndarray]) -> None:
        """Items newly allowed, added to the shared index in place (at the ends of their
        lists): into the grouping of lists not copied yet; copied at once into those
        already copied (after their codes there, as in the shared list)."""
        c, own = plan.copy, plan.own
        assert c is not None and own is not None
        where_list, where_at = where
        fresh = fresh[fresh < len(where_list)]
        fresh = fresh[where_list[fresh] >= 0]
        if not len(fresh):
            return
        fresh = fresh[np.lexsort((where_at[fresh], where_list[fresh]))]
        key = (where_list[c.ids].astype(np.int64) << 32) | c.at  # sorted: by list, then place
        new_key = (where_list[fresh].astype(np.int64) << 32) | where_at[fresh]
        put = np.searchsorted(key, new_key)
        c.ids = np.ascontiguousarray(np.insert(c.ids, put, fresh))
        c.at = np.insert(c.at, put, where_at[fresh])
        c.bounds = c.bounds + np.searchsorted(where_list[fresh], np.arange(ivf.nlist + 1))
        src, width = ivf.invlists, ivf.code_size
        mine = fresh[c.done[where_list[fresh]]]
        for key in np.unique(where_list[mine]).tolist():
            these = np.ascontiguousarray(mine[where_list[mine] == key])
            n, ptr = src.list_size(key), src.get_codes(key)
            codes = faiss.rev_swig_ptr(ptr, n * width).reshape(n, width)[where_at[these]]
            src.release_codes(key, ptr)
            c.lists.add_entries(key, len(these), faiss.swig_ptr(these), faiss.swig_ptr(codes))
        own.ntotal = int(own.ntotal) + len(fresh)

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


def list_sizes(ivf: faiss.IndexIVF) -> np.ndarray:
    """How many entries each IVF list holds."""
    invlists = ivf.invlists
    return np.fromiter((invlists.list_size(lst) for lst in range(ivf.nlist)), dtype=np.int64,
                       count=ivf.nlist)


def appended_to_lists(ivf: faiss.IndexIVF, where: tuple[np.ndarray, np.ndarray],
                      before: np.ndarray, now: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """list_of_ids after entries were appended to the lists (sizes `before` -> `now`):
    only the new ends are read."""
    lists, places = where
    invlists = ivf.invlists
    grown = np.flatnonzero(now > before)
    if not len(grown):
        return where
    new_ids = []
    for lst in grown.tolist():
        ptr = invlists.get_ids(lst)
        new_ids.append(faiss.rev_swig_ptr(ptr, int(now[lst]))[int(before[lst]):].copy())
        invlists.release_ids(lst, ptr)
    ids = np.concatenate(new_ids)
    added = (now - before)[grown]
    new_lists = np.repeat(grown.astype(np.int32), added)
    new_at = (np.arange(len(ids)) - np.repeat(np.cumsum(added) - added, added)
              + np.repeat(before[grown], added)).astype(np.int32)
    size = max(len(lists), int(ids.max()) + 1)
    if size > len(lists):
        lists = np.concatenate([lists, np.full(size - len(lists), -1, dtype=np.int32)])
        places = np.concatenate([places, np.zeros(size - len(places), dtype=np.int32)])
    else:
        lists, places = lists.copy(), places.copy()
    lists[ids] = new_lists
    places[ids] = new_at
    return lists, places


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
