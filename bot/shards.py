"""The bot on some shards (see bot/shardplan.py for what a shard is and how they are chosen)."""

from __future__ import annotations

import asyncio
import os
import time

from discord.ext import commands

from .app import ClipfindBot
from .shardplan import IDENTIFY_WINDOW_S, READY_FILE_ENV, ShardPlan


class ShardedClipfindBot(ClipfindBot, commands.AutoShardedBot):
    """The bot on some shards. Its shards identify in Discord's order: one per rate-limit
    bucket (`shard_id % max_concurrency`) per IDENTIFY_WINDOW_S."""

    def __init__(self, *args, max_concurrency: int = 1, **options) -> None:
        super().__init__(*args, **options)
        self.max_concurrency = max(1, int(max_concurrency))
        self.identify_window_s = IDENTIFY_WINDOW_S
        self._last_identify: dict[int, float] = {}

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        bucket = (shard_id or 0) % self.max_concurrency
        last = self._last_identify.get(bucket)
        if last is not None:
            wait = last + self.identify_window_s - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        self._last_identify[bucket] = time.monotonic()


def make_bot(settings, plan: ShardPlan | None, **options) -> ClipfindBot:
    """The plain bot, or the sharded one for `plan`."""
    if plan is None:
        return ClipfindBot(settings, **options)
    return ShardedClipfindBot(settings, shard_count=plan.count, shard_ids=list(plan.ids),
                              **options)


async def signal_ready(bot: ClipfindBot, path: str | None = None) -> None:
    """Once every shard of `bot` is READY (identified: the next process may identify; the
    engine may still be loading, searches say so meanwhile): write the ready file the
    launcher named (nothing when it named none)."""
    path = path or os.environ.get(READY_FILE_ENV)
    if not path:
        return
    while True:
        try:
            await bot.wait_until_ready()
            break
        except RuntimeError:  # not logged in yet: wait_until_ready exists from then on
            await asyncio.sleep(0.05)
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{os.getpid()} {time.time():.3f}\n")
    os.replace(tmp, path)
