"""What Discord sends of the world: users, members, messages, guilds, READY, attachments
(with signed, expiring CDN URLs). A mixin of World: it reads the world's state only."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from .intents import GUILD_PRESENCES, MESSAGE_CONTENT
from .models import Attachment, Guild, Message
from .records import API_VERSION, InteractionRecord
from .snowflake import iso_timestamp, snowflake_time


class Payloads:
    """Payload builders; the attributes they read are World's."""


    def _bot_user_payload(self) -> dict[str, Any]:
        data = self._users[self.bot_user_id].payload()
        data.update(verified=True, mfa_enabled=False, email=None, locale="en-US")
        return data

    def _application_payload(self) -> dict[str, Any]:
        bot = self._users[self.bot_user_id]
        return {
            "id": str(self.application_id),
            "name": bot.username,
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self._users[self.app_owner_id].payload(),
            "team": None,
            "flags": 1 << 19 | 1 << 23,  # message content + members intent (limited)
            "bot": bot.payload(),
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "tags": [],
            "approximate_guild_count": len(self._bot_guilds()),
            "integration_types_config": {"0": {}},
        }

    def _ready_payload(self, session: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "v": API_VERSION,
            "user": self._bot_user_payload(),
            "guilds": [
                {"id": str(g.id), "unavailable": True}
                for g in self._bot_guilds()
                if session.owns(g.id)
            ],
            "session_id": session.id,
            "resume_gateway_url": self.resume_gateway_url,
            "session_type": "normal",
            "application": {
                "id": str(self.application_id),
                "flags": self._application_payload()["flags"],
            },
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
            "user_settings": {},
            "_trace": ["fakediscord"],
        }
        if session.shard is not None:
            data["shard"] = session.shard
        return data

    def _guild_create_payload(self, guild: Guild, intents: int) -> dict[str, Any]:
        data = guild.payload()
        if intents & GUILD_PRESENCES:
            member_ids = list(guild.members)  # small guild: all members, like Discord
        else:
            member_ids = [self.bot_user_id]
        bot_member = guild.members[self.bot_user_id]
        data.update(
            joined_at=bot_member.joined_at,
            large=False,
            unavailable=False,
            lazy=True,
            member_count=len(guild.members),
            channels=[self._channels[c].payload() for c in guild.channel_ids],
            members=[guild.members[u].payload(self._users[u]) for u in member_ids],
            threads=[],
            voice_states=[],
            presences=[],
            stage_instances=[],
            guild_scheduled_events=[],
            soundboard_sounds=[],
        )
        return data

    def _members_chunk(self, d: dict[str, Any]) -> dict[str, Any]:
        guild = self._guilds.get(int(d.get("guild_id") or 0))
        members = []
        not_found = []
        if guild is not None:
            if d.get("user_ids"):
                ids = d["user_ids"] if isinstance(d["user_ids"], list) else [d["user_ids"]]
                for uid in map(int, ids):
                    if uid in guild.members:
                        members.append(uid)
                    else:
                        not_found.append(str(uid))
            else:
                query = (d.get("query") or "").lower()
                members = [
                    u for u in guild.members if self._users[u].username.lower().startswith(query)
                ]
                limit = d.get("limit") or 0
                if limit:
                    members = members[:limit]
        data: dict[str, Any] = {
            "guild_id": str(d.get("guild_id")),
            "members": [guild.members[u].payload(self._users[u]) for u in members] if guild else [],
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": not_found,
        }
        if d.get("nonce") is not None:
            data["nonce"] = d["nonce"]
        return data

    def _attachment_url(self, att: Attachment, *, proxy: bool = False) -> str:
        # issued when the attachment was made (its snowflake's time), so that every payload
        # naming it gives one URL, as Discord's does within a signature's life
        issued = int(snowflake_time(att.id).timestamp())
        expires = issued + 86400
        sig = self._cdn_signature(att.id, self._cdn_epoch)
        host = self.base_url + ("/media" if proxy else "")
        return (
            f"{host}/attachments/{att.channel_id}/{att.id}/{quote(att.filename)}"
            f"?ex={expires:x}&is={issued:x}&hm={sig}&"
        )

    def _cdn_signature(self, attachment_id: int, epoch: int) -> str:
        return hashlib.sha256(f"{self._cdn_secret}:{attachment_id}:{epoch}".encode()).hexdigest()

    def _attachment_payload(self, att: Attachment) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(att.id),
            "filename": att.filename,
            "size": att.size,
            "url": self._attachment_url(att),
            "proxy_url": self._attachment_url(att, proxy=True),
            "flags": 0,
        }
        if att.content_type:
            data["content_type"] = att.content_type
        if att.width is not None:
            data["width"] = att.width
            data["height"] = att.height
        if att.description is not None:
            data["description"] = att.description
        if att.filename.startswith("SPOILER_"):
            data["spoiler"] = True
        return data

    def _member_payload(self, guild_id: int | None, user_id: int) -> dict[str, Any] | None:
        if guild_id is None:
            return None
        guild = self._guilds.get(guild_id)
        if guild is None or user_id not in guild.members:
            return None
        return guild.members[user_id].payload()

    def _user_payload(self, user_id: int) -> dict[str, Any]:
        user = self._users.get(user_id)
        if user is None:
            return {
                "id": str(user_id),
                "username": "deleted-user",
                "discriminator": "0",
                "avatar": None,
            }
        return user.payload()

    def _message_payload(
        self, msg: Message, *, gateway: bool = False, nested: bool = False
    ) -> dict[str, Any]:
        mentions = []
        for uid in msg.mentions:
            m = self._user_payload(uid)
            if gateway:
                member = self._member_payload(msg.guild_id, uid)
                if member is not None:
                    m["member"] = member
            mentions.append(m)
        data: dict[str, Any] = {
            "id": str(msg.id),
            "channel_id": str(msg.channel_id),
            "author": self._user_payload(msg.author_id),
            "content": msg.content,
            "timestamp": iso_timestamp(msg.id),
            "edited_timestamp": msg.edited_timestamp,
            "tts": msg.tts,
            "mention_everyone": False,
            "mentions": mentions,
            "mention_roles": [],
            "attachments": [self._attachment_payload(a) for a in msg.attachments],
            "embeds": copy.deepcopy(msg.embeds),
            "pinned": msg.pinned,
            "type": msg.type,
            "flags": msg.flags,
            "components": copy.deepcopy(msg.components),
        }
        if msg.guild_id is not None and gateway:
            data["guild_id"] = str(msg.guild_id)
            member = self._member_payload(msg.guild_id, msg.author_id)
            if member is not None and msg.webhook_id is None:
                data["member"] = member
        if msg.reactions:
            data["reactions"] = [
                {
                    "emoji": dict(r.emoji),
                    "count": len(r.users),
                    "count_details": {"burst": 0, "normal": len(r.users)},
                    "me": self.bot_user_id in r.users,
                    "me_burst": False,
                    "burst_colors": [],
                }
                for r in msg.reactions.values()
            ]
        if msg.nonce is not None:
            data["nonce"] = msg.nonce
        if msg.webhook_id is not None:
            data["webhook_id"] = str(msg.webhook_id)
        if msg.application_id is not None:
            data["application_id"] = str(msg.application_id)
        if msg.interaction_metadata is not None:
            data["interaction_metadata"] = copy.deepcopy(msg.interaction_metadata)
        if msg.reference is not None:
            data["message_reference"] = dict(msg.reference)
            if not nested and msg.type == 19:
                ref = self._messages.get(msg.channel_id, {}).get(msg.reply_to or 0)
                data["referenced_message"] = (
                    None
                    if ref is None
                    else self._message_payload(ref, gateway=gateway, nested=True)
                )
        return data

    def _content_filter(self, msg: Message) -> Callable[[Any, dict], dict]:
        """Per-session payload for MESSAGE_CREATE/UPDATE (message-content intent rule)."""

        def transform(session: Any, data: dict) -> dict:
            if not self.enforce_message_content or session.intents & MESSAGE_CONTENT:
                return data
            if msg.author_id == self.bot_user_id or self.bot_user_id in msg.mentions:
                return data
            blank = dict(data)
            blank.update(content="", embeds=[], attachments=[], components=[])
            return blank

        return transform

    def _interaction_metadata(self, rec: InteractionRecord) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(rec.id),
            "type": rec.type,
            "user": self._user_payload(rec.user_id),
            "authorizing_integration_owners": {"0": str(self._channel(rec.channel_id).guild_id)},
        }
        if rec.name:
            data["name"] = rec.name
        if rec.message_id:
            data["interacted_message_id"] = str(rec.message_id)
        return data
