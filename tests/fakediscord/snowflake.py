"""Discord-style snowflake ids.

Layout (as Discord uses it): milliseconds since the Discord epoch (2015-01-01)
in the top 42 bits, then 5 bits worker id, 5 bits process id and a 12-bit
per-process increment.  ``discord.utils.snowflake_time`` therefore gives the
real creation time of every id this fake hands out.
"""

from __future__ import annotations

import datetime as _dt
import threading
import time

DISCORD_EPOCH_MS = 1420070400000


class SnowflakeGenerator:
    """Hands out strictly increasing snowflakes based on the wall clock."""

    def __init__(self, worker: int = 1, process: int = 0) -> None:
        self._prefix = ((worker & 0x1F) << 17) | ((process & 0x1F) << 12)
        self._last_ms = 0
        self._increment = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        """Return a new id, larger than every id returned before."""
        with self._lock:
            now = int(time.time() * 1000) - DISCORD_EPOCH_MS
            if now > self._last_ms:
                self._last_ms = now
                self._increment = 0
            else:
                self._increment += 1
                if self._increment > 0xFFF:  # more than 4096 ids in one ms: borrow the next ms
                    self._last_ms += 1
                    self._increment = 0
            return (self._last_ms << 22) | self._prefix | self._increment


    def next_on_shard(self, shard_id: int, shard_count: int) -> int:
        """A new id (larger than every other) whose shard is ``shard_id`` of ``shard_count``
        (``(id >> 22) % shard_count``): a guild id Discord would route to that shard."""
        with self._lock:
            now = max(int(time.time() * 1000) - DISCORD_EPOCH_MS, self._last_ms + 1)
            now += (shard_id - now) % shard_count  # a ms or a few ahead of the clock, at most
            self._last_ms, self._increment = now, 0
            return (now << 22) | self._prefix


def snowflake_time(snowflake: int) -> _dt.datetime:
    """The UTC creation time encoded in ``snowflake``."""
    ms = (int(snowflake) >> 22) + DISCORD_EPOCH_MS
    return _dt.datetime.fromtimestamp(ms / 1000, tz=_dt.UTC)


def iso_timestamp(snowflake: int) -> str:
    """ISO-8601 timestamp (as Discord formats ``timestamp`` fields) for ``snowflake``."""
    return snowflake_time(snowflake).isoformat()


def now_iso() -> str:
    """The current time as an ISO-8601 UTC timestamp."""
    return _dt.datetime.now(tz=_dt.UTC).isoformat()
