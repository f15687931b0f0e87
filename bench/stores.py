"""The two stores side by side: embedded FAISS (`Collection`, index `auto`) vs Milvus (`MilvusStore`).

    python -m bench.stores                                  # N = 100k and 1M, 512-d
    python -m bench.stores --n 100000 --milvus-queries 100
    python -m bench.stores --n 1000000 --milvus-queries 40 --milvus-ef 128

Same process, same vectors (bench/vectors.py, rounded through float16 as both stores keep
them), same queries, for each N:

- baseline: numpy float32 scan + argpartition (the issue's 40x target is against it);
- FAISS: a real Collection (SQLite + FAISS): add in 10k batches, save() (builds `auto`),
  then reopened from disk and searched through Collection.search;
- Milvus: a real MilvusStore against a `milvus-lite server` subprocess on 127.0.0.1 (what
  stands in for a Milvus server here; its memory is its own process's): add in 10k batches
  through MilvusStore.add, flush, the server restarted (so that its background compaction
  and index builds are finished and every segment is indexed), then searched through
  MilvusStore.search with each --milvus-ef (HNSW) / --milvus-nprobe (IVF_FLAT).

Reported: p50/p99 latency of single queries (one query per call, as the bot asks), recall@10
against exact float32 search, insert rate (items/s through the store's add), the time to
index (FAISS: save(); Milvus: flush + restart + load), memory (FAISS: the RSS a freshly
opened collection adds to the process, after its searches; Milvus: the server process's
RSS after the searches) and files on disk.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, header, machine, median, ms, pct, ratio, table
from bench.liteserver import LiteServer
from bench.search import K, exact_topk, numpy_fp32, per_query, recall
from bench.vectors import Space

BATCH = 10_000
MODEL = "bench:synthetic"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def disk_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def _items(start: int, n: int):
    from index.store import NewItem
    return [NewItem(source=f"/bench/{i}.jpg", title=f"item {i}") for i in range(start, start + n)]


def faiss_row(X: np.ndarray, Q: np.ndarray, truth: np.ndarray, tmp: Path, rounds: int):
    from index.store import Collection

    n, dim = X.shape
    path = tmp / "faiss"
    with Collection.create(path, MODEL, dim) as c:
        t0 = time.perf_counter()
        for s in range(0, n, BATCH):
            c.add(_items(s, min(BATCH, n - s)), X[s:s + BATCH])
        added = time.perf_counter() - t0
        t0 = time.perf_counter()
        c.save()
        built = time.perf_counter() - t0
    with Collection.open(path) as c:
        ids = c.ids()
        first = int(ids[0])

        def search(q: np.ndarray) -> np.ndarray:
            return np.array([i - first for i, _ in c.search(q, K)])

        times, found = per_query(search, Q, rounds)
        desc = c.index_description
    mem, mem_total = fresh_process_rss(path, Q[0])
    disk = disk_mib(path)
    shutil.rmtree(path, ignore_errors=True)
    return {"name": f"**embedded FAISS `auto`: {desc}**", "times": times,
            "recall": recall(found, truth), "insert": n / added, "index_s": built,
            "rss": mem, "rss_note": f"added to a fresh process, {mem_total:,.0f} in all",
            "disk": disk, "nq": len(Q)}


_RSS_PROBE = """
import sys, numpy as np
from bench.stores import rss_mib
from index.store import Collection
q = np.load(sys.argv[2])
before = rss_mib()
with Collection.open(sys.argv[1]) as c:
    c.search(q, 10)
    print(rss_mib() - before, rss_mib())
