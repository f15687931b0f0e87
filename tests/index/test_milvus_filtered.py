"""index/store/milvus.py: filtered searches answered on the item rows (issue 12 part 2).

A picture matches a filter through ANY of its posts, all facts of one post together. Each
item row carries one of its posts (the one its posts row marks `on_row`); the search
filters the rows themselves and admits by id only items whose other posts pass. These
tests check that the answer stays exact through reposts, forgets and older collections.
The shared filtered-search test for both stores is in test_store_posts.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient
from storekit import DIM, MODEL, rand_vecs, unit

from index.store import NewItem
from index.store import milvus as milvus_store
from index.store.filtered import PostFilter
from index.store.milvus import MilvusStore, collection_name

G = 7
DAY = 86400.0
T0 = 1.7e9


@pytest.fixture
def name(request):
    return collection_name(request.node.name)[:40] + f"_{abs(hash(request.node.nodeid)) % 10**8}"


def post(channel: int, message: int, h: str, author: int = 40, day: float = 0.0,
         guild: int = G) -> NewItem:
    return NewItem(source=f"discord:{guild}/{channel}/{message}/{message}", guild_id=guild,
                   channel_id=channel, message_id=message, attachment_id=message,
                   author_id=author, posted_at=T0 + day * DAY, content_hash=h)


def found(store, q, where) -> list[int]:
    return [i for i, _ in store.search(q, 20, where=where)]


def ranked(vecs: dict[int, np.ndarray], q: np.ndarray, allowed) -> list[int]:
    return sorted(allowed, key=lambda i: -float(vecs[i] @ q))


def reposts_read(store, where) -> bool:
    """Whether the search admits some items by id (read from the posts collection)."""
    return " id in " in store._filter(where)[0]


def test_single_post_items_are_filtered_on_their_own_rows(milvus_uri, name):
    vecs = rand_vecs(14, seed=21)
    q = unit(vecs[3] + 0.6 * vecs[8])
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as store:
        ids = store.add([post(1 + i % 3, 100 + i, f"h{i}", author=40 + i % 2, day=i)
                         for i in range(12)], vecs[:12])
        # another server's post in channel 1, and a picture of this server that is no post
        other = store.add([post(1, 500, "o", guild=8)], vecs[12:13])[0]
        loose = store.add([NewItem(source="/img/loose.png", guild_id=G, channel_id=1,
                                   posted_at=T0)], vecs[13:14])[0]
        by_id = dict(zip([*ids, other, loose], vecs, strict=True))
        view = store.view(G)
        cases = [
            (PostFilter(channels=frozenset({1})), [i for i in range(12) if i % 3 == 0]),
            (PostFilter(channels=frozenset({2, 3}), authors=frozenset({41})),
             [i for i in range(12) if i % 3 and i % 2]),
            (PostFilter(since=T0 + 4 * DAY, until=T0 + 9 * DAY), list(range(4, 9))),
            (PostFilter(authors=frozenset({99})), []),
        ]
        for where, ok in cases:
            assert found(view, q, where) == ranked(by_id, q, [ids[i] for i in ok]), where
            assert not reposts_read(view, where)  # one search over the rows, no ids
        # no condition: every picture posted here, never the loose one
        assert found(view, q, PostFilter()) == ranked(by_id, q, ids)
        # the whole collection: the other server's post passes too, the loose picture never
        assert found(store, q, cases[0][0]) == ranked(
            by_id, q, [*(ids[i] for i in cases[0][1]), other])


def test_an_item_is_found_through_its_second_post_with_that_posts_facts_together(
        milvus_uri, name):
    vecs = rand_vecs(3, seed=22)
    q = unit(vecs[0] + vecs[1] + vecs[2])
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as store:
        a, b, c = store.add([post(1, 10, "ha", author=40, day=0), post(1, 11, "hb", day=1),
                             post(2, 12, "hc", author=42, day=2)], vecs)
        # picture A posted again by author 41 in channel 2 on day 5
        assert store.add_posts([post(2, 20, "ha", author=41, day=5)]) == [a]
        view = store.view(G)
        assert set(found(view, q, PostFilter(channels=frozenset({2})))) == {a, c}
        assert found(view, q, PostFilter(channels=frozenset({2}), authors=frozenset({41}))) == [a]
        assert found(view, q, PostFilter(since=T0 + 4 * DAY)) == [a]
        assert found(view, q, PostFilter(channels=frozenset({2}), until=T0 + 4 * DAY)) == [c]
        # never a mix of two posts' facts: channel 2 and author 40 are not of one post
        assert found(view, q, PostFilter(channels=frozenset({2}), authors=frozenset({40}))) == []
        assert set(found(view, q, PostFilter(channels=frozenset({1})))) == {a, b}
        assert b not in found(view, q, PostFilter(channels=frozenset({2})))
        # pages of a filtered search follow on
        first = view.search(q, 1, where=PostFilter(channels=frozenset({2})))
        second = view.search(q, 1, offset=1, where=PostFilter(channels=frozenset({2})))
        assert [i for i, _ in first + second] == found(view, q, PostFilter(channels=frozenset({2})))


def test_forgetting_and_reposting_move_the_filter_with_the_posts(milvus_uri, name):
    vecs = rand_vecs(2, seed=23)
    q = unit(vecs[0] + vecs[1])
    ch = {n: PostFilter(channels=frozenset({n})) for n in (1, 2, 3, 4)}
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as store:
        view = store.view(G)
        a, b = view.add([post(1, 10, "ha"), post(4, 40, "hb")], vecs)
        assert view.add_posts([post(2, 20, "ha", author=41)]) == [a]
        # the post A's row carries is deleted: A now stands for its repost in channel 2
        f = view.forget_posts(guild_id=G, channel_id=1, message_ids=[10])
        assert f.repointed == {a: f"discord:{G}/2/20/20"} and f.removed == []
        assert found(view, q, ch[1]) == [] and found(view, q, ch[2]) == [a]
        assert not reposts_read(view, ch[2])  # its row carries that post now
        assert found(view, q, PostFilter(channels=frozenset({2}), authors=frozenset({41}))) == [a]
        # posted again in channel 3: found there too
        assert view.add_posts([post(3, 30, "ha")]) == [a]
        assert found(view, q, ch[3]) == [a] and found(view, q, ch[2]) == [a]
        # a repost deleted: only that channel lets it go
        view.forget_posts(guild_id=G, channel_id=3)
        assert found(view, q, ch[3]) == [] and found(view, q, ch[2]) == [a]
        # its last post deleted: A is gone from every search; B's only post too
        f = view.forget_posts(guild_id=G, channel_id=2)
        assert f.removed == [a] and found(view, q, ch[2]) == []
        view.forget_posts(guild_id=G, channel_id=4, message_ids=[40])
        assert found(view, q, ch[4]) == [] and view.search(q, 5) == []


def _posts_collection_before_on_row(client, name):
    """The posts collection as clipfind made it before `on_row` (2026-12-01 08:00)."""
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("source", DataType.VARCHAR, is_primary=True, max_length=4096)
    schema.add_field("guild_id", DataType.INT64, is_partition_key=True)
    for f in ("channel_id", "message_id", "attachment_id", "item_id"):
        schema.add_field(f, DataType.INT64)
    schema.add_field("author_id", DataType.INT64, nullable=True)
    schema.add_field("posted_at", DataType.DOUBLE, nullable=True)
    schema.add_field("title", DataType.VARCHAR, max_length=65535)
    schema.add_field("page_url", DataType.VARCHAR, max_length=65535)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)
    client.create_collection(name, schema=schema, consistency_level="Strong")
    params = client.prepare_index_params()
    params.add_index("v", index_type="FLAT", metric_type="IP")
    client.create_index(name, params)
    client.load_collection(name)


def test_a_collection_from_before_on_row_keeps_filtering_exactly(milvus_uri, name, monkeypatch):
    vecs = rand_vecs(3, seed=24)
    q = unit(vecs.sum(axis=0))
    with monkeypatch.context() as m:
        m.setattr(milvus_store, "_create_posts_collection", _posts_collection_before_on_row)
        with MilvusStore.create(milvus_uri, name, MODEL, DIM) as old:
            a, b = old.add([post(1, 10, "ha"), post(2, 11, "hb")], vecs[:2])
    with MilvusStore.open(milvus_uri, name) as store:  # opened by this clipfind
        view = store.view(G)
        c = view.add([post(1, 12, "hc")], vecs[2:])[0]
        assert view.add_posts([post(3, 30, "ha", author=41)]) == [a]
        assert set(found(view, q, PostFilter(channels=frozenset({1})))) == {a, c}
        assert found(view, q, PostFilter(channels=frozenset({3}), authors=frozenset({41}))) == [a]
        assert found(view, q, PostFilter(channels=frozenset({3}), authors=frozenset({40}))) == []
        f = view.forget_posts(guild_id=G, channel_id=1)
        assert f.repointed == {a: f"discord:{G}/3/30/30"} and f.removed == [c]
        assert found(view, q, PostFilter(channels=frozenset({1}))) == []
        assert found(view, q, PostFilter(channels=frozenset({3}))) == [a]
        assert [p.message_id for p in view.posts(G)] == [11, 30]


def test_a_post_an_older_clipfind_writes_without_on_row_is_still_found(milvus_uri, name):
    """A shard not yet upgraded writes posts rows without `on_row`: they read as not on
    their item's row, so the search finds them through the posts collection."""
    vecs = rand_vecs(1, seed=25)
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as store:
        a = store.add([post(1, 10, "ha")], vecs)[0]
        row = {"source": f"discord:{G}/5/50/50", "guild_id": G, "channel_id": 5,
               "message_id": 50, "attachment_id": 50, "item_id": a, "author_id": 40,
               "posted_at": T0, "title": "", "page_url": "", "v": [1.0, 0.0]}
        store._client.upsert(store.posts_name, [row])
        store._client.flush(store.posts_name)
        assert found(store.view(G), vecs[0], PostFilter(channels=frozenset({5}))) == [a]


