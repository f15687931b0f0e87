"""The library's pure parts and its scheduling: what is indexed, the state file, the
search scope (library only, or with the global collection), and searches going first."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from types import SimpleNamespace

import discord
from test_library import pic

from bot.core import Core, FindRequest
from bot.library import STATE_FILE, ChannelState, GuildLibrary, Library, is_indexable, load_channels
from index.encoder import BULK
from index.namespaces import Namespaces
from index.store import NewItem


def att(filename="a.png", content_type="image/png", size=1000, width=64, height=64):
    data = {"id": "1", "filename": filename, "size": size, "url": "http://x/a", "proxy_url": "http://x/a"}
    if content_type:
        data["content_type"] = content_type
    if width:
        data["width"], data["height"] = width, height
    return discord.Attachment(data=data, state=SimpleNamespace(http=None))


def test_only_images_within_the_limits_are_indexed(settings):
    s = replace(settings, library_max_bytes=10_000, max_image_pixels=1_000_000)
    assert is_indexable(att(), s) is None
    assert is_indexable(att("a.jpg", None, width=None), s) is None  # no type: by name
    assert "not an image" in is_indexable(att("a.txt", "text/plain"), s)
    assert "not an image" in is_indexable(att("a.bin", None), s)
    assert "too large" in is_indexable(att(size=10_001), s)
    assert "pixels" in is_indexable(att(width=2000, height=1000), s)
    assert "spoiler" in is_indexable(att("SPOILER_a.png"), s)


def test_state_file_round_trip_and_progress(tmp_path):
    g = GuildLibrary(5, engine=None, path=tmp_path)
    g.channels[1 << 40] = ChannelState(last=(3 << 40), scanned=10, indexed=4, until=(5 << 40),
                                       status=[9, 10])
    (tmp_path / STATE_FILE).write_bytes(g.state_json())
    back = load_channels(tmp_path)
    assert back == g.channels
    st = back[1 << 40]
    assert abs(st.progress(1 << 40) - 0.5) < 1e-6
    st.done = True
    assert st.progress(1 << 40) == 1.0
    (tmp_path / STATE_FILE).write_text("{garbage")
    assert load_channels(tmp_path) == {}  # unreadable: the channels start over, no crash
    assert not list(tmp_path.glob(".*.tmp"))


def _item(guild, n):
    return NewItem(source=f"discord:{guild}/1/{n}/{n}", title=f"posted-{n}.png", guild_id=guild,
                   channel_id=1, message_id=n, attachment_id=n, author_id=42, posted_at=1.7e9)


async def test_scope_is_the_server_library_plus_global_when_configured(engine, settings, tmp_path):
    spaces = Namespaces(tmp_path / "libs", engine.encoder)
    lib = Library(None, settings, spaces, engine)
    try:
        g = await lib._open_guild(7, create=True)
        await g.engine.add_images([_item(7, 1)], [pic("red", "circle", 1)])
        other = await lib._open_guild(8, create=True)
        await other.engine.add_images([_item(8, 2)], [pic("red", "circle", 2)])

        async def no_fetch(guild_id, cards, hits):
            return cards

        lib.decorate = no_fetch
        core = Core(replace(settings, results_per_page=10), engine, cooldown=False)
        core.library = lib

        only = await core.find(FindRequest("red circle", 1, guild_id=7))
        assert [c.title for c in only.cards] == ["posted-1.png"]
        assert "no more" not in only.text and only.state.guild_id == 7
        lib.settings = replace(settings, library_include_global=True)
        both = await core.find(FindRequest("red circle", 1, guild_id=7))
        titles = [c.title for c in both.cards]
        assert "posted-1.png" in titles and len(titles) == 10 and "posted-2.png" not in titles
        nolib = await core.find(FindRequest("red circle", 1, guild_id=9))
        assert not any(c.title.startswith("posted-") for c in nolib.cards)
        await lib.remove_channel(8, 1)  # server 8's only channel: its library goes
        assert lib.scope(8) is None and not (tmp_path / "libs" / "8").exists()
    finally:
        await asyncio.to_thread(spaces.close)


async def test_a_search_is_served_before_queued_backfill_work(engine, settings, tmp_path):
    """The model is busy; three chunks of backfill are queued; then a member searches the
    library: the search (text, explanation) is answered before any queued chunk."""
    spaces = Namespaces(tmp_path / "libs", engine.encoder)
    lib = Library(None, settings, spaces, engine)
    enc = engine.encoder
    release, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(10)

    try:
        g = await lib._open_guild(3, create=True)

        async def no_fetch(guild_id, cards, hits):
            return cards

        lib.decorate = no_fetch
        core = Core(settings, engine, cooldown=False)
        core.library = lib
        await g.engine.add_images([_item(3, 999)], [pic("blue", "square", 999)])
        done: list[str] = []
        block = asyncio.ensure_future(enc.call(hold))
        await asyncio.to_thread(started.wait, 5)

        async def chunk(i):
            items = [_item(3, 100 * i + j) for j in range(8)]
            await g.engine.add_images(items, [pic("red", "square", 100 * i + j) for j in range(8)],
                                      priority=BULK)
            done.append(f"bulk{i}")

        async def search():
            reply = await core.find(FindRequest("a lonely green circle far away", 1, guild_id=3))
            assert reply.cards
            done.append("search")

        jobs = [asyncio.ensure_future(chunk(i)) for i in range(3)]
        for _ in range(1000):
            if sum(1 for r in enc._pending if r.kind == "image") >= 3:
                break
            await asyncio.sleep(0.01)
        jobs.append(asyncio.ensure_future(search()))
        for _ in range(1000):
            if any(r.kind == "text" for r in enc._pending):
                break
            await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(block, *jobs)
        assert done[0] == "search", done
        assert len(g.engine.collection) == 25
    finally:
        release.set()
        await asyncio.to_thread(spaces.close)
