"""A server library from before the perceptual hashes gets them by itself: the bot fetches
each picture's post again (CDN URLs expire) once it is connected."""

from __future__ import annotations

from dataclasses import replace

from test_library import (  # noqa: F401 (world and its fixtures)
    add_and_wait,
    both_stores,
    lib_settings,
    lib_store,
    post_pics,
    world,
)

from index.phash import valid


def _forget_hashes(coll) -> dict[str, str]:
    """The library's items as stored before the hashes (same ids, vectors, posts)."""
    ids = [int(i) for i in coll.ids()]
    items = coll.get(ids)
    coll.add([replace(it, phash=None) for it in items], coll.vectors(ids))
    return {it.source: it.phash for it in items}


@both_stores
async def test_a_library_from_before_the_hashes_gets_them_by_itself(world):  # noqa: F811
    w = world
    w.a.tag = "alpha"
    posted = await post_pics(w, w.a, [("blue", "square", 1), ("red", "circle", 2),
                                      ("green", "triangle", 3)])
    await w.start()
    await add_and_wait(w, w.a)
    coll = w.bot.library.guilds[w.a.guild].engine.collection
    made = _forget_hashes(coll)
    assert len(made) == 3 and all(valid(h) for h in made.values())
    assert [it.phash for it in coll.get([int(i) for i in coll.ids()])] == [None] * 3
    await w.stop()
    await w.fd.delete_message(w.a.pics, posted[2]["id"])  # deleted while the bot was away

    fetched = len(w.fd.calls("GET", rf"/channels/{w.a.pics}/messages/\d+"))
    await w.start()  # the library finds its pictures without a hash and makes them

    def hashes():
        g = w.bot.library.guilds.get(w.a.guild)
        return g and {it.source: it.phash for it in g.engine.collection.get(
            [int(i) for i in g.engine.collection.ids()])}

    got = await w.fd.wait_for(lambda: (h := hashes()) and sum(map(valid, h.values())) == 2 and h,
                              20)
    kept = {s: h for s, h in made.items() if s.split("/")[2] != str(posted[2]["id"])}
    assert {s: h for s, h in got.items() if valid(h)} == kept  # the same hashes as at ingestion
    assert len(w.fd.calls("GET", rf"/channels/{w.a.pics}/messages/\d+")) > fetched
