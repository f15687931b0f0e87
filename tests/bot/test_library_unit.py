"""The library's pure parts and its scheduling: what is indexed, the state file, the
search scope (library only, or with the global collection), and searches going first."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace

import discord
import numpy as np
from test_library import pic

from bot.core import Core, FindRequest
from bot.library import (
    POSTS_FILE,
    STATE_FILE,
    STATE_RECORD,
    ChannelState,
    GuildLibrary,
    Library,
    is_indexable,
    load_channels,
)
from bot.reply import Card
from index.encoder import BULK
from index.engine import Hit
from index.images import content_hash
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


class _Records:
    """An engine's records alone (what load_channels and save_state use)."""

    def __init__(self):
        self.records = {}

    def read_record(self, name):
        return self.records.get(name)

    def write_record(self, name, value):
        self.records[name] = value


def test_state_round_trip_through_the_store_and_progress(tmp_path):
    engine = _Records()
    g = GuildLibrary(5, engine=engine, path=tmp_path)
    g.channels[1 << 40] = ChannelState(last=(3 << 40), scanned=10, indexed=4, until=(5 << 40),
                                       status=[9, 10])
    g.save_state()
    assert list(engine.records) == [STATE_RECORD] and not list(tmp_path.iterdir())
    back = load_channels(engine, tmp_path)
    assert back == g.channels
    st = back[1 << 40]
    assert abs(st.progress(1 << 40) - 0.5) < 1e-6
    st.done = True
    assert st.progress(1 << 40) == 1.0
    engine.records[STATE_RECORD] = "{garbage"
    assert load_channels(engine, tmp_path) == {}  # unreadable: the channels start over, no crash


def test_an_old_library_json_moves_into_the_store_once(tmp_path):
    engine = _Records()
    old = GuildLibrary(5, engine=engine, path=tmp_path)
    old.channels[7] = ChannelState(last=99, scanned=3, indexed=2)
    (tmp_path / STATE_FILE).write_text(old.state_json())
    assert load_channels(engine, tmp_path) == old.channels
    assert not (tmp_path / STATE_FILE).exists() and (tmp_path / (STATE_FILE + ".migrated")).exists()
    assert load_channels(_Records(), tmp_path) == {}  # the file is not read again
    assert load_channels(engine, tmp_path) == old.channels  # the store has it


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


def message(mid: int, *pictures: tuple[int, bytes], channel: int = 1, guild: int = 7):
    """A member's message (what Library._index reads of one) with (attachment id, PNG) pictures."""
    def attachment(aid, data):
        async def read():
            return data
        return SimpleNamespace(id=aid, filename=f"{aid}.png", content_type="image/png",
                               size=len(data), width=96, height=96, is_spoiler=lambda: False,
                               read=read)
    return SimpleNamespace(
        id=mid, guild=SimpleNamespace(id=guild), channel=SimpleNamespace(id=channel),
        author=SimpleNamespace(id=42, bot=False), created_at=datetime.fromtimestamp(1.7e9 + mid, UTC),
        jump_url=f"https://discord.com/channels/{guild}/{channel}/{mid}",
        attachments=[attachment(a, d) for a, d in pictures])


async def open_library(engine, settings, root, *messages) -> tuple[Library, GuildLibrary]:
    """Server 7's library, its channels 1 and 2 holding `messages` (indexed in order)."""
    lib = Library(None, settings, Namespaces(root, engine.encoder), engine)
    await lib.open()
    g = await lib._open_guild(7, create=True)
    for m in messages:
        g.channels.setdefault(m.channel.id, ChannelState())
        await lib._index(g, m.channel.id, [m], None)
    return lib, g


def holder(g, data: bytes) -> tuple[int, int, int] | None:
    """(channel, message, attachment) of the item that holds this picture."""
    it = g.engine.collection.find_hash(content_hash(data), 7)
    return None if it is None else (it.channel_id, it.message_id, it.attachment_id)


X, Y = pic("red", "circle", 0), pic("blue", "square", 1)


async def test_a_repeated_picture_moves_to_the_oldest_post_left_and_goes_with_the_last(
        engine, settings, tmp_path):
    lib, g = await open_library(
        engine, settings, tmp_path / "libs",
        message(10, (100, X)), message(11, (110, X), (111, X)), message(12, (120, Y)),
        message(20, (200, X), channel=2), message(21, (210, X), channel=2))
    coll = g.engine.collection
    try:
        assert len(coll) == 2 and holder(g, X) == (1, 10, 100)
        vector = coll.vectors([coll.find_hash(content_hash(X), 7).id])
        # a repeat deleted: nothing changes
        assert await lib.remove_messages(7, 2, [20]) == 0 and holder(g, X) == (1, 10, 100)
        # the holder deleted: the oldest post left holds it, with the same vector
        assert await lib.remove_messages(7, 1, [10]) == 0 and holder(g, X) == (1, 11, 110)
        assert np.array_equal(coll.vectors([coll.find_hash(content_hash(X), 7).id]), vector)
        # edited out of its message, the picture moves to its other attachment there
        assert await lib.remove_attachments(7, 1, 11, {111}) == 0 and holder(g, X) == (1, 11, 111)
        # a channel leaves: its own pictures go (1), the repeated one moves to channel 2
        assert await lib.remove_channel(7, 1) == 1
        assert holder(g, X) == (2, 21, 210) and holder(g, Y) is None and len(coll) == 1
        # the last post edited away: the picture is gone, and so are its posts
        assert await lib.remove_attachments(7, 2, 21, set()) == 1
        assert len(coll) == 0 and g.engine.posts(7) == []
        assert lib.channel_state(7, 2) is not None  # the library itself stays
    finally:
        await lib.close()


