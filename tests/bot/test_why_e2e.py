"""`!why N`, `/why N` and the 🔍 control end to end: the real bot against the loopback Discord."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace

from PIL import Image
from test_e2e import ask, controls_on, world  # noqa: F401  (world is a fixture)

from bot.paginate import WHY


def overlay_of(msg) -> Image.Image:
    (att,) = [a for a in msg["attachments"] if a["filename"].startswith("why-")]
    return Image.open(io.BytesIO(att["data"]))


async def test_why_n_replying_to_a_result_page(world):  # noqa: F811
    w = world
    page = await ask(w, "!find red circle*1 blue square*2")
    await controls_on(w, page)
    assert w.fd.bot_user_id in w.fd.get_message(w.chan, page["id"])["reactions"].get(WHY, [])
    answer = await ask(w, "!why 2", reply_to=page["id"])
    assert answer["content"].startswith("**Why #2** for `red circle*1 blue square*2`")
    im = overlay_of(answer)
    assert im.format == "PNG" and im.text["Panels"] == "3"
    assert im.text["Labels"] == "query | red circle*1 | blue square*2"
    # bad input: one line each, no picture
    for author, text, says in [
        (w.bob, "!why 1", "only the member who searched"),
        (w.alice, "!why 9", "#9 is not on this page: it shows #1–#5"),
        (w.alice, "!why two", "which result?"),
    ]:
        msg = await ask(w, text, author=author, reply_to=page["id"])
        assert says in msg["content"] and "\n" not in msg["content"], msg["content"]
        assert not msg["attachments"]
    note = await ask(w, "!why 1", reply_to=answer["id"])  # the heatmap is no result page
    assert "no result page I can still explain" in note["content"]
    # the page itself is untouched
    assert w.fd.get_message(w.chan, page["id"])["content"] == page["content"]


async def test_why_without_a_reply_means_the_members_latest_page(world):  # noqa: F811
    w = world
    first = await ask(w, "!find green triangle")
    await controls_on(w, first)
    msg = await ask(w, "!why 1")
    assert msg["content"].startswith("**Why #1** for `green triangle*1`")
    assert overlay_of(msg).text["Panels"] == "1"
    msg = await ask(w, "!why 1", author=w.bob)  # bob has no page here
    assert "search first with !find" in msg["content"] and not msg["attachments"]


async def test_the_magnifier_explains_the_page_in_turn_for_the_asker_only(world):  # noqa: F811
    w = world
    page = await ask(w, "!find blue square")
    await controls_on(w, page)
    mid = page["id"]
    before = len(w.fd.bot_messages(w.chan))
    await w.fd.add_reaction(w.chan, mid, w.bob, WHY)  # not his: taken off, nothing drawn
    await w.fd.wait_for(lambda: w.bob not in w.fd.get_message(w.chan, mid)["reactions"].get(WHY, []))
    await asyncio.sleep(0.3)
    assert len(w.fd.bot_messages(w.chan)) == before
    for rank in (1, 2):
        await w.fd.add_reaction(w.chan, mid, w.alice, WHY)
        msg = (await w.fd.wait_for(lambda n=before: w.fd.bot_messages(w.chan)[n:] or None))[0]
        before += 1
        assert msg["content"].startswith(f"**Why #{rank}** for `blue square*1`"), msg["content"]
        assert msg["reply_to"] == mid
        # her reaction is taken off (Manage Messages), so the next press is a new one
        await w.fd.wait_for(lambda: w.alice not in w.fd.get_message(w.chan, mid)["reactions"].get(WHY, []))


async def test_slash_why_answers_only_the_asker(world, settings):  # noqa: F811
    w = world
    await w.restart(replace(settings, sync_commands=True))
    assert "why" in {c["name"] for c in w.fd.app_commands()}
    rec = await w.fd.invoke_slash(w.chan, w.alice, "find", {"query": "red circle"})
    pages = await w.fd.wait_for(lambda: [m for m in w.fd.interaction_messages(rec) if m["embeds"]])
    await controls_on(w, pages[0])
    rec = await w.fd.invoke_slash(w.chan, w.alice, "why", {"n": "3"})
    msgs = await w.fd.wait_for(lambda: [m for m in w.fd.interaction_messages(rec) if m["attachments"]])
    assert msgs[0]["content"].startswith("**Why #3**")
    assert msgs[0]["flags"] & 64  # ephemeral: only alice sees it
