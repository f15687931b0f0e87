"""Filtered search in the embedded store (issue 12 part 2): exact about the filter, and fast.

    python -m bench.filters                      # N = 100k and 1M, 512-d, 200 queries
    python -m bench.filters --n 100000 --queries 100
    python -m bench.filters --n --milvus 20000 --milvus-queries 50   # Milvus Lite only

For each N: the same synthetic CLIP-like vectors as bench.stores (bench/vectors.py, rounded
through float16 as the store keeps them), the FAISS index the store's `auto` builds and
tunes (bench.search.build_like_store: IVF,SQ8 with nprobe tuned for recall@10 >= 0.95),
and one Discord post per item: a channel (100 channels), an author and a time. Filters
that pass ~10% and ~1% of the items:

- `in:` random: channels drawn at random per item (the filter is unrelated to content);
- `in:` clustered: each item's channel is the nearest of 100 sampled items (a channel is a
  region of the picture space, as #cats is): the hard case for IVF, whose probed lists
  near the query hold few or none of the allowed items;
- `after:`: the newest 10% / 1% by time.

Each query runs unfiltered and filtered back to back (so both see the same load):
unfiltered = `index.search(q, 10)`; filtered = what Collection.search does with a filter
(index/store/filterplan.py): the filter's plan (allowed bitmap; its own IVF lists or its
exact vectors), then the search. "cached": the plan kept from earlier queries, its copies
made, as a repeated filter finds it; "first use, copying (before)": the plan made afresh
for every query and its copies made at once, as main did (the allowed set, and the own
lists or the exact vectors read from a SQLite table of float16 blobs as the store keeps
them; the IVF list of each id, made once per change of the index, is kept); "first use
now": the plan made afresh and its first query answered from the shared lists, nothing
copied (as that query's page turns are). Recall@10 is against the exact float32 top 10 of
the allowed subset (cached and first use copying answer the same, checked). "top-100 then
drop" shows what the naive way would find.

Then, per N, the first filtered search after an append of 1,000 items, 5 times in a row
(`--append-rounds`), on a real SQLite posts table (append_rows): now (the appended posts
read, the kept plans and their copies extended) against before (the posts table read
whole, every plan and the IVF list of each id made again), both answering the same.

    --keep DIR   keep the built indexes and the vector tables in DIR, reuse them next run
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import time
from functools import partial

import numpy as np

from bench.common import header, machine, median, ms, pct, ratio, table
from bench.search import build_like_store
from bench.vectors import Space

K = 10
N_CHANNELS = 100


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1/5/15 min), {os.cpu_count()} cores"


def region_channels(X: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Each item's channel: the nearest of N_CHANNELS sampled items (a region of the space)."""
    centres = X[rng.choice(len(X), N_CHANNELS, replace=False)]
    out = np.empty(len(X), dtype=np.int64)
    for s in range(0, len(X), 100_000):
        out[s:s + 100_000] = np.argmax(X[s:s + 100_000] @ centres.T, axis=1)
    return out


def channels_passing(channel: np.ndarray, share: float) -> frozenset[int]:
    """Channels, taken in a fixed random order, whose items add up to about `share`."""
    counts = np.bincount(channel, minlength=N_CHANNELS)
    want, got, picked = share * len(channel), 0, []
    for c in np.random.default_rng(7).permutation(N_CHANNELS):
        if got >= want:
            break
        if got + counts[c] <= 1.5 * want or not picked:
            picked.append(int(c))
            got += counts[c]
    return frozenset(picked)


def facts_read_seconds(facts) -> float:
    """How long PostFacts.read takes for these posts (an in-memory posts table)."""
    from index.store.filtered import PostFacts
    from index.store.posts import SCHEMA

    conn = sqlite3.connect(":memory:")
    conn.executescript(SCHEMA.replace("REFERENCES items(id)", ""))
    n = len(facts.item)
    conn.executemany(
        "INSERT INTO posts VALUES (?, 1, ?, ?, ?, ?, ?, '', '', ?)",
        ((f"discord:1/{c}/{i}/{i}", int(c), int(i), int(i), int(a), float(t), int(i))
         for i, c, a, t in zip(facts.item, facts.channel, facts.author, facts.posted, strict=True)))
    t0 = time.perf_counter()
    got = PostFacts.read(conn)
    took = time.perf_counter() - t0
    assert len(got) == n
    conn.close()
    return took


