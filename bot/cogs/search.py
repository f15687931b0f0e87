"""The search capability: `find` and `help`, as prefix and slash commands (hybrid)."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from index.errors import FetchError

from ..core import Attachment, FindRequest
from ..reply import Reply

log = logging.getLogger(__name__)


class ChannelNotAllowed(commands.CheckFailure):
    """A command in a channel that `allowed_channels` leaves out."""


def _wrap(att: discord.Attachment) -> Attachment:
    async def read() -> bytes:
        try:
            return await att.read()
        except discord.HTTPException as e:
            raise FetchError(f"{att.filename}: could not download the attachment "
                             f"(HTTP {e.status}); post it again") from e

    return Attachment(att.filename, att.size, att.content_type, read)


async def _replied_attachments(ctx: commands.Context) -> list[Attachment]:
    """The attachments of the message this one replies to (prefix commands)."""
    ref = ctx.message.reference if ctx.interaction is None else None
    if ref is None or ref.message_id is None:
        return []
    msg = ref.resolved if isinstance(ref.resolved, discord.Message) else None
    if msg is None:
        try:
            msg = await ctx.channel.fetch_message(ref.message_id)
        except discord.HTTPException as e:
            log.info("could not fetch the replied-to message %s: %s", ref.message_id, e)
            return []
    return [_wrap(a) for a in msg.attachments]


class GuildDirectory:
    """The asking server's channels and members for the filters (core.Directory), looked up
    with discord.py's converters, in this server only."""

    def __init__(self, ctx: commands.Context) -> None:
        self.ctx, self.guild = ctx, ctx.guild

    def has_channel(self, channel_id: int) -> bool:
        return self.guild.get_channel_or_thread(channel_id) is not None

    async def channel_named(self, name: str) -> int | None:
        for converter in (commands.GuildChannelConverter(), commands.ThreadConverter()):
            try:
                found = await converter.convert(self.ctx, name)
            except commands.BadArgument:
                continue
            if found.guild.id == self.guild.id:
                return found.id
        folded = name.casefold()  # `in:#Memes`: Discord shows channel names in lower case
        hit = discord.utils.find(lambda c: c.name.casefold() == folded, self.guild.channels)
        return hit.id if hit is not None else None

    async def member_named(self, name: str) -> int | None:
        try:  # the cache, then a gateway query by name (works without the members intent)
            member = await commands.MemberConverter().convert(self.ctx, name)
        except commands.BadArgument:
            return None
        return member.id if member.guild.id == self.guild.id else None


class Search(commands.Cog):
    """Search the image collection."""

    def __init__(self, bot) -> None:
        self.bot = bot
        self.core = bot.core

    async def cog_check(self, ctx: commands.Context) -> bool:
        allowed = self.bot.settings.allowed_channels
        if allowed and ctx.channel.id not in allowed:
            raise ChannelNotAllowed("searches are not enabled in this channel")
        return True

    @commands.hybrid_command(name="find", description="Search the images with words, pictures, or both")
    @app_commands.describe(query="e.g. red circle*1 blue square*2, or #1*0.5 cars with an image",
                           image="an image to search with (optional)")
    async def find(self, ctx: commands.Context, *, query: str = "",
                   image: discord.Attachment | None = None) -> None:
        if ctx.interaction is not None:
            attachments = [_wrap(image)] if image is not None else []
        else:
            attachments = [_wrap(a) for a in ctx.message.attachments]
        request = FindRequest(query, ctx.author.id, attachments, await _replied_attachments(ctx),
                              guild_id=ctx.guild.id if ctx.guild is not None else None,
                              directory=GuildDirectory(ctx) if ctx.guild is not None else None)
        # a slash command defers (publicly: results page in the channel) only once its input
        # passed the checks, so a refusal can still go to the member alone
        defer = ctx.defer if ctx.interaction is not None else None
        reply = await self.core.find(request, before_work=defer)
        await self.bot.send_reply(ctx, reply)

    @commands.hybrid_command(name="help", description="How to search: the query grammar with examples")
    async def help(self, ctx: commands.Context) -> None:
        prefix = self.bot.settings.prefix
        await self.bot.send_reply(ctx, Reply(self.core.help(prefix).text))


async def setup(bot) -> None:
    await bot.add_cog(Search(bot))
