"""End to end (the loopback Discord): what the bot's replies look like where it lacks
permissions, that echoed text cannot mislead or ping, and that slash refusals stay private."""

from __future__ import annotations

import asyncio
import re
from dataclasses import replace

from test_e2e import ask, controls_on, world  # noqa: F401 (world: the fixture)

from bot.paginate import NEXT

EPHEMERAL = 1 << 6
RLO = "\u202e"


async def test_without_attach_files_the_results_come_as_text_and_page(world):  # noqa: F811
    w = world
    chan = w.fd.add_channel(w.guild, "no-files")
    w.fd.set_bot_permissions(chan, attach_files=False)
    await asyncio.sleep(0.1)
    msg = await ask(w, "!find red circle", chan=chan)
    text = msg["content"]
    assert text.startswith("**Results 1–5**") and "▶️ for more" in text
    assert msg["attachments"] == [] and msg["embeds"] == []
    for rank in range(1, 6):  # rank, score and title of every result
        assert re.search(rf"^\*\*#{rank}\*\* 0\.\d{{3}} · \S", text, re.M), text
    assert "Attach Files permission" in text and "Embed Links" not in text
    # the text page has its controls and turns like any other
    def controls():
        m = w.fd.get_message(chan, msg["id"])
        return all(w.fd.bot_user_id in m["reactions"].get(e, []) for e in ("◀️", "▶️", "⏹️")) and m
    await w.fd.wait_for(controls)
    await w.fd.add_reaction(chan, msg["id"], w.alice, NEXT)
    page2 = await w.fd.wait_for(
        lambda: (m := w.fd.get_message(chan, msg["id"]))["content"].startswith("**Results 6–10**") and m)
    assert "**#6** " in page2["content"] and page2["attachments"] == [] and page2["embeds"] == []
    assert "Attach Files permission" in page2["content"]


async def test_without_embed_links_the_results_come_as_text_naming_embed_links(world):  # noqa: F811
    w = world
    chan = w.fd.add_channel(w.guild, "no-embeds")
    w.fd.set_bot_permissions(chan, embed_links=False)
    await asyncio.sleep(0.1)
    msg = await ask(w, "!find blue square", chan=chan)
    text = msg["content"]
    assert "**#1** " in text and "**#5** " in text
    assert "Embed Links permission" in text and "Attach Files" not in text
    assert msg["attachments"] == []  # no pictures uploaded that no embed would show


async def test_a_page_without_controls_does_not_point_at_them(world):  # noqa: F811
    w = world
    chan = w.fd.add_channel(w.guild, "no-reactions")
    w.fd.set_bot_permissions(chan, add_reactions=False)
    await asyncio.sleep(0.1)
    msg = await ask(w, "!find green", chan=chan)
    assert len(msg["embeds"]) == 5  # pictures are allowed here
    assert "▶️" not in msg["content"] and "Add Reactions permission" in msg["content"]
    await asyncio.sleep(0.3)
    assert w.fd.get_message(chan, msg["id"])["reactions"] == {}


def _sent_payloads(fd):
    """The JSON of every request that created or edited a message (channel messages,
    interaction responses, follow-ups and their edits)."""
    out = []
    for r in fd.request_log:
        body = r.json
        if r.method not in ("POST", "PATCH") or not isinstance(body, dict):
            continue
        if "/interactions/" in r.path:
            body = body.get("data") or {}
        elif not re.search(r"/messages(/\d+|/@original)?$|/webhooks/\d+/[^/]+$", r.path):
            continue
        if "content" in body or "embeds" in body:
            out.append((r.method, r.path, body))
    return out


async def test_echoed_text_never_pings_and_cannot_turn_lines_around(world, settings):  # noqa: F811
    w = world
    await w.restart(replace(settings, sync_commands=True))
    role = 4242
    mentions = f"@everyone @here <@{w.bob}> <@!{w.bob}> <@&{role}>"
    # the bot has Mention Everyone here (the fake's default): nothing may ping all the same
    page = await ask(w, f"!find red {RLO}circle {mentions}")
    await controls_on(w, page)
    await w.fd.add_reaction(w.chan, page["id"], w.alice, NEXT)  # an edit
    await w.fd.wait_for(lambda: w.fd.get_message(w.chan, page["id"])["content"].startswith(
        "**Results 6–10**"))
    refused = await ask(w, f"!find {RLO}{mentions}*abc")
    assert refused["content"].startswith("weight") or "usage" in refused["content"]
    rec = await w.fd.invoke_slash(w.chan, w.alice, "find", {"query": f"blue {RLO}{mentions}"})
    await w.fd.wait_for(lambda: [m for m in w.fd.interaction_messages(rec) if m["embeds"]])
    bad = await w.fd.invoke_slash(w.chan, w.alice, "find", {"query": f"{RLO}{mentions}*abc"})
    await w.fd.wait_for(lambda: w.fd.interaction_messages(bad))
    shown = [m["content"] for m in w.fd.bot_messages(w.chan)]
    shown += [m["content"] for r in (rec, bad) for m in w.fd.interaction_messages(r)]
    assert len(shown) >= 4 and not any(RLO in c for c in shown), shown
    payloads = _sent_payloads(w.fd)
    kinds = {("interactions" if "/interactions/" in p else "webhooks" if "/webhooks/" in p
              else "messages", m) for m, p, _ in payloads}
    assert {("messages", "POST"), ("messages", "PATCH"), ("interactions", "POST")} <= kinds, kinds
    for method, path, body in payloads:
        assert body.get("allowed_mentions") == {"parse": []}, (method, path, body)


async def test_slash_refusals_go_to_the_member_alone(world, settings):  # noqa: F811
    w = world
    await w.restart(replace(settings, sync_commands=True))
    before = len(w.fd.bot_messages(w.chan))
    rec = await w.fd.invoke_slash(w.chan, w.alice, "find", {"query": "red*abc"})
    msgs = await w.fd.wait_for(lambda: w.fd.interaction_messages(rec))
    assert len(msgs) == 1 and msgs[0]["flags"] & EPHEMERAL, msgs
    assert "usage" in msgs[0]["content"]
    rec = await w.fd.invoke_slash(w.chan, w.alice, "find", {"query": ""})
    msgs = await w.fd.wait_for(lambda: w.fd.interaction_messages(rec))
    assert len(msgs) == 1 and msgs[0]["flags"] & EPHEMERAL, msgs
    await asyncio.sleep(0.2)
    assert len(w.fd.bot_messages(w.chan)) == before  # nothing shown to the channel
    # a good query still answers in public
    ok = await w.fd.invoke_slash(w.chan, w.alice, "find", {"query": "red circle"})
    page = await w.fd.wait_for(lambda: [m for m in w.fd.interaction_messages(ok) if m["embeds"]])
    assert not page[0]["flags"] & EPHEMERAL
