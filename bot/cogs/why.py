"""`why N` (prefix and slash) and the 🔍 control: a result's heatmap, for the member who
searched. The logic is bot/why.py; this is the Discord side: which result page a command
means (the message it replies to, else the member's latest page in the channel), and
where the answer goes (a reply to the result message; ephemeral for /why)."""

from __future__ import annotations

import logging

import discord
from discord import app_commands
from discord.ext import commands

from .. import render
from ..why import parse_rank, why

log = logging.getLogger(__name__)


class Why(commands.Cog):
    """Where in a result the model saw the query."""

    def __init__(self, bot) -> None:
        self.bot = bot
        self.core = bot.core
        bot.paginator.why = self.on_control

    def cog_unload(self) -> None:
        if self.bot.paginator.why == self.on_control:
            self.bot.paginator.why = None

    async def cog_check(self, ctx: commands.Context) -> bool:
        from .search import ChannelNotAllowed

        allowed = self.bot.settings.allowed_channels
        if allowed and ctx.channel.id not in allowed:
            raise ChannelNotAllowed("searches are not enabled in this channel")
        return True

    def _session_for(self, ctx: commands.Context):
        """The result page the command means: the replied-to message's, else the
        member's latest in this channel; None when there is none (or it expired)."""
        pages = self.bot.paginator.pages
        ref = ctx.message.reference if ctx.interaction is None else None
        if ref is not None and ref.message_id is not None:
            return pages.get(ref.message_id), True
        mine = [s for s in pages.sessions.values()
                if s.channel_id == ctx.channel.id and s.author_id == ctx.author.id]
        return (max(mine, key=lambda s: s.message_id) if mine else None), False

    @commands.hybrid_command(name="why", description="Where in result N the model saw your query (heatmap)")
    @app_commands.describe(n="the # of a result on your latest result page")
    async def why_command(self, ctx: commands.Context, n: str = "") -> None:
        p = self.bot.settings.prefix
        session, replied = self._session_for(ctx)
        if session is None and replied:
            await self.bot.say(ctx, "that message is no result page I can still explain "
                               f"(its controls expired, or it is not mine); search again with {p}find")
            return
        try:
            rank = parse_rank(n, p)
        except Exception as e:  # ClipfindError: one line with the usage
            await self.bot.say(ctx, str(e))
            return
        if ctx.interaction is not None:
            await ctx.defer(ephemeral=True)
        reply = await why(self.core, session.state if session else None, rank, ctx.author.id)
        kw = render.to_discord(reply)
        try:
            if ctx.interaction is not None:
                await ctx.send(**kw, ephemeral=True)
            else:
                await ctx.send(**kw, reference=ctx.message, mention_author=False)
        except discord.HTTPException as e:
            log.warning("could not send a heatmap in channel %s: %s", ctx.channel.id, e)

    async def on_control(self, session, user_id: int) -> None:
        """🔍 under a result page: the page's results explained in turn."""
        hits = session.state.hits
        if not hits:
            return
        rank = hits[session.why_next % len(hits)][0]
        session.why_next += 1
        reply = await why(self.core, session.state, rank, user_id)
        channel = self.bot.get_partial_messageable(session.channel_id)
        kw = render.to_discord(reply)
        if reply.error:
            kw["content"] = f"<@{user_id}> {kw['content']}"
        try:
            await channel.send(**kw, reference=channel.get_partial_message(session.message_id),
                               mention_author=False)
        except discord.HTTPException as e:
            log.warning("could not send a heatmap in channel %s: %s", session.channel_id, e)


async def setup(bot) -> None:
    await bot.add_cog(Why(bot))
