"""A fake Discord (gateway + REST v10 + CDN on 127.0.0.1) for testing discord.py bots.

The real, unmodified discord.py client connects to it; see :class:`FakeDiscord`.
"""

from . import permissions
from .models import emoji_key, parse_emoji
from .server import ApiError, FakeDiscord, InteractionRecord, RequestRecord
from .snowflake import SnowflakeGenerator, snowflake_time

__all__ = [
    "ApiError",
    "FakeDiscord",
    "InteractionRecord",
    "RequestRecord",
    "SnowflakeGenerator",
    "emoji_key",
    "parse_emoji",
    "permissions",
    "snowflake_time",
]
