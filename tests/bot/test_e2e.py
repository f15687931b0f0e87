"""End to end: the real bot (discord.py, unmodified) against the loopback Discord.

Every assertion is on what the bot really sent to the fake server: message content,
embeds, uploaded files, reactions, edits.
"""

from __future__ import annotations

import asyncio
import io
import logging
import threading
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
from botutil import bomb_png, close_bots, noise_png, quiesce, settle
from fakediscord import FakeDiscord
from PIL import Image

from bot.app import ClipfindBot, open_engine, setup_logging
from bot.core import BUSY, NOT_READY
from bot.paginate import NEXT, PREV, STOP
from index.errors import Busy, StoreError

CONTROLS = [PREV, NEXT, STOP]


@pytest.fixture
async def world(settings, engine):
    async with FakeDiscord() as fd, fd.patch_discord():
        guild = fd.add_guild("shapes")
        chan = fd.add_channel(guild, "search")
        alice = fd.add_member(guild, "alice")
        bob = fd.add_member(guild, "bob")
        w = SimpleNamespace(fd=fd, guild=guild, chan=chan, alice=alice, bob=bob, bots=[])

        async def start(settings=settings, engine=engine, **kw):
            bot = ClipfindBot(settings, engine=engine, guild_ready_timeout=0.05, **kw)
            task = asyncio.create_task(bot.start(fd.token))
            w.bots.append((bot, task))
            await fd.wait_ready()
            await asyncio.wait_for(bot.wait_until_ready(), 10)
            return bot

        async def restart(settings):
            await quiesce()
            await w.bot.close()
            w.bot = await start(settings)
            return w.bot

        w.start = start
        w.restart = restart
        w.bot = await start()
        try:
            yield w
        finally:
            await close_bots(w.bots)
    await settle()


async def ask(w, content: str, *, author=None, attachments=(), reply_to=None, chan=None):
    """Post as a member; the bot's first new message in answer."""
    chan = chan or w.chan
    before = len(w.fd.bot_messages(chan))
    await w.fd.post_message(chan, author or w.alice, content, attachments=list(attachments),
                            reply_to=reply_to)
    msgs = await w.fd.wait_for(lambda: w.fd.bot_messages(chan)[before:] or None)
    return msgs[0]


async def controls_on(w, msg):
    def ok():
        m = w.fd.get_message(w.chan, msg["id"])
        return all(w.fd.bot_user_id in m["reactions"].get(e, []) for e in CONTROLS) and m
    return await w.fd.wait_for(ok)


def assert_result_page(msg, first: int, last: int):
    assert msg["content"].startswith(f"**Results {first}–{last}**"), msg["content"]
    assert len(msg["embeds"]) == last - first + 1
    names = {a["filename"] for a in msg["attachments"]}
    for rank, e in zip(range(first, last + 1), msg["embeds"], strict=True):
        assert e["title"].startswith(f"#{rank} · ")
        assert e["footer"]["text"].startswith("score ")
        assert f"result-{rank}.jpg" in names
        assert e["image"]["url"].startswith("http://127.0.0.1")  # the CDN URL of the upload
    for a in msg["attachments"]:
        img = Image.open(io.BytesIO(a["data"]))
        assert img.format in ("JPEG", "PNG")


async def test_find_answers_with_embeds_thumbnails_weights_and_controls(world):
    w = world
    msg = await ask(w, "!find red circle*1 blue square*2")
    assert_result_page(msg, 1, 5)
    assert "word weights: red " in msg["content"] and "(×2)" in msg["content"]
    files = {a["filename"]: a for a in msg["attachments"]}
    assert set(files) == {f"result-{i}.jpg" for i in range(1, 6)} | {"word-weights.png"}
    png = Image.open(io.BytesIO(files["word-weights.png"]["data"]))
    assert png.format == "PNG" and png.text["Rows"] == "2"
    assert sum(a["size"] for a in msg["attachments"]) < 10 * 2**20
    await controls_on(w, msg)


