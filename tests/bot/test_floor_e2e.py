"""The relevance floor and near-copies as a member sees them: the real bot, the loopback
Discord, a library where every picture was posted three times (re-encoded) and some
concepts are missing altogether."""

from __future__ import annotations

import asyncio
import io
from types import SimpleNamespace

import pytest
from botutil import close_bots, settle
from fakediscord import FakeDiscord
from PIL import Image

from bot.app import ClipfindBot
from bot.paginate import NEXT, PREV
from index.engine import Engine
from index.quality import lacking_gallery
from index.store import Collection, NewItem
from index.synthetic import render

PICTURES = 40  # each posted three times: 120 items, enough for a floor


def _encoded(img: Image.Image, scale: float, quality: int | None) -> bytes:
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, "JPEG" if quality else "PNG", **({"quality": quality} if quality else {}))
    return buf.getvalue()


@pytest.fixture(scope="module")
def reposts(tmp_path_factory, engine):
    """(engine on the reposted library, concepts it lacks); shares the demo engine's encoder."""
    scenes, lack = lacking_gallery(PICTURES, 21)
    coll = Collection.create(tmp_path_factory.mktemp("reposts") / "c", engine.collection.manifest.model,
                             engine.encoder.dim)
    lib = Engine(coll, engine.encoder, owns_encoder=False)
    items, data = [], []
    for i, s in enumerate(scenes):
        img = render(s)
        for j, (scale, quality) in enumerate([(1.0, None), (0.8, 75), (1.25, 90)]):
            items.append(NewItem(source=f"/reposts/{i}-{j}.png", title=f"picture {i}"))
            data.append(_encoded(img, scale, quality))
    report = asyncio.run(lib.add_images(items, data))
    assert len(report.ids) == 3 * PICTURES, report
    yield lib, lack
    lib.close()


@pytest.fixture
async def world(settings, reposts):
    lib, lack = reposts
    async with FakeDiscord() as fd, fd.patch_discord():
        guild = fd.add_guild("reposts")
        chan = fd.add_channel(guild, "search")
        alice = fd.add_member(guild, "alice")
        bot = ClipfindBot(settings, engine=lib, guild_ready_timeout=0.05)
        task = asyncio.create_task(bot.start(fd.token))
        await fd.wait_ready()
        await asyncio.wait_for(bot.wait_until_ready(), 10)
        try:
            yield SimpleNamespace(fd=fd, chan=chan, alice=alice, lack=lack, engine=lib)
        finally:
            await close_bots([(bot, task)])
    await settle()


async def ask(w, content: str):
    before = len(w.fd.bot_messages(w.chan))
    await w.fd.post_message(w.chan, w.alice, content)
    return (await w.fd.wait_for(lambda: w.fd.bot_messages(w.chan)[before:] or None))[0]


async def press(w, msg, emoji, head: str):
    """Alice presses a control; the message once its content starts with `head`."""
    await w.fd.wait_for(lambda: w.fd.bot_user_id in
                        w.fd.get_message(w.chan, msg["id"])["reactions"].get(emoji, []))
    await w.fd.add_reaction(w.chan, msg["id"], w.alice, emoji)
    got = await w.fd.wait_for(
        lambda: (m := w.fd.get_message(w.chan, msg["id"]))["content"].startswith(head) and m)
    await w.fd.wait_for(
        lambda: w.alice not in w.fd.get_message(w.chan, msg["id"])["reactions"].get(emoji, []))
    return got


def pictures(msg) -> list[str]:
    return [e["title"].split(" · ", 1)[1] for e in msg["embeds"]]


async def test_a_page_of_reposts_shows_five_distinct_pictures_and_the_next_page_others(
        world, monkeypatch):
    monkeypatch.setattr(world.engine.options, "relevance_floor", False)  # copies alone here
    msg = await ask(world, "!find red")
    assert msg["content"].startswith("**Results 1–5**"), msg["content"]
    first = pictures(msg)
    assert len(set(first)) == 5
    assert any("+2 near-copies" in (e.get("description") or "") for e in msg["embeds"])
    second = await press(world, msg, NEXT, "**Results 6–")
    assert len(set(pictures(second))) == len(second["embeds"])
    assert not set(first) & set(pictures(second))  # no copy comes back on the next page


async def test_an_absent_concept_gets_no_good_match_and_the_weak_ones_on_request(world):
    absent = world.lack[0]
    msg = await ask(world, f"!find {absent}")
    assert msg["content"].startswith(f"no good match for `{absent}*1`"), msg["content"]
    assert "under this collection's relevance floor" in msg["content"]
    assert "\n" not in msg["content"] and msg["embeds"] == []
    weak = await press(world, msg, NEXT, "**Weak matches 1–5**")
    assert len(weak["embeds"]) == 5 and "(under the relevance floor)" in weak["content"]
    back = await press(world, msg, PREV, "no good match")
    assert back["embeds"] == []