def test_the_share_is_sampled_in_a_slice_of_ids_and_reposts_are_never_missed(
        milvus_uri, name, monkeypatch):
    """The share allowed is read among the posts of a slice of the ids; a repost outside
    that slice still admits its item, and the answer is the exact filtered top."""
    monkeypatch.setattr(milvus_store, "SHARE_SLICE", 6)  # a slice of ~6 of the 60 items
    vecs = rand_vecs(60, seed=26)
    q = unit(vecs[5] + 0.7 * vecs[50])
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as store:
        view = store.view(G)
        ids = view.add([post(1 + i % 4, 100 + i, f"h{i}") for i in range(60)], vecs)
        # every picture of channel 4 posted again in channel 9
        assert view.add_posts([post(9, 900 + i, f"h{i}") for i in range(3, 60, 4)]) == ids[3::4]
        by_id = dict(zip(ids, vecs, strict=True))
        assert view._filter(PostFilter(channels=frozenset({9})))[2] is False  # sampled
        for chans, want in (({9}, ids[3::4]), ({1, 9}, ids[0::4] + ids[3::4]), ({2}, ids[1::4])):
            got = found(view, q, PostFilter(channels=frozenset(chans)))
            assert got == ranked(by_id, q, want)[:20], chans


@pytest.mark.parametrize("slice_", [400, 20])  # every post read at once; a sample first
def test_a_few_allowed_among_many_are_ranked_exactly(milvus_uri, name, monkeypatch, slice_):
    """Two allowed of 150 (under 2%): their vectors are read and ranked exactly, pages too."""
    monkeypatch.setattr(milvus_store, "SHARE_SLICE", slice_)
    ranked_rows = []
    real = milvus_store._ranked
    monkeypatch.setattr(milvus_store, "_ranked",
                        lambda rows, q: ranked_rows.append(len(rows)) or real(rows, q))
    vecs = rand_vecs(150, seed=27)
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as store:
        view = store.view(G)
        ids = view.add([post(2 if i in (7, 90) else 1, 100 + i, f"h{i}") for i in range(150)],
                       vecs)
        far = unit(-vecs[7])  # item 7 is about the worst match of all
        where = PostFilter(channels=frozenset({2}))
        got = view.search(far, 5, where=where)
        assert [i for i, _ in got] == ranked(dict(zip(ids, vecs, strict=True)), far,
                                             [ids[90], ids[7]])
        assert got[-1][1] == pytest.approx(float(vecs[7] @ far), abs=1e-2)
        assert view.search(far, 5, offset=1, where=where) == got[1:]
        assert view.search(far, 5, offset=2, where=where) == []
        assert len(ranked_rows) >= 2 and set(ranked_rows) == {2}  # no graph walk


