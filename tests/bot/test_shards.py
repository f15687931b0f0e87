"""The bot on shards (bot/shards.py, bot/shardplan.py), in-process against the fake Discord."""

from __future__ import annotations

import asyncio

import pytest
from botutil import close_bots, settle
from fakediscord import FakeDiscord

from bot.shardplan import ShardError, parse_plan, shard_of
from bot.shards import make_bot, signal_ready


def test_the_shard_plan_and_its_one_line_errors():
    assert parse_plan(None, None) is None
    assert parse_plan(4, None).ids == (0, 1, 2, 3)
    assert parse_plan(4, "3,1").ids == (1, 3)
    for count, ids, why in ((2, "0,2", "shard 2 does not exist"), (None, "1", "needs --shard-count"),
                            (0, None, "at least 1"), (2, "1,1", "names a shard twice"),
                            (2, "a", "separated by commas")):
        with pytest.raises(ShardError, match=why):
            parse_plan(count, ids)
    assert shard_of(1 << 22, 2) == 1 and shard_of(7 << 22, 4) == 3


async def test_two_shards_in_one_process_identify_apart_and_each_answers_its_server(
        settings, engine, tmp_path):
    async with FakeDiscord() as fd, fd.patch_discord():
        guilds = {s: fd.add_guild(f"g{s}", shard=(s, 2)) for s in (0, 1)}
        chans = {s: fd.add_channel(g, "search") for s, g in guilds.items()}
        alice = fd.add_user("alice")
        for g in guilds.values():
            fd.add_member(g, "alice", user_id=alice)
        bot = make_bot(settings, parse_plan(2, "0,1"), engine=engine, guild_ready_timeout=0.05)
        bot.identify_window_s = 0.3  # Discord's is 5 s
        ready_file = tmp_path / "ready"
        signalled = asyncio.create_task(signal_ready(bot, str(ready_file)))
        task = asyncio.create_task(bot.start(fd.token))
        try:
            await fd.wait_ready(20, sessions=2)
            await asyncio.wait_for(signalled, 20)
            assert ready_file.read_text().split()[0].isdigit()  # the launcher's signal
            (t0, first), (t1, second) = fd.identify_times
            assert (first, second) == ([0, 2], [1, 2]) and t1 - t0 >= 0.3  # one bucket: apart
            for s in (0, 1):
                await fd.post_message(chans[s], alice, "!find red circle")
                reply = (await fd.wait_for(lambda s=s: fd.bot_messages(chans[s]), 20))[0]
                assert reply["content"].startswith("**Results 1–5**"), reply["content"]
        finally:
            await close_bots([(bot, task)])
    await settle()
