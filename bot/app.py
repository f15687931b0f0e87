"""The Discord bot: a `commands.Bot` that owns the engine, the core logic and the paging.

- Intents: the defaults plus message content (the `!` prefix needs it; `/find` and a
  mention, `@bot find ...`, do not; `message_content = false` leaves it out).
- `setup_hook` loads the cogs and starts opening the engine in a thread, so the gateway
  connects while the model warms up; until it is ready a search is answered with
  "still starting up, try again in a few seconds".
- One error handler (`on_command_error`) answers every failure with one line and logs what
  is not the member's fault; a channel where the bot may not write is logged, not fatal.
- The token never reaches a log line: `setup_logging` masks it in everything it formats.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sys
from collections.abc import Callable

import discord
from discord.ext import commands

from index import Engine
from index.errors import ClipfindError

from . import render
from .config import Settings
from .core import Core
from .library import Library
from .paginate import Paginator, paging_missing
from .reply import Reply
from .runtime import Runtime, open_engine

log = logging.getLogger("bot")

INTERNAL_ERROR = "something went wrong on my side; it has been logged, please try again"


class RedactingFormatter(logging.Formatter):
    """A formatter that masks the token in the message, arguments and tracebacks."""

    def __init__(self, settings: Settings, fmt: str | None = None):
        super().__init__(fmt or "%(asctime)s %(levelname)-7s %(name)s: %(message)s")
        self.settings = settings

    def format(self, record: logging.LogRecord) -> str:
        return self.settings.redact(super().format(record))


def setup_logging(settings: Settings, stream=None) -> logging.Handler:
    """Log to stderr (or `stream`) at the configured level, token masked."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(RedactingFormatter(settings))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_clipfind", False):
            root.removeHandler(h)
    handler._clipfind = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    if settings.log_level == "DEBUG":  # discord.py's DEBUG is every gateway frame
        logging.getLogger("discord").setLevel(logging.INFO)
    return handler


def _my_permissions(ctx: commands.Context) -> discord.Permissions | None:
    """The bot's permissions where ctx was invoked; None where unknown (a DM, no cache)."""
    if ctx.guild is None or ctx.guild.me is None:
        return None
    try:
        return ctx.channel.permissions_for(ctx.guild.me)
    except (AttributeError, TypeError):
        return None


def _unwrap(error: BaseException) -> BaseException:
    for _ in range(5):
        inner = getattr(error, "original", None)
        if inner is None:
            break
        error = inner
    return error


