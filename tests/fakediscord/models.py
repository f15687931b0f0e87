"""In-memory state of the fake Discord: plain dataclasses, serialised on demand.

Ids are ints here and strings on the wire, as in Discord's JSON.
"""

from __future__ import annotations

import copy
import io
import mimetypes
from dataclasses import dataclass, field
from typing import Any

from .snowflake import iso_timestamp


@dataclass
class User:
    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "global_name": self.global_name,
            "discriminator": "0",
            "avatar": None,
            "bot": self.bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }


@dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0
    managed: bool = False
    bot_id: int | None = None

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "managed": self.managed,
            "mentionable": False,
            "icon": None,
            "unicode_emoji": None,
            "flags": 0,
        }
        if self.bot_id is not None:
            data["tags"] = {"bot_id": str(self.bot_id)}
        return data


@dataclass
class Member:
    user_id: int
    joined_at: str
    roles: list[int] = field(default_factory=list)
    nick: str | None = None

    def payload(self, user: User | None = None) -> dict[str, Any]:
        """Member object; with ``user`` it is the full member (GUILD_CREATE, REST)."""
        data: dict[str, Any] = {
            "roles": [str(r) for r in self.roles],
            "joined_at": self.joined_at,
            "nick": self.nick,
            "avatar": None,
            "banner": None,
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        if user is not None:
            data["user"] = user.payload()
        return data


@dataclass
class Channel:
    id: int
    guild_id: int
    name: str
    position: int
    type: int = 0
    topic: str | None = None
    #: ``{target_id: (type, allow, deny)}``; type 0 = role, 1 = member
    overwrites: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    last_message_id: int | None = None

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "type": self.type,
            "guild_id": str(self.guild_id),
            "name": self.name,
            "position": self.position,
            "permission_overwrites": [
                {"id": str(tid), "type": t, "allow": str(a), "deny": str(d)}
                for tid, (t, a, d) in self.overwrites.items()
            ],
            "parent_id": None,
            "topic": self.topic,
            "nsfw": False,
            "rate_limit_per_user": 0,
            "last_message_id": str(self.last_message_id) if self.last_message_id else None,
            "flags": 0,
        }


@dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role] = field(default_factory=dict)
    channel_ids: list[int] = field(default_factory=list)
    members: dict[int, Member] = field(default_factory=dict)
    manager_role_id: int = 0
    bot_role_id: int = 0

    def payload(self) -> dict[str, Any]:
        """The guild object as GET /guilds/{id} returns it (no channels / members)."""
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": str(self.owner_id),
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "premium_subscription_count": 0,
            "preferred_locale": "en-US",
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "widget_enabled": False,
            "widget_channel_id": None,
            "premium_progress_bar_enabled": False,
            "features": [],
            "emojis": [],
            "stickers": [],
            "roles": [r.payload() for r in self.roles.values()],
            "max_members": 500000,
            "max_presences": None,
        }


@dataclass
class Attachment:
    id: int
    channel_id: int
    filename: str
    data: bytes
    content_type: str | None
    width: int | None = None
    height: int | None = None
    description: str | None = None

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class Reaction:
    emoji: dict[str, Any]  # {"id": str | None, "name": str, "animated": bool}
    users: list[int] = field(default_factory=list)


@dataclass
class Message:
    id: int
    channel_id: int
    guild_id: int | None
    author_id: int
    content: str = ""
    embeds: list[dict[str, Any]] = field(default_factory=list)
    attachments: list[Attachment] = field(default_factory=list)
    components: list[dict[str, Any]] = field(default_factory=list)
    reactions: dict[str, Reaction] = field(default_factory=dict)
    mentions: list[int] = field(default_factory=list)
    reference: dict[str, Any] | None = None
    edited_timestamp: str | None = None
    type: int = 0
    flags: int = 0
    tts: bool = False
    pinned: bool = False
    nonce: str | int | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_metadata: dict[str, Any] | None = None

    @property
    def reply_to(self) -> int | None:
        if self.reference and self.reference.get("message_id"):
            return int(self.reference["message_id"])
        return None


def emoji_key(emoji: dict[str, Any]) -> str:
    """``'👍'`` for unicode emoji, ``'name:id'`` for custom ones (Discord's URL form)."""
    if emoji.get("id"):
        return f"{emoji['name']}:{emoji['id']}"
    return emoji["name"]


def parse_emoji(text: str) -> dict[str, Any] | None:
    """Parse an emoji as the client sends it in a reaction URL (``👍``, ``name:id``,
    ``<:name:id>``, ``<a:name:id>``).  ``None`` when it cannot be an emoji."""
    text = text.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    animated = False
    if text.startswith("a:"):
        animated = True
        text = text[2:]
    if text.startswith(":"):
        text = text[1:]
    if ":" in text:
        name, _, eid = text.rpartition(":")
        if not name or not eid.isdigit():
            return None
        return {"id": eid, "name": name, "animated": animated}
    if not text or text.isascii():
        # every unicode emoji (keycaps included) has a non-ASCII code point
        return None
    return {"id": None, "name": text}


def guess_content_type(filename: str, data: bytes) -> str | None:
    """What Discord would report as ``content_type`` for an upload."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    ctype, _ = mimetypes.guess_type(filename)
    if ctype and ctype.startswith("text/"):
        ctype += "; charset=utf-8"
    return ctype


def image_size(data: bytes) -> tuple[int | None, int | None]:
    """(width, height) of an image, or (None, None) if Pillow cannot read it."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a project dependency
        return None, None
    try:
        with Image.open(io.BytesIO(data)) as im:
            return int(im.width), int(im.height)
    except Exception:
        return None, None


def message_public(msg: Message, attachment_url) -> dict[str, Any]:
    """The test-facing view of a stored message (ints, raw bytes, user id lists)."""
    return {
        "id": msg.id,
        "channel_id": msg.channel_id,
        "guild_id": msg.guild_id,
        "author_id": msg.author_id,
        "content": msg.content,
        "embeds": copy.deepcopy(msg.embeds),
        "attachments": [
            {
                "id": a.id,
                "filename": a.filename,
                "content_type": a.content_type,
                "size": a.size,
                "width": a.width,
                "height": a.height,
                "description": a.description,
                "url": attachment_url(a),
                "data": a.data,
            }
            for a in msg.attachments
        ],
        "components": copy.deepcopy(msg.components),
        "reactions": {k: list(r.users) for k, r in msg.reactions.items()},
        "mentions": list(msg.mentions),
        "reply_to": msg.reply_to,
        "edited": msg.edited_timestamp is not None,
        "edited_timestamp": msg.edited_timestamp,
        "timestamp": iso_timestamp(msg.id),
        "type": msg.type,
        "flags": msg.flags,
        "pinned": msg.pinned,
        "interaction_metadata": copy.deepcopy(msg.interaction_metadata),
    }
