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
        alone = await a.search("red circle", k=50)
        assert {h.item.guild_id for h in alone.hits} == {1}
        both = await a.search("red circle", k=50, also=[b])
        assert len(both.hits) == 11 and not both.has_more
        scores = [h.score for h in both.hits]
        assert scores == sorted(scores, reverse=True)
        assert [h.rank for h in both.hits] == list(range(1, 12))
        page2 = await a.search("red circle", k=4, offset=4, also=[b])
        assert [h.item.source for h in page2.hits] == [h.item.source for h in both.hits[4:8]]
        assert page2.has_more
    finally:
        spaces.close()
        enc.close()
