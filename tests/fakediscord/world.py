"""The fake Discord's world: users, guilds, channels, messages, interactions, and the
payloads Discord would send of them. State changes dispatch gateway events through
``self.gateway`` (any :class:`EventSink`); tests set the world up and read it back.
"""

from __future__ import annotations

import asyncio
import copy
import re
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from . import permissions as P
from .intents import (
    GUILD_MEMBERS,
    GUILD_MESSAGE_REACTIONS,
    GUILD_MESSAGES,
    GUILDS,
)
from .models import (
    Attachment,
    Channel,
    Guild,
    Member,
    Message,
    Reaction,
    Role,
    User,
    emoji_key,
    guess_content_type,
    image_size,
    message_public,
)
from .payloads import Payloads
from .records import API_VERSION, EPHEMERAL, InteractionRecord, RequestRecord
from .snowflake import SnowflakeGenerator, now_iso

T = TypeVar("T")
_MENTION_RE = re.compile(r"<@!?(\d+)>")


class EventSink(Protocol):
    """Where the world's events go (the gateway)."""

    sessions: dict[str, Any]  # session id -> gateway.Session

    def dispatch(
        self, event: str, data: Any, *, intent: int | None = None, guild_id: int | None = None,
        transform: Callable[[Any, dict], dict] | None = None,
    ) -> None: ...

    async def drain(self) -> None: ...


class _NoGateway:
    """Events of a world no server serves yet: recorded nowhere."""

    sessions: dict[str, Any] = {}

    def dispatch(self, event, data, *, intent=None, guild_id=None, transform=None) -> None:
        pass

    async def drain(self) -> None:
        pass