def kept_index(X: np.ndarray, factory: str, keep: str | None):
    """build_like_store(X, factory), or the copy a previous run kept in `keep` (the 1M
    IVF build takes most of an hour on this machine); the copy is named by N, dim and
    factory, and the vectors are regenerated from their seed."""
    import json

    import faiss

    n, dim = X.shape
    stem = os.path.join(keep, f"filters-{n}-{dim}-{factory.replace(',', '_')}") if keep else None
    if stem and os.path.exists(stem + ".json"):
        meta = json.load(open(stem + ".json"))
        index = faiss.read_index(stem + ".faiss")
        from index.store import tuning
        tuning.apply_params(index, meta["params"])
        log(f"N={n:,}: {factory} read from {stem}.faiss")
        return index, meta["params"], meta["build_s"]
    log(f"N={n:,}: building {factory} as the store does")
    index, params, build_s = build_like_store(X, factory)
    if stem:
        os.makedirs(keep, exist_ok=True)
        faiss.write_index(index, stem + ".faiss")
        with open(stem + ".json", "w") as f:
            json.dump({"params": params, "build_s": build_s}, f)
    return index, params, build_s


def vector_table(X: np.ndarray, keep: str | None, tmp: str):
    """A SQLite table of X's rows as the store keeps them (float16 blobs, id = row), and
    a function reading some ids' vectors back the way ItemTable.vectors does: what the
    store's exact path reads on a filter's first use."""
    from index.store.items import rows_in

    n, dim = X.shape
    path = os.path.join(keep or tmp, f"filters-{n}-{dim}.sqlite")
    fresh = not os.path.exists(path)
    conn = sqlite3.connect(path, check_same_thread=False)
    if fresh:
        log(f"N={n:,}: writing the vectors to {path}")
        conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, vector BLOB NOT NULL)")
        with conn:
            conn.executemany("INSERT INTO items VALUES (?, ?)",
                             ((i, X[i].astype("<f2").tobytes()) for i in range(n)))

    def vectors(ids: np.ndarray) -> np.ndarray:
        wanted = [int(i) for i in ids]
        found = dict(rows_in(conn, "SELECT id, vector FROM items WHERE id IN (%s)", sorted(wanted)))
        return np.frombuffer(b"".join(found[i] for i in wanted), dtype="<f2").reshape(
            -1, dim).astype(np.float32)

    vectors.conn = conn  # (append_rows adds rows)
    return vectors


def posts_table(path: str, item, channel, author, posted) -> sqlite3.Connection:
    """A posts table as the store's (posts.SCHEMA, in a file, WAL), one post per item."""
    from index.store.posts import SCHEMA

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA.replace("REFERENCES items(id)", ""))
    add_posts(conn, item, channel, author, posted)
    return conn


def add_posts(conn: sqlite3.Connection, item, channel, author, posted) -> None:
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO posts VALUES (?, 1, ?, ?, ?, ?, ?, '', '', ?)",
        ((f"discord:1/{c}/{i}/{i}", int(c), int(i), int(i), int(a), float(t), int(i))
         for i, c, a, t in zip(item, channel, author, posted, strict=True)))
    conn.execute("COMMIT")


