"""The server image library, end to end: the real bot against the loopback Discord.

Two servers post shapes; admins add channels; the bot backfills, indexes live posts,
forgets deleted ones, and a search in one server never sees the other's pictures.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from dataclasses import replace
from types import SimpleNamespace

import aiohttp
import pytest
from botutil import close_bots, quiesce, settle
from fakediscord import FakeDiscord
from pictures import pic

from bot import library as library_mod
from bot.app import ClipfindBot
from bot.cogs.library import NEED_MANAGER
from bot.library import STATE_RECORD


def linked(embeds) -> set[str]:
    """The message ids the result cards link to: each card's, and its near-copies'."""
    found = set()
    for e in embeds:
        found.add(e["url"].rsplit("/", 1)[1])
        found.update(re.findall(r"\]\(https://discord\.com/channels/\d+/\d+/(\d+)\)",
                                e.get("description") or ""))
    return found


@pytest.fixture
def lib_store(request):
    """Where the libraries live: 'faiss' (a folder per server) unless a test asks for both."""
    return getattr(request, "param", "faiss")


both_stores = pytest.mark.parametrize("lib_store", ["faiss", "milvus"], indirect=True)


@pytest.fixture
def lib_settings(settings, tmp_path, lib_store, request):
    if lib_store == "faiss":
        return replace(settings, library_root=tmp_path / "libs")
    from twostores import Stores  # every server's library in one shared Milvus collection
    uri = request.getfixturevalue("milvus_uri")
    return replace(settings, library_root=Stores("milvus", uri).at(tmp_path / "libs"),
                   store="milvus", milvus_uri=uri)


@pytest.fixture
async def world(lib_settings, engine):
    async with FakeDiscord() as fd, fd.patch_discord():
        w = SimpleNamespace(fd=fd, bots=[], settings=lib_settings)
        for name in ("a", "b"):
            g = fd.add_guild(f"server-{name}")
            setattr(w, name, SimpleNamespace(
                guild=g, cmd=fd.add_channel(g, "commands"), pics=fd.add_channel(g, "pics"),
                other=fd.add_channel(g, "chat"),
                admin=fd.add_member(g, f"{name}-admin", manage_guild=True),
                member=fd.add_member(g, f"{name}-member")))

        async def start(settings=lib_settings):
            bot = ClipfindBot(settings, engine=engine, guild_ready_timeout=0.05)
            task = asyncio.create_task(bot.start(fd.token))
            w.bots.append((bot, task))
            await fd.wait_ready()
            await asyncio.wait_for(bot.wait_until_ready(), 10)
            await fd.wait_for(lambda: bot.library)
            bot.library.progress_every_s = 0.0
            w.bot = bot
            return bot

        async def stop():
            await quiesce()
            await w.bot.close()

        w.start, w.stop = start, stop
        try:
            yield w
        finally:
            await close_bots(w.bots)
    await settle()


async def say(w, s, content, *, author=None, chan=None):
    """Post a command as a member; the bot's first new message in that channel."""
    chan = chan or s.cmd
    before = len(w.fd.bot_messages(chan))
    await w.fd.post_message(chan, author or s.admin, content)
    return (await w.fd.wait_for(lambda: w.fd.bot_messages(chan)[before:] or None, 20))[0]


async def add_and_wait(w, s, chan=None, timeout=30):
    chan = chan or s.pics
    msg = await say(w, s, f"!library add <#{chan}>")
    # the one status message: "added ..." at first, edited as the history is read
    assert msg["content"].startswith(f"📚 <#{chan}>: "), msg["content"]
    await w.fd.wait_for(lambda: "done" in w.fd.get_message(s.cmd, msg["id"])["content"], timeout)
    return w.fd.get_message(s.cmd, msg["id"])


def sources(w, s) -> set[str]:
    g = w.bot.library.guilds.get(s.guild)
    return set() if g is None else set(g.engine.collection.stamps())


async def post_pics(w, s, specs, *, chan=None, author=None, prefix=None):
    """Post one image per (colour, shape, seed); returns the posted messages."""
    out = []
    for colour, shape, seed in specs:
        name = f"{prefix or s.tag}-{colour}-{shape}-{seed}.png"
        out.append(await w.fd.post_message(chan or s.pics, author or s.member, "look",
                                           attachments=[(name, pic(colour, shape, seed), None)]))
    return out


def find_ids(msg) -> list[str]:
    return [e["url"] for e in msg["embeds"]]


