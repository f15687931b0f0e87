"""The server image library's commands and events (see bot/library.py for the work).

`!library add #channel`, `!library remove #channel`, `!library status`, and the same as
`/library add|remove|status`. Manage Server is required; anyone else gets one line.
"""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from ..core import NOT_READY
from ..library import Library, progress_text
from ..render import MAX_CONTENT

log = logging.getLogger(__name__)

NEED_MANAGER = "you need the Manage Server permission to manage this server's image library"


class LibraryCog(commands.Cog, name="Library"):
    """Index the images members post in chosen channels; search them per server."""

    def __init__(self, bot) -> None:
        self.bot = bot

    @property
    def lib(self) -> Library | None:
        return self.bot.library

    async def cog_check(self, ctx: commands.Context) -> bool:
        if ctx.guild is None:
            raise commands.NoPrivateMessage("the image library is per server: use this command in a server")
        perms = getattr(ctx.author, "guild_permissions", None)
        if perms is None or not perms.manage_guild:
            raise commands.CheckFailure(NEED_MANAGER)
        return True

    async def _ready(self, ctx: commands.Context) -> Library | None:
        if self.lib is None:
            why = self.bot.core.unavailable() or NOT_READY
            await self.bot.say(ctx, why, error=True)
            return None
        return self.lib

    # -- commands -----------------------------------------------------------------------------
    @commands.hybrid_group(name="library", invoke_without_command=True,
                           description="This server's image library (Manage Server)")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    async def library(self, ctx: commands.Context) -> None:
        p = self.bot.settings.prefix
        await self.bot.say(ctx, f"`{p}library add #channel` indexes a channel's images, "
                                f"`{p}library remove #channel` forgets them, "
                                f"`{p}library status` shows the channels and counts")

    @library.command(name="add", description="Index the images posted in a channel, old and new")
    @app_commands.describe(channel="the channel whose images to index")
    async def add(self, ctx: commands.Context, channel: discord.TextChannel) -> None:
        lib = await self._ready(ctx)
        if lib is None:
            return
        if channel.guild.id != ctx.guild.id:
            await self.bot.say(ctx, "that channel is not in this server", error=True)
            return
        me = channel.permissions_for(ctx.guild.me)
        if not (me.view_channel and me.read_message_history):
            await self.bot.say(ctx, f"I need the View Channel and Read Message History permissions "
                                    f"in {channel.mention} to index it", error=True)
            return
        st = lib.channel_state(ctx.guild.id, channel.id)
        if st is not None and not st.paused:
            await self.bot.say(ctx, f"{channel.mention} is already in the library: "
                                    + progress_text(st, channel).removeprefix("📚 "), error=True)
            return
        if ctx.interaction is not None:
            await ctx.send(f"📚 adding {channel.mention} to the library")
        status = None
        try:
            status = await ctx.channel.send(f"📚 {channel.mention}: added to the library; "
                                            "reading its history…")
        except discord.HTTPException as e:
            log.warning("cannot post the library progress in channel %s: %s", ctx.channel.id, e)
        await lib.add_channel(channel, (status.channel.id, status.id) if status else None)

    @library.command(name="remove", description="Stop indexing a channel and forget its images")
    @app_commands.describe(channel="the channel to forget")
    async def remove(self, ctx: commands.Context, channel: discord.TextChannel) -> None:
        lib = await self._ready(ctx)
        if lib is None:
            return
        n = None
        if channel.guild.id == ctx.guild.id:
            n = await lib.remove_channel(ctx.guild.id, channel.id)
        if n is None:
            await self.bot.say(ctx, f"{channel.mention} is not in the library", error=True)
        else:
            await self.bot.say(ctx, f"📚 {channel.mention} removed from the library: "
                                    f"{n:,} images forgotten")

    @library.command(name="status", description="The library's channels, image counts and progress")
    async def status(self, ctx: commands.Context) -> None:
        lib = await self._ready(ctx)
        if lib is None:
            return
        g = lib.guilds.get(ctx.guild.id)
        p = self.bot.settings.prefix
        if g is None or not g.channels:
            await self.bot.say(ctx, "this server's library has no channels yet; "
                                    f"`{p}library add #channel` starts one")
            return
        counts = await lib.counts(ctx.guild.id)
        lines = [f"📚 this server's library: {len(g.channels)} channel(s), "
                 f"{sum(counts.values()):,} images"]
        for cid, st in sorted(g.channels.items()):
            running = cid in g.tasks and not g.tasks[cid].done()
            if st.paused:
                state = f"paused: {st.paused}"
            elif st.done and not running:
                state = "up to date; new images are indexed as they are posted"
            elif st.done:
                state = "catching up with what was posted while I was away"
            else:
                pct = st.progress(cid)
                state = (f"reading the history{f' ({pct:.0%})' if pct is not None else ''}, "
                         f"{st.scanned:,} messages read")
            lines.append(f"<#{cid}>: {counts.get(cid, 0):,} images · {state}")
        text = "\n".join(lines)
        if len(text) > MAX_CONTENT:
            text = text[: MAX_CONTENT - 1] + "…"
        try:
            await ctx.send(text)
        except discord.HTTPException as e:
            log.warning("cannot answer in channel %s: %s", ctx.channel.id, e)

    # -- events -------------------------------------------------------------------------------
    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        if self.lib is not None:
            await self.lib.on_message(message)

    def _tracked(self, guild_id: int | None, channel_id: int) -> bool:
        return (self.lib is not None and guild_id is not None
                and self.lib.channel_state(guild_id, channel_id) is not None)

    @commands.Cog.listener()
    async def on_raw_message_delete(self, payload: discord.RawMessageDeleteEvent) -> None:
        if self._tracked(payload.guild_id, payload.channel_id):
            await self.lib.remove_messages(payload.guild_id, payload.channel_id, [payload.message_id])

    @commands.Cog.listener()
    async def on_raw_bulk_message_delete(self, payload: discord.RawBulkMessageDeleteEvent) -> None:
        if self._tracked(payload.guild_id, payload.channel_id):
            await self.lib.remove_messages(payload.guild_id, payload.channel_id, payload.message_ids)

    @commands.Cog.listener()
    async def on_raw_message_edit(self, payload: discord.RawMessageUpdateEvent) -> None:
        atts = payload.data.get("attachments")  # absent: the edit did not touch them
        if atts is not None and self._tracked(payload.guild_id, payload.channel_id):
            await self.lib.remove_attachments(payload.guild_id, payload.channel_id,
                                              payload.message_id, {int(a["id"]) for a in atts})

    @commands.Cog.listener()
    async def on_guild_channel_delete(self, channel: discord.abc.GuildChannel) -> None:
        if self._tracked(channel.guild.id, channel.id):
            n = await self.lib.remove_channel(channel.guild.id, channel.id)
            log.info("library channel %s deleted: %s images removed", channel.id, n)

    @commands.Cog.listener()
    async def on_guild_remove(self, guild: discord.Guild) -> None:
        if self.lib is not None:
            await self.lib.drop_guild(guild.id)


async def setup(bot) -> None:
    await bot.add_cog(LibraryCog(bot))