def append_rows(n: int, index, params: dict, space: Space, vectors, facts, plain_p50: float,
                tmp: str, rounds: int, size: int = 1000) -> tuple[str, list]:
    """The first filtered search after an append of `size` items, `rounds` times: each
    round appends `size` posts to a real SQLite posts table (n posts before the first),
    their vectors to the vector table and to the index in place, then measures for two
    filters in use (plans kept, copies made by two earlier queries): now, the store's way
    (facts.FactsReader reads the appended posts, FilterCache.appended extends the plans and
    their copies, then the search); before (main), the whole posts table read again, and
    every plan and the IVF list of each id made again (the search makes its copies). Each
    round's query is new to both; their answers must agree."""
    from index.store.facts import FactsReader
    from index.store.filtered import PostFacts, PostFilter
    from index.store.filterplan import FilterCache

    item, channel, author, posted = facts.arrays()
    conn = posts_table(os.path.join(tmp, f"posts-{n}.sqlite"), item, channel, author, posted)
    reader = FactsReader()
    t0 = time.perf_counter()
    reader.refresh(conn)
    whole_s = time.perf_counter() - t0
    filters = [("in: random channels (10%)", PostFilter(channels=channels_passing(channel, 0.10))),
               ("after: newest 1%", PostFilter(since=float(np.quantile(posted, 0.99))))]
    cache = FilterCache()
    cache.index_changed(1)  # (one index throughout: its items are added in place)
    for w in space.queries(2, seed=5)[0]:
        for _, where in filters:
            plan = cache.plan(where, reader.reads, partial(reader.facts.allowed, where))
            cache.search(index, w, K, plan, params, vectors)
    Q, _ = space.queries(rounds, seed=9)
    rng = np.random.default_rng(21)
    t_follow, t_read, t_now, t_before = [], [], {f: [] for f, _ in filters}, {f: [] for f, _ in filters}
    next_id = max(n, int(index.ntotal))
    for r in range(rounds):
        ids = np.arange(next_id, next_id + size, dtype=np.int64)
        next_id += size
        X = space.items(size, seed=100 + r).astype(np.float16).astype(np.float32)
        c_new = rng.integers(0, N_CHANNELS, size)
        t_new = float(posted.max()) + rng.uniform(0, 86400, size)  # the newest posts
        add_posts(conn, ids, c_new, rng.integers(1, 500, size), t_new)
        with vectors.conn:
            vectors.conn.executemany("INSERT OR REPLACE INTO items VALUES (?, ?)",
                                     ((int(i), x.astype("<f2").tobytes()) for i, x in zip(ids, X, strict=True)))
        index.add_with_ids(X, ids)
        q = Q[r]
        # now: the appended posts read, the kept plans extended, then each filter's search
        t0 = time.perf_counter()
        change = reader.refresh(conn)
        assert not change.whole and len(change.appended) == size
        cache.index_changed(1)
        cache.appended(change.appended, index, vectors)
        t_follow.append(time.perf_counter() - t0)
        now = {}
        for name, where in filters:
            t0 = time.perf_counter()
            plan = cache.plan(where, reader.reads, partial(reader.facts.allowed, where))
            now[name] = cache.search(index, q, K, plan, params, vectors)[1]
            t_now[name].append(time.perf_counter() - t0)
        # before (main): the posts read whole, the plans and the IVF list of each id again
        t0 = time.perf_counter()
        whole = PostFacts.read(conn)
        t_read.append(time.perf_counter() - t0)
        old = FilterCache(first_shared=False)
        for name, where in filters:
            t0 = time.perf_counter()
            plan = old.plan(where, 1, partial(whole.allowed, where))
            got = old.search(index, q, K, plan, params, vectors)[1]
            t_before[name].append(time.perf_counter() - t0)
            assert list(got) == list(now[name]), f"an extended plan answered otherwise ({name})"
    rows = []
    for name, _ in filters:
        after = median(t_follow) + median(t_now[name])
        before = median(t_read) + median(t_before[name])
        rows.append([f"{n:,}", name, ms(plain_p50), ms(median(t_read)), ms(median(t_before[name])),
                     ms(before), ratio(before / plain_p50), ms(median(t_follow)),
                     ms(median(t_now[name])), ms(after), ratio(after / plain_p50),
                     ratio(after / before)])
    conn.close()
    note = (f"N={n:,}: appends of {size:,} posts x {rounds} to a SQLite posts table of {n:,}; "
            f"its first whole read {whole_s * 1e3:,.0f} ms; cache: {cache.stats()}; {load()}")
    log(note)
    return note, rows