async def test_members_without_manage_server_are_refused(world):
    w = world
    await w.start()
    for cmd in (f"!library add <#{w.a.pics}>", f"!library remove <#{w.a.pics}>", "!library status"):
        reply = await say(w, w.a, cmd, author=w.a.member)
        assert reply["content"] == NEED_MANAGER
    assert w.bot.library.guilds == {}
    # the slash form exists, as a group with three subcommands, for managers by default
    group = w.bot.tree.get_command("library")
    assert {c.name for c in group.commands} == {"add", "remove", "status"}
    assert group.default_permissions.manage_guild


async def test_slash_library_and_find_with_an_image_end_to_end(world):
    """`/library add channel:` and `/library status`, then `/find query: image:` (a file
    option, deferred, answered by a follow-up), through the fake Discord's interactions."""
    w = world
    w.a.tag = "alpha"
    await post_pics(w, w.a, [("red", "circle", i) for i in range(3)])
    await post_pics(w, w.a, [("blue", "square", 10 + i) for i in range(3)])
    await w.start(replace(w.settings, sync_commands=True))
    refused = await w.fd.invoke_slash(w.a.cmd, w.a.member, "library add", {"channel": w.a.pics})
    await w.fd.wait_for(lambda: w.fd.interaction_messages(refused))
    (no,) = w.fd.interaction_messages(refused)
    assert no["content"] == NEED_MANAGER and no["flags"] & 64  # to the member alone
    rec = await w.fd.invoke_slash(w.a.cmd, w.a.admin, "library add", {"channel": w.a.pics})
    await w.fd.wait_for(lambda: w.fd.interaction_messages(rec))
    assert w.fd.interaction_messages(rec)[0]["content"] == f"📚 adding <#{w.a.pics}> to the library"
    await w.fd.wait_for(lambda: any("done, 6 messages read, 6 images" in m["content"]
                                    for m in w.fd.bot_messages(w.a.cmd)), 30)
    rec = await w.fd.invoke_slash(w.a.cmd, w.a.admin, "library status")
    await w.fd.wait_for(lambda: w.fd.interaction_messages(rec))
    assert f"<#{w.a.pics}>: 6 images" in w.fd.interaction_messages(rec)[0]["content"]
    cdn_before = len(w.fd.cdn_requests)
    rec = await w.fd.invoke_slash(w.a.cmd, w.a.member, "find",
                                  {"query": "#1*1", "image": ("query.png", pic("red", "circle", 7),
                                                              None)})
    page = (await w.fd.wait_for(lambda: [m for m in w.fd.interaction_messages(rec)
                                         if m["embeds"]], 30))[0]
    assert rec.callback_types == [5]  # deferred while the picture was read and encoded
    assert len(w.fd.cdn_requests) > cdn_before  # the option's file was fetched from the CDN
    titles = [e["title"].split(" · ", 1)[1] for e in page["embeds"]]
    assert titles[0].startswith("alpha-red-circle-"), titles  # found by the picture alone
    assert all(e["url"].startswith(f"https://discord.com/channels/{w.a.guild}/{w.a.pics}/")
               for e in page["embeds"])


