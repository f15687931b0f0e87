"""Engine.search(also=...): one query over several collections sharing one encoder."""

from index.encoder import Encoder
from index.namespaces import Namespaces
from index.store import NewItem


def item(guild, n):
    return NewItem(source=f"discord:{guild}/1/{n}/{n}", guild_id=guild, channel_id=1,
                   message_id=n, attachment_id=n)


async def test_search_merges_collections_by_score_and_pages(tmp_path, tiny, demo_gallery):
    enc = Encoder(tiny)
    spaces = Namespaces(tmp_path / "libs", enc)
    try:
        a, b = spaces.get("1", create=True), spaces.get("2", create=True)
        pics = sorted(demo_gallery.glob("*.png"))
        await a.add_images([item(1, i) for i in range(6)], [p.read_bytes() for p in pics[:6]])
        await b.add_images([item(2, i) for i in range(5)], [p.read_bytes() for p in pics[6:11]])
        # (near-copies apart: the merge itself is tested; grouping in test_floor.py)
        alone = await a.search("red circle", k=50, collapse=False)
        assert {h.item.guild_id for h in alone.hits} == {1}
        both = await a.search("red circle", k=50, also=[b], collapse=False)
        assert len(both.hits) == 11 and not both.has_more
        scores = [h.score for h in both.hits]
        assert scores == sorted(scores, reverse=True)
        assert [h.rank for h in both.hits] == list(range(1, 12))
        page2 = await a.search("red circle", k=4, offset=4, also=[b], collapse=False)
        assert [h.item.source for h in page2.hits] == [h.item.source for h in both.hits[4:8]]
        assert page2.has_more
    finally:
        spaces.close()
        enc.close()


async def test_a_search_queues_its_explanation_with_its_encoding(tmp_path, tiny, demo_gallery):
    """Behind queued bulk work, a search's text and its word weights go in together, so
    the search waits for the bulk pass in flight once, not once per step."""
    import asyncio
    import threading

    import torch
    from PIL import Image

    from index.encoder import BULK

    enc = Encoder(tiny, queue_size=4096)
    spaces = Namespaces(tmp_path / "libs", enc)
    release, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(10)

    try:
        a = spaces.get("1", create=True)
        pics = sorted(demo_gallery.glob("*.png"))
        await a.add_images([item(1, i) for i in range(3)], [p.read_bytes() for p in pics[:3]])
        block = asyncio.ensure_future(enc.call(hold))
        await asyncio.to_thread(started.wait, 5)
        done = []
        pixels = torch.stack([tiny.preprocess(Image.new("RGB", (64, 64)))] * 16)

        async def bulk(i):
            await enc.encode_pixels(pixels, priority=BULK)
            done.append(f"bulk{i}")

        async def search():
            result = await a.search("a lonely purple square and a red circle*2 green*1")
            assert result.hits and len(result.attention) == 2
            done.append("search")

        jobs = [asyncio.ensure_future(bulk(i)) for i in range(2)]
        await asyncio.sleep(0.05)
        jobs.append(asyncio.ensure_future(search()))
        for _ in range(500):
            if sum(r.kind == "call" for r in enc._pending) >= 2:
                break
            await asyncio.sleep(0.01)
        assert any(r.kind == "text" for r in enc._pending)
        release.set()
        await asyncio.gather(block, *jobs)
        assert done[0] == "search", done
    finally:
        release.set()
        spaces.close()
        enc.close()


async def test_filters_rank_only_the_posts_they_allow_and_need_post_facts(tmp_path, tiny,
                                                                           demo_gallery):
    """in:/from:/after:/before: over a library (issue 12): exactly the allowed items, in
    score order, paged without repeats; a collection without posts (a folder) in `also` is
    left out, and alone it refuses filters; names need a server to resolve them."""
    import pytest

    from index.errors import QueryError

    t0, day = 1735689600.0 + 3600, 86400.0  # 2025-01-01 01:00 UTC
    enc = Encoder(tiny)
    spaces = Namespaces(tmp_path / "libs", enc)
    try:
        lib, plain = spaces.get("1", create=True), spaces.get("plain", create=True)
        pics = sorted(demo_gallery.glob("*.png"))
        posts = [NewItem(source=f"discord:1/{1 + i % 2}/{i + 1}/{i + 1}", guild_id=1,
                         channel_id=1 + i % 2, message_id=i + 1, attachment_id=i + 1,
                         author_id=10 + i % 3, posted_at=t0 + i * day) for i in range(12)]
        await lib.add_images(posts, [p.read_bytes() for p in pics[:12]])
        await plain.add_images([NewItem(source=str(p)) for p in pics[12:18]],
                               [p.read_bytes() for p in pics[12:18]])
        everything = [h.item for h in (await lib.search("red circle", k=50)).hits]
        want = [it.source for it in everything if it.channel_id == 2 and it.author_id != 10]
        got = await lib.search("red circle in:<#2> from:<@11> from:<@12>", k=50, also=[plain])
        assert [h.item.source for h in got.hits] == want and len(want) == 4
        p1 = await lib.search("red circle in:<#2> from:<@11> from:<@12>", k=2, also=[plain])
        p2 = await lib.search("red circle in:<#2> from:<@11> from:<@12>", k=2, offset=2)
        assert [h.item.source for h in p1.hits + p2.hits] == want and p1.has_more
        assert not p2.has_more
        dated = await lib.search("red circle after:2025-01-05 before:2025-01-09", k=50)
        assert sorted(h.item.message_id for h in dated.hits) == [6, 7, 8]
        during = await lib.search("red circle during:2025-01-03", k=50)
        assert [h.item.message_id for h in during.hits] == [3]
        with pytest.raises(QueryError, match="need a server library"):
            await plain.search("red circle in:<#2>")
        with pytest.raises(QueryError, match="by name"):
            await lib.search("red circle in:#pics")
    finally:
        spaces.close()
        enc.close()
