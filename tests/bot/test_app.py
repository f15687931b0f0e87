"""bot/app.py: the central error handler and the token-masking log formatter."""

from __future__ import annotations

import inspect
import io
import logging
from types import SimpleNamespace

import discord
import pytest
from discord.ext import commands

from bot.app import INTERNAL_ERROR, ClipfindBot, setup_logging
from bot.cogs.search import ChannelNotAllowed
from bot.config import Settings
from index.errors import Busy, QueryError


def forbidden() -> discord.Forbidden:
    return discord.Forbidden(SimpleNamespace(status=403, reason="Forbidden"),
                             {"message": "Missing Permissions", "code": 50013})


class Ctx:
    def __init__(self, interaction=None, fail_with=None):
        self.sent: list[str] = []
        self.kw: list[dict] = []
        self.channel = SimpleNamespace(id=7)
        self.interaction = interaction
        self.command = SimpleNamespace(qualified_name="find")
        self.fail_with = fail_with

    async def send(self, text=None, **kw):
        if self.fail_with is not None:
            raise self.fail_with
        self.sent.append(text)
        self.kw.append(kw)


@pytest.fixture
def bot():
    return ClipfindBot(Settings(prefix="?"))


def param(name: str) -> commands.Parameter:
    return commands.Parameter(name, inspect.Parameter.KEYWORD_ONLY)


@pytest.mark.parametrize("error, expected", [
    (commands.CommandNotFound("x"), None),
    (commands.CommandOnCooldown(commands.Cooldown(1, 10), 3.2, commands.BucketType.user),
     "slow down: you can try again in 4 s"),
    (commands.MissingRequiredArgument(param("query")), "missing query; `?help` shows how"),
    (commands.BadArgument("that is not a number"), "that is not a number; `?help` shows how"),
    (commands.CommandInvokeError(QueryError("empty query: give some words")),
     "empty query: give some words"),
    (commands.CommandInvokeError(Busy()), "busy, try again in a moment"),
    (commands.CheckFailure("only in #search"), "only in #search"),
    (ChannelNotAllowed("searches are not enabled in this channel"), None),
])
async def test_errors_become_one_line(bot, error, expected):
    ctx = Ctx()
    await bot.on_command_error(ctx, error)
    assert ctx.sent == ([] if expected is None else [expected])


async def test_channel_not_allowed_answers_slash_commands(bot):
    ctx = Ctx(interaction=SimpleNamespace(response=SimpleNamespace(is_done=lambda: False)))
    await bot.on_command_error(ctx, ChannelNotAllowed("searches are not enabled in this channel"))
    assert ctx.sent == ["searches are not enabled in this channel"]
    assert ctx.kw == [{"ephemeral": True}]  # a refusal goes to the member alone


async def test_unexpected_errors_are_logged_and_answered(bot, caplog):
    ctx = Ctx()
    with caplog.at_level(logging.ERROR, logger="bot"):
        await bot.on_command_error(ctx, commands.CommandInvokeError(RuntimeError("boom")))
    assert ctx.sent == [INTERNAL_ERROR]
    rec = [r for r in caplog.records if r.getMessage() == "command find failed"]
    assert rec and rec[0].exc_info[0] is RuntimeError


async def test_forbidden_is_logged_not_raised(bot, caplog):
    with caplog.at_level(logging.WARNING, logger="bot"):
        await bot.on_command_error(Ctx(), commands.CommandInvokeError(forbidden()))
        ctx = Ctx(fail_with=forbidden())  # the answer itself cannot be sent
        await bot.on_command_error(ctx, commands.CommandInvokeError(QueryError("bad")))
    msgs = [r.getMessage() for r in caplog.records]
    assert any("missing permissions in channel 7" in m for m in msgs)
    assert any("cannot answer in channel 7" in m for m in msgs)


def test_the_log_masks_the_token():
    s = Settings(token="abc.def.ghi")
    stream = io.StringIO()
    handler = setup_logging(s, stream)
    try:
        log = logging.getLogger("bot.test")
        log.warning("token %s in args", s.token)
        log.warning("token abc.def.ghi in the message")
        try:
            raise ValueError(f"bad {s.token}")
        except ValueError:
            log.exception("with a traceback")
    finally:
        logging.getLogger().removeHandler(handler)
    out = stream.getvalue()
    assert "abc.def.ghi" not in out
    assert out.count("[token hidden]") == 3
    assert "Traceback" in out


def test_intents(bot):
    assert bot.intents.message_content and bot.intents.guilds and bot.intents.guild_reactions
    assert not bot.intents.members and not bot.intents.presences
    slash_only = ClipfindBot(Settings(message_content=False))
    assert not slash_only.intents.message_content and slash_only.intents.guild_reactions
