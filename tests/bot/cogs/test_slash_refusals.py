"""Slash commands: refusals go to the member alone (ephemeral), and /find defers (in public)
only once its input passed the checks. The loopback Discord has no attachment options and no
subcommands, so the /find image check and the /library refusal are tested here, on the
handlers themselves (tests/bot/test_e2e_replies.py covers what the fake can run)."""

from __future__ import annotations

from types import SimpleNamespace

from discord.ext import commands

from bot.app import ClipfindBot
from bot.cogs.library import NEED_MANAGER
from bot.config import Settings
from bot.core import Attachment, Core, FindRequest


class Interaction:
    def __init__(self, done: bool):
        self.response = SimpleNamespace(is_done=lambda: done)
        self.deleted = 0

    async def delete_original_response(self):
        self.deleted += 1


class Ctx:
    def __init__(self, interaction):
        self.interaction, self.sent = interaction, []
        self.channel, self.guild, self.command = SimpleNamespace(id=7), None, None

    async def send(self, content=None, **kw):
        self.sent.append((content, kw))


async def test_find_defers_only_after_its_input_passed_the_checks(settings, engine):
    core = Core(settings, engine)
    deferred = []

    async def defer():
        deferred.append(1)

    async def never() -> bytes:
        raise AssertionError("must not be downloaded")

    notes = Attachment("notes.txt", 10, "text/plain", never)
    for req in (FindRequest("cats", 1, [notes]), FindRequest("red*abc", 1), FindRequest("", 1)):
        reply = await core.find(req, before_work=defer)
        assert reply.error and not deferred, reply.text
    reply = await core.find(FindRequest("red circle", 1), before_work=defer)
    assert not reply.error and deferred == [1]


async def test_refusals_of_slash_commands_are_ephemeral():
    bot = ClipfindBot(Settings())
    # a refusal before anything was sent: the interaction's own response, ephemeral
    ctx = Ctx(Interaction(done=False))
    await bot.on_command_error(ctx, commands.CheckFailure(NEED_MANAGER))
    assert ctx.sent == [(NEED_MANAGER, {"ephemeral": True})]
    # after a public defer: the "thinking…" message goes, the refusal is ephemeral
    ctx = Ctx(Interaction(done=True))
    await bot.say(ctx, "notes.txt: not an image", error=True)
    assert ctx.interaction.deleted == 1 and ctx.sent == [("notes.txt: not an image", {"ephemeral": True})]
    # a prefix command's refusal is a plain message; so is a slash command's normal answer
    ctx = Ctx(None)
    await bot.on_command_error(ctx, commands.CheckFailure(NEED_MANAGER))
    assert ctx.sent == [(NEED_MANAGER, {})]
    ctx = Ctx(Interaction(done=False))
    await bot.say(ctx, "📚 #pics removed from the library")
    assert ctx.sent == [("📚 #pics removed from the library", {})]
    await bot.close()
