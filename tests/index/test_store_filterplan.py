"""index/store/filterplan.py: filtered search is exact about the filter on every path, and
what a filter costs is kept until the collection changes."""

from __future__ import annotations

import numpy as np
import pytest
from storekit import DIM, MODEL, clustered, rand_vecs, unit

from index.store import Collection, NewItem, filterplan
from index.store.faissindex import make_index
from index.store.filtered import Allowed, PostFacts, PostFilter
from index.store.filterplan import FilterCache, exact_limit

N, D = 3000, 32
G = 7


@pytest.fixture(scope="module")
def space():
    x = clustered(N, D, seed=4, n_clusters=30)
    x = x.astype(np.float16).astype(np.float32)  # as the store keeps vectors
    centre = x[0]
    region = np.argsort(-(x @ centre))[: N // 10]  # a channel that is a region of the space
    far = unit(-centre)  # a query far from that region
    return x, region, far


def ivf(x: np.ndarray, factory: str = "IVF16,Flat"):
    index = make_index(x.shape[1], factory)
    index.train(x)
    index.add_with_ids(x, np.arange(len(x), dtype=np.int64))
    return index


def allowed_of(ids: np.ndarray, n: int = N) -> Allowed:
    flags = np.zeros(n, dtype=bool)
    flags[ids] = True
    return Allowed.of(flags, ids)


def copying() -> FilterCache:
    """A cache whose every search uses the plan's copies (own lists, exact vectors), a
    filter's first search included."""
    return FilterCache(first_shared=False)


def brute(x: np.ndarray, q: np.ndarray, ids: np.ndarray, k: int) -> list[int]:
    return [int(i) for i in ids[np.argsort(-(x[ids] @ q), kind="stable")[:k]]]


def search(cache, index, x, q, k, ids, params):
    plan = cache.plan(PostFilter(), 1, lambda: allowed_of(ids))
    scores, got = cache.search(index, q, k, plan, params, lambda i: x[i])
    return [int(i) for i in got if i >= 0], scores


def test_every_path_returns_the_exact_top_of_the_allowed_items(space, monkeypatch):
    """Flat, the exact scan of a small allowed set, the allowed codes' own lists and the
    budgeted walk of the shared lists: each equals a brute force over the allowed items
    when it covers them all, and never returns an item the filter does not allow."""
    x, region, far = space
    rng = np.random.default_rng(1)
    spread = np.sort(rng.choice(N, 600, replace=False))
    flat = make_index(D, "Flat")
    flat.add_with_ids(x, np.arange(N, dtype=np.int64))
    index = ivf(x)
    every = {"nprobe": 16}  # every list: the IVF paths are then exhaustive
    for ids in (spread, np.sort(region)):
        for q in (x[5], far, unit(x[3] + x[900])):
            want = brute(x, q, ids, 10)
            cases = {  # name: cache, index, params, allowed sets ranked exactly up to (x scan)
                "flat": (FilterCache(), flat, {}, 1.0),
                "exact": (copying(), index, {"nprobe": 4}, 1.0),  # 600 <= 4/16 of N
                "own lists": (copying(), index, every, 0.0),
                "budget": (FilterCache(memory=0), index, every, 0.0),  # no room for own lists
            }
            for name, (cache, idx, params, exact) in cases.items():
                monkeypatch.setattr(filterplan, "EXACT_FACTOR", exact)
                got, scores = search(cache, idx, x, q, 10, ids, params)
                assert got == want, name
                assert np.allclose(scores, x[want] @ q, atol=1e-4), name
                path = cache.stats()
                assert path.startswith({"flat": "IndexFlat", "exact": "exact",
                                        "own lists": "own lists", "budget": "IVF"}[name]), path


def test_a_clustered_filter_far_from_the_query_still_finds_its_best_items(space, monkeypatch):
    """The allowed items are one region of the space and the query looks elsewhere: the
    lists nearest the query hold none of them. With the tuned nprobe (a few lists), the
    filtered search still returns 10 allowed items, nearly all of the exact top 10."""
    x, region, far = space
    index = ivf(x)
    ids = np.sort(region)
    monkeypatch.setattr(filterplan, "EXACT_FACTOR", 0.0)  # not ranked exactly
    for cache in (copying(), FilterCache(memory=0)):  # own lists; budgeted walk
        hits = 0
        for q in (far, unit(far + x[100]), unit(-x[200])):
            got, _ = search(cache, index, x, q, 10, ids, {"nprobe": 2})
            assert len(got) == 10 and set(got) <= set(ids.tolist())
            hits += len(set(got) & set(brute(x, q, ids, 10)))
        assert hits >= 27, cache.stats()


def test_deeper_pages_come_from_the_same_ranking(space, monkeypatch):
    """A deeper page scans the same lists as the first (with the tuned nprobe, not all of
    them): it reads further down the same ranking, so pages neither repeat nor skip."""
    x, region, far = space
    monkeypatch.setattr(filterplan, "EXACT_FACTOR", 0.0)
    index = ivf(x)
    for ids in (np.sort(np.random.default_rng(2).choice(N, 1500, replace=False)),
                np.sort(region)):
        for q in (x[42], far):
            for cache in (copying(), FilterCache(memory=0)):  # own lists; shared lists
                ranked = {depth: search(cache, index, x, q, depth, ids, {"nprobe": 1})[0]
                          for depth in (5, 10, 20, 40)}
                assert len(set(ranked[40])) == 40, cache.stats()
                for depth in (5, 10, 20):
                    assert ranked[depth] == ranked[40][:depth], (cache.stats(), depth)


def test_own_lists_filled_as_searches_reach_them_answer_as_a_fresh_plan(space, monkeypatch):
    """A plan's own lists are copied as searches reach them: the tenth query of a plan,
    whose lists were partly copied by nine others, answers as a fresh plan does."""
    x, region, far = space
    monkeypatch.setattr(filterplan, "EXACT_FACTOR", 0.0)
    index = ivf(x)
    ids = np.sort(np.concatenate([region, np.arange(0, N, 7)]))
    kept = copying()
    queries = [far, *(x[i] for i in range(100, 1000, 100))]
    for q in queries:
        got, _ = search(kept, index, x, q, 10, ids, {"nprobe": 2})
        fresh, _ = search(copying(), index, x, q, 10, ids, {"nprobe": 2})
        assert got == fresh and len(got) == 10


def test_copies_beyond_the_memory_bound_evict_the_oldest_and_answers_stay_exact(
    space, monkeypatch
):
    """Room for one filter's own lists: a second filter's copy evicts the first's; the
    first, asked again, makes its copy again (or walks the shared lists) and answers the
    same."""
    x, _, far = space
    monkeypatch.setattr(filterplan, "EXACT_FACTOR", 0.0)
    index = ivf(x)
    rng = np.random.default_rng(7)
    sets = [np.sort(rng.choice(N, 1000, replace=False)) for _ in range(2)]
    one = 1000 * (index.code_size + 8)
    cache = FilterCache(memory=one + one // 2, first_shared=False)
    where = [PostFilter(channels=frozenset({i})) for i in range(2)]

    def ask(i):
        plan = cache.plan(where[i], 1, lambda: allowed_of(sets[i]))
        _, got = cache.search(index, far, 10, plan, {"nprobe": 16}, lambda ids: x[ids])
        return plan, [int(g) for g in got]

    first, before = ask(0)
    assert first.own is not None
    second, other = ask(1)
    assert second.own is not None and first.own is None  # evicted: both would not fit
    assert other == brute(x, far, sets[1], 10)
    again, after = ask(0)
    assert again is first and after == before == brute(x, far, sets[0], 10)


def test_a_plan_is_made_once_per_filter_and_version_and_few_are_kept():
    made = []

    def make(tag):
        def build():
            made.append(tag)
            return allowed_of(np.array([1, 2, 3]))
        return build

    cache = FilterCache(plans=2)
    a, b, c = (PostFilter(channels=frozenset({i})) for i in (1, 2, 3))
    first = cache.plan(a, 1, make("a"))
    assert cache.plan(a, 1, make("a")) is first  # a page turn: nothing again
    cache.plan(b, 1, make("b"))
    cache.plan(c, 1, make("c"))  # three filters, two kept: a (least recent) goes
    cache.plan(c, 1, make("c"))
    cache.plan(a, 1, make("a"))
    cache.plan(a, 2, make("a"))  # the collection changed: made again
    assert made == ["a", "b", "c", "a", "a"]


def test_an_ivf_exact_limit_follows_the_codes_an_unfiltered_search_scans(space):
    x, _, _ = space
    index = ivf(x)
    assert exact_limit(index, {"nprobe": 4}) == pytest.approx(4 * N / 16, abs=1)


def test_building_the_allowed_set_is_the_same_with_many_spans():
    """Authors (hundreds of spans in the sorted posts) and channels give the same
    items as a plain loop over the posts."""
    rng = np.random.default_rng(5)
    n = 5000
    item = rng.integers(0, 3000, n)
    channel, author = rng.integers(0, 50, n), rng.integers(0, 400, n)
    posted = rng.uniform(0, 100, n)
    facts = PostFacts(item, channel, author, posted)
    authors = frozenset(int(a) for a in rng.choice(400, 150, replace=False))
    where = PostFilter(channels=frozenset({1, 2, 3, 40}), authors=authors, since=20.0, until=80.0)
    ok = [(c in where.channels and a in authors and 20.0 <= t < 80.0)
          for c, a, t in zip(channel, author, posted, strict=True)]
    want = np.unique(item[np.array(ok)])
    got = facts.allowed(where)
    assert got.count == len(want) and np.array_equal(got.ids(), want)
    assert np.array_equal(Allowed(got.bits, got.count).ids(), want)  # from the bitmap alone


# -- through a Collection ----------------------------------------------------------------


def post(i: int, channel: int) -> NewItem:
    return NewItem(source=f"discord:{G}/{channel}/{1000 + i}/{5000 + i}", guild_id=G,
                   channel_id=channel, message_id=1000 + i, attachment_id=5000 + i,
                   author_id=40, posted_at=1.7e9 + i, content_hash=f"h{i}")


@pytest.mark.parametrize("index_type,exact", [("Flat", 1.0), ("IVF8,Flat", 1.0),
                                               ("IVF8,Flat", 0.0)])
def test_a_filtered_search_follows_new_and_forgotten_posts_and_pages_consistently(
    tmp_path, monkeypatch, index_type, exact
):
    monkeypatch.setattr(filterplan, "EXACT_FACTOR", exact)  # 0: the allowed codes' own lists
    vecs = rand_vecs(400, seed=9)
    vecs = vecs.astype(np.float16).astype(np.float32)
    where = PostFilter(channels=frozenset({2}))
    with Collection.create(tmp_path / "c", MODEL, DIM, index_type) as c:
        ids = c.add([post(i, 1 + i % 4) for i in range(400)], vecs)
        assert index_type.split(",")[0] in c.index_description
        q = unit(vecs[3] + vecs[4])  # items of channels 4 and 1

        def exact() -> list[int]:
            inside = [ids[i] for i in range(400) if 1 + i % 4 == 2]
            return sorted(inside, key=lambda i: -float(vecs[ids.index(i)] @ q))

        def pages() -> list[int]:
            got = []
            for page in range(3):
                got += [i for i, _ in c.search(q, 5, offset=5 * page, where=where)]
            return got

        assert pages() == exact()[:15]
        # the best match of all, posted again in channel 2: in the very next search
        best = max(range(400), key=lambda i: float(vecs[i] @ q))
        assert 1 + best % 4 != 2
        c.add_posts([NewItem(source=f"discord:{G}/2/9000/9001", guild_id=G, channel_id=2,
                             message_id=9000, attachment_id=9001, content_hash=f"h{best}")])
        assert c.search(q, 1, where=where)[0][0] == ids[best]
        # that post forgotten: gone again; the best of channel 2 forgotten: gone too
        c.forget_posts(guild_id=G, message_ids=[9000])
        top = exact()[0]
        assert c.search(q, 1, where=where)[0][0] == top
        i = ids.index(top)
        c.forget_posts(guild_id=G, message_ids=[1000 + i])
        assert top not in [h for h, _ in c.search(q, 50, where=where)]
        assert pages() == exact()[1:16]


# -- a filter's first search; posts appended to a kept plan --------------------------------


def test_a_filters_first_query_copies_nothing_and_every_query_pages_on_one_path(
    space, monkeypatch
):
    """A filter's first search walks the shared lists with the selector (no own lists, no
    exact vectors copied); a second query makes the copies. Each query's pages come from
    the path its first page took, even after the plan was evicted and made again, so
    pages neither repeat nor skip an item (the shared walk is made coarse here, so that
    the two paths rank differently). A page turn's query may differ in its last bits
    (the engine encodes it again): it is the same query."""
    x, region, far = space
    index = ivf(x)
    monkeypatch.setattr(filterplan, "BUDGET_FLOOR", 1)
    monkeypatch.setattr(filterplan, "MORE_FACTOR", 0.0)
    spread = np.sort(np.random.default_rng(1).choice(N, 600, replace=False))
    cases = (  # EXACT_FACTOR, allowed, nprobe, query A (the first), query B
        (0.0, np.sort(np.concatenate([region, np.arange(0, N, 5)])), 1, unit(x[3] + x[900]), far),
        (1.0, spread, 4, far, unit(x[5] - x[0])),
    )
    where = PostFilter(channels=frozenset({1}))
    for exact, ids, nprobe, a, b in cases:
        monkeypatch.setattr(filterplan, "EXACT_FACTOR", exact)
        params = {"nprobe": nprobe}

        def ranked(cache, q, depth, ids=ids, params=params):
            plan = cache.plan(where, 1, lambda: allowed_of(ids))
            return plan, [int(i) for i in cache.search(index, q, depth, plan, params,
                                                         lambda i: x[i])[1]]

        shared, copied = ranked(FilterCache(), a, 15)[1], ranked(copying(), a, 15)[1]
        assert shared != copied  # else this proves nothing
        cache = FilterCache(plans=1)
        plan, a1 = ranked(cache, a, 5)
        assert cache.stats().startswith("IVF") and plan.own is None and plan.exact is None
        b1 = ranked(cache, b, 5)[1]
        assert plan.own is not None or plan.exact is not None  # the second query copies
        again = a * np.float32(1 + 1e-7) + np.float32(1e-8)  # encoded again
        assert not np.array_equal(again, a)
        a2 = ranked(cache, again, 10)[1][5:]
        cache.plan(PostFilter(channels=frozenset({2})), 1, lambda s=ids: allowed_of(s))  # evicts
        a3 = ranked(cache, a, 15)[1][10:]
        b2 = ranked(cache, b, 10)[1][5:]
        assert a1 + a2 + a3 == shared and len(set(shared)) == 15, exact
        assert b1 + b2 == ranked(copying(), b, 10)[1], exact


def test_items_appended_join_a_kept_plan_and_its_copies(space, monkeypatch):
    """Items added to the index in place, and posts that let them (and an old item)
    through: a kept plan, its own lists (copied in part) or its exact vectors extended,
    answers as a plan made afresh over all the items."""
    x, region, far = space
    rng = np.random.default_rng(11)
    extra = unit(x[rng.choice(N, 300)] + 0.3 * rng.standard_normal((300, D)))
    extra = extra.astype(np.float16).astype(np.float32)
    every = np.concatenate([x, extra])
    ids = np.sort(rng.choice(N, 900, replace=False))
    new_ids = np.arange(N, N + 300, dtype=np.int64)
    gained = np.concatenate([new_ids[::2], [int(np.setdiff1d(np.arange(N), ids)[0])]])
    where = PostFilter(channels=frozenset({1}))
    for exact, params in ((0.0, {"nprobe": 2}), (1.0, {"nprobe": 8})):
        monkeypatch.setattr(filterplan, "EXACT_FACTOR", exact)
        index = ivf(x)
        cache = copying()
        plan = cache.plan(where, 1, lambda: allowed_of(ids))
        cache.search(index, far, 10, plan, params, lambda i: every[i])  # copies part
        copied = plan.own is not None or plan.exact is not None
        index.add_with_ids(extra, new_ids)
        facts = PostFacts(gained, np.ones(len(gained)), np.ones(len(gained)), np.ones(len(gained)))
        cache.appended(facts, index, lambda i: every[i])
        assert cache.plan(where, 1, lambda: None) is plan and copied
        union = np.union1d(ids, gained)
        for q in (far, extra[0], extra[2], every[gained[-1]], x[7]):
            _, got = cache.search(index, q, 10, plan, params, lambda i: every[i])
            fresh = copying()
            p2 = fresh.plan(where, 1, lambda u=union: allowed_of(u, N + 300))
            _, want = fresh.search(index, q, 10, p2, params, lambda i: every[i])
            assert list(got) == list(want), exact
            assert set(got.tolist()) <= set(union.tolist())
        _, top = cache.search(index, extra[0], 1, plan, params, lambda i: every[i])
        assert int(top[0]) == N  # the appended item that is the query itself
        assert cache.stats().startswith("exact" if exact else "own lists")


@pytest.mark.parametrize("exact", [1.0, 0.0])
def test_an_item_appended_after_a_plan_was_made_is_found_by_the_next_filtered_search(
    tmp_path, monkeypatch, exact
):
    """Appends (this process's, then another connection's on the same folder) keep the
    post facts and the plan, extended: the new item of the filter's channel is the next
    search's best match; an item removed, or a post forgotten, leaves it at once."""
    monkeypatch.setattr(filterplan, "EXACT_FACTOR", exact)  # 0: the allowed codes' own lists
    vecs = rand_vecs(403, seed=12).astype(np.float16).astype(np.float32)
    where = PostFilter(channels=frozenset({2}))
    path = tmp_path / "c"
    with Collection.create(path, MODEL, DIM, "IVF8,Flat") as c:
        ids = c.add([post(i, 1 + i % 4) for i in range(400)], vecs[:400])
        for i in (3, 9):  # two queries: the plan has its copies
            c.search(vecs[i], 5, where=where)
        plan = c._filters.plan(where, c._facts.reads, lambda: None)
        assert plan.own is not None or plan.exact is not None

        new = c.add([post(400, 2)], vecs[400:401])[0]  # ours
        assert c.search(vecs[400], 1, where=where)[0][0] == new
        assert c._facts.reads == 1 and c._filters.plan(where, 1, lambda: None) is plan
        with Collection.open(path, MODEL) as other:  # another connection's append
            theirs = other.add([post(401, 2), post(402, 3)], vecs[401:403])
        assert c.search(vecs[401], 1, where=where)[0][0] == theirs[0]
        assert theirs[1] not in [h for h, _ in c.search(vecs[402], 200, where=where)]
        assert c._facts.reads == 1  # only the appended posts were read
        # removals take effect at once: ours, then theirs
        c.remove([new])
        assert new not in [h for h, _ in c.search(vecs[400], 200, where=where)]
        with Collection.open(path, MODEL) as other:
            other.forget_posts(guild_id=G, message_ids=[1401])
        assert theirs[0] not in [h for h, _ in c.search(vecs[401], 200, where=where)]
        top = c.search(vecs[3], 3, where=where)
        inside = [ids[i] for i in range(400) if i % 4 == 1]
        assert [h for h, _ in top] == sorted(
            inside, key=lambda i: -float(vecs[ids.index(i)] @ vecs[3]))[:3]


def test_a_post_recorded_again_with_other_facts_is_seen_by_the_next_search(tmp_path):
    """Recording a post again replaces its row (not an append): the facts are read again
    and the kept plan of the old author no longer lets the item through."""
    vecs = rand_vecs(20, seed=13)
    sam, kim = PostFilter(authors=frozenset({40})), PostFilter(authors=frozenset({41}))
    with Collection.create(tmp_path / "c", MODEL, DIM, "Flat") as c:
        ids = c.add([post(i, 1) for i in range(20)], vecs)
        assert len(c.search(vecs[3], 50, where=sam)) == 20
        again = post(3, 1)
        again.author_id = 41
        c.add_posts([again])
        assert ids[3] not in [h for h, _ in c.search(vecs[3], 50, where=sam)]
        assert [h for h, _ in c.search(vecs[3], 50, where=kim)] == [ids[3]]
        assert c._facts.reads == 2


def test_a_plan_whose_allowed_set_outgrows_the_exact_path_answers_from_own_lists(
    space, monkeypatch
):
    """Appended posts carry a kept plan past the exact path: its next search makes the
    own lists (freeing the exact vectors) and answers as a plan made afresh."""
    x, _, far = space
    monkeypatch.setattr(filterplan, "EXACT_FACTOR", 1.0)
    index = ivf(x)
    params = {"nprobe": 4}  # exact up to 750 allowed items
    small = np.arange(0, N, 6)  # 500
    more = np.arange(1, N, 6)  # 500 more: 1000 in all
    cache = copying()
    where = PostFilter(channels=frozenset({1}))
    plan = cache.plan(where, 1, lambda: allowed_of(small))
    cache.search(index, far, 10, plan, params, lambda i: x[i])
    assert plan.exact is not None and cache.stats() == "exact"
    cache.appended(PostFacts(more, np.ones(500), np.ones(500), np.ones(500)), index,
                   lambda i: x[i])
    assert plan.allowed.count == 1000
    _, got = cache.search(index, far, 10, plan, params, lambda i: x[i])
    assert plan.own is not None and plan.exact is None
    assert plan.held == 1000 * (index.code_size + 8)
    both = np.union1d(small, more)
    fresh = copying()
    _, want = fresh.search(index, far, 10, fresh.plan(where, 1, lambda: allowed_of(both)),
                           params, lambda i: x[i])
    assert list(got) == list(want) and "own lists" in cache.stats()