def run_n(n: int, args, space: Space, tmp: str) -> str:
    import gc

    from index.store import filterplan, tuning
    from index.store.filtered import PostFacts, PostFilter
    from index.store.filterplan import FilterCache, list_of_ids

    log(f"N={n:,}: vectors")
    X = space.items(n, seed=1).astype(np.float16).astype(np.float32)
    Q, _ = space.queries(args.queries, seed=2)
    factory = tuning.choose_factory(n)
    index, params, build_s = kept_index(X, factory, args.keep)
    log(f"N={n:,}: {factory} built in {build_s:.0f} s, params {params}")
    vectors = vector_table(X, args.keep, tmp)
    if args.build_only:
        return f"N={n:,}: {factory} {params} built in {build_s:.0f} s", [], []
    ivf = faiss_ivf(index)
    limit = filterplan.exact_limit(ivf, params) if ivf is not None else 0
    rng = np.random.default_rng(3)
    ids = np.arange(n, dtype=np.int64)
    posted = 1.7e9 + rng.uniform(0, 1000 * 86400, n)
    author = rng.integers(1, 500, n)
    random_channel = rng.integers(0, N_CHANNELS, n)
    region = region_channels(X, rng)
    by_random = PostFacts(ids, random_channel, author, posted)
    by_region = PostFacts(ids, region, author, posted)
    cases = []
    for share in (0.10, 0.01):
        cases.append((f"in: random channels ({share:.0%})", by_random,
                      PostFilter(channels=channels_passing(random_channel, share))))
        cases.append((f"in: clustered channels ({share:.0%})", by_region,
                      PostFilter(channels=channels_passing(region, share))))
        cases.append((f"after: newest {share:.0%}", by_random,
                      PostFilter(since=float(np.quantile(posted, 1 - share)))))
    rows, plain_all, notes_more = [], [], []
    gc.disable()  # a collection pause inside one timed search is not the search's cost
    for name, facts, where in cases:
        allowed = facts.allowed(where)
        keep = allowed.ids()
        truth_scores = Q @ X[keep].T
        truth = keep[np.argsort(-truth_scores, axis=1)[:, :K]]
        keep_set = set(keep.tolist())
        make = partial(facts.allowed, where)
        # cached: the plan kept, with its copies; copied: a first use as before (the copies
        # made at once); first: a first use now (the shared lists, nothing copied)
        cached, copied, first = FilterCache(), FilterCache(first_shared=False), FilterCache()
        warm = space.queries(2, seed=5)[0]
        for c in (cached, copied, first):  # the first uses and the IVF lists: not measured
            for w in warm:  # (two queries: the cached plan makes its copies)
                c.search(index, w, K, c.plan(where, 1, make), params, vectors)
        cached._paths.clear()  # (their stats: the searches measured below)
        first._paths.clear()
        t_plain, t_filt, t_copied, t_first, t_allowed = [], [], [], [], []
        hits, hits1, naive, same = 0, 0, 0, 0
        for qi, q in enumerate(Q):
            t0 = time.perf_counter()
            _, plain = index.search(q[None, :], K)
            t1 = time.perf_counter()
            plan = cached.plan(where, 1, make)
            found = cached.search(index, q, K, plan, params, vectors)
            t2 = time.perf_counter()
            copied.drop_plans()  # a filter not seen before (the IVF list of each id is kept)
            t3 = time.perf_counter()
            plan0 = copied.plan(where, 1, make)
            t4 = time.perf_counter()
            found0 = copied.search(index, q, K, plan0, params, vectors)
            t5 = time.perf_counter()
            first.drop_plans()
            t6 = time.perf_counter()
            found1 = first.search(index, q, K, first.plan(where, 1, make), params, vectors)
            t7 = time.perf_counter()
            t_plain.append(t1 - t0)
            t_filt.append(t2 - t1)
            t_copied.append(t5 - t3)
            t_allowed.append(t4 - t3)
            t_first.append(t7 - t6)
            want = set(truth[qi].tolist())
            got = [int(i) for i in found[1] if i >= 0]
            got1 = [int(i) for i in found1[1] if i >= 0]
            assert set(got) <= keep_set and set(got1) <= keep_set  # only allowed items, ever
            same += got == [int(i) for i in found0[1] if i >= 0]
            hits += len(want & set(got))
            hits1 += len(want & set(got1))
            _, top100 = index.search(q[None, :], 100)
            flags = np.unpackbits(allowed.bits, bitorder="little")
            naive += len(want & {int(i) for i in top100[0] if i >= 0 and flags[i]})
        gc.collect()
        r, r1 = hits / (K * len(Q)), hits1 / (K * len(Q))
        path, path1 = cached.stats(), first.stats()
        plain_p50 = median(t_plain)
        plain_all += t_plain
        rows.append([f"{n:,}", name, f"{allowed.count / n:.1%}", path, ms(plain_p50),
                     ms(median(t_filt)), ms(pct(t_filt, 99)),
                     ratio(median(t_filt) / plain_p50), f"{r:.3f}", ms(median(t_copied)),
                     ms(median(t_allowed)), ratio(median(t_copied) / plain_p50), path1,
                     ms(median(t_first)), ms(pct(t_first, 99)), ratio(median(t_first) / plain_p50),
                     f"{r1:.3f}", f"{naive / (K * len(Q)):.3f}"])
        assert same == len(Q), "a first use with copies answered otherwise than the cached plan"
        log(f"N={n:,} {name}: share {allowed.count / n:.3f} {path} recall {r:.3f} "
            f"p50 {plain_p50 * 1e3:.2f} -> cached {median(t_filt) * 1e3:.2f}, "
            f"first use copying {median(t_copied) * 1e3:.2f}, first use now "
            f"{median(t_first) * 1e3:.2f} ms ({path1}, recall {r1:.3f}); {load()}")
    gc.enable()
    appended = []
    if args.append_rounds:
        plain_p50 = median(plain_all)
        note, appended = append_rows(n, index, params, space, vectors, by_random, plain_p50,
                                     tmp, args.append_rounds)
        notes_more.append(note)
    read_s = facts_read_seconds(by_random)
    lists_s = 0.0
    if ivf is not None:
        t0 = time.perf_counter()
        list_of_ids(ivf)
        lists_s = time.perf_counter() - t0
    note = (f"N={n:,}: index {factory} {params}, built in {build_s:.0f} s; allowed sets of at "
            f"most {limit:,} items are ranked exactly; the IVF list of each id "
            f"(once per change of the index): {lists_s * 1e3:,.0f} ms; reading the post "
            f"facts of {n:,} posts from SQLite (once per change of the posts table): "
            f"{read_s * 1e3:,.0f} ms; {load()} at the end")
    log(note)
    return "\n- ".join([note, *notes_more]), rows, appended


