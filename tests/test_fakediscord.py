"""Tests of tests/fakediscord: a real discord.py Bot against the fake server."""

from __future__ import annotations

import asyncio
import io
from collections import defaultdict

import aiohttp
import discord
import pytest
from discord.ext import commands
from fakediscord import FakeDiscord, permissions
from PIL import Image


def _png(color: str, size: tuple[int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


RED = _png("red", (4, 3))
BLUE = _png("blue", (5, 7))


def make_bot(**options) -> commands.Bot:
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.Bot(
        command_prefix="!",
        intents=intents,
        help_command=None,
        guild_ready_timeout=0.05,
        **options,
    )
    seen: dict[str, list] = defaultdict(list)
    bot.seen = seen  # type: ignore[attr-defined]

    @bot.command()
    async def ping(ctx: commands.Context) -> None:
        await ctx.reply("pong")

    @bot.command()
    async def pic(ctx: commands.Context) -> None:
        embed = discord.Embed(title="result 1/2", description="a red square")
        embed.set_image(url="attachment://red.png")
        await ctx.send(embed=embed, file=discord.File(io.BytesIO(RED), "red.png"))

    @bot.command()
    async def size(ctx: commands.Context) -> None:
        att = ctx.message.attachments[0]
        data = await att.read()
        await ctx.send(f"{att.filename} {len(data)} {att.width}x{att.height} {att.content_type}")

    @bot.tree.command(name="find", description="Search images")
    async def find(interaction: discord.Interaction, query: str, count: int = 3) -> None:
        await interaction.response.send_message(f"{query}:{count}:{interaction.user.id}")

    @bot.tree.command(name="slow", description="Deferred answer")
    async def slow(interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send("done", file=discord.File(io.BytesIO(BLUE), "blue.png"))

    def record(name: str):
        async def handler(*args) -> None:
            seen[name].append(args[0] if len(args) == 1 else args)

        handler.__name__ = "on_" + name
        bot.add_listener(handler, "on_" + name)

    for name in (
        "raw_reaction_add",
        "raw_reaction_remove",
        "raw_message_delete",
        "raw_bulk_message_delete",
        "raw_message_edit",
        "guild_channel_delete",
        "guild_remove",
        "guild_channel_update",
        "resumed",
    ):
        record(name)

    @bot.event
    async def on_command_error(ctx: commands.Context, error: Exception) -> None:
        seen["command_error"].append(error)

    return bot


def _pending_tasks() -> list[asyncio.Task]:
    me = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not me and not t.done()]


@pytest.fixture
async def fd():
    async with FakeDiscord() as server, server.patch_discord():
        yield server
    for _ in range(50):  # handler tasks finish right after their sockets close
        if not _pending_tasks():
            break
        await asyncio.sleep(0.01)
    assert not _pending_tasks(), _pending_tasks()


@pytest.fixture
def world(fd: FakeDiscord) -> dict[str, int]:
    guild = fd.add_guild("testers")
    return {
        "guild": guild,
        "chan": fd.add_channel(guild, "general"),
        "other": fd.add_channel(guild, "other"),
        "alice": fd.add_member(guild, "alice"),
        "mod": fd.add_member(guild, "mod", manage_guild=True),
    }


@pytest.fixture
async def bot(fd: FakeDiscord, world):
    bot = make_bot()
    task = asyncio.create_task(bot.start(fd.token))
    try:
        await fd.wait_ready()
        await asyncio.wait_for(bot.wait_until_ready(), 10)
        yield bot
    finally:
        await bot.close()
        await asyncio.wait_for(task, 10)


async def test_ready_state(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    assert bot.user.id == fd.bot_user_id
    guild = bot.get_guild(world["guild"])
    assert guild is not None and guild.name == "testers"
    assert guild.owner_id == fd.guild_owner_id(world["guild"])
    assert {c.id for c in guild.text_channels} == {world["chan"], world["other"]}
    assert guild.me is not None and guild.me.id == fd.bot_user_id
    perms = guild.get_channel(world["chan"]).permissions_for(guild.me)
    assert perms.send_messages and perms.manage_messages and perms.attach_files
    conn = fd.gateway_connections[0]
    assert conn["compress"] == "zlib-stream" and conn["path"] == "/gateway"
    assert fd.identify_payloads[0]["intents"] == bot.intents.value
    assert fd.heartbeats >= 1
    assert ("GET", "/users/@me") in fd.requests
    # snowflakes carry real creation times
    assert abs((discord.utils.utcnow() - guild.created_at).total_seconds()) < 60


async def test_ping_reply(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    sent = await fd.post_message(world["chan"], world["alice"], "!ping")
    replies = await fd.wait_for(lambda: fd.bot_messages(world["chan"]))
    assert replies[0]["content"] == "pong"
    assert replies[0]["reply_to"] == sent["id"]
    assert replies[0]["mentions"] == [world["alice"]]
    assert [m["id"] for m in fd.messages(world["chan"])] == [sent["id"], replies[0]["id"]]


async def test_embed_and_file_multipart(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    await fd.post_message(world["chan"], world["alice"], "!pic")
    msg = (await fd.wait_for(lambda: fd.bot_messages(world["chan"])))[0]
    (att,) = msg["attachments"]
    assert att["data"] == RED and att["filename"] == "red.png"
    assert (att["content_type"], att["width"], att["height"]) == ("image/png", 4, 3)
    (embed,) = msg["embeds"]
    assert embed["title"] == "result 1/2"
    # attachment://red.png resolved to the attachment's CDN URL, as Discord does
    assert embed["image"]["url"] == att["url"]
    call = fd.calls("POST", rf"/channels/{world['chan']}/messages")[-1]
    assert call.files == ["red.png"] and call.json["attachments"][0]["filename"] == "red.png"
    async with aiohttp.ClientSession() as http:
        async with http.get(att["url"]) as resp:
            assert resp.status == 200 and await resp.read() == RED
            assert resp.content_type == "image/png"


async def test_reactions_and_edit(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    channel = bot.get_channel(world["chan"])
    embed = discord.Embed(title="page 1").set_image(url="attachment://red.png")
    msg = await channel.send(embed=embed, file=discord.File(io.BytesIO(RED), "red.png"))
    await msg.add_reaction("◀️")
    await msg.add_reaction("▶️")
    stored = fd.get_message(world["chan"], msg.id)
    assert stored["reactions"] == {"◀️": [fd.bot_user_id], "▶️": [fd.bot_user_id]}

    new_embed = discord.Embed(title="page 2").set_image(url="attachment://blue.png")
    edited = await msg.edit(
        embed=new_embed, attachments=[discord.File(io.BytesIO(BLUE), "blue.png")]
    )
    stored = fd.get_message(world["chan"], msg.id)
    assert stored["edited"] and edited.edited_at is not None
    assert [a["filename"] for a in stored["attachments"]] == ["blue.png"]
    assert stored["attachments"][0]["data"] == BLUE
    assert stored["attachments"][0]["width"] == 5
    assert stored["embeds"][0]["title"] == "page 2"
    assert stored["embeds"][0]["image"]["url"] == stored["attachments"][0]["url"]
    assert edited.attachments[0].filename == "blue.png"
    # keeping an existing attachment while adding one (attachments list semantics)
    edited2 = await edited.edit(
        attachments=[edited.attachments[0], discord.File(io.BytesIO(RED), "red.png")]
    )
    assert [a.filename for a in edited2.attachments] == ["blue.png", "red.png"]
    assert edited2.attachments[0].id == edited.attachments[0].id
    # removing all attachments and the embed, editing content
    await edited2.edit(content="bye", embed=None, attachments=[])
    stored = fd.get_message(world["chan"], msg.id)
    assert (stored["content"], stored["embeds"], stored["attachments"]) == ("bye", [], [])
    await fd.wait_for(lambda: len(bot.seen["raw_message_edit"]) >= 3)

    await msg.remove_reaction("◀️", bot.user)
    await msg.clear_reactions()
    assert fd.get_message(world["chan"], msg.id)["reactions"] == {}


async def test_member_reactions_reach_bot(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    channel = bot.get_channel(world["chan"])
    msg = await channel.send("results")
    await fd.add_reaction(world["chan"], msg.id, world["alice"], "▶️")
    payload = (await fd.wait_for(lambda: bot.seen["raw_reaction_add"]))[0]
    assert isinstance(payload, discord.RawReactionActionEvent)
    assert (payload.user_id, payload.message_id, str(payload.emoji)) == (
        world["alice"],
        msg.id,
        "▶️",
    )
    assert payload.member is not None and payload.member.name == "alice"
    assert payload.message_author_id == fd.bot_user_id

    # bot removes the member's reaction (needs Manage Messages, which it has by default)
    await msg.remove_reaction("▶️", discord.Object(world["alice"]))
    assert fd.get_message(world["chan"], msg.id)["reactions"] == {}
    removed = await fd.wait_for(lambda: bot.seen["raw_reaction_remove"])
    assert removed[0].user_id == world["alice"]

    # without Manage Messages: 403 Missing Permissions, and the bot's cache knows it
    await fd.add_reaction(world["chan"], msg.id, world["alice"], "▶️")
    fd.set_bot_permissions(world["chan"], manage_messages=False)
    await fd.wait_for(lambda: bot.seen["guild_channel_update"])
    assert not channel.permissions_for(channel.guild.me).manage_messages
    with pytest.raises(discord.Forbidden) as exc:
        await msg.remove_reaction("▶️", discord.Object(world["alice"]))
    assert exc.value.code == 50013 and exc.value.status == 403
    assert fd.get_message(world["chan"], msg.id)["reactions"] == {"▶️": [world["alice"]]}
    # a member removing their own reaction is dispatched too
    await fd.remove_reaction(world["chan"], msg.id, world["alice"], "▶️")
    await fd.wait_for(lambda: len(bot.seen["raw_reaction_remove"]) == 2)


async def test_history(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    posted = [await fd.post_message(world["chan"], world["alice"], f"m{i}") for i in range(7)]
    ids = [m["id"] for m in posted]
    channel = bot.get_channel(world["chan"])
    newest = [m.id async for m in channel.history(limit=3)]
    assert newest == ids[::-1][:3]
    before = [m.id async for m in channel.history(limit=2, before=discord.Object(ids[3]))]
    assert before == [ids[2], ids[1]]
    after = [m.id async for m in channel.history(limit=10, after=discord.Object(ids[1]))]
    assert after == ids[2:]  # oldest first when after= is given
    around = [m.id async for m in channel.history(limit=3, around=discord.Object(ids[3]))]
    assert sorted(around) == ids[2:5]
    everything = [m.content async for m in channel.history(limit=None, oldest_first=True)]
    assert everything == [f"m{i}" for i in range(7)]
    fetched = await channel.fetch_message(ids[4])
    assert fetched.content == "m4" and fetched.author.id == world["alice"]
    with pytest.raises(discord.NotFound) as exc:
        await channel.fetch_message(12345)
    assert exc.value.code == 10008
    # Discord returns no history without Read Message History
    fd.set_bot_permissions(world["chan"], read_message_history=False)
    assert [m async for m in channel.history(limit=5)] == []


async def test_delete_dispatch(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    posted = [await fd.post_message(world["chan"], world["alice"], f"m{i}") for i in range(4)]
    await fd.delete_message(world["chan"], posted[0]["id"])
    raw = (await fd.wait_for(lambda: bot.seen["raw_message_delete"]))[0]
    assert (raw.message_id, raw.channel_id, raw.guild_id) == (
        posted[0]["id"],
        world["chan"],
        world["guild"],
    )
    assert raw.cached_message is not None and raw.cached_message.content == "m0"
    await fd.bulk_delete(world["chan"], [posted[1]["id"], posted[2]["id"]])
    bulk = (await fd.wait_for(lambda: bot.seen["raw_bulk_message_delete"]))[0]
    assert bulk.message_ids == {posted[1]["id"], posted[2]["id"]}
    # the bot deletes a member's message (Manage Messages) and its own
    channel = bot.get_channel(world["chan"])
    await channel.get_partial_message(posted[3]["id"]).delete()
    own = await channel.send("temp")
    await own.delete()
    assert fd.messages(world["chan"]) == []
    await fd.wait_for(lambda: len(bot.seen["raw_message_delete"]) == 3)


async def test_forbidden_send_is_raised(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    fd.set_bot_permissions(world["chan"], send_messages=False)
    await fd.post_message(world["chan"], world["alice"], "!ping")
    (error,) = await fd.wait_for(lambda: bot.seen["command_error"])
    assert isinstance(error, commands.CommandInvokeError)
    assert isinstance(error.original, discord.Forbidden)
    assert error.original.code == 50013 and error.original.text == "Missing Permissions"
    assert fd.bot_messages(world["chan"]) == []
    # other channels are unaffected; attach_files missing -> 403 for uploads only
    other = bot.get_channel(world["other"])
    fd.set_bot_permissions(world["other"], attach_files=False, embed_links=False)
    with pytest.raises(discord.Forbidden):
        await other.send(file=discord.File(io.BytesIO(RED), "red.png"))
    msg = await other.send("text", embed=discord.Embed(title="dropped"))
    assert msg.embeds == []  # Discord drops embeds silently without Embed Links


async def test_wrong_token_login_failure(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    other = make_bot()
    with pytest.raises(discord.LoginFailure):
        await other.start("not-the-token")
    await other.close()
    assert ("GET", "/users/@me") in fd.requests
    assert fd.request_log[-1].status == 401


async def test_member_attachment_and_cdn_expiry(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    await fd.post_message(
        world["chan"], world["alice"], "!size", attachments=[("cat.png", BLUE, None)]
    )
    reply = (await fd.wait_for(lambda: fd.bot_messages(world["chan"])))[0]
    assert reply["content"] == f"cat.png {len(BLUE)} 5x7 image/png"
    stale_url = fd.messages(world["chan"])[0]["attachments"][0]["url"]
    fd.expire_cdn_urls()
    async with aiohttp.ClientSession() as http:
        async with http.get(stale_url) as resp:
            assert resp.status == 404
    fresh = await bot.get_channel(world["chan"]).fetch_message(fd.messages(world["chan"])[0]["id"])
    assert await fresh.attachments[0].read() == BLUE


async def test_slash_commands(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    synced = await bot.tree.sync(guild=discord.Object(world["guild"]))
    assert {c.name for c in synced} == set()  # nothing guild-scoped
    synced = await bot.tree.sync()
    assert {c.name for c in synced} == {"find", "slow"}
    assert {c["name"] for c in fd.app_commands()} == {"find", "slow"}

    rec = await fd.invoke_slash(
        world["chan"], world["alice"], "find", {"query": "cats", "count": 2}
    )
    await fd.wait_for(lambda: rec.responded)
    (answer,) = fd.interaction_messages(rec)
    assert answer["content"] == f"cats:2:{world['alice']}"
    assert fd.bot_messages(world["chan"])[0]["id"] == answer["id"]

    rec = await fd.invoke_slash(world["chan"], world["alice"], "slow")
    await fd.wait_for(
        lambda: fd.interaction_messages(rec) and fd.interaction_messages(rec)[0]["content"]
    )
    (answer,) = fd.interaction_messages(rec)
    assert rec.callback_types == [5]
    assert answer["content"] == "done" and answer["flags"] & 64  # ephemeral
    assert answer["attachments"][0]["data"] == BLUE
    assert len(fd.bot_messages(world["chan"])) == 1  # ephemeral ones are not in the channel


async def test_resume_after_reconnect(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    await fd.reconnect_clients()
    await fd.wait_for(lambda: bot.seen["resumed"])
    assert fd.resumes == 1
    last = fd.gateway_connections[-1]
    assert last["resumed"] and last["path"] == "/resume-gateway"
    await fd.post_message(world["chan"], world["alice"], "!ping")
    await fd.wait_for(lambda: fd.bot_messages(world["chan"]))
    # an abrupt (resumable) close: events sent meanwhile are replayed on RESUME
    await fd.disconnect_clients(4000)
    await fd.post_message(world["chan"], world["alice"], "!ping")
    await fd.wait_for(lambda: len(fd.bot_messages(world["chan"])) == 2)
    assert fd.resumes == 2 and len(fd.identify_payloads) == 1


async def test_channel_and_guild_delete(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    await fd.delete_channel(world["other"])
    deleted = (await fd.wait_for(lambda: bot.seen["guild_channel_delete"]))[0]
    assert deleted.id == world["other"]
    assert bot.get_channel(world["other"]) is None
    await fd.remove_guild(world["guild"])
    gone = (await fd.wait_for(lambda: bot.seen["guild_remove"]))[0]
    assert gone.id == world["guild"] and bot.get_guild(world["guild"]) is None


async def test_button_click_updates_message(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    class Pager(discord.ui.View):
        @discord.ui.button(label="next", custom_id="pager:next")
        async def next_page(
            self, interaction: discord.Interaction, button: discord.ui.Button
        ) -> None:
            await interaction.response.edit_message(content="page 2")

    msg = await bot.get_channel(world["chan"]).send("page 1", view=Pager(timeout=None))
    stored = fd.get_message(world["chan"], msg.id)
    assert stored["components"][0]["components"][0]["custom_id"] == "pager:next"
    rec = await fd.click_button(world["chan"], msg.id, world["alice"], "pager:next")
    await fd.wait_for(lambda: rec.responded)
    assert rec.callback_types == [7]
    assert fd.get_message(world["chan"], msg.id)["content"] == "page 2"


async def test_message_content_intent_enforced(fd: FakeDiscord, world) -> None:
    fd.enforce_message_content = True
    client = discord.Client(intents=discord.Intents.default(), guild_ready_timeout=0.05)
    seen: list[discord.Message] = []

    @client.event
    async def on_message(message: discord.Message) -> None:
        seen.append(message)

    task = asyncio.create_task(client.start(fd.token))
    try:
        await asyncio.wait_for(client.wait_until_ready(), 10)
        await fd.post_message(world["chan"], world["alice"], "!ping")
        await fd.post_message(world["chan"], world["alice"], f"<@{fd.bot_user_id}> hi")
        await fd.wait_for(lambda: len(seen) == 2)
        assert [m.content for m in seen] == ["", f"<@{fd.bot_user_id}> hi"]
        assert fd.messages(world["chan"])[0]["content"] == "!ping"  # stored as sent
    finally:
        await client.close()
        await asyncio.wait_for(task, 10)


async def test_errors_and_unknown_routes(fd: FakeDiscord, world, bot: commands.Bot) -> None:
    channel = bot.get_channel(world["chan"])
    with pytest.raises(discord.HTTPException) as exc:
        await channel.send("x" * 2001)
    assert exc.value.status == 400 and exc.value.code == 50035
    with pytest.raises(discord.HTTPException) as exc:
        await bot.http.send_message(channel.id, params=discord.http.handle_message_parameters())
    assert exc.value.code == 50006
    with pytest.raises(discord.NotFound):
        await bot.http.request(discord.http.Route("GET", "/voice/regions"))
    assert ("GET", "/voice/regions") in fd.unknown_requests
    member = await channel.guild.fetch_member(world["mod"])
    assert member.guild_permissions.manage_guild
    assert (await bot.fetch_channel(world["chan"])).name == "general"
    await channel.typing()  # POST /channels/{id}/typing
    assert ("POST", f"/channels/{world['chan']}/typing") in fd.requests
    guild = await bot.fetch_guild(world["guild"])
    assert guild.name == "testers" and guild.owner_id == fd.guild_owner_id(world["guild"])
    assert {c.name for c in await guild.fetch_channels()} == {"general", "other"}
    shards, url, _ = await bot.http.get_bot_gateway()
    assert (shards, url) == (1, fd.gateway_url)
    assert (await bot.application_info()).id == fd.application_id
    reply_to_missing = discord.MessageReference(message_id=1, channel_id=channel.id)
    with pytest.raises(discord.HTTPException) as exc:
        await channel.send("hi", reference=reply_to_missing)
    assert exc.value.code == 50035
    with pytest.raises(discord.HTTPException) as exc:
        await channel.send(files=[discord.File(io.BytesIO(b"x"), f"{i}.txt") for i in range(11)])
    assert exc.value.status == 400
    fd.upload_limit = 10
    with pytest.raises(discord.HTTPException) as exc:
        await channel.send(file=discord.File(io.BytesIO(b"x" * 11), "big.bin"))
    assert (exc.value.status, exc.value.code) == (413, 40005)


async def test_privileged_intent_refused(fd: FakeDiscord, world) -> None:
    fd.enabled_privileged_intents = {"members"}
    other = make_bot()
    with pytest.raises(discord.PrivilegedIntentsRequired):
        await asyncio.wait_for(other.start(fd.token), 10)
    await other.close()
    assert fd.gateway_connections[-1]["close_code"] == 4014
    assert permissions.MANAGE_MESSAGES == discord.Permissions(manage_messages=True).value


async def test_shards_get_only_their_guilds_and_events(fd: FakeDiscord) -> None:
    """Two shards in one AutoShardedBot: each READY lists only its guilds, and a guild's
    events reach only the shard Discord routes it to ((guild_id >> 22) % shard_count)."""
    guilds = {s: fd.add_guild(f"on-{s}", shard=(s, 2)) for s in (0, 1)}
    chans = {s: fd.add_channel(g, "general") for s, g in guilds.items()}
    alice = fd.add_user("alice")
    for g in guilds.values():
        fd.add_member(g, "alice", user_id=alice)
    fd.max_concurrency, fd.recommended_shards = 2, 2
    intents = discord.Intents.default()
    intents.message_content = True
    bot = commands.AutoShardedBot(command_prefix="!", intents=intents, guild_ready_timeout=0.05,
                                  shard_count=2, shard_ids=[0, 1])

    async def no_wait(shard_id, *, initial=False):  # the 5 s identify spacing: not here
        return None

    bot.before_identify_hook = no_wait
    heard: list[tuple[int, int]] = []

    @bot.event
    async def on_message(message: discord.Message) -> None:
        heard.append((message.guild.id, message.guild.shard_id))

    task = asyncio.create_task(bot.start(fd.token))
    try:
        await fd.wait_ready(sessions=2)
        await asyncio.wait_for(bot.wait_until_ready(), 10)
        readies = {tuple(r["shard"]): {int(g["id"]) for g in r["guilds"]}
                   for r in fd.events_named("READY")}
        assert readies == {(0, 2): {guilds[0]}, (1, 2): {guilds[1]}}
        assert fd.shard_sessions() == {0: 1, 1: 1}
        for s in (0, 1):
            await fd.post_message(chans[s], alice, f"hello shard {s}")
        await fd.wait_for(lambda: len(heard) == 2)
        assert sorted(heard) == sorted((guilds[s], s) for s in (0, 1))  # once each, right shard
        shards, _, limits = await bot.http.get_bot_gateway()
        assert shards == 2 and limits["max_concurrency"] == 2
    finally:
        await bot.close()
        await asyncio.wait_for(task, 10)


async def test_bad_shard_is_closed_4010(fd: FakeDiscord, world) -> None:
    bot = commands.AutoShardedBot(command_prefix="!", intents=discord.Intents.default(),
                                  shard_count=2, shard_ids=[3])
    with pytest.raises(discord.ConnectionClosed) as e:
        await asyncio.wait_for(bot.start(fd.token), 10)
    assert e.value.code == 4010
    await bot.close()


async def test_slash_attachment_and_subcommand_options(fd: FakeDiscord, world) -> None:
    bot = make_bot()
    group = discord.app_commands.Group(name="lib", description="a group")

    @group.command(name="add", description="a subcommand with a channel")
    async def add(interaction: discord.Interaction, channel: discord.TextChannel) -> None:
        await interaction.response.send_message(f"add {channel.id} {channel.name}")

    bot.tree.add_command(group)

    @bot.tree.command(name="look", description="an image option")
    async def look(interaction: discord.Interaction, query: str,
                   image: discord.Attachment | None = None) -> None:
        await interaction.response.defer(thinking=True)
        data = await image.read() if image else b""
        await interaction.followup.send(f"{query} {image.filename if image else '-'} {len(data)}")
        await interaction.followup.send("secret", ephemeral=True)

    task = asyncio.create_task(bot.start(fd.token))
    try:
        await fd.wait_ready()
        await asyncio.wait_for(bot.wait_until_ready(), 10)
        await bot.tree.sync()
        look_spec = next(c for c in fd.app_commands() if c["name"] == "look")
        assert {o["name"]: o["type"] for o in look_spec["options"]} == {"query": 3, "image": 11}
        rec = await fd.invoke_slash(world["chan"], world["alice"], "look",
                                    {"query": "cats", "image": ("blue.png", BLUE, None)})
        await fd.wait_for(lambda: len(fd.interaction_messages(rec)) == 2)
        first, second = fd.interaction_messages(rec)
        assert rec.callback_types == [5]  # deferred, then the follow-up replaced "thinking"
        assert first["content"] == f"cats blue.png {len(BLUE)}" and not first["flags"] & 64
        assert second["content"] == "secret" and second["flags"] & 64
        rec = await fd.invoke_slash(world["chan"], world["alice"], "lib add",
                                    {"channel": world["other"]})
        await fd.wait_for(lambda: fd.interaction_messages(rec))
        assert fd.interaction_messages(rec)[0]["content"] == f"add {world['other']} other"
    finally:
        await bot.close()
        await asyncio.wait_for(task, 10)
