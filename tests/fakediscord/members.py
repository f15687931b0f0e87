"""Acting as members and as Discord's operators: posting, editing, reacting, deleting,
running slash commands and clicking buttons; reconnecting and expiring things. Each
dispatches its gateway events and waits until they are sent."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .intents import GUILDS
from .models import parse_emoji
from .records import InteractionRecord
from .snowflake import now_iso
from .world import World


class MemberActions(World):
    # ------------------------------------------------------------------ member actions

    async def post_message(
        self,
        channel_id: int,
        author_id: int,
        content: str = "",
        *,
        attachments: Iterable[tuple[str, bytes, str | None]] = (),
        reply_to: int | None = None,
        embeds: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """A member posts a message: stored, MESSAGE_CREATE dispatched; returns :meth:`messages`' form.

        ``attachments`` are ``(filename, data, content_type)``; content_type
        None means "guess from the bytes / name".  They get CDN URLs on this
        server (with width/height for images).  ``reply_to`` makes it a reply.
        """
        channel = self._channel(channel_id)
        if author_id not in self._guild(channel.guild_id).members:
            raise ValueError(f"user {author_id} is not a member of guild {channel.guild_id}")
        atts = [
            self._new_attachment(channel_id, filename, data, ctype)
            for filename, data, ctype in attachments
        ]
        reference = None
        if reply_to is not None:
            if reply_to not in self._messages[channel_id]:
                raise ValueError(f"no message {reply_to} in channel {channel_id}")
            reference = {
                "type": 0,
                "message_id": str(reply_to),
                "channel_id": str(channel_id),
                "guild_id": str(channel.guild_id),
            }
        msg = self._create_message(
            channel_id,
            author_id,
            content=content,
            embeds=list(embeds or []),
            attachments=atts,
            reference=reference,
        )
        await self.gateway.drain()
        return self._public(msg)

    async def edit_message(
        self,
        channel_id: int,
        message_id: int,
        content: str | None = None,
        *,
        embeds: list[dict[str, Any]] | None = None,
        keep_attachments: Iterable[int] | None = None,
    ) -> dict[str, Any]:
        """A member edits their message; dispatches MESSAGE_UPDATE.

        ``keep_attachments``: the ids of the attachments that stay (a member can remove
        attachments in an edit, not add them); None keeps them all.
        """
        msg = self._message(channel_id, message_id)
        if content is not None:
            msg.content = content
            msg.mentions = self._parse_mentions(content, msg.guild_id)
        if embeds is not None:
            msg.embeds = list(embeds)
        if keep_attachments is not None:
            keep = {int(i) for i in keep_attachments}
            msg.attachments = [a for a in msg.attachments if a.id in keep]
        msg.edited_timestamp = now_iso()
        self._dispatch_message_update(msg)
        await self.gateway.drain()
        return self._public(msg)

    async def add_reaction(
        self, channel_id: int, message_id: int, user_id: int, emoji: str
    ) -> None:
        """``user_id`` reacts with ``emoji`` (``'👍'`` or ``'name:id'``); dispatches MESSAGE_REACTION_ADD."""
        self._add_reaction(self._message(channel_id, message_id), _emoji(emoji), user_id)
        await self.gateway.drain()

    async def remove_reaction(
        self, channel_id: int, message_id: int, user_id: int, emoji: str
    ) -> None:
        """``user_id`` removes their reaction; dispatches MESSAGE_REACTION_REMOVE."""
        self._remove_reaction(self._message(channel_id, message_id), _emoji(emoji), user_id)
        await self.gateway.drain()

    async def delete_message(self, channel_id: int, message_id: int) -> None:
        """Delete a message (as a moderator would); dispatches MESSAGE_DELETE."""
        self._delete_message(self._message(channel_id, message_id))
        await self.gateway.drain()

    async def bulk_delete(self, channel_id: int, ids: Iterable[int]) -> None:
        """Delete several messages at once; dispatches MESSAGE_DELETE_BULK."""
        self._bulk_delete(channel_id, [int(i) for i in ids])
        await self.gateway.drain()

    async def delete_channel(self, channel_id: int) -> None:
        """Delete a channel and its messages; dispatches CHANNEL_DELETE."""
        channel = self._channel(channel_id)
        guild = self._guild(channel.guild_id)
        guild.channel_ids.remove(channel_id)
        del self._channels[channel_id]
        self._messages.pop(channel_id, None)
        self.gateway.dispatch("CHANNEL_DELETE", channel.payload(), intent=GUILDS)
        await self.gateway.drain()

    async def remove_guild(self, guild_id: int) -> None:
        """The bot leaves / is removed from a guild: everything in it is dropped, GUILD_DELETE dispatched."""
        guild = self._guilds.pop(guild_id)
        for cid in guild.channel_ids:
            self._channels.pop(cid, None)
            self._messages.pop(cid, None)
        self.gateway.dispatch("GUILD_DELETE", {"id": str(guild_id)}, intent=GUILDS)
        await self.gateway.drain()

    # ------------------------------------------------------------------ gateway control

    async def reconnect_clients(self) -> None:
        """Send op 7 RECONNECT; discord.py then RESUMEs via ``resume_gateway_url``."""
        self.gateway.reconnect_all()
        await self.gateway.drain()

    async def disconnect_clients(self, code: int = 4000) -> None:
        """Close every gateway connection with ``code`` (4000 = resumable)."""
        self.gateway.close_all(code)
        await self.gateway.drain()

    def invalidate_sessions(self) -> None:
        """Forget all gateway sessions: the next RESUME is answered INVALID_SESSION."""
        self.gateway.invalidate_all()

    def expire_cdn_urls(self) -> None:
        """Make every attachment URL handed out so far stale (404 from the CDN).

        Messages fetched afterwards carry fresh URLs, like Discord's signed,
        expiring CDN links.
        """
        self._cdn_epoch += 1

    # ------------------------------------------------------------------ interactions

    async def invoke_slash(
        self,
        channel_id: int,
        user_id: int,
        name: str,
        options: dict[str, Any] | None = None,
    ) -> InteractionRecord:
        """A member runs ``/name`` with ``options``; dispatches INTERACTION_CREATE.

        ``name`` may name a subcommand: ``"library add"`` runs ``add`` of the group
        ``/library``.  Option types come from the synced command (``bot.tree.sync()``),
        else from the Python type of each value (str, int, bool, float).  A file option
        (type 11) takes ``(filename, bytes, content_type | None)``: the fake uploads it
        and sends it in ``data.resolved.attachments``, as Discord does; a channel option
        (type 7) takes a channel id and is resolved too.  Wait for the answer with e.g.
        ``await fd.wait_for(lambda: rec.responded)`` and read it with
        :meth:`interaction_messages`.
        """
        channel = self._channel(channel_id)
        top, *sub = name.split()
        cmd = self._find_app_command(top, channel.guild_id)
        spec = cmd or {}
        for part in sub:  # down to the subcommand's own options
            spec = next((o for o in spec.get("options", []) if o.get("name") == part), {})
        opt_types = {o["name"]: o.get("type", 3) for o in spec.get("options", [])}
        resolved: dict[str, dict[str, Any]] = {}
        opts = []
        for key, value in (options or {}).items():
            if key in opt_types:
                otype = opt_types[key]
            elif isinstance(value, tuple):
                otype = 11
            elif isinstance(value, bool):
                otype = 5
            elif isinstance(value, int):
                otype = 4
            elif isinstance(value, float):
                otype = 10
            else:
                otype = 3
            if otype == 11:
                filename, blob, ctype = value
                att = self._new_attachment(channel_id, filename, blob, ctype)
                resolved.setdefault("attachments", {})[str(att.id)] = self._attachment_payload(att)
                value = str(att.id)
            elif otype == 7:
                target = self._channel(int(value))
                payload = target.payload()
                payload["permissions"] = str(self.permissions_for(target.id, user_id))
                resolved.setdefault("channels", {})[str(target.id)] = payload
                value = str(target.id)
            opts.append({"name": key, "type": otype, "value": value})
        for part in reversed(sub):
            opts = [{"name": part, "type": 1, "options": opts}]
        data: dict[str, Any] = {
            "id": str(cmd["id"]) if cmd else str(self._ids.next()),
            "name": top,
            "type": 1,
            "options": opts,
        }
        if resolved:
            data["resolved"] = resolved
        if cmd and cmd.get("guild_id"):
            data["guild_id"] = cmd["guild_id"]
        rec = self._new_interaction(2, channel_id, user_id, data)
        rec.name = name
        await self.gateway.drain()
        return rec

    async def click_button(
        self, channel_id: int, message_id: int, user_id: int, custom_id: str
    ) -> InteractionRecord:
        """A member clicks a button (``custom_id``) on a message; dispatches INTERACTION_CREATE."""
        msg = self._message(channel_id, message_id)
        data = {"custom_id": custom_id, "component_type": 2}
        rec = self._new_interaction(3, channel_id, user_id, data, message=msg)
        rec.custom_id = custom_id
        rec.message_id = message_id
        await self.gateway.drain()
        return rec


def _emoji(text: str) -> dict:
    """The emoji a test names (``'👍'`` or ``'name:id'``); ValueError for anything else."""
    parsed = parse_emoji(text)
    if parsed is None:
        raise ValueError(f"not an emoji: {text!r}")
    return parsed