"""


def fresh_process_rss(path: Path, q: np.ndarray) -> tuple[float, float]:
    """(MiB a freshly opened collection adds to a process after one search, that process's RSS)."""
    qf = path.parent / "q.npy"
    np.save(qf, q)
    out = subprocess.run([sys.executable, "-c", _RSS_PROBE, str(path), str(qf)], check=True,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    added, total = map(float, out.stdout.split())
    return added, total


def milvus_rows(X: np.ndarray, Q: np.ndarray, truth: np.ndarray, tmp: Path, args,
                index_type: str) -> tuple[list[dict], str]:
    from pymilvus import MilvusClient

    from index.store.milvus import INDEX_TYPES, MilvusStore, item_id

    n, dim = X.shape
    data = tmp / "milvus-data"
    server = LiteServer(data, log=data.with_suffix(".log"))
    uri = server.start()
    name = "bench"
    through_store = min(n, args.milvus_store_adds or n)
    note = ""
    try:
        with MilvusStore.create(uri, name, MODEL, dim, index_type) as m:
            t0 = time.perf_counter()
            for s in range(0, through_store, BATCH):
                m.add(_items(s, min(BATCH, through_store - s)), X[s:min(s + BATCH, through_store)])
                if s and s % 100_000 == 0:
                    log(f"milvus: {s:,} added, {s / (time.perf_counter() - t0):,.0f}/s")
            added = time.perf_counter() - t0
            kind = m._kind
            if through_store < n:
                # the rest as the rows MilvusStore.add writes, inserted by the client directly
                # (MilvusStore.add looks every id up first: too slow for 1M on this machine)
                log(f"milvus: {through_store:,} added through the store; the rest by insert")
                client = MilvusClient(uri=uri)
                t1 = time.perf_counter()
                now = time.time()
                for s in range(through_store, n, BATCH):
                    batch = _items(s, min(BATCH, n - s))
                    vecs = m._prepare_vectors(X[s:s + BATCH], len(batch))
                    rows = [dict(m._row(it), id=item_id(it.source), added_at=now,
                                 vector=v.tolist()) for it, v in zip(batch, vecs, strict=True)]
                    client.insert(name, rows, timeout=3600)
                    if s % 100_000 == 0:
                        log(f"milvus: {s:,} inserted")
                bulk = time.perf_counter() - t1
                client.close()
                note = (f"Milvus at N = {n:,}: the first {through_store:,} items went through "
                        f"MilvusStore.add ({through_store / added:,.0f}/s, the insert rate in the "
                        f"table); the other {n - through_store:,} as the same rows through "
                        f"MilvusClient.insert ({(n - through_store) / bulk:,.0f}/s), because "
                        f"MilvusStore.add looks up every id first and would have taken "
                        f"{n / (through_store / added) / 60:.0f} min here. Searches go through "
                        f"MilvusStore.search.")
        log("milvus: flush, restart, load")
        t0 = time.perf_counter()
        client = MilvusClient(uri=uri)
        client.flush(name, timeout=3600)
        client.close()
        server.stop(timeout=3600)  # waits for the background compaction + index builds
        uri = server.start()
        client = MilvusClient(uri=uri)
        client.load_collection(name, timeout=3600)
        client.close()
        indexed = time.perf_counter() - t0
        log(f"milvus: indexed in {indexed:.0f} s")
        rows = []
        qs, tq = Q[: args.milvus_queries], truth[: args.milvus_queries]
        knob = "ef" if kind == "HNSW" else "nprobe" if kind == "IVF_FLAT" else None
        values = (args.milvus_ef if knob == "ef" else args.milvus_nprobe if knob else [None])
        default = INDEX_TYPES[index_type][2]
        with MilvusStore.open(uri, name) as m:
            # MilvusStore ids are hashes of the source: map them back to row numbers
            by_id = {item_id(f"/bench/{i}.jpg"): i for i in range(n)}
            assert len(m) == n and len(by_id) == n
            for v in values:
                if knob:
                    m._search_params = {knob: v}

                def search(q: np.ndarray) -> np.ndarray:
                    return np.array([by_id[i] for i, _ in m.search(q, K)])

                log(f"milvus: searching {kind} {knob}={v}")
                times, found = per_query(search, qs, 1)
                mark = " (MilvusStore's default)" if knob and default.get(knob) == v else ""
                rows.append({"name": f"Milvus Lite {kind}" + (f", {knob}={v}{mark}" if knob else ""),
                             "times": times, "recall": recall(found, tq),
                             "insert": through_store / added, "index_s": indexed,
                             "rss_note": "the server process", "disk": disk_mib(data),
                             "nq": len(qs)})
        for r in rows:  # the server's RSS after every search
            r["rss"] = rss_mib(server.proc.pid)
        return rows, note
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


def _brief(r: dict, base: float) -> str:
    """A measured row on one log line (kept if the run dies before its table)."""
    p50 = median(r["times"])
    return (f"{r['name']}: p50 {ms(p50)} ms, p99 {ms(pct(r['times'], 99))} ms, recall@10 "
            f"{r['recall']:.3f}, insert {r['insert'] or 0:,.0f}/s, index {r['index_s']:.0f} s, "
            f"memory {r.get('rss', float('nan')):,.0f} MiB ({r['rss_note']}), disk "
            f"{r['disk'] or 0:,.0f} MiB, {base / p50:.1f}x numpy f32")


def run_n(n: int, args, space: Space) -> str:
    log(f"N={n:,}: making vectors")
    X = space.items(n, seed=1).astype(np.float16).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    X = X.astype(np.float16).astype(np.float32)  # exactly what both stores keep
    Q, kinds = space.queries(args.queries, seed=2)
    truth = exact_topk(X, Q)
    t32, f32 = per_query(numpy_fp32(X), Q[: args.slow_queries], 1)
    base = median(t32)
    rows = [{"name": "numpy float32 scan + argpartition (baseline)", "times": t32,
             "recall": recall(f32, truth), "insert": None, "index_s": 0.0,
             "rss": X.nbytes / 2**20, "rss_note": "the matrix", "disk": None, "nq": len(t32)}]
    tmp = Path(tempfile.mkdtemp(prefix="clipfind-bench-stores-", dir=args.tmp))
    try:
        if not args.no_faiss:
            log("faiss: Collection")
            rows.append(faiss_row(X, Q, truth, tmp, args.rounds))
            log(f"row: {_brief(rows[-1], base)}")
        notes = []
        for index_type in [] if args.no_milvus else args.milvus_index:
            got, note = milvus_rows(X, Q, truth, tmp, args, index_type)
            rows += got
            for r in got:
                log(f"row: {_brief(r, base)}")
            notes += [note] if note else []
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out = [f"### N = {n:,} × {X.shape[1]}, k = {K}\n",
           f"Queries: {args.queries} for FAISS ({args.rounds} rounds), the first "
           f"{args.milvus_queries} for Milvus, the first {len(t32)} for numpy (image/blend/text "
           "thirds); one query per call. Recall@10 against exact float32 search on the same "
           "float16-rounded vectors.\n"]
    body = []
    for r in rows:
        p50 = median(r["times"])
        body.append([r["name"], str(r["nq"]), ms(p50), ms(pct(r["times"], 99)),
                     f"{r['recall']:.3f}",
                     f"{r['insert']:,.0f}" if r["insert"] else "–",
                     f"{r['index_s']:.0f}" if r["index_s"] else "–",
                     f"{r['rss']:,.0f} ({r['rss_note']})",
                     f"{r['disk']:,.0f}" if r["disk"] is not None else "–",
                     ratio(base / p50)])
    out.append(table(("store / index", "queries", "p50 ms", "p99 ms", "recall@10",
                      "insert items/s", "index s", "memory MiB", "disk MiB",
                      "speed vs numpy f32 (p50)"), body))
    out.extend(f"\n{x}" for x in notes)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stores", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=2, help="FAISS latency passes")
    ap.add_argument("--slow-queries", type=int, default=50, help="queries for the numpy scan")
    ap.add_argument("--milvus-queries", type=int, default=100)
    ap.add_argument("--milvus-index", nargs="+", default=["auto"],
                    help="MilvusStore index types (auto = HNSW, IVF_FLAT, FLAT), one collection each")
    ap.add_argument("--milvus-store-adds", type=int, default=0,
                    help="items added through MilvusStore.add (0: all); the rest by client insert")
    ap.add_argument("--milvus-ef", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--milvus-nprobe", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--no-faiss", action="store_true")
    ap.add_argument("--no-milvus", action="store_true")
    ap.add_argument("--tmp", default=None, help="folder for the collections (default: $TMPDIR)")
    args = ap.parse_args(argv)
    print(header("Stores: embedded FAISS vs Milvus Lite", argv))
    print(machine() + "\n")
    space = Space(args.dim, seed=0)
    for n in args.n:
        print(run_n(n, args, space), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    sys.exit(main())
