"""Which Milvus index the Milvus store's 'auto' uses: recall@10 and latency per index and knob.

    python -m bench.milvus_index [--n 50000] [--dim 512] [--uri /tmp/x.db]

Same vectors for every row: clustered, L2-normalised (rounded through float16 as the store
keeps them). Queries of the three kinds tune() uses for FAISS (a stored item with its own
hit excluded, a blend of two items, an off-cone item standing in for text); the truth is
the exact top 10 by numpy over the same vectors. A guild view's filtered search (one small
server in a shared collection) is measured too: HNSW with a selective filter is where graph
indexes lose recall. Prints a table; quote it with the machine's load (bench/RESULTS.md).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from index.store import NewItem, calibration_queries
from index.store.milvus import MilvusStore


def clustered(n: int, dim: int, seed: int, n_clusters: int = 200, spread: float = 0.8):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, n_clusters, n)] + spread * rng.standard_normal((n, dim)).astype(
        np.float32) / np.sqrt(dim)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype("<f2").astype(np.float32)


def truth_top10(vecs, ids, queries, self_ids):
    s = queries @ vecs.T
    s[self_ids[:, None] == ids[None, :]] = -np.inf
    top = np.argsort(-s, axis=1)[:, :10]
    return ids[top]


def measure(store, queries, self_ids, truth, params):
    store._search_params = dict(params)
    hits = total = 0
    times = []
    for q, me, want in zip(queries, self_ids, truth, strict=True):
        t0 = time.perf_counter()
        got = [i for i, _ in store.search(q, 11)]
        times.append(time.perf_counter() - t0)
        got = [i for i in got if i != me][:10]
        hits += len(set(got) & set(int(w) for w in want))
        total += len(want)
    return hits / total, 1000 * float(np.median(times)), 1000 * float(np.percentile(times, 99))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=60, help="of each kind")
    ap.add_argument("--uri", default=None, help="Milvus URI (default: a temporary Lite file)")
    ap.add_argument("--kinds", default="HNSW,IVF_FLAT,FLAT", help="Milvus index types to try")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="milvus-index-")
    uri = a.uri or str(Path(tmp) / "bench.db")
    vecs = clustered(a.n, a.dim, 0)
    guilds = np.where(np.arange(a.n) < a.n // 100, 7, 0)  # 1% of the items: one small server
    rows = []
    for kind in a.kinds.split(","):
        name = f"bench_{kind.lower()}"
        store = MilvusStore.create(uri, name, "bench", a.dim, kind)
        t0 = time.perf_counter()
        ids = []
        for lo in range(0, a.n, 2000):
            batch = [NewItem(source=f"/b/{i}", guild_id=int(guilds[i]) or None)
                     for i in range(lo, min(a.n, lo + 2000))]
            ids += store.add(batch, vecs[lo:lo + len(batch)])
        insert_rate = a.n / (time.perf_counter() - t0)
        print(f"{kind}: inserted {a.n} at {insert_rate:,.0f}/s", flush=True)
        ids = np.asarray(ids, dtype=np.int64)
        rng = np.random.default_rng(1)
        pick = rng.choice(a.n, 3 * a.queries, replace=False)
        queries, self_ids, _ = calibration_queries(vecs[pick], ids[pick])
        truth = truth_top10(vecs, ids, queries, self_ids)
        small = np.flatnonzero(guilds == 7)
        sq = vecs[rng.choice(small, a.queries, replace=False)]
        sq_self = np.full(a.queries, -1, dtype=np.int64)
        s_truth = truth_top10(vecs[small], ids[small], sq, sq_self)
        view = store.view(7)
        knobs = {"HNSW": [("ef", v) for v in (16, 32, 64, 128, 256)],
                 "IVF_FLAT": [("nprobe", v) for v in (16, 32, 64, 128)],
                 "FLAT": [(None, None)]}[kind]
        store.search(queries[0], 10)  # first search loads / builds what Lite builds lazily
        for knob, value in knobs:
            params = {} if knob is None else {knob: value}
            r, p50, p99 = measure(store, queries, self_ids, truth, params)
            rf, f50, _ = measure(view, sq, sq_self, s_truth, params)
            rows.append((kind, f"{knob}={value}" if knob else "-", r, p50, p99, rf, f50,
                         insert_rate))
            print(f"| {rows[-1][0]} | {rows[-1][1]} | {r:.3f} | {p50:.1f} | {p99:.1f} | "
                  f"{rf:.3f} | {f50:.1f} | {insert_rate:,.0f} |", flush=True)
        store.close()
    print(f"\nn={a.n} dim={a.dim}, {3 * a.queries} queries (item/blend/off-cone), "
          f"filtered: {a.queries} queries in a guild holding 1% of the items")


if __name__ == "__main__":
    main()
