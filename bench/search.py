"""Search at scale: numpy baselines against the FAISS index the engine builds, and others.

    python -m bench.search                        # N = 100k and 1M, 512-d, k = 10 (~5-8 min)
    python -m bench.search --n 100000 --queries 300 --collection-n 100000
    python -m bench.search --n 1000000 --alternatives IVF2048,SQ8 HNSW32,SQ8

Vectors and queries: bench/vectors.py (CLIP-like: a shared cone, 20k Zipf-sized clusters
joined by blends, anisotropic noise; queries are fresh items, two-item blends and
text-like off-cone vectors, one third each, never stored points).

For each N, in one process and on the same queries:
- baselines: numpy brute force in float16 with a full argsort (what public CLIP search
  demos do) and in float32 with argpartition;
- the engine's `auto` choice, built exactly as Collection builds it
  (store.choose_factory, store.training_size, store.calibration_queries, store.tune),
  and, at --collection-n, through a real Collection (SQLite + FAISS) and Collection.search;
- alternatives: exact faiss Flat, flat SQ8 / fp16 codes, HNSW, other IVF sizes, each
  tuned by the same store.tune on the same calibration queries.
Reported: p50/p99 latency of single queries (one query per call, as the bot asks),
recall@10 against exact float32 search, bytes per vector (serialised index, ids
included), build time (train + add + tune), speed-up against the float32 numpy scan.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from bench.common import header, machine, median, ms, pct, ratio, table
from bench.vectors import Space

K = 10


def exact_topk(X: np.ndarray, Q: np.ndarray, k: int = K, block: int = 200_000,
               exclude: np.ndarray | None = None) -> np.ndarray:
    """Exact top-k row ids by float32 inner product, blockwise to bound memory.

    `exclude[i]` (>= 0) is a row that query i must not count (its own item)."""
    best_s = np.full((len(Q), 0), -np.inf, dtype=np.float32)
    best_i = np.zeros((len(Q), 0), dtype=np.int64)
    for s in range(0, len(X), block):
        sc = Q @ X[s:s + block].T
        ids = np.arange(s, s + sc.shape[1], dtype=np.int64)
        if exclude is not None:
            sc[exclude[:, None] == ids[None, :]] = -np.inf
        alls = np.concatenate([best_s, sc], axis=1)
        alli = np.concatenate([best_i, np.broadcast_to(ids, sc.shape)], axis=1)
        part = np.argpartition(-alls, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(alls, part, 1), np.take_along_axis(alli, part, 1)
    order = np.argsort(-best_s, axis=1)
    return np.take_along_axis(best_i, order, 1)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    if not len(found):
        return float("nan")
    return float(np.mean([len(set(f[:K].tolist()) & set(t[:K].tolist())) / K
                          for f, t in zip(found, truth[: len(found)], strict=True)]))


def by_kind(found: np.ndarray, truth: np.ndarray, kinds: np.ndarray) -> str:
    parts = []
    for kind in ("image", "blend", "text"):
        m = kinds[: len(found)] == kind
        parts.append(f"{recall(found[m], truth[: len(found)][m]):.2f}" if m.any() else "–")
    return "/".join(parts)


def per_query(fn, queries: np.ndarray, rounds: int) -> tuple[list[float], np.ndarray]:
    """Seconds per single-query call over `rounds` passes, and the ids of the last pass."""
    for q in queries[:3]:
        fn(q)  # warm caches and thread pools
    times, found = [], []
    for r in range(rounds):
        for q in queries:
            t0 = time.perf_counter()
            ids = fn(q)
            times.append(time.perf_counter() - t0)
            if r == rounds - 1:
                found.append(np.asarray(ids)[:K])
    return times, np.array(found)


def numpy_fp16(X16: np.ndarray):
    def search(q: np.ndarray) -> np.ndarray:
        scores = X16 @ q.astype(np.float16)
        return np.argsort(-scores)[:K]  # a full sort, as the demos do
    return search


def numpy_fp32(X: np.ndarray):
    def search(q: np.ndarray) -> np.ndarray:
        scores = X @ q
        top = np.argpartition(-scores, K)[:K]
        return top[np.argsort(-scores[top])]
    return search


def faiss_search(index: faiss.Index):
    def search(q: np.ndarray) -> np.ndarray:
        return index.search(q[None, :], K)[1][0]
    return search


def index_bytes(index: faiss.Index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def build_like_store(X: np.ndarray, factory: str, seed: int = 0):
    """Build `factory` over X as Collection._rebuild does (same helpers); ids = row numbers.

    Returns (index, params, seconds)."""
    from index import store

    n, dim = X.shape
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.int64)
    t0 = time.perf_counter()
    index = store._make_index(dim, factory)
    if not index.is_trained:
        m = store.training_size(index, n)
        index.train(X[np.sort(rng.choice(n, size=m, replace=False))])
    for s in range(0, n, 100_000):
        index.add_with_ids(X[s:s + 100_000], ids[s:s + 100_000])
    params: dict[str, int] = {}
    if not store._is_exact(index) and store._knob(index) is not None:
        m = min(store._CALIB_QUERIES, n // 3)
        picked = rng.choice(ids, size=3 * m, replace=False)
        cq, cself, groups = store.calibration_queries(X[picked], picked)
        truth = exact_topk(X, cq, exclude=cself)
        params = store.tune(index, (cq, cself, truth, groups))
    return index, params, time.perf_counter() - t0


def collection_path(X: np.ndarray, Q: np.ndarray, truth: np.ndarray, kinds: np.ndarray,
                    rounds: int) -> tuple[list, str]:
    """Through a real Collection: add (SQLite), save (FAISS 'auto' built), search."""
    from index.store import Collection, NewItem

    n, dim = X.shape
    tmp = Path(tempfile.mkdtemp(prefix="clipfind-bench-search-"))
    try:
        c = Collection.create(tmp / "c", "bench:synthetic", dim)
        t0 = time.perf_counter()
        for s in range(0, n, 10_000):
            part = X[s:s + 10_000]
            c.add([NewItem(source=f"/bench/{i}.jpg", title=f"item {i}")
                   for i in range(s, s + len(part))], part)
        added = time.perf_counter() - t0
        t0 = time.perf_counter()
        c.save()  # 'auto' rebuilds into the approximate index once past EXACT_LIMIT
        built = time.perf_counter() - t0
        first_id = int(c.ids()[0])

        def search(q: np.ndarray) -> np.ndarray:
            return np.array([i - first_id for i, _ in c.search(q, K)])

        times, found = per_query(search, Q, rounds)
        size = index_bytes(c._ix.index)
        desc = c.index_description
        c.close()
        t0 = time.perf_counter()
        with Collection.open(tmp / "c") as c2:
            reopened = time.perf_counter() - t0
            assert c2._ix.rebuilds == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    row = [f"**engine: Collection.search** ({desc})", ms(median(times)), ms(pct(times, 99)),
           f"{recall(found, truth):.3f}", by_kind(found, truth, kinds), f"{size / n:,.0f}",
           f"{built:.1f}", None]
    note = (f"Collection path at N = {n:,}: {added:.1f} s to add the vectors through SQLite "
            f"(10k per transaction), {built:.1f} s for save() to build the `auto` index, "
            f"{reopened:.2f} s to reopen the collection (vectors.faiss loaded, not rebuilt).")
    return row, note


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_n(n: int, args, space: Space) -> str:
    from index import store

    out = []
    log(f"N={n:,}: making vectors")
    t0 = time.perf_counter()
    X = space.items(n, seed=1)
    X = X.astype(np.float16).astype(np.float32)  # what the store holds (float16 in SQLite)
    Q, kinds = space.queries(args.queries, seed=2)
    truth = exact_topk(X, Q)
    gen = time.perf_counter() - t0
    slow_q = max(10, min(args.queries, args.slow_queries))
    rows = []

    log("baselines")
    X16 = X.astype(np.float16)
    fp16_q = max(5, min(slow_q, int(args.fp16_budget / (n * 1.5e-6)) if n else slow_q))
    t16, f16 = per_query(numpy_fp16(X16), Q[:fp16_q], 1)
    del X16
    t32, f32 = per_query(numpy_fp32(X), Q, 1)
    base = median(t32)
    rows.append(["numpy float16, full argsort (CLIP demos)", ms(median(t16)), ms(pct(t16, 99)),
                 f"{recall(f16, truth):.3f}", by_kind(f16, truth, kinds), "1,024", "0", median(t16)])
    rows.append(["numpy float32, argpartition", ms(base), ms(pct(t32, 99)),
                 f"{recall(f32, truth):.3f}", by_kind(f32, truth, kinds), "2,048", "0", base])

    auto = store.choose_factory(n)
    candidates = [] if args.no_auto else [("auto", auto)]
    candidates += [("alt", f) for f in args.alternatives_for(n) if f != auto or args.no_auto]
    for role, factory in candidates:
        log(f"building {factory}")
        index, params, secs = build_like_store(X, factory)
        exact = store._is_exact(index)
        flat_scan = exact or faiss.downcast_index(store._unwrap(index)).__class__.__name__ in (
            "IndexScalarQuantizer", "IndexFlat")
        qs = Q[:slow_q] if flat_scan else Q
        rounds = 1 if flat_scan else args.rounds
        times, found = per_query(faiss_search(index), qs, rounds)
        _, all_found = index.search(Q, K)  # recall over every query
        knob = ", ".join(f"{k}={v}" for k, v in params.items())
        name = f"{factory}" + (f" ({knob})" if knob else "")
        if role == "auto":
            name = f"**engine auto: {name}**"
        bpv = index_bytes(index) / n
        rows.append([name, ms(median(times)), ms(pct(times, 99)), f"{recall(all_found, truth):.3f}",
                     by_kind(all_found, truth, kinds), f"{bpv:,.0f}", f"{secs:.1f}", median(times)])
        if role == "auto" and params:
            # what the knob was before tune() searched for the smallest one that is enough
            knob_name, setter, default, _, _ = store._knob(index)
            setter(default)
            times, _ = per_query(faiss_search(index), Q, args.rounds)
            _, old_found = index.search(Q, K)
            rows.append([f"{factory} ({knob_name}={default}: the fixed start tune() had before)",
                         ms(median(times)), ms(pct(times, 99)), f"{recall(old_found, truth):.3f}",
                         by_kind(old_found, truth, kinds), f"{bpv:,.0f}", f"{secs:.1f}",
                         median(times)])
        del index
    notes = []
    if args.collection_n and n == args.collection_n:
        row, note = collection_path(X, Q, truth, kinds, args.rounds)
        row[-1] = None
        rows.append(row)
        notes.append(note)
    for r in rows:
        lat = r[-1]
        r[-1] = ratio(base / lat) if lat else "–"
    for r in rows:
        if r[0].startswith("**engine: Collection"):
            r[-1] = ratio(base / (float(r[1].replace(",", "")) / 1000))
    out.append(f"### N = {n:,} × {X.shape[1]}, k = {K}\n")
    out.append(f"{args.queries} queries (image/blend/text thirds); latency = one query per call, "
               f"{args.rounds} round(s) for the fast indexes, 1 for numpy float32, the first "
               f"{slow_q} queries once for the other exhaustive scans (numpy float16: {fp16_q}). Recall@10 against exact float32 "
               f"search over the same float16-rounded vectors. Data made in {gen:.0f} s.\n")
    out.append(table(("index", "p50 ms", "p99 ms", "recall@10", "image/blend/text",
                      "bytes/vector", "build s", "speed-up vs numpy f32 (p50)"), rows))
    out.extend(f"\n{x}" for x in notes)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.search", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2, help="latency passes over the queries")
    ap.add_argument("--slow-queries", type=int, default=50,
                    help="queries timed for the exhaustive scans (they take long at 1M)")
    ap.add_argument("--fp16-budget", type=float, default=20.0,
                    help="rough seconds allowed for the numpy float16 baseline")
    ap.add_argument("--collection-n", type=int, default=100_000,
                    help="also measure through a real Collection at this N (0: never)")
    ap.add_argument("--alternatives", nargs="*", default=None,
                    help="FAISS factory strings to compare (default: a set per N)")
    ap.add_argument("--no-auto", action="store_true",
                    help="only the baselines and --alternatives (e.g. slow builds, run apart)")
    ap.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: default)")
    args = ap.parse_args(argv)

    def alternatives_for(n: int) -> list[str]:
        if args.alternatives is not None:
            return args.alternatives
        nlist = max(1, round(4 * np.sqrt(n)))
        if n <= 200_000:  # builds that take minutes at 1M on 2 cores (try --alternatives)
            alts = ["Flat", "SQfp16", "SQ8", f"IVF{nlist // 2},SQ8", f"IVF{nlist},SQfp16",
                    "HNSW32,SQ8"]
        else:
            alts = ["Flat", "SQfp16", "SQ8"]
        return alts

    args.alternatives_for = alternatives_for
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    print(header("Search at scale", argv))
    print(machine() + "\n")
    space = Space(args.dim, seed=0)
    for n in args.n:
        print(run_n(n, args, space), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