async def test_page_turns_edit_the_same_message_and_only_for_the_asker(world):
    w = world
    msg = await ask(w, "!find green triangle")
    await controls_on(w, msg)
    mid = msg["id"]
    # bob cannot turn alice's pages; his reaction is taken off (the bot has Manage Messages)
    await w.fd.add_reaction(w.chan, mid, w.bob, NEXT)
    await w.fd.wait_for(lambda: w.bob not in w.fd.get_message(w.chan, mid)["reactions"].get(NEXT, []))
    await asyncio.sleep(0.2)
    assert w.fd.get_message(w.chan, mid)["content"] == msg["content"]
    # alice turns: the same message now shows results 6-10, attachments replaced
    await w.fd.add_reaction(w.chan, mid, w.alice, NEXT)
    page2 = await w.fd.wait_for(
        lambda: (m := w.fd.get_message(w.chan, mid))["content"].startswith("**Results 6–10**") and m)
    assert_result_page(page2, 6, 10)
    assert {a["filename"] for a in page2["attachments"]} == (
        {f"result-{i}.jpg" for i in range(6, 11)} | {"word-weights.png"})
    assert len(w.fd.bot_messages(w.chan)) == 1  # no new message
    # her reaction was removed so she can press again
    await w.fd.wait_for(lambda: w.alice not in w.fd.get_message(w.chan, mid)["reactions"].get(NEXT, []))
    await w.fd.add_reaction(w.chan, mid, w.alice, PREV)
    back = await w.fd.wait_for(
        lambda: (m := w.fd.get_message(w.chan, mid))["content"].startswith("**Results 1–5**") and m)
    assert_result_page(back, 1, 5)
    # ⏹️ takes the controls off; later presses do nothing
    await w.fd.add_reaction(w.chan, mid, w.alice, STOP)
    await w.fd.wait_for(lambda: not any(
        w.fd.bot_user_id in users for users in w.fd.get_message(w.chan, mid)["reactions"].values()))
    await w.fd.add_reaction(w.chan, mid, w.alice, NEXT)
    await asyncio.sleep(0.2)
    assert w.fd.get_message(w.chan, mid)["content"].startswith("**Results 1–5**")