@both_stores
async def test_backfill_live_posts_results_and_isolation(world):
    w = world
    w.a.tag, w.b.tag = "alpha", "beta"
    reds = await post_pics(w, w.a, [("red", "circle", i) for i in range(4)])
    await post_pics(w, w.a, [("green", "square", 10 + i) for i in range(2)])
    # not indexed: text, a non-image file, a corrupt "PNG", a bot's picture, a duplicate
    await w.fd.post_message(w.a.pics, w.a.member, "just words")
    await w.fd.post_message(w.a.pics, w.a.member, "notes",
                            attachments=[("notes.txt", b"hello", "text/plain")])
    await w.fd.post_message(w.a.pics, w.a.member, "broken",
                            attachments=[("broken.png", b"\x89PNG not really", "image/png")])
    helper = w.fd.add_member(w.a.guild, "helper-bot", bot=True)
    await w.fd.post_message(w.a.pics, helper, "", attachments=[("bot.png", pic("red", "circle", 99), None)])
    await w.fd.post_message(w.a.pics, w.a.admin, "again",
                            attachments=[("alpha-dup.png", pic("red", "circle", 0), None)])
    await post_pics(w, w.b, [("red", "circle", 100 + i) for i in range(3)])
    await post_pics(w, w.b, [("blue", "triangle", 200 + i) for i in range(3)])
    await w.start()

    done = await add_and_wait(w, w.a)
    assert "6 images indexed" in done["content"], done["content"]
    await add_and_wait(w, w.b)
    src_a, src_b = sources(w, w.a), sources(w, w.b)
    assert len(src_a) == 6 and len(src_b) == 6
    assert all(s.startswith(f"discord:{w.a.guild}/{w.a.pics}/") for s in src_a)

    # a search in A: only A's pictures, each with a fresh image, who posted it, when, a link
    page = await say(w, w.a, "!find red circle")
    assert page["content"].startswith("**Results 1–"), page["content"]
    # the four red circles lead the page, as results or as near-copies listed under one
    # (to the bundled model one shape moved about is the same picture: index/nearcopies.py)
    red_ids = {str(m["id"]) for m in reds}
    top = [e for e in page["embeds"] if e["title"].split(" · ", 1)[1].startswith("alpha-red-circle-")]
    assert linked(top) == red_ids
    async with aiohttp.ClientSession() as http:
        for e in page["embeds"]:
            assert e["url"].startswith(f"https://discord.com/channels/{w.a.guild}/{w.a.pics}/")
            assert f"<@{w.a.member}>" in e["description"] and "<t:" in e["description"]
            async with http.get(e["image"]["url"]) as r:
                assert r.status == 200
    # CDN URLs expire: a later page shows fresh ones
    w.fd.expire_cdn_urls()
    w.bot.library._urls.clear()
    again = await say(w, w.a, "!find red circle")
    async with aiohttp.ClientSession() as http:
        async with http.get(again["embeds"][0]["image"]["url"]) as r:
            assert r.status == 200

    # a live post is indexed; one in a channel outside the library is not
    await post_pics(w, w.a, [("yellow", "triangle", 300)])
    await post_pics(w, w.a, [("yellow", "triangle", 301)], chan=w.a.other)
    await w.fd.wait_for(lambda: len(sources(w, w.a)) == 7)
    await asyncio.sleep(0.2)
    assert len(sources(w, w.a)) == 7
    live = await say(w, w.a, "!find yellow triangle")
    assert live["embeds"][0]["title"].endswith("alpha-yellow-triangle-300.png")

    # isolation: B's searches, pages and errors never show anything of A
    b_page = await say(w, w.b, "!find red circle")
    assert b_page["content"].startswith("**Results 1–")
    seen = [b_page]
    mid = b_page["id"]
    while "no more results" not in seen[-1]["content"]:  # every page, to the end
        assert len(seen) < 8
        await w.fd.wait_for(lambda: w.fd.bot_user_id in w.fd.get_message(w.b.cmd, mid)[
            "reactions"].get("▶️", []))
        before = seen[-1]["content"]
        await w.fd.add_reaction(w.b.cmd, mid, w.b.admin, "▶️")
        seen.append(await w.fd.wait_for(
            lambda before=before: (m := w.fd.get_message(w.b.cmd, mid))["content"] != before and m))
        await w.fd.wait_for(lambda: w.b.admin not in w.fd.get_message(w.b.cmd, mid)[
            "reactions"].get("▶️", []))
    assert sum(len(linked([e])) for m in seen[:-1] for e in m["embeds"]) == 6  # all of B's
    seen.append(await say(w, w.b, "!find yellow triangle*1 green square*1"))
    seen.append(await say(w, w.b, "!library status"))
    for m in seen:
        blob = json.dumps(m, default=lambda o: "<bytes>")
        for secret in ("alpha-", str(w.a.guild), str(w.a.pics), str(w.a.member), *red_ids):
            assert secret not in blob, (secret, m["content"])
    assert all(e["url"].startswith(f"https://discord.com/channels/{w.b.guild}/")
               for m in seen for e in m["embeds"])
    status = await say(w, w.a, "!library status")
    assert f"<#{w.a.pics}>: 7 images" in status["content"] and "up to date" in status["content"]
    if w.settings.store == "milvus":  # both libraries are views of one Milvus collection
        ca, cb = (w.bot.library.guilds[s.guild].engine.collection for s in (w.a, w.b))
        assert ca.name == cb.name and (ca.guild_id, cb.guild_id) == (w.a.guild, w.b.guild)