async def test_an_unrelated_edit_or_delete_changes_nothing(engine, settings, tmp_path):
    lib, g = await open_library(engine, settings, tmp_path / "libs",
                                message(10, (100, X), (101, Y)), message(11, (110, X)))
    try:
        assert await lib.remove_attachments(7, 1, 10, {100, 101}) == 0  # the text was edited
        assert await lib.remove_attachments(7, 1, 99, set()) == 0  # not a library message
        assert await lib.remove_messages(7, 1, [98, 99]) == 0
        assert len(g.engine.collection) == 2 and holder(g, X) == (1, 10, 100)
        # a post seen again (a resumed backfill) is neither downloaded nor recorded twice
        again = message(11, (110, X))
        again.attachments[0].read = None
        assert await lib._index(g, 1, [again], None) == (0, True)
        item = g.engine.collection.find_hash(content_hash(X), 7)
        assert len(g.engine.posts(7, item_ids=[item.id])) == 2
    finally:
        await lib.close()


async def test_posts_survive_a_restart(engine, settings, tmp_path):
    root = tmp_path / "libs"
    lib, g = await open_library(engine, settings, root, message(10, (100, X)), message(11, (110, X)),
                                message(12, (120, Y)))
    await lib.close()
    lib, _ = await open_library(engine, settings, root)
    try:  # the repeat is known after the restart: the picture stays when the first goes
        assert await lib.remove_messages(7, 1, [10]) == 0 and holder(lib.guilds[7], X) == (1, 11, 110)
    finally:
        await lib.close()


async def test_a_library_from_before_gets_its_posts_sqlite_moved_in(engine, settings, tmp_path):
    """Its collection's database knew no posts (all were in posts.sqlite beside it): on
    opening, they move into the collection and the file is retired."""
    root = tmp_path / "libs"
    lib, g = await open_library(engine, settings, root, message(10, (100, X)),
                                message(11, (110, X)), message(12, (120, Y)))
    every = [(p.source, p.title, p.page_url, p.channel_id, p.message_id, p.attachment_id,
              p.author_id, p.posted_at, g.engine.collection.get([p.item_id])[0].content_hash)
             for p in g.engine.posts(7)]
    await lib.close()
    assert len(every) == 3
    with contextlib.closing(sqlite3.connect(root / "7" / "meta.sqlite")) as db:
        db.execute("DROP TABLE posts")
        db.commit()
    with contextlib.closing(sqlite3.connect(root / "7" / POSTS_FILE)) as db:
        db.execute("CREATE TABLE posts (source TEXT PRIMARY KEY, title TEXT NOT NULL, "
                   "page_url TEXT NOT NULL, channel_id INTEGER NOT NULL, message_id INTEGER "
                   "NOT NULL, attachment_id INTEGER NOT NULL, author_id INTEGER, posted_at REAL, "
                   "content_hash TEXT NOT NULL)")
        db.executemany(f"INSERT INTO posts VALUES ({', '.join('?' * 9)})", every)
        db.commit()
    lib, g = await open_library(engine, settings, root)
    try:
        assert len(g.engine.posts(7, channel_id=1)) == 3
        assert not (root / "7" / POSTS_FILE).exists()
        assert (root / "7" / (POSTS_FILE + ".migrated")).exists()
        # the repeat came along: the picture moves to it when its holder goes
        assert await lib.remove_messages(7, 1, [10]) == 0 and holder(g, X) == (1, 11, 110)
        assert await lib.remove_attachments(7, 1, 12, set()) == 1 and holder(g, Y) is None
    finally:
        await lib.close()


async def test_a_result_edited_away_while_the_bot_was_away_is_removed_when_shown(
        engine, settings, tmp_path):
    lib, g = await open_library(engine, settings, tmp_path / "libs",
                                message(10, (100, X), (101, Y)), message(11, (110, X)))
    now = {10: [101], 11: [110]}  # attachments on each message now: 100 was edited out

    async def fetch_message(mid):
        atts = [SimpleNamespace(id=a, url=f"https://cdn/{a}.png") for a in now[mid]]
        return SimpleNamespace(attachments=atts, author=SimpleNamespace(display_name="ann"))

    channel = SimpleNamespace(fetch_message=fetch_message)
    lib.bot = SimpleNamespace(get_channel=lambda cid: channel)

    async def show():
        coll = g.engine.collection
        hits = [Hit(i + 1, 0.5, it) for i, it in enumerate(coll.get(coll.ids().tolist()))]
        cards = [Card(h.rank, h.score, h.item.title) for h in hits]
        return await lib.decorate(7, cards, hits)

    try:
        first = await show()
        assert [c.title for c in first] == ["(deleted since)", "101.png"]
        assert first[1].image_url == "https://cdn/101.png" and "ann" in first[1].credit
        assert holder(g, X) == (1, 11, 110)  # the repeat holds it now
        # (re-pointed in place: the same item, so the order of ids is unchanged)
        assert [c.image_url for c in await show()] == ["https://cdn/110.png", "https://cdn/101.png"]
    finally:
        await lib.close()


def test_a_shard_process_owns_only_the_libraries_of_its_servers(settings):
    """A library is opened and written only by the process running its server's shard
    (another one would write back a stale copy of its progress)."""
    on = {s: (1000 + s) << 22 for s in (0, 1)}  # a guild id on shard 0 and one on shard 1 (of 2)
    sharded = Library(SimpleNamespace(shard_count=2, shard_ids=[1]), settings, None, None)
    assert not sharded.mine(on[0]) and sharded.mine(on[1])
    alone = Library(SimpleNamespace(shard_count=None, shard_ids=None), settings, None, None)
    assert alone.mine(on[0]) and alone.mine(on[1])
