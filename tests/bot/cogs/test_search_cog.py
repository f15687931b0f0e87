"""bot/cogs/search.py: attachments as the core sees them, the channel check."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import discord
import pytest

from bot.cogs.search import ChannelNotAllowed, Search, _wrap
from bot.config import Settings
from index.errors import FetchError


class FakeAttachment:
    def __init__(self, fail: bool = False):
        self.filename, self.size, self.content_type, self.fail = "cat.png", 1234, "image/png", fail

    async def read(self) -> bytes:
        if self.fail:
            raise discord.NotFound(SimpleNamespace(status=404, reason="Not Found"), "gone")
        return b"data"


async def test_wrap_reads_and_maps_download_errors():
    a = _wrap(FakeAttachment())
    assert (a.filename, a.size, a.content_type) == ("cat.png", 1234, "image/png")
    assert await a.read() == b"data"
    with pytest.raises(FetchError, match=r"cat.png: could not download the attachment \(HTTP 404\)"):
        await _wrap(FakeAttachment(fail=True)).read()


async def test_allowed_channels_check():
    settings = Settings()
    bot = SimpleNamespace(settings=settings, core=None)
    cog = Search(bot)
    ctx = SimpleNamespace(channel=SimpleNamespace(id=5))
    assert await cog.cog_check(ctx) is True  # empty list: every channel
    bot.settings = replace(settings, allowed_channels=(6,))
    with pytest.raises(ChannelNotAllowed, match="not enabled in this channel"):
        await cog.cog_check(ctx)
    bot.settings = replace(settings, allowed_channels=(5, 6))
    assert await cog.cog_check(ctx) is True


def test_find_is_a_hybrid_command_with_an_optional_image():
    cog = Search(SimpleNamespace(settings=Settings(), core=None))
    find = next(c for c in cog.get_commands() if c.name == "find")
    app = find.app_command
    params = {p.name: p for p in app.parameters}
    assert set(params) == {"query", "image"}
    assert params["image"].type is discord.AppCommandOptionType.attachment
    assert not params["image"].required