@both_stores
async def test_deletions_remove_items_from_search(world):
    w = world
    w.a.tag = "alpha"
    msgs = await post_pics(w, w.a, [("red", "circle", i) for i in range(3)]
                           + [("blue", "square", 10 + i) for i in range(3)])
    side = await post_pics(w, w.a, [("green", "triangle", 20)], chan=w.a.other, prefix="side")
    await w.start()
    await add_and_wait(w, w.a)
    await add_and_wait(w, w.a, w.a.other)
    assert len(sources(w, w.a)) == 7

    def in_search(page, message) -> bool:  # as a result or a near-copy listed under one
        return str(message["id"]) in linked(page["embeds"])

    # one message deleted
    first = await say(w, w.a, "!find red circle")
    assert in_search(first, msgs[0])
    await w.fd.delete_message(w.a.pics, msgs[0]["id"])
    await w.fd.wait_for(lambda: len(sources(w, w.a)) == 6)
    assert not in_search(await say(w, w.a, "!find red circle"), msgs[0])
    # bulk delete
    await w.fd.bulk_delete(w.a.pics, [msgs[1]["id"], msgs[3]["id"]])
    await w.fd.wait_for(lambda: len(sources(w, w.a)) == 4)
    page = await say(w, w.a, "!find red circle")
    assert not in_search(page, msgs[1]) and not in_search(page, msgs[3])
    # `!library remove`
    reply = await say(w, w.a, f"!library remove <#{w.a.other}>")
    assert reply["content"] == f"📚 <#{w.a.other}> removed from the library: 1 images forgotten"
    assert not in_search(await say(w, w.a, "!find green triangle"), side[0])
    assert len(sources(w, w.a)) == 3
    assert (await say(w, w.a, f"!library remove <#{w.a.other}>"))["content"].endswith(
        "is not in the library")
    # a deleted channel: its items go; the last channel gone, the library goes
    spaces, key = w.bot.library.spaces, str(w.a.guild)
    assert spaces.exists(key)
    await w.fd.delete_channel(w.a.pics)
    await w.fd.wait_for(lambda: w.a.guild not in w.bot.library.guilds and not spaces.exists(key))
    page = await say(w, w.a, "!find red circle")  # back to the global collection
    assert page["embeds"] and not any("discord.com" in e.get("url", "") for e in page["embeds"])


@both_stores
async def test_leaving_a_server_drops_its_library(world):
    w = world
    w.a.tag, w.b.tag = "alpha", "beta"
    await post_pics(w, w.a, [("red", "circle", 1)])
    await post_pics(w, w.b, [("red", "circle", 2)])
    await w.start()
    await add_and_wait(w, w.a)
    await add_and_wait(w, w.b)
    spaces = w.bot.library.spaces
    assert spaces.exists(str(w.a.guild)) and spaces.exists(str(w.b.guild))
    await w.fd.remove_guild(w.a.guild)
    await w.fd.wait_for(lambda: not spaces.exists(str(w.a.guild)))
    assert w.a.guild not in w.bot.library.guilds
    assert len(sources(w, w.b)) == 1  # the other server keeps its library


async def test_backfill_resumes_after_a_restart_nothing_lost_nothing_twice(world, monkeypatch):
    w = world
    w.a.tag = "alpha"
    colours = ["red", "green", "blue", "yellow", "purple", "white"]
    specs = [(colours[i % 6], ("circle", "square", "triangle")[i % 3], i) for i in range(30)]
    posted = await post_pics(w, w.a, specs)
    await w.fd.post_message(w.a.pics, w.a.member, "same picture again",
                            attachments=[("alpha-again.png", pic(*specs[0]), None)])
    monkeypatch.setattr(library_mod, "CHUNK_IMAGES", 3)
    real_add = library_mod.Library._add

    async def slow_add(self, g, items, blobs):
        await asyncio.sleep(0.1)
        return await real_add(self, g, items, blobs)

    monkeypatch.setattr(library_mod.Library, "_add", slow_add)
    await w.start()
    msg = await say(w, w.a, f"!library add <#{w.a.pics}>")
    meta = w.settings.library_root / str(w.a.guild) / "meta.sqlite"

    def saved():  # the progress as the store holds it (another process would read this)
        if not meta.exists():
            return None
        db = sqlite3.connect(f"file:{meta}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT value FROM records WHERE name = ?",
                             (STATE_RECORD,)).fetchone()
        except sqlite3.OperationalError:  # no records table yet
            row = None
        finally:
            db.close()
        return json.loads(row[0])["channels"].get(str(w.a.pics)) if row else None

    await w.fd.wait_for(lambda: (s := saved()) and s["scanned"] >= 9 and s)
    await w.stop()  # mid-backfill
    stopped = saved()
    assert not stopped["done"] and 0 < stopped["last"] < posted[-1]["id"]
    n_before = len(w.fd.calls("GET", rf"/channels/{w.a.pics}/messages"))

    monkeypatch.setattr(library_mod.Library, "_add", real_add)
    await w.start()  # resumes on its own, from where it stopped
    await w.fd.wait_for(lambda: (s := saved()) and s["done"], 30)
    history = w.fd.calls("GET", rf"/channels/{w.a.pics}/messages")[n_before:]
    afters = [int(r.query["after"]) for r in history if "after" in r.query]
    assert afters and afters[0] == stopped["last"]  # not from the beginning
    got = sorted(w.bot.library.guilds[w.a.guild].engine.collection.stamps())
    want = sorted(f"discord:{w.a.guild}/{w.a.pics}/{m['id']}/{m['attachments'][0]['id']}"
                  for m in posted)
    assert got == want  # every picture once; the repeated picture not stored again
    # the same status message says so
    await w.fd.wait_for(lambda: "done" in w.fd.get_message(w.a.cmd, msg["id"])["content"])