async def test_paging_past_the_end_says_so(world, settings, engine):
    w = world
    bot = await w.restart(replace(settings, results_per_page=10))
    assert bot.is_ready()
    msg = await ask(w, "!find purple")
    await controls_on(w, msg)
    mid = msg["id"]
    # distinct pictures: near-copies are one result (index/nearcopies.py)
    n = len((await engine.search("purple", k=len(engine.collection), explain=False)).hits)
    pages = -(-n // 10)
    for page in range(1, pages):
        await w.fd.add_reaction(w.chan, mid, w.alice, NEXT)
        first = page * 10 + 1
        await w.fd.wait_for(lambda first=first: w.fd.get_message(w.chan, mid)["content"]
                            .startswith(f"**Results {first}–"))
        await w.fd.wait_for(lambda: w.alice not in w.fd.get_message(w.chan, mid)["reactions"].get(NEXT, []))
    last = w.fd.get_message(w.chan, mid)
    assert_result_page(last, (pages - 1) * 10 + 1, n)
    await w.fd.add_reaction(w.chan, mid, w.alice, NEXT)
    end = await w.fd.wait_for(
        lambda: "no more results" in (m := w.fd.get_message(w.chan, mid))["content"] and m)
    assert f"#{n} was the last match" in end["content"]
    assert len(end["embeds"]) == n - (pages - 1) * 10  # the last page stays on show, not an empty one


async def test_paging_without_manage_messages(world):
    w = world
    w.fd.set_bot_permissions(w.chan, manage_messages=False)
    await asyncio.sleep(0.1)
    msg = await ask(w, "!find yellow")
    await controls_on(w, msg)
    mid = msg["id"]
    await w.fd.add_reaction(w.chan, mid, w.bob, NEXT)  # cannot be removed: ignored
    await w.fd.add_reaction(w.chan, mid, w.alice, NEXT)
    await w.fd.wait_for(lambda: w.fd.get_message(w.chan, mid)["content"].startswith("**Results 6–10**"))
    assert w.bob in w.fd.get_message(w.chan, mid)["reactions"][NEXT]
    # the asker toggles: removing her ▶️ and adding ◀️ both count
    await w.fd.remove_reaction(w.chan, mid, w.alice, NEXT)
    await w.fd.wait_for(lambda: w.fd.get_message(w.chan, mid)["content"].startswith("**Results 11–15**"))
    await w.fd.add_reaction(w.chan, mid, w.alice, PREV)
    await w.fd.wait_for(lambda: w.fd.get_message(w.chan, mid)["content"].startswith("**Results 6–10**"))


async def test_controls_go_after_the_timeout(world, settings):
    w = world
    await w.restart(replace(settings, paging_timeout_s=1.0))
    msg = await ask(w, "!find white")
    await controls_on(w, msg)
    t0 = time.monotonic()
    await w.fd.wait_for(lambda: not any(
        w.fd.bot_user_id in u for u in w.fd.get_message(w.chan, msg["id"])["reactions"].values()),
        timeout=5)
    assert time.monotonic() - t0 > 0.5


@pytest.mark.parametrize("content, attachments, words", [
    ("!find", [], ["empty query"]),
    ("!find red*x", [], ["not a plain number"]),
    ("!find dog*-1", [], ["no term has a positive weight"]),
    ("!find " + " ".join(f"w{i}*1" for i in range(17)), [], ["too many terms"]),
    ("!find #3 cars", [("a.png", noise_png(), "image/png")], ["'#3'", "1 image is attached"]),
    ("!find cats", [("notes.txt", b"hello", "text/plain")], ["notes.txt", "not an image"]),
    ("!find cats", [("broken.png", noise_png()[:200], "image/png")], ["truncated or corrupt"]),
    ("!find cats", [("bomb.png", bomb_png(), "image/png")], ["bomb.png", "too large"]),
    ("!find cats http://127.0.0.1:1/x.png", [], ["refused", "loopback"]),
    ("!find cats http://192.168.1.1/x.png", [], ["refused", "private"]),
])
async def test_bad_input_gets_one_line_and_the_bot_keeps_serving(world, content, attachments, words):
    w = world
    msg = await ask(w, content, attachments=attachments)
    assert msg["embeds"] == [] and msg["attachments"] == []
    assert "\n" not in msg["content"]
    for word in words:
        assert word in msg["content"], (word, msg["content"])
    ok = await ask(w, "!find red", author=w.bob)
    assert_result_page(ok, 1, 5)


async def test_oversize_attachment_is_refused_before_download(world, settings):
    w = world
    await w.restart(replace(settings, max_attachment_bytes=2048))
    big = noise_png(200)
    assert len(big) > 2048
    cdn_before = len(w.fd.cdn_requests)
    msg = await ask(w, "!find cats", attachments=[("big.png", big, "image/png")])
    assert "big.png: too large" in msg["content"] and "\n" not in msg["content"]
    assert len(w.fd.cdn_requests) == cdn_before  # never downloaded


async def test_a_query_with_an_attached_image(world):
    w = world
    msg = await ask(w, "!find #1*0.5 red circle", attachments=[("photo.png", noise_png(), "image/png")])
    assert_result_page(msg, 1, 5)
    assert "#1*0.5" in msg["content"]
    assert w.fd.cdn_requests  # the bot downloaded the attachment from the CDN


async def test_images_of_the_replied_to_message(world):
    w = world
    pic = await w.fd.post_message(w.chan, w.bob, "look", attachments=[("p.png", noise_png(seed=4), "image/png")])
    msg = await ask(w, "!find blue", reply_to=pic["id"])
    assert_result_page(msg, 1, 5)
    assert "#1*1" in msg["content"]


async def test_slash_find_and_help(world, settings):
    w = world
    await w.restart(replace(settings, sync_commands=True))
    names = {c["name"] for c in w.fd.app_commands()}
    assert {"find", "help"} <= names
    rec = await w.fd.invoke_slash(w.chan, w.alice, "find", {"query": "red circle"})
    msgs = await w.fd.wait_for(lambda: [m for m in w.fd.interaction_messages(rec) if m["embeds"]])
    assert_result_page(msgs[0], 1, 5)
    # the slash answer pages like any other
    await controls_on(w, msgs[0])
    await w.fd.add_reaction(w.chan, msgs[0]["id"], w.alice, NEXT)
    page2 = await w.fd.wait_for(lambda: (m := w.fd.get_message(w.chan, msgs[0]["id"]))[
        "content"].startswith("**Results 6–10**") and m)
    assert_result_page(page2, 6, 10)
    rec = await w.fd.invoke_slash(w.chan, w.alice, "help", {})
    msgs = await w.fd.wait_for(lambda: [m for m in w.fd.interaction_messages(rec) if m["content"]])
    assert "/find query:" in msgs[0]["content"]


async def test_quotes_reach_the_grammar_intact(world):
    msg = await ask(world, '!find "red circle, big"*2 blue')
    assert msg["content"].startswith('**Results 1–5** for `"red circle, big"*2 blue*1`')


async def test_help_and_unknown_commands(world):
    w = world
    msg = await ask(w, "!help")
    assert "`!find red circle*1 blue square*2`" in msg["content"]
    await w.fd.post_message(w.chan, w.alice, "!nosuchcommand")
    await asyncio.sleep(0.2)
    assert len(w.fd.bot_messages(w.chan)) == 1  # unknown commands are left alone


async def test_not_ready_and_busy(world, settings, engine, monkeypatch):
    w = world
    w.bot.core.engine = None
    msg = await ask(w, "!find red")
    assert msg["content"] == NOT_READY
    w.bot.core.engine = engine

    async def busy(*a, **k):
        raise Busy()

    monkeypatch.setattr(engine, "search", busy)
    msg = await ask(w, "!find red")
    assert msg["content"] == BUSY
    monkeypatch.undo()
    assert_result_page(await ask(w, "!find red"), 1, 5)


async def test_cooldown(world, settings):
    w = world
    await w.restart(replace(settings, cooldown_rate=1, cooldown_per_s=60))
    assert_result_page(await ask(w, "!find red"), 1, 5)
    msg = await ask(w, "!find blue")
    assert msg["content"].startswith("slow down: you can search again in ")
    assert_result_page(await ask(w, "!find blue", author=w.bob), 1, 5)


async def test_allowed_channels(world, settings):
    w = world
    other = w.fd.add_channel(w.guild, "elsewhere")
    await w.restart(replace(settings, allowed_channels=(w.chan,)))
    await w.fd.post_message(other, w.alice, "!find red")
    await asyncio.sleep(0.3)
    assert w.fd.bot_messages(other) == []
    assert_result_page(await ask(w, "!find red"), 1, 5)


async def test_missing_permissions_are_logged_not_fatal(world, caplog):
    w = world
    quiet = w.fd.add_channel(w.guild, "read-only")
    w.fd.set_bot_permissions(quiet, send_messages=False)
    await asyncio.sleep(0.1)
    with caplog.at_level(logging.WARNING):
        await w.fd.post_message(quiet, w.alice, "!find red")
        await w.fd.wait_for(lambda: any("missing permissions" in r.getMessage() for r in caplog.records))
    assert w.fd.bot_messages(quiet) == []
    # no Attach Files: the text of the answer still comes, with a hint
    pics = w.fd.add_channel(w.guild, "no-files")
    w.fd.set_bot_permissions(pics, attach_files=False)
    await asyncio.sleep(0.1)
    msg = await ask(w, "!find red", chan=pics)
    assert "Attach Files" in msg["content"] and msg["attachments"] == []
    assert_result_page(await ask(w, "!find red"), 1, 5)


async def test_heartbeat_keeps_ticking_while_a_query_is_encoded(world, engine, monkeypatch):
    """The model's work runs on the encoder thread: the event loop stays free."""
    w = world
    enc = engine.encoder
    slow_s = 0.6
    real_forward = enc._forward

    def slow_forward(kind, inputs, *way, **how):  # runs on the encoder thread
        time.sleep(slow_s)
        return real_forward(kind, inputs, *way, **how)

    monkeypatch.setattr(enc, "_forward", slow_forward)
    ticks: list[float] = []
    stop = asyncio.Event()

    async def heartbeat():
        while not stop.is_set():
            ticks.append(time.perf_counter())
            await asyncio.sleep(0.01)

    hb = asyncio.create_task(heartbeat())
    t0 = time.perf_counter()
    msg = await ask(w, "!find a never seen phrase*1 #1", attachments=[("n.png", noise_png(seed=9), "image/png")])
    elapsed = time.perf_counter() - t0
    stop.set()
    await hb
    monkeypatch.undo()
    assert_result_page(msg, 1, 5)
    assert elapsed >= slow_s  # the query really waited on the model
    gaps = [b - a for a, b in zip(ticks, ticks[1:], strict=False)]
    assert len(ticks) > elapsed / 0.05
    assert max(gaps) < 0.25, max(gaps)


async def test_the_token_never_reaches_the_log(settings, engine):
    """A whole run's log output (DEBUG, discord.py included) has no trace of the token."""
    stream = io.StringIO()
    async with FakeDiscord() as fd, fd.patch_discord():
        guild = fd.add_guild("g")
        chan = fd.add_channel(guild, "c")
        alice = fd.add_member(guild, "alice")
        s = replace(settings, token=fd.token, log_level="DEBUG")
        handler = setup_logging(s, stream)
        logging.getLogger("discord").setLevel(logging.DEBUG)
        try:
            bot = ClipfindBot(s, engine=engine, guild_ready_timeout=0.05)
            task = asyncio.create_task(bot.start(s.token))
            await fd.wait_ready()
            await bot.wait_until_ready()
            await fd.post_message(chan, alice, "!find red")
            await fd.wait_for(lambda: fd.bot_messages(chan))
            logging.getLogger("bot").info("a line that mentions the token: %s", s.token)
            await quiesce()
            await bot.close()
            await task
        finally:
            logging.getLogger().removeHandler(handler)
            logging.getLogger().setLevel(logging.WARNING)
            logging.getLogger("discord").setLevel(logging.NOTSET)
    out = stream.getvalue()
    assert "connected as" in out and "[token hidden]" in out
    assert fd.token not in out
    assert fd.token.split(".")[1] not in out


async def test_the_engine_loads_while_the_gateway_connects(world, settings):
    """setup_hook opens the engine in a thread: the bot is online (and answers) before it."""
    w = world
    gate = threading.Event()

    def slow_open(s):
        assert gate.wait(10)
        return open_engine(s)

    await quiesce()
    await w.bot.close()
    bot = await w.start(engine=None, engine_opener=slow_open)
    msg = await ask(w, "!find red")
    assert msg["content"] == NOT_READY
    gate.set()
    await asyncio.wait_for(bot.wait_engine(), 30)
    assert_result_page(await ask(w, "!find red"), 1, 5)


async def test_an_engine_that_cannot_start_is_explained(world):
    w = world

    def broken(s):
        raise StoreError(f"{s.collection}: not a clipfind collection")

    await quiesce()
    await w.bot.close()
    bot = await w.start(engine=None, engine_opener=broken)
    await asyncio.wait_for(bot.wait_engine(), 10)
    msg = await ask(w, "!find red")
    assert msg["content"].startswith("the search engine could not start (")
    assert "not a clipfind collection" in msg["content"] and "operator" in msg["content"]


async def test_without_the_message_content_intent(settings, engine):
    """message_content = false: /find and a mention work where Discord blanks other content."""
    async with FakeDiscord(enforce_message_content=True, enabled_privileged_intents=()) as fd, \
            fd.patch_discord():
        guild = fd.add_guild("g")
        chan = fd.add_channel(guild, "c")
        alice = fd.add_member(guild, "alice")
        bot = ClipfindBot(replace(settings, message_content=False, sync_commands=True),
                          engine=engine, guild_ready_timeout=0.05)
        task = asyncio.create_task(bot.start(fd.token))
        try:
            await fd.wait_ready()
            await bot.wait_until_ready()
            await fd.post_message(chan, alice, f"<@{fd.bot_user_id}> find red circle")
            msg = (await fd.wait_for(lambda: fd.bot_messages(chan)))[0]
            assert_result_page(msg, 1, 5)
            rec = await fd.invoke_slash(chan, alice, "find", {"query": "blue"})
            await fd.wait_for(lambda: [m for m in fd.interaction_messages(rec) if m["embeds"]])
        finally:
            await quiesce()
            await bot.close()
            await task
    await settle()


async def test_run_bot_explains_a_refused_intent(settings, caplog):
    from bot.__main__ import run_bot

    async with FakeDiscord(enabled_privileged_intents=()) as fd, fd.patch_discord():
        fd.add_guild("g")
        s = replace(settings, token=fd.token)
        with caplog.at_level(logging.ERROR, logger="bot"):
            assert await asyncio.wait_for(run_bot(s, demo=False), 60) == 1
    assert any("Message Content intent" in r.getMessage() and "message_content = false"
               in r.getMessage() for r in caplog.records)
