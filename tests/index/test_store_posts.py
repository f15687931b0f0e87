"""index/store/posts.py: the Discord posts of the pictures, in the collection's own database."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from storekit import DIM, MODEL, rand_vecs, unit

from index.errors import StoreError
from index.store import Collection, Forgotten, NewItem

REPO = Path(__file__).resolve().parents[2]
G = 7


def post(channel: int, message: int, attachment: int, h: str, guild: int = G) -> NewItem:
    return NewItem(
        source=f"discord:{guild}/{channel}/{message}/{attachment}",
        title=f"{attachment}.png",
        page_url=f"https://discord.com/channels/{guild}/{channel}/{message}",
        guild_id=guild,
        channel_id=channel,
        message_id=message,
        attachment_id=attachment,
        author_id=42,
        posted_at=1.7e9 + message,
        content_hash=h,
    )


def holder(c: Collection, h: str, guild: int = G) -> tuple[int, int, int] | None:
    """(channel, message, attachment) of the item holding the picture with hash h."""
    it = c.find_hash(h, guild)
    return None if it is None else (it.channel_id, it.message_id, it.attachment_id)


def library(path: Path, store=None) -> tuple[Collection, np.ndarray, dict[str, int]]:
    """Pictures X and Y: X posted in messages 10, 11 (twice), 20 and 21 (channel 2).
    `store`: the conftest fixture (both stores); None: the embedded one."""
    c = Collection.create(path, MODEL, DIM) if store is None else store.create(path, MODEL, DIM)
    vecs = rand_vecs(2, seed=3)
    x, y = c.add([post(1, 10, 100, "hx"), post(1, 12, 120, "hy")], vecs)
    again = [post(1, 11, 110, "hx"), post(1, 11, 111, "hx"), post(2, 20, 200, "hx"),
             post(2, 21, 210, "hx")]
    assert c.add_posts(again) == [x, x, x, x]
    return c, vecs, {"x": x, "y": y}


def test_a_repeated_picture_moves_to_the_oldest_post_left_and_goes_with_the_last(tmp_path, store):
    c, vecs, ids = library(tmp_path / "c", store)
    with c:
        x = ids["x"]
        assert len(c) == 2 and holder(c, "hx") == (1, 10, 100)
        assert [p.message_id for p in c.posts(G, item_ids=[x])] == [10, 11, 11, 20, 21]
        # a repeat deleted: only that post goes
        f = c.forget_posts(guild_id=G, channel_id=2, message_ids=[20])
        assert f == Forgotten(posts=["discord:7/2/20/200"]) and holder(c, "hx") == (1, 10, 100)
        # the holder deleted: the oldest post left holds it, same id, same vector
        f = c.forget_posts(guild_id=G, channel_id=1, message_ids=[10])
        assert f.removed == [] and f.repointed == {x: "discord:7/1/11/110"}
        assert holder(c, "hx") == (1, 11, 110) and c.by_source("discord:7/1/11/110").id == x
        assert c.by_source("discord:7/1/10/100") is None
        assert np.allclose(c.vectors([x])[0], vecs[0], atol=1e-3)
        assert c.search(vecs[0], 1)[0][0] == x
        # edited out of its message: the picture moves to its other attachment there
        f = c.forget_posts(guild_id=G, channel_id=1, message_ids=[11], keep_attachments={111})
        assert f.posts == ["discord:7/1/11/110"] and holder(c, "hx") == (1, 11, 111)
        # a channel leaves: its own picture goes, the repeated one moves to channel 2
        f = c.forget_posts(guild_id=G, channel_id=1)
        assert f.removed == [ids["y"]] and f.repointed == {x: "discord:7/2/21/210"}
        assert holder(c, "hx") == (2, 21, 210) and holder(c, "hy") is None and len(c) == 1
        assert [h for h, _ in c.search(vecs[1], 5)] == [x]  # Y's vector left the index
        # the last post edited away: the picture, its vector and its posts are gone
        f = c.forget_posts(guild_id=G, channel_id=2, message_ids=[21], keep_attachments=set())
        assert f.removed == [x] and len(c) == 0 and c.search(vecs[0], 5) == []
        assert c.posts(G) == []


def test_unrelated_forgets_change_nothing_and_posts_are_recorded_once(tmp_path, store):
    c, _, ids = library(tmp_path / "c", store)
    with c:
        assert not c.forget_posts(guild_id=G, channel_id=1, message_ids=[12], keep_attachments={120})
        assert not c.forget_posts(guild_id=G, channel_id=1, message_ids=[98, 99])
        assert not c.forget_posts(guild_id=G, message_ids=[])
        assert not c.forget_posts(guild_id=8, channel_id=1)  # another server's channel 1
        assert c.add_posts([post(1, 11, 110, "hx")]) == [ids["x"]]  # seen again: not twice
        assert len(c.posts(G)) == 6 and len(c) == 2
        assert c.known(["discord:7/1/11/110", "discord:7/1/10/100", "discord:7/9/9/9"]) == {
            "discord:7/1/11/110",
            "discord:7/1/10/100",
        }
        # a post of a picture that is not stored is not recorded
        assert c.add_posts([post(3, 30, 300, "hz")]) == [None] and len(c.posts(G)) == 6
        with pytest.raises(StoreError, match="needs a channel"):
            c.forget_posts(guild_id=G)


def test_forget_by_messages_or_attachments_without_the_channel(tmp_path, store):
    c, _, ids = library(tmp_path / "c", store)
    with c:
        f = c.forget_posts(guild_id=G, message_ids=[10, 20])
        assert f.posts == ["discord:7/1/10/100", "discord:7/2/20/200"]
        assert holder(c, "hx") == (1, 11, 110)
        f = c.forget_posts(guild_id=G, attachment_ids=[110, 111, 120])
        assert f.removed == [ids["y"]] and holder(c, "hx") == (2, 21, 210)


def test_servers_are_kept_apart(tmp_path, store):
    with store.create(tmp_path / "c", MODEL, DIM) as c:
        a, b = c.add([post(1, 10, 100, "hx"), post(1, 10, 100, "hx", guild=8)], rand_vecs(2))
        # the same picture in server 8 is not server 7's to hold
        assert c.add_posts([post(1, 11, 110, "hx", guild=8), post(1, 13, 130, "hx")]) == [b, a]
        assert c.forget_posts(guild_id=G, channel_id=1).removed == [a]
        assert holder(c, "hx", guild=8) == (1, 10, 100) and len(c.posts(8)) == 2


def test_removing_items_takes_their_posts(tmp_path, store):
    c, _, ids = library(tmp_path / "c", store)
    with c:
        assert c.remove([ids["x"]]) == 1
        assert [p.source for p in c.posts(G)] == ["discord:7/1/12/120"]
        assert c.remove_where(guild_id=G, channel_id=1) == [ids["y"]] and c.posts(G) == []


def test_a_collection_from_before_the_posts_table_gets_it_filled(tmp_path):
    path = tmp_path / "c"
    with Collection.create(path, MODEL, DIM) as c:
        c.add([post(1, 10, 100, "hx"), NewItem(source="/img/a.png")], rand_vecs(2))
    db = sqlite3.connect(path / "meta.sqlite")
    db.execute("DROP TABLE posts")  # as clipfind wrote it before the table existed
    db.commit()
    db.close()
    with Collection.open(path, MODEL) as c:
        assert c._ix.rebuilds == 0  # no items changed: vectors.faiss still current
        assert [p.source for p in c.posts(G)] == ["discord:7/1/10/100"]
        assert c.forget_posts(guild_id=G, channel_id=1).removed == [1] and len(c) == 1


_CHILD = textwrap.dedent(
    """
    import os, sys
    from index.store import Collection, posts
    c = Collection.open(sys.argv[1])
    if sys.argv[2] == "mid":  # killed inside the transaction, after both tables changed
        def die(conn, ids):
            os._exit(9)
        posts.drop_of_items = die
    out = c.forget_posts(guild_id=7, channel_id=1)
    print(out.removed, flush=True)
    os._exit(0)  # killed after the commit: vectors.faiss never saved
    """
)


@pytest.mark.parametrize("when", ["mid", "after"])
def test_a_killed_forget_leaves_posts_and_items_agreeing(tmp_path, when):
    c, vecs, ids = library(tmp_path / "c")
    c.close()
    p = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "c"), when],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    with Collection.open(tmp_path / "c", MODEL) as c:
        items = {it.id: it.source for it in c.get(c.ids().tolist())}
        held = {p.item_id for p in c.posts(G)}
        assert set(items) == held  # every item has a post, every post an item
        if when == "mid":
            assert p.returncode == 9 and len(c) == 2 and len(c.posts(G)) == 6
            assert holder(c, "hx") == (1, 10, 100)
        else:
            assert p.returncode == 0 and p.stdout.strip() == f"[{ids['y']}]"
            assert holder(c, "hx") == (2, 20, 200) and holder(c, "hy") is None
            assert [h for h, _ in c.search(vecs[1], 5)] == [ids["x"]]  # the index agrees


# -- filtered search (issue 12 part 2) -------------------------------------------------------


def test_a_filtered_search_ranks_exactly_the_items_a_post_allows_and_pages_on(tmp_path, store):
    from index.store.filtered import PostFilter

    vecs = rand_vecs(60, seed=11)
    day = 86400.0
    posts_ = [NewItem(source=f"discord:{G}/{1 + i % 3}/{1000 + i}/{5000 + i}", guild_id=G,
                      channel_id=1 + i % 3, message_id=1000 + i, attachment_id=5000 + i,
                      author_id=40 + i % 2, posted_at=1.7e9 + i * day, content_hash=f"h{i}")
              for i in range(60)]
    with store.create(tmp_path / "c", MODEL, DIM) as c:
        ids = c.add(posts_, vecs)
        # picture 0 (channel 1, author 40) posted again in channel 9 by author 99, undated
        assert c.add_posts([NewItem(source=f"discord:{G}/9/9000/9001", guild_id=G, channel_id=9,
                                    message_id=9000, attachment_id=9001, author_id=99,
                                    content_hash="h0")]) == [ids[0]]
        assert c.has_posts()
        q = unit(vecs[7] + vecs[30])

        def exact(ok) -> list[int]:
            allowed = [i for i in range(60) if ok(i)]
            order = sorted(allowed, key=lambda i: -float(vecs[i] @ q))
            return [ids[i] for i in order]

        cases = [
            (PostFilter(channels=frozenset({1})), lambda i: i % 3 == 0),
            (PostFilter(channels=frozenset({2, 3}), authors=frozenset({41})),
             lambda i: i % 3 != 0 and i % 2 == 1),
            (PostFilter(since=1.7e9 + 10 * day, until=1.7e9 + 20 * day), lambda i: 10 <= i < 20),
            (PostFilter(channels=frozenset({9})), lambda i: i == 0),  # through its repost
            (PostFilter(channels=frozenset({9}), authors=frozenset({40})), lambda i: False),
            (PostFilter(channels=frozenset({9}), until=2e9), lambda i: False),  # undated repost
            (PostFilter(authors=frozenset({12345})), lambda i: False),
        ]
        for where, ok in cases:
            want = exact(ok)
            page1 = [i for i, _ in c.search(q, 5, where=where)]
            page2 = [i for i, _ in c.search(q, 5, offset=5, where=where)]
            assert page1 + page2 == want[:10], where
        # an item removed leaves the filtered results too
        c.remove([ids[3]])
        assert ids[3] not in [i for i, _ in c.search(q, 30, where=cases[0][0])]


def test_faiss_filtered_search_on_ivf_and_hnsw_equals_the_exact_top_of_the_allowed():
    import faiss
    from storekit import clustered

    from index.store.faissindex import make_index
    from index.store.filtered import Allowed, PostFilter
    from index.store.filterplan import FilterCache

    x = clustered(2000, 32, seed=4)
    q = x[17]
    for factory, params in (("IVF32,Flat", {"nprobe": 4}), ("HNSW16", {"efSearch": 16})):
        index = make_index(32, factory)
        index.train(x)
        index.add_with_ids(x, np.arange(2000, dtype=np.int64))
        for share in (0.5, 0.1, 0.01):
            ids = np.random.default_rng(1).choice(2000, int(2000 * share), replace=False)
            flags = np.zeros(2000, dtype=bool)
            flags[ids] = True
            cache = FilterCache()
            plan = cache.plan(PostFilter(), 1, lambda f=flags: Allowed.of(f))
            scores, got = cache.search(index, q, 10, plan, params, lambda i: x[i])
            want = ids[np.argsort(-(x[ids] @ q))[:10]]
            assert set(got) <= set(ids.tolist())
            assert len(set(got) & set(want)) >= 9, (factory, share)
    assert faiss.IDSelectorBitmap  # the selector the store uses


def test_an_hnsw_collection_ranks_a_tiny_allowed_set_exactly(tmp_path):
    """Below EXACT_SHARE an HNSW walk would meet almost no allowed item: the allowed
    vectors are ranked exactly from SQLite instead."""
    from index.store.filtered import PostFilter

    vecs = rand_vecs(120, seed=5)
    with Collection.create(tmp_path / "h", MODEL, DIM, "HNSW8") as c:
        ids = c.add([NewItem(source=f"discord:{G}/{1 + (i == 7)}/{i + 1}/{i + 1}", guild_id=G,
                             channel_id=1 + (i == 7), message_id=i + 1, attachment_id=i + 1)
                     for i in range(120)], vecs)
        assert "HNSW" in c.index_description
        far = unit(-vecs[7])  # item 7 is the worst match of all, and the only one in channel 2
        assert c.search(far, 3, where=PostFilter(channels=frozenset({2}))) == [
            (ids[7], pytest.approx(float(vecs[7] @ far), abs=1e-2))]