def source(s, msg, i: int = 0) -> str:
    """The library source of attachment `i` of a posted message."""
    return f"discord:{s.guild}/{msg['channel_id']}/{msg['id']}/{msg['attachments'][i]['id']}"


def seen_by_library(w, s, msg) -> bool:
    """Every picture of `msg` is in the library's posts (stored, or a repeat of one)."""
    want = {source(s, msg, i) for i in range(len(msg["attachments"]))}
    return w.bot.library.guilds[s.guild].engine.known(sorted(want)) == want


def shown(page, msg) -> bool:
    return any(e["url"].endswith(f"/{msg['id']}") for e in page["embeds"])


def titles(page) -> set[str]:
    return {e["title"].split(" · ", 1)[1] for e in page["embeds"]}


async def test_a_picture_stays_while_any_post_of_it_remains(world):
    """The same picture, posted three times (two read by the backfill, one live), is stored
    once. Deleting its posts (one, then in bulk after a restart) keeps it, shown through a
    post left; deleting the channel of its last post removes it."""
    w = world
    same = pic("red", "circle", 0)
    first = await w.fd.post_message(w.a.pics, w.a.member, "mine",
                                    attachments=[("first.png", same, None)])
    fillers = await post_pics(w, w.a, [("blue", "square", 1), ("green", "triangle", 2)],
                              prefix="alpha")
    again = await w.fd.post_message(w.a.pics, w.a.admin, "again",
                                    attachments=[("again.png", same, None)])
    await w.start()
    await add_and_wait(w, w.a)
    await add_and_wait(w, w.a, w.a.other)
    third = await w.fd.post_message(w.a.other, w.a.member, "and again",
                                    attachments=[("third.png", same, None)])
    await w.fd.wait_for(lambda: seen_by_library(w, w.a, third))
    assert sources(w, w.a) == {source(w.a, m) for m in (first, *fillers)}

    # the first post deleted: the picture stays, its card now the second post's
    await w.fd.delete_message(w.a.pics, first["id"])
    await w.fd.wait_for(lambda: source(w.a, again) in sources(w, w.a))
    page = await say(w, w.a, "!find red circle")
    assert shown(page, again) and not shown(page, first)
    assert "again.png" in titles(page) and "first.png" not in titles(page)
    card = next(e for e in page["embeds"] if e["url"].endswith(f"/{again['id']}"))
    assert f"<@{w.a.admin}>" in card["description"] and f"<#{w.a.pics}>" in card["description"]
    status = await say(w, w.a, "!library status")
    assert "2 channel(s), 3 images" in status["content"], status["content"]

    # after a restart (what the library knows is on disk), a bulk delete of the second post
    # and a filler: the picture stays through the third post, in the other channel
    await w.stop()
    await w.start()
    await w.fd.bulk_delete(w.a.pics, [again["id"], fillers[0]["id"]])
    await w.fd.wait_for(lambda: sources(w, w.a) == {source(w.a, third), source(w.a, fillers[1])})
    page = await say(w, w.a, "!find red circle")
    assert shown(page, third) and titles(page) == {"third.png", "alpha-green-triangle-2.png"}
    assert f"<#{w.a.other}>" in page["embeds"][0]["description"]

    # the channel of its last post deleted: the picture is gone
    await w.fd.delete_channel(w.a.other)
    await w.fd.wait_for(lambda: sources(w, w.a) == {source(w.a, fillers[1])})
    page = await say(w, w.a, "!find red circle")
    assert titles(page) == {"alpha-green-triangle-2.png"}
    status = await say(w, w.a, "!library status")
    assert "1 channel(s), 1 images" in status["content"], status["content"]