def faiss_ivf(index):
    import faiss

    return faiss.try_extract_index_ivf(index)


def milvus_before(store, q: np.ndarray, k: int, where) -> list[tuple[int, float]]:
    """MilvusStore.search with a filter as it was before `on_row` (main at 2026-12-01 08:00,
    its three calls): every allowed id from the posts collection, a count of the items, and
    the search admitting those ids, ef widened by 1/sqrt(share)."""
    import math

    from index.store.milvus import EF_SEARCH, MAX_TOPK

    allowed = sorted({int(r["item_id"]) for r in store._passing(where)})
    if not allowed:
        return []
    share = max(len(allowed) / max(len(store), 1), 1e-9)
    ef = max(k, min(MAX_TOPK, math.ceil(EF_SEARCH / math.sqrt(share))))
    res = store._client.search(store.name, data=[q.tolist()], limit=k, filter=f"id in {allowed}",
                               output_fields=["id"],
                               search_params={"metric_type": "IP", "params": {"ef": ef}})
    return [(int(h["id"]), float(h["distance"])) for h in (res[0] if res else [])]


def milvus_rows(n: int, nq: int, space: Space, tmp: str) -> tuple[str, list]:
    """A real MilvusStore (Milvus Lite in this process, `auto` = HNSW): n items, each one
    post; then 10% of them posted again (another channel, author and time). Per query, back
    to back: unfiltered and filtered as before `on_row` (milvus_before) on the whole
    collection, filtered as the store does now, and unfiltered and filtered through guild
    1's view (as the bot searches). Recall against the exact filtered top 10."""
    from index.store import NewItem
    from index.store.filtered import PostFilter
    from index.store.milvus import MilvusStore

    X = space.items(n, seed=1).astype(np.float16).astype(np.float32)
    Q, _ = space.queries(nq, seed=2)
    rng = np.random.default_rng(3)
    posted = 1.7e9 + rng.uniform(0, 1000 * 86400, n)
    channel = rng.integers(0, N_CHANNELS, n)
    author = rng.integers(1, 500, n)
    store = MilvusStore.create(f"{tmp}/lite.db", "filters_bench", "bench:synthetic", X.shape[1])
    view = store.view(1)
    t0 = time.perf_counter()
    ids = []
    for s in range(0, n, 2000):
        items = [NewItem(source=f"discord:1/{channel[i] + 1}/{i + 1}/{i + 1}", guild_id=1,
                         channel_id=int(channel[i]) + 1, message_id=i + 1, attachment_id=i + 1,
                         author_id=int(author[i]), posted_at=float(posted[i]),
                         content_hash=f"h{i}") for i in range(s, min(n, s + 2000))]
        ids += store.add(items, X[s:s + 2000])
    add_s = time.perf_counter() - t0
    ids = np.asarray(ids, dtype=np.int64)
    log(f"Milvus Lite N={n:,}: added in {add_s:.0f} s")
    for _ in range(360):  # measure the indexed collection: wait for its HNSW builds
        done = store._client.describe_index(store.name, "vector").get("indexed_rows")
        if done == n:
            break
        time.sleep(5)
    log(f"Milvus Lite N={n:,}: {done:,} rows indexed")
    facts = [(channel, author, posted)]  # each item's posts: (channel, author, time) arrays
    rows, notes = [], []
    for phase in ("one post each", "10% posted twice"):
        if phase != "one post each":
            again = rng.random(n) < 0.10
            rc = rng.integers(0, N_CHANNELS, n)
            ra = rng.integers(1, 500, n)
            rt = 1.7e9 + rng.uniform(0, 1000 * 86400, n)
            picks = np.flatnonzero(again)
            t0 = time.perf_counter()
            for s in range(0, len(picks), 500):
                store.add_posts([NewItem(source=f"discord:1/{rc[i] + 1}/{n + i + 1}/{n + i + 1}",
                                         guild_id=1, channel_id=int(rc[i]) + 1,
                                         message_id=n + i + 1, attachment_id=n + i + 1,
                                         author_id=int(ra[i]), posted_at=float(rt[i]),
                                         content_hash=f"h{i}") for i in picks[s:s + 500]])
            notes.append(f"{len(picks):,} reposts added through add_posts in "
                         f"{time.perf_counter() - t0:.0f} s")
            log(f"Milvus Lite N={n:,}: {notes[-1]}")
            # a repost's facts; -1 / -inf where an item has none
            facts.append((np.where(again, rc, -1), np.where(again, ra, -1),
                          np.where(again, rt, -np.inf)))
        cases = []
        for share in (0.10, 0.01):
            chans = channels_passing(channel, share)
            cases.append((f"in: random channels ({share:.0%})",
                          PostFilter(channels=frozenset(c + 1 for c in chans)),
                          lambda c, a, t, chans=chans: np.isin(c, list(chans))))
        for share in (0.10, 0.01, 0.001):
            since = float(np.quantile(posted, 1 - share))
            cases.append((f"after: newest {share:.1%}", PostFilter(since=since),
                          lambda c, a, t, since=since: t >= since))
        cases.append(("from: one author (~0.2%)", PostFilter(authors=frozenset({int(author[0])})),
                      lambda c, a, t: a == author[0]))
        for name, where, passes in cases:
            keep = np.flatnonzero(np.any([passes(*f) for f in facts], axis=0))
            truth = np.argsort(-(Q @ X[keep].T), axis=1)[:, :K]
            top = min(K, len(keep))  # recall@10 of a filter passing fewer: of all it passes
            times = {k: [] for k in ("plain", "before", "now", "view plain", "view now")}
            hits = {k: 0 for k in ("before", "now", "view now")}
            calls = {"plain": lambda q: store.search(q, K),
                     "before": lambda q, where=where: milvus_before(store, q, K, where),
                     "now": lambda q, where=where: store.search(q, K, where=where),
                     "view plain": lambda q: view.search(q, K),
                     "view now": lambda q, where=where: view.search(q, K, where=where)}
            for call in calls.values():
                call(Q[0])
            for qi, q in enumerate(Q):
                want = set(ids[keep[truth[qi]]].tolist())
                for key, call in calls.items():
                    t0 = time.perf_counter()
                    got = call(q)
                    times[key].append(time.perf_counter() - t0)
                    if key in hits:
                        hits[key] += len(want & {i for i, _ in got})
            for key, how in (("before", "before (main: every allowed id from the posts)"),
                             ("now", "now"), ("view now", "now, through guild 1's view")):
                base = median(times["view plain" if key.startswith("view") else "plain"])
                rows.append([f"{n:,}", f"Milvus Lite HNSW, {phase}: {name}, {how}",
                             f"{len(keep) / n:.1%}", ms(base), ms(median(times[key])),
                             ms(pct(times[key], 99)), ratio(median(times[key]) / base),
                             f"{hits[key] / (top * len(Q)):.3f}", "–"])
            log(f"Milvus Lite N={n:,} {phase}, {name}: share {len(keep) / n:.4f}; p50 ms "
                + ", ".join(f"{k} {median(v) * 1e3:.1f}" for k, v in times.items())
                + "; recall " + ", ".join(f"{k} {v / (top * len(Q)):.3f}" for k, v in hits.items())
                + f"; {load()}")
    store.close()
    return (f"Milvus Lite N={n:,} (in this process, `auto` = HNSW ef 128): added through "
            f"MilvusStore.add in {add_s:.0f} s; {'; '.join(notes)}; {load()} at the end"), rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--keep", metavar="DIR",
                   help="keep the built indexes in DIR and reuse them on the next run")
    p.add_argument("--build-only", action="store_true",
                   help="only build (and --keep) the indexes")
    p.add_argument("--budget-factor", type=float,
                   help="filterplan.BUDGET_FACTOR for this run (to choose it again)")
    p.add_argument("--exact-factor", type=float,
                   help="filterplan.EXACT_FACTOR for this run (0: no exact path)")
    p.add_argument("--own-factor", type=float,
                   help="filterplan.OWN_FACTOR for this run (how far the own lists are probed)")
    p.add_argument("--append-rounds", type=int, default=5, metavar="R",
                   help="rounds of 1,000 items appended, each followed by a filtered search "
                   "(0: none)")
    p.add_argument("--milvus", type=int, nargs="*", default=[], metavar="N",
                   help="also Milvus Lite with N items (slow: ~250 items/s to add)")
    p.add_argument("--milvus-queries", type=int, default=50)
    args = p.parse_args(argv)
    space = Space(args.dim)
    notes, rows, appends = [], [], []
    started = load()
    from index.store import filterplan

    for name in ("budget_factor", "exact_factor", "own_factor"):
        if getattr(args, name) is not None:
            setattr(filterplan, name.upper(), getattr(args, name))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for n in args.n:
            note, r, a = run_n(n, args, space, tmp)
            notes.append(note)
            rows += r
            appends += a
    if args.build_only:
        print("\n".join(notes))
        return 0
    milvus = []
    for n in args.milvus:
        with tempfile.TemporaryDirectory() as tmp:
            note, r = milvus_rows(n, args.milvus_queries, space, tmp)
        notes.append(note)
        milvus += r
    print(header("Filtered search: embedded FAISS (`bench/filters.py`, issue 12 part 2)", argv))
    print(f"At the start: {started}.\n")
    if rows:
        print(table(["N", "filter", "passes", "path", "p50 ms unfiltered",
                     "p50 ms filtered, cached", "p99 ms filtered, cached", "cached / unfiltered (p50)",
                     "recall@10 cached", "p50 ms first use, copying (before)",
                     "of which allowed set", "first use copying / unfiltered (p50)",
                     "first use now: path", "p50 ms first use now", "p99 ms first use now",
                     "first use now / unfiltered (p50)", "recall@10 first use now",
                     "top-100 then drop: recall@10"], rows))
    if appends:
        print()
        print(table(["N", "filter in use", "p50 ms unfiltered", "before: posts read whole, ms",
                     "before: plan + search, ms", "before: first search after the append, ms",
                     "before / unfiltered", "now: appended posts read, plans extended, ms",
                     "now: search, ms", "now: first search after the append, ms",
                     "now / unfiltered", "now / before"], appends))
    if milvus:
        print()
        print(table(["N", "filter", "passes", "p50 ms unfiltered", "p50 ms filtered",
                     "p99 ms filtered", "filtered / unfiltered (p50)", "recall@10",
                     "top-100 then drop: recall@10"], milvus))
    print()
    for note in notes:
        print(f"- {note}")
    print()
    print(machine())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