class World(Payloads):
    """Discord's state as the fake holds it (see FakeDiscord for the options)."""

    def __init__(
        self,
        *,
        bot_name: str = "TestBot",
        heartbeat_interval_ms: int = 41250,
        enabled_privileged_intents: Iterable[str] = ("members", "presences", "message_content"),
        enforce_message_content: bool = False,
        upload_limit: int = 10 * 1024 * 1024,
    ) -> None:
        self._ids = SnowflakeGenerator()
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.enabled_privileged_intents: set[str] = set(enabled_privileged_intents)
        self.enforce_message_content = enforce_message_content
        self.upload_limit = upload_limit

        #: The token the server accepts (REST ``Authorization: Bot <token>`` and IDENTIFY).
        self.token: str = "fake." + secrets.token_urlsafe(24)
        self._users: dict[int, User] = {}
        self._guilds: dict[int, Guild] = {}
        self._channels: dict[int, Channel] = {}
        self._messages: dict[int, dict[int, Message]] = {}
        self._ephemeral: dict[int, Message] = {}
        self._attachments: dict[int, Attachment] = {}
        self._interactions: dict[int, InteractionRecord] = {}
        self._interactions_by_token: dict[str, InteractionRecord] = {}
        self._app_commands: dict[int | None, list[dict[str, Any]]] = {}
        self._app_command_ids: dict[tuple[int | None, str, int], int] = {}
        self._cdn_epoch = 0
        self._cdn_secret = secrets.token_hex(8)

        bot = self._new_user(bot_name, bot=True)
        #: The bot's user id (also the application id, as for real bots).
        self.bot_user_id: int = bot.id
        self.application_id: int = bot.id
        self.app_owner_id: int = self._new_user("app-owner").id

        #: ``(method, path)`` of every REST call, path relative to :attr:`api_base`.
        self.requests: list[tuple[str, str]] = []
        #: Details of every REST call (body, query, status), same order as :attr:`requests`.
        self.request_log: list[RequestRecord] = []
        #: ``(method, path)`` of REST calls that matched no route (answered 404).
        self.unknown_requests: list[tuple[str, str]] = []
        #: ``(method, path)`` of CDN fetches (attachment downloads).
        self.cdn_requests: list[tuple[str, str]] = []
        #: ``(event_name, data)`` of every gateway dispatch, in order (READY, GUILD_CREATE,
        #: RESUMED included; a replay on RESUME is not recorded twice).
        self.events: list[tuple[str, Any]] = []
        #: One dict per websocket connection: path, query, compress, resumed, close_code.
        self.gateway_connections: list[dict[str, Any]] = []
        #: The ``d`` of every IDENTIFY accepted.
        self.identify_payloads: list[dict[str, Any]] = []
        #: ``(time.monotonic(), shard or None)`` of every IDENTIFY accepted.
        self.identify_times: list[tuple[float, list[int] | None]] = []
        #: What GET /gateway/bot recommends: the shard count, and how many shards may
        #: IDENTIFY at once (``session_start_limit.max_concurrency``).
        self.recommended_shards = 1
        self.max_concurrency = 1
        #: Seconds each CDN download takes (a slow CDN; 0: at once).
        self.cdn_delay_s = 0.0
        self.heartbeats = 0
        self.resumes = 0

        self.host = "127.0.0.1"
        self.port = 0
        #: Where events go (the gateway); set by the server that serves this world.
        self.gateway: EventSink = _NoGateway()


    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (CDN and asset URLs live here)."""
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """REST base, what ``discord.http.Route.BASE`` is set to."""
        return f"{self.base_url}/api/v{API_VERSION}"

    @property
    def gateway_url(self) -> str:
        """Gateway URL (``DiscordWebSocket.DEFAULT_GATEWAY``)."""
        return f"ws://{self.host}:{self.port}/gateway"

    @property
    def resume_gateway_url(self) -> str:
        """Sent as READY's ``resume_gateway_url``; a different path so tests can see it used."""
        return f"ws://{self.host}:{self.port}/resume-gateway"

    # ------------------------------------------------------------------ setup API

    def _new_user(self, name: str, *, bot: bool = False) -> User:
        user = User(id=self._ids.next(), username=name, bot=bot)
        self._users[user.id] = user
        return user

    def add_user(self, name: str, *, bot: bool = False) -> int:
        """Create a user that is in no guild yet (see ``add_member(user_id=...)``)."""
        return self._new_user(name, bot=bot).id

    def add_guild(
        self, name: str, *, owner_id: int | None = None, shard: tuple[int, int] | None = None
    ) -> int:
        """Create a guild the bot is a member of; returns its id.

        The guild gets an @everyone role (id == guild id), a "Manager" role
        (Manage Server), the bot's managed role (@everyone permissions plus
        Manage Messages) and an owner member (a new user "<name>-owner" unless
        ``owner_id`` names an existing user).  If a client is connected it gets
        GUILD_CREATE.  ``shard=(shard_id, shard_count)`` picks an id Discord routes to
        that shard (``(guild_id >> 22) % shard_count == shard_id``).
        """
        gid = self._ids.next() if shard is None else self._ids.next_on_shard(*shard)
        if owner_id is None:
            owner_id = self._new_user(f"{name}-owner").id
        guild = Guild(id=gid, name=name, owner_id=owner_id)
        guild.roles[gid] = Role(id=gid, name="@everyone", permissions=P.DEFAULT_EVERYONE)
        manager = Role(id=self._ids.next(), name="Manager", permissions=P.MANAGE_GUILD, position=1)
        bot_role = Role(
            id=self._ids.next(),
            name=self._users[self.bot_user_id].username,
            permissions=P.DEFAULT_BOT_ROLE,
            position=2,
            managed=True,
            bot_id=self.bot_user_id,
        )
        guild.roles[manager.id] = manager
        guild.roles[bot_role.id] = bot_role
        guild.manager_role_id = manager.id
        guild.bot_role_id = bot_role.id
        guild.members[owner_id] = Member(user_id=owner_id, joined_at=now_iso())
        guild.members[self.bot_user_id] = Member(
            user_id=self.bot_user_id, joined_at=now_iso(), roles=[bot_role.id]
        )
        self._guilds[gid] = guild
        self.events.append(("GUILD_CREATE", self._guild_create_payload(guild, GUILDS)))
        for session in self._ready_sessions():
            if session.intents & GUILDS and session.owns(gid):
                session.dispatch("GUILD_CREATE", self._guild_create_payload(guild, session.intents))
        return gid

    def add_channel(self, guild_id: int, name: str, *, topic: str | None = None) -> int:
        """Create a text channel; dispatches CHANNEL_CREATE to connected clients."""
        guild = self._guild(guild_id)
        channel = Channel(
            id=self._ids.next(),
            guild_id=guild_id,
            name=name,
            position=len(guild.channel_ids),
            topic=topic,
        )
        guild.channel_ids.append(channel.id)
        self._channels[channel.id] = channel
        self._messages[channel.id] = {}
        self.gateway.dispatch("CHANNEL_CREATE", channel.payload(), intent=GUILDS)
        return channel.id

    def add_member(
        self,
        guild_id: int,
        name: str,
        *,
        manage_guild: bool = False,
        bot: bool = False,
        user_id: int | None = None,
    ) -> int:
        """Add a member (a new user, or ``user_id``) to a guild; returns the user id.

        ``manage_guild=True`` gives them the guild's "Manager" role (Manage Server).
        Dispatches GUILD_MEMBER_ADD to clients with the members intent.
        """
        guild = self._guild(guild_id)
        user = self._users[user_id] if user_id is not None else self._new_user(name, bot=bot)
        member = Member(user_id=user.id, joined_at=now_iso())
        if manage_guild:
            member.roles.append(guild.manager_role_id)
        guild.members[user.id] = member
        data = member.payload(user)
        data["guild_id"] = str(guild_id)
        self.gateway.dispatch("GUILD_MEMBER_ADD", data, intent=GUILD_MEMBERS)
        return user.id

    def set_permission_overwrite(
        self, channel_id: int, target_id: int, *, allow: int = 0, deny: int = 0, role: bool = False
    ) -> None:
        """Set (or with allow=deny=0, remove) a channel permission overwrite; dispatches CHANNEL_UPDATE."""
        channel = self._channel(channel_id)
        if allow or deny:
            kind = P.ROLE_OVERWRITE if role else P.MEMBER_OVERWRITE
            channel.overwrites[target_id] = (kind, allow, deny)
        else:
            channel.overwrites.pop(target_id, None)
        self.gateway.dispatch("CHANNEL_UPDATE", channel.payload(), intent=GUILDS)

    def set_bot_permissions(
        self,
        channel_id: int,
        *,
        send_messages: bool = True,
        embed_links: bool = True,
        attach_files: bool = True,
        add_reactions: bool = True,
        manage_messages: bool = True,
        read_message_history: bool = True,
        view_channel: bool = True,
    ) -> None:
        """Give the bot exactly these permissions in one channel.

        Implemented as a member permission overwrite for the bot (so the bot's
        own ``channel.permissions_for(guild.me)`` agrees with the server), and
        announced with CHANNEL_UPDATE.  REST calls needing a missing permission
        get 403 ``{"message": "Missing Permissions", "code": 50013}``.
        """
        flags = {
            "send_messages": send_messages,
            "embed_links": embed_links,
            "attach_files": attach_files,
            "add_reactions": add_reactions,
            "manage_messages": manage_messages,
            "read_message_history": read_message_history,
            "view_channel": view_channel,
        }
        allow = deny = 0
        for name, on in flags.items():
            if on:
                allow |= P.NAMED[name]
            else:
                deny |= P.NAMED[name]
        self.set_permission_overwrite(channel_id, self.bot_user_id, allow=allow, deny=deny)

    def permissions_for(self, channel_id: int, user_id: int) -> int:
        """Effective permission bits of a user in a channel (0 if not a member)."""
        channel = self._channel(channel_id)
        guild = self._guild(channel.guild_id)
        member = guild.members.get(user_id)
        if member is None:
            return 0
        base = P.compute_base(
            guild.roles[guild.id].permissions,
            [guild.roles[r].permissions for r in member.roles if r in guild.roles],
            is_owner=guild.owner_id == user_id,
        )
        return P.compute_channel(
            base,
            guild_id=guild.id,
            member_id=user_id,
            member_roles=member.roles,
            overwrites=channel.overwrites,
        )

    def interaction(self, interaction_id: int) -> InteractionRecord:
        return self._interactions[interaction_id]

    def interaction_messages(self, interaction: InteractionRecord | int) -> list[dict[str, Any]]:
        """Original response then follow-ups (ephemeral ones included, flag 64 set)."""
        rec = (
            interaction
            if isinstance(interaction, InteractionRecord)
            else self._interactions[interaction]
        )
        out = []
        for mid in [rec.original_message_id, *rec.followup_ids]:
            if mid is None:
                continue
            msg = self._find_any_message(mid)
            if msg is not None:
                out.append(self._public(msg))
        return out

    def app_commands(self, guild_id: int | None = None) -> list[dict[str, Any]]:
        """Application commands as last synced (global when ``guild_id`` is None)."""
        return copy.deepcopy(self._app_commands.get(guild_id, []))


    # ------------------------------------------------------------------ inspection

    def messages(self, channel_id: int) -> list[dict[str, Any]]:
        """All messages of a channel, oldest first (snapshots; bot's and members').

        Each dict: id, channel_id, guild_id, author_id, content, embeds,
        attachments (id, filename, content_type, size, width, height,
        description, url, data=bytes), components, reactions ({emoji: [user
        ids]}), mentions, reply_to, edited, edited_timestamp, timestamp, type,
        flags, pinned, interaction_metadata.
        """
        return [self._public(m) for m in self._messages.get(channel_id, {}).values()]

    def bot_messages(self, channel_id: int) -> list[dict[str, Any]]:
        """:meth:`messages` written by the bot."""
        return [m for m in self.messages(channel_id) if m["author_id"] == self.bot_user_id]

    def get_message(self, channel_id: int, message_id: int) -> dict[str, Any] | None:
        msg = self._messages.get(channel_id, {}).get(message_id)
        return None if msg is None else self._public(msg)

    def guild_ids(self) -> list[int]:
        return list(self._guilds)

    def channel_ids(self, guild_id: int) -> list[int]:
        return list(self._guild(guild_id).channel_ids)

    def member_ids(self, guild_id: int) -> list[int]:
        return list(self._guild(guild_id).members)

    def guild_owner_id(self, guild_id: int) -> int:
        return self._guild(guild_id).owner_id

    def events_named(self, name: str) -> list[Any]:
        """Data of every dispatched gateway event called ``name``."""
        return [d for n, d in self.events if n == name]

    def calls(self, method: str, pattern: str) -> list[RequestRecord]:
        """REST calls with this method whose path matches the regex ``pattern`` (fullmatch)."""
        rx = re.compile(pattern)
        return [r for r in self.request_log if r.method == method and rx.fullmatch(r.path)]

    async def wait_for(self, predicate: Callable[[], T | None], timeout: float = 10.0) -> T:
        """Poll ``predicate`` until it returns something truthy and return that.

        Raises ``TimeoutError`` (with the last REST calls in the message) after ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                recent = self.requests[-8:]
                raise TimeoutError(
                    f"condition not met within {timeout}s; last REST calls: {recent}; "
                    f"unknown routes: {self.unknown_requests[-5:]}"
                )
            await asyncio.sleep(0.01)

    async def wait_ready(self, timeout: float = 10, *, sessions: int = 1) -> None:
        """Until ``sessions`` connected clients (shards) have IDENTIFYed and been sent READY
        and every GUILD_CREATE.

        discord.py fires ``on_ready`` ``guild_ready_timeout`` seconds (default
        2, pass e.g. ``guild_ready_timeout=0.05`` to the bot) after the last
        GUILD_CREATE; use ``bot.wait_until_ready()`` for that.
        """

        def ready() -> bool:
            live = [s for s in self.gateway.sessions.values() if s.ready and s.conn is not None]
            return len(live) >= sessions

        await self.wait_for(ready, timeout)
        await self.gateway.drain()

    def shard_sessions(self) -> dict[int, int]:
        """shard id -> how many live gateway sessions run it (unsharded sessions count as 0)."""
        out: dict[int, int] = {}
        for s in self.gateway.sessions.values():
            if s.ready and s.conn is not None:
                sid = s.shard[0] if s.shard else 0
                out[sid] = out.get(sid, 0) + 1
        return out

    # ================================================================== internals

    def _guild(self, guild_id: int) -> Guild:
        try:
            return self._guilds[int(guild_id)]
        except (KeyError, ValueError):
            raise KeyError(f"unknown guild {guild_id}") from None

    def _channel(self, channel_id: int) -> Channel:
        try:
            return self._channels[int(channel_id)]
        except (KeyError, ValueError):
            raise KeyError(f"unknown channel {channel_id}") from None

    def _message(self, channel_id: int, message_id: int) -> Message:
        try:
            return self._messages[int(channel_id)][int(message_id)]
        except (KeyError, ValueError):
            raise KeyError(f"unknown message {message_id} in channel {channel_id}") from None

    def _find_any_message(self, message_id: int) -> Message | None:
        if message_id in self._ephemeral:
            return self._ephemeral[message_id]
        for msgs in self._messages.values():
            if message_id in msgs:
                return msgs[message_id]
        return None

    def _public(self, msg: Message) -> dict[str, Any]:
        return message_public(msg, self._attachment_url)

    def _ready_sessions(self) -> list[Any]:
        return [s for s in self.gateway.sessions.values() if s.ready]

    def _bot_guilds(self) -> list[Guild]:
        return [g for g in self._guilds.values() if self.bot_user_id in g.members]

    # -- state changes ------------------------------------------------------------

    def _parse_mentions(self, content: str, guild_id: int | None) -> list[int]:
        seen: list[int] = []
        for m in _MENTION_RE.finditer(content or ""):
            uid = int(m.group(1))
            if uid in self._users and uid not in seen:
                seen.append(uid)
        return seen

    def _new_attachment(
        self, channel_id: int, filename: str, data: bytes, content_type: str | None = None
    ) -> Attachment:
        data = bytes(data)
        ctype = content_type or guess_content_type(filename, data)
        width = height = None
        if ctype and ctype.startswith("image/"):
            width, height = image_size(data)
        att = Attachment(
            id=self._ids.next(),
            channel_id=channel_id,
            filename=filename,
            data=data,
            content_type=ctype,
            width=width,
            height=height,
        )
        self._attachments[att.id] = att
        return att

    def _resolve_attachment_refs(
        self, embeds: list[dict[str, Any]], attachments: list[Attachment]
    ) -> None:
        """``attachment://name`` in embed images becomes the attachment's CDN URL, as on Discord."""
        by_name = {a.filename: a for a in attachments}
        for embed in embeds:
            for key in ("image", "thumbnail"):
                part = embed.get(key)
                if not isinstance(part, dict):
                    continue
                url = part.get("url") or ""
                if url.startswith("attachment://"):
                    att = by_name.get(url[len("attachment://") :])
                    if att is not None:
                        part["url"] = self._attachment_url(att)
                        part["proxy_url"] = self._attachment_url(att, proxy=True)
                        if att.width is not None:
                            part["width"] = att.width
                            part["height"] = att.height
                        if att.content_type:
                            part["content_type"] = att.content_type
                        part["flags"] = 0

    def _create_message(
        self,
        channel_id: int,
        author_id: int,
        *,
        content: str = "",
        embeds: list[dict[str, Any]] | None = None,
        attachments: list[Attachment] | None = None,
        components: list[dict[str, Any]] | None = None,
        reference: dict[str, Any] | None = None,
        flags: int = 0,
        nonce: str | int | None = None,
        tts: bool = False,
        type: int | None = None,
        extra_mentions: Iterable[int] = (),
        interaction_metadata: dict[str, Any] | None = None,
        webhook_id: int | None = None,
        application_id: int | None = None,
        ephemeral: bool = False,
    ) -> Message:
        channel = self._channel(channel_id)
        mentions = self._parse_mentions(content, channel.guild_id)
        for uid in extra_mentions:
            if uid not in mentions:
                mentions.append(uid)
        if type is None:
            type = 19 if reference and reference.get("message_id") else 0
        msg = Message(
            id=self._ids.next(),
            channel_id=channel_id,
            guild_id=channel.guild_id,
            author_id=author_id,
            content=content or "",
            embeds=list(embeds or []),
            attachments=list(attachments or []),
            components=list(components or []),
            reference=reference,
            flags=flags,
            nonce=nonce,
            tts=tts,
            type=type,
            mentions=mentions,
            interaction_metadata=interaction_metadata,
            webhook_id=webhook_id,
            application_id=application_id,
        )
        for att in msg.attachments:
            att.channel_id = channel_id
        self._resolve_attachment_refs(msg.embeds, msg.attachments)
        if ephemeral:
            msg.flags |= EPHEMERAL
            self._ephemeral[msg.id] = msg
            return msg
        self._messages[channel_id][msg.id] = msg
        channel.last_message_id = msg.id
        self.gateway.dispatch(
            "MESSAGE_CREATE",
            self._message_payload(msg, gateway=True),
            intent=GUILD_MESSAGES,
            transform=self._content_filter(msg),
        )
        return msg

    def _dispatch_message_update(self, msg: Message) -> None:
        if msg.id in self._ephemeral:
            return
        self.gateway.dispatch(
            "MESSAGE_UPDATE",
            self._message_payload(msg, gateway=True),
            intent=GUILD_MESSAGES,
            transform=self._content_filter(msg),
        )

    def _delete_message(self, msg: Message) -> None:
        if self._ephemeral.pop(msg.id, None) is not None:
            return
        self._messages[msg.channel_id].pop(msg.id, None)
        data = {"id": str(msg.id), "channel_id": str(msg.channel_id)}
        if msg.guild_id is not None:
            data["guild_id"] = str(msg.guild_id)
        self.gateway.dispatch("MESSAGE_DELETE", data, intent=GUILD_MESSAGES)

    def _bulk_delete(self, channel_id: int, ids: list[int]) -> None:
        channel = self._channel(channel_id)
        msgs = self._messages[channel_id]
        gone = [i for i in ids if msgs.pop(i, None) is not None]
        if not gone:
            return
        self.gateway.dispatch(
            "MESSAGE_DELETE_BULK",
            {
                "ids": [str(i) for i in gone],
                "channel_id": str(channel_id),
                "guild_id": str(channel.guild_id),
            },
            intent=GUILD_MESSAGES,
        )

    def _reaction_event(self, msg: Message, emoji: dict[str, Any], user_id: int) -> dict[str, Any]:
        data: dict[str, Any] = {
            "user_id": str(user_id),
            "channel_id": str(msg.channel_id),
            "message_id": str(msg.id),
            "emoji": dict(emoji),
            "burst": False,
            "type": 0,
        }
        if msg.guild_id is not None:
            data["guild_id"] = str(msg.guild_id)
        return data

    def _add_reaction(self, msg: Message, emoji: dict[str, Any], user_id: int) -> bool:
        key = emoji_key(emoji)
        reaction = msg.reactions.get(key)
        if reaction is None:
            reaction = msg.reactions[key] = Reaction(emoji=dict(emoji))
        if user_id in reaction.users:
            return False
        reaction.users.append(user_id)
        data = self._reaction_event(msg, reaction.emoji, user_id)
        data["message_author_id"] = str(msg.author_id)
        guild = self._guilds.get(msg.guild_id or 0)
        if guild is not None and user_id in guild.members:
            data["member"] = guild.members[user_id].payload(self._users[user_id])
        data["burst_colors"] = []
        self.gateway.dispatch("MESSAGE_REACTION_ADD", data, intent=GUILD_MESSAGE_REACTIONS)
        return True

    def _remove_reaction(self, msg: Message, emoji: dict[str, Any], user_id: int) -> bool:
        key = emoji_key(emoji)
        reaction = msg.reactions.get(key)
        if reaction is None or user_id not in reaction.users:
            return False
        reaction.users.remove(user_id)
        if not reaction.users:
            del msg.reactions[key]
        self.gateway.dispatch(
            "MESSAGE_REACTION_REMOVE",
            self._reaction_event(msg, reaction.emoji, user_id),
            intent=GUILD_MESSAGE_REACTIONS,
        )
        return True

    def _clear_reactions(self, msg: Message, emoji: dict[str, Any] | None) -> None:
        base = {"channel_id": str(msg.channel_id), "message_id": str(msg.id)}
        if msg.guild_id is not None:
            base["guild_id"] = str(msg.guild_id)
        if emoji is None:
            msg.reactions.clear()
            self.gateway.dispatch(
                "MESSAGE_REACTION_REMOVE_ALL", base, intent=GUILD_MESSAGE_REACTIONS
            )
            return
        reaction = msg.reactions.pop(emoji_key(emoji), None)
        if reaction is not None:
            self.gateway.dispatch(
                "MESSAGE_REACTION_REMOVE_EMOJI",
                {**base, "emoji": dict(reaction.emoji)},
                intent=GUILD_MESSAGE_REACTIONS,
            )

    # -- interactions -------------------------------------------------------------

    def _find_app_command(self, name: str, guild_id: int | None) -> dict[str, Any] | None:
        for scope in (guild_id, None):
            for cmd in self._app_commands.get(scope, []):
                if cmd["name"] == name and cmd.get("type", 1) == 1:
                    return cmd
        return None

    def _new_interaction(
        self,
        itype: int,
        channel_id: int,
        user_id: int,
        data: dict[str, Any],
        *,
        message: Message | None = None,
    ) -> InteractionRecord:
        channel = self._channel(channel_id)
        guild = self._guild(channel.guild_id)
        if user_id not in guild.members:
            raise ValueError(f"user {user_id} is not a member of guild {guild.id}")
        rec = InteractionRecord(
            id=self._ids.next(),
            token="itk." + secrets.token_urlsafe(32),
            type=itype,
            channel_id=channel_id,
            user_id=user_id,
        )
        self._interactions[rec.id] = rec
        self._interactions_by_token[rec.token] = rec
        member = guild.members[user_id].payload(self._users[user_id])
        member["permissions"] = str(self.permissions_for(channel_id, user_id))
        payload: dict[str, Any] = {
            "id": str(rec.id),
            "application_id": str(self.application_id),
            "type": itype,
            "data": data,
            "guild_id": str(guild.id),
            "guild": {"id": str(guild.id), "locale": "en-US", "features": []},
            "channel_id": str(channel_id),
            "channel": channel.payload(),
            "member": member,
            "token": rec.token,
            "version": 1,
            "app_permissions": str(self.permissions_for(channel_id, self.bot_user_id)),
            "locale": "en-US",
            "guild_locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(guild.id)},
            "context": 0,
            "attachment_size_limit": self.upload_limit,
        }
        if message is not None:
            payload["message"] = self._message_payload(message, gateway=True)
        self.gateway.dispatch("INTERACTION_CREATE", payload)
        return rec