class ClipfindBot(commands.Bot):
    """The bot, on a `Runtime` (given, or made from `settings`: `engine` given is used as is
    and not closed; else `engine_opener` opens it)."""

    def __init__(self, settings: Settings, *, engine: Engine | None = None,
                 engine_opener: Callable[[Settings], Engine] = open_engine,
                 runtime: Runtime | None = None, **options) -> None:
        intents = discord.Intents.default()
        intents.message_content = settings.message_content
        super().__init__(command_prefix=commands.when_mentioned_or(settings.prefix),
                         intents=intents, help_command=None,
                         allowed_mentions=discord.AllowedMentions.none(), **options)
        self.settings = settings
        self.runtime = runtime or Runtime(settings, engine=engine, opener=engine_opener)
        self.core = Core(settings)  # its engine is set once the runtime is ready
        self._engine_task: asyncio.Task | None = None
        self.paginator = Paginator(self, self.core, settings.paging_timeout_s)
        self.library: Library | None = None  # the server libraries, once the engine is up
        self._library_task: asyncio.Task | None = None

    # -- life cycle ------------------------------------------------------------------------------
    async def setup_hook(self) -> None:
        from .cogs import library, search, why

        await search.setup(self)
        await library.setup(self)
        await why.setup(self)
        self._engine_task = asyncio.create_task(self._load_engine(), name="clipfind-ready")
        if self.settings.sync_commands:
            try:
                synced = await self.tree.sync()
                log.info("slash commands synced: %s", ", ".join(f"/{c.name}" for c in synced))
            except discord.HTTPException as e:
                log.warning("could not sync slash commands (prefix commands still work): %s", e)

    async def _load_engine(self) -> None:
        """Until the runtime is ready (the gateway connects meanwhile); then the libraries."""
        if not await self.runtime.wait():
            self.core.load_error = self.runtime.load_error
            log.error("the search engine could not start: %s", self.runtime.load_error)
            return
        self.core.engine = self.runtime.engine
        self._library_task = asyncio.create_task(self._start_library(), name="clipfind-library")

    async def _start_library(self) -> None:
        """Open the server libraries (on the engine's encoder), then let them catch up."""
        try:
            lib = Library(self, self.settings, self.runtime.namespaces(), self.runtime.engine)
            await lib.open()
        except Exception:
            log.exception("the server libraries could not be opened (searches use the collection)")
            return
        self.library = lib
        self.core.library = lib
        log.info("server libraries: %d", len(lib.guilds))
        await self.wait_until_ready()
        await lib.resume()

    async def wait_engine(self) -> None:
        """Until the engine task is over (tests, and the console of a future admin cog)."""
        if self._engine_task is not None:
            await asyncio.shield(self._engine_task)

    async def close(self) -> None:
        await self.paginator.close()
        if self._engine_task is not None and not self._engine_task.done():
            # a model still loading in its thread cannot be interrupted: let it finish, then
            # close it below rather than leave its encoder thread behind
            await asyncio.wait({self._engine_task}, timeout=120)
        if self._library_task is not None and not self._library_task.done():
            self._library_task.cancel()
            await asyncio.gather(self._library_task, return_exceptions=True)
        if self.library is not None:
            lib, self.library, self.core.library = self.library, None, None
            await lib.close()
        await self.core.close()
        await super().close()
        self.core.engine = None
        await self.runtime.close()

    async def on_ready(self) -> None:
        log.info("connected as %s (%s) to %d servers", self.user, getattr(self.user, "id", "?"),
                 len(self.guilds))

    # -- replies ----------------------------------------------------------------------------------
    async def send_reply(self, ctx: commands.Context, reply: Reply) -> discord.Message | None:
        """Send a Reply; a page of results gets the paging controls.

        Where the bot may not embed or upload (Embed Links, Attach Files), the page goes out as
        text (rank, score, title, credit, link) naming the permission it lacks, and still
        pages; where it may not add reactions, the page does not point at controls."""
        if reply.error:
            await self.say(ctx, reply.text, error=True)
            return None
        perms = _my_permissions(ctx)
        # interaction responses are webhook messages: Discord does not hold them to the
        # bot's channel permissions the same way, so those are learnt from a refusal
        missing = [] if ctx.interaction is not None else render.missing_permissions(reply, perms)
        blocked = paging_missing(perms) if reply.is_page else []
        view = {"missing": missing, "instead_of_more": render.no_controls(blocked) if blocked else None}
        where = f"channel {getattr(ctx.channel, 'id', '?')}"
        try:
            message = await ctx.send(**render.to_discord(reply, **view))
        except discord.Forbidden as e:
            log.warning("missing permissions in %s: %s", where, e.text or e)
            if not reply.cards or missing:
                return None  # text alone was refused: the bot cannot write here
            view["missing"] = render.missing_permissions(reply, _my_permissions(ctx))
            view["text_only"] = True
            try:
                message = await ctx.send(**render.to_discord(reply, **view))
            except discord.HTTPException as e2:
                log.warning("cannot answer in %s either: %s", where, e2.text or e2)
                return None
        except discord.HTTPException as e:
            log.error("sending a reply in %s failed: %s", where, e)
            await self.say(ctx, f"could not send the results (Discord said: {e.text or e.status}); "
                                "try again", error=True)
            return None
        if missing:
            log.warning("missing the %s permission(s) in %s: results sent as text",
                        " and ".join(missing), where)
        if reply.is_page and message is not None and not blocked:
            await self.paginator.attach(message, reply, view)
        return message

    async def say(self, ctx: commands.Context, text: str, *, error: bool = False) -> None:
        """One line to the member; a channel the bot cannot write to is logged. An `error` (a
        refusal) of a slash command goes to the member alone (ephemeral)."""
        text = render.clean(" ".join(text.split()))[: render.MAX_CONTENT]
        try:
            if error and ctx.interaction is not None:
                if ctx.interaction.response.is_done():
                    # deferred in public: take the "thinking…" message down, answer in private
                    try:
                        await ctx.interaction.delete_original_response()
                    except discord.HTTPException as e:
                        log.debug("could not delete the deferred response: %s", e)
                await ctx.send(text, ephemeral=True)
            else:
                await ctx.send(text)
        except discord.HTTPException as e:
            log.warning("cannot answer in channel %s: %s", getattr(ctx.channel, "id", "?"),
                        e.text or e)

    # -- errors and events --------------------------------------------------------------------------
    async def on_command_error(self, ctx: commands.Context, error: commands.CommandError) -> None:
        err = _unwrap(error)
        p = self.settings.prefix
        if isinstance(err, commands.CommandNotFound):
            return  # another bot's command, or a typo: stay quiet
        from .cogs.search import ChannelNotAllowed

        if isinstance(err, ChannelNotAllowed):
            if ctx.interaction is not None:
                await self.say(ctx, str(err), error=True)
            return
        if isinstance(err, commands.CommandOnCooldown):
            await self.say(ctx, f"slow down: you can try again in {math.ceil(err.retry_after)} s", error=True)
        elif isinstance(err, commands.MissingRequiredArgument):
            await self.say(ctx, f"missing {err.param.name}; `{p}help` shows how", error=True)
        elif isinstance(err, commands.UserInputError):
            await self.say(ctx, f"{err}; `{p}help` shows how", error=True)
        elif isinstance(err, commands.CheckFailure):
            await self.say(ctx, str(err) or "you cannot use this command here", error=True)
        elif isinstance(err, ClipfindError):
            await self.say(ctx, str(err), error=True)
        elif isinstance(err, discord.Forbidden):
            log.warning("missing permissions in channel %s: %s",
                        getattr(ctx.channel, "id", "?"), err.text or err)
        else:
            log.error("command %s failed", getattr(ctx.command, "qualified_name", "?"),
                      exc_info=(type(err), err, err.__traceback__))
            await self.say(ctx, INTERNAL_ERROR, error=True)

    async def on_error(self, event_method: str, /, *args, **kwargs) -> None:
        log.exception("error in event %s", event_method)

    async def on_raw_reaction_add(self, payload: discord.RawReactionActionEvent) -> None:
        await self.paginator.on_reaction(payload, added=True)

    async def on_raw_reaction_remove(self, payload: discord.RawReactionActionEvent) -> None:
        await self.paginator.on_reaction(payload, added=False)