def test_a_post_recorded_again_with_other_facts_moves_its_rows_filter(milvus_uri, name):
    """Recording a picture's own post again updates it (as the embedded store does): the
    filter then sees the new author and time, not the old ones."""
    vecs = rand_vecs(1, seed=28)
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as store:
        view = store.view(G)
        a = view.add([post(1, 10, "ha", author=40, day=0)], vecs)[0]
        assert view.add_posts([post(1, 10, "ha", author=41, day=3)]) == [a]
        assert found(view, vecs[0], PostFilter(authors=frozenset({41}))) == [a]
        assert found(view, vecs[0], PostFilter(authors=frozenset({40}))) == []
        assert found(view, vecs[0], PostFilter(until=T0 + DAY)) == []
        assert [(p.author_id, p.posted_at) for p in view.posts(G)] == [(41, T0 + 3 * DAY)]


def test_an_undated_post_passes_no_date_filter_on_its_row(milvus_uri, name):
    vecs = rand_vecs(2, seed=29)
    q = unit(vecs.sum(axis=0))
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as store:
        view = store.view(G)
        undated = NewItem(source=f"discord:{G}/1/11/11", guild_id=G, channel_id=1, message_id=11,
                          attachment_id=11, content_hash="hu")
        a, u = view.add([post(1, 10, "ha"), undated], vecs)
        assert set(found(view, q, PostFilter(channels=frozenset({1})))) == {a, u}
        assert found(view, q, PostFilter(until=T0 + DAY)) == [a]
        assert found(view, q, PostFilter(since=T0 - DAY)) == [a]
        assert found(view, q, PostFilter(authors=frozenset({40}))) == [a]
