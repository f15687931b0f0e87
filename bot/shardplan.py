"""Shards: which of the bot's gateway connections a process runs (no discord import here:
the launcher and the argument checks use it before anything heavy loads).

One bot process runs some of the bot's gateway connections (Discord's shards).

Discord sends a server's events to shard `(guild_id >> 22) % shard_count` only, and wants
at most 2,500 servers per shard. `python -m bot --shard-count N --shard-ids 0,1` runs
shards 0 and 1 of N in this process (discord.py's `AutoShardedBot`); `python -m bot.launch`
spawns several such processes. Everything a shard needs beyond its connection (the
collection, the server libraries and their progress) is in the shared store, so any
process may run any shard on any machine.

`READY_FILE_ENV`: when the launcher sets it, the process writes that file once its shards
are READY (the launcher starts the next process then: Discord's identify order concerns
the gateway only; the engine goes on loading meanwhile).
"""

from __future__ import annotations

from dataclasses import dataclass

READY_FILE_ENV = "CLIPFIND_READY_FILE"
IDENTIFY_WINDOW_S = 5.0  # Discord: one IDENTIFY per rate-limit bucket per 5 seconds


class ShardError(ValueError):
    """A bad --shard-count / --shard-ids (its text is the one line to show)."""


@dataclass(frozen=True)
class ShardPlan:
    count: int
    ids: tuple[int, ...]


def shard_of(guild_id: int, shard_count: int) -> int:
    """The shard Discord sends a server's events to."""
    return (int(guild_id) >> 22) % shard_count


def parse_plan(count: int | None, ids: str | None) -> ShardPlan | None:
    """--shard-count N [--shard-ids a,b,...] as a plan (all N shards when ids is None);
    None when neither is given. ShardError with one line otherwise."""
    if count is None:
        if ids is not None:
            raise ShardError("--shard-ids needs --shard-count (how many shards in all)")
        return None
    if count < 1:
        raise ShardError(f"--shard-count must be at least 1, not {count}")
    if ids is None:
        return ShardPlan(count, tuple(range(count)))
    try:
        chosen = [int(x) for x in ids.split(",") if x.strip()]
    except ValueError:
        raise ShardError(f"--shard-ids {ids!r}: give shard numbers separated by commas, "
                         "e.g. 0,1") from None
    if not chosen:
        raise ShardError("--shard-ids is empty: give shard numbers separated by commas, e.g. 0,1")
    bad = [i for i in chosen if not 0 <= i < count]
    if bad:
        raise ShardError(f"--shard-ids: shard {bad[0]} does not exist with --shard-count "
                         f"{count} (shards are 0 to {count - 1})")
    if len(set(chosen)) != len(chosen):
        raise ShardError(f"--shard-ids {ids!r} names a shard twice")
    return ShardPlan(count, tuple(sorted(chosen)))