async def test_an_attachment_edited_out_of_its_message_leaves_the_library(world):
    """A message with two pictures is edited: a picture that another post also shows stays
    (shown through that post); one that no other post shows leaves the library."""
    w = world
    await post_pics(w, w.a, [("blue", "square", 1)], prefix="alpha")
    await w.start()
    await add_and_wait(w, w.a)
    red, green = pic("red", "circle", 0), pic("green", "triangle", 2)
    both = await w.fd.post_message(w.a.pics, w.a.member, "two",
                                   attachments=[("red.png", red, None), ("green.png", green, None)])
    repeat = await w.fd.post_message(w.a.pics, w.a.admin, "green again",
                                     attachments=[("green-again.png", green, None)])
    await w.fd.wait_for(lambda: seen_by_library(w, w.a, both) and seen_by_library(w, w.a, repeat))
    assert len(sources(w, w.a)) == 3
    red_att = both["attachments"][0]["id"]

    await w.fd.edit_message(w.a.pics, both["id"], "two pictures")  # the text only: no change
    await w.fd.edit_message(w.a.pics, both["id"], keep_attachments=[red_att])
    await w.fd.wait_for(lambda: source(w.a, repeat) in sources(w, w.a))
    assert len(sources(w, w.a)) == 3
    page = await say(w, w.a, "!find green triangle")
    assert titles(page) == {"red.png", "green-again.png", "alpha-blue-square-1.png"}
    assert shown(page, repeat) and shown(page, both)

    await w.fd.edit_message(w.a.pics, both["id"], keep_attachments=[])
    await w.fd.wait_for(lambda: len(sources(w, w.a)) == 2)
    page = await say(w, w.a, "!find red circle")
    assert titles(page) == {"green-again.png", "alpha-blue-square-1.png"}
    status = await say(w, w.a, "!library status")
    assert "1 channel(s), 2 images" in status["content"], status["content"]


async def test_filters_resolve_in_the_asking_server_and_narrow_its_library(world):
    """in:#name / from:@name typed as text resolve to this server's channel and member;
    another server's channel is refused without naming it; unknown names get one line."""
    w = world
    w.a.tag = "alpha"
    await post_pics(w, w.a, [("red", "circle", i) for i in range(2)])  # a-member in #pics
    await post_pics(w, w.a, [("red", "circle", 10 + i) for i in range(2)], chan=w.a.other,
                    author=w.a.admin)  # a-admin in #chat
    await w.start()
    await add_and_wait(w, w.a)
    await add_and_wait(w, w.a, w.a.other)

    def posts(page) -> set[tuple[str, str]]:
        """(channel, message) of every post a page links to: its cards and their near-copies
        (to the bundled model these red circles are near-copies of each other)."""
        found = set()
        for e in page["embeds"]:
            found.add(tuple(e["url"].rsplit("/", 2)[1:]))
            found.update(re.findall(r"\]\(https://discord\.com/channels/\d+/(\d+)/(\d+)\)",
                                    e.get("description") or ""))
        return found

    def where(page) -> set[str]:
        return {channel for channel, _ in posts(page)}

    everything = await say(w, w.a, "!find red circle")
    assert len(posts(everything)) == 4
    pics = await say(w, w.a, "!find red circle in:#pics")
    assert len(posts(pics)) == 2 and where(pics) == {str(w.a.pics)}
    by_admin = await say(w, w.a, "!find red circle from:@a-admin in:#pics in:#chat")
    assert len(posts(by_admin)) == 2 and where(by_admin) == {str(w.a.other)}
    mention = await say(w, w.a, f"!find red circle in:<#{w.a.pics}> from:<@{w.a.member}>")
    assert where(mention) == {str(w.a.pics)} and len(posts(mention)) == 2
    other = await say(w, w.a, f"!find red circle in:<#{w.b.pics}>")
    assert "not one of this server's" in other["content"] and not other["embeds"]
    assert str(w.b.pics) not in other["content"] and "pics" not in other["content"]
    for text, words in (("in:#nope", "no such channel"), ("from:@nobody", "no member")):
        reply = await say(w, w.a, f"!find red circle {text}")
        assert words in reply["content"] and "\n" not in reply["content"]
