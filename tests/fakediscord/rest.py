"""REST API v10 routes (and the CDN) of the fake Discord.

Each handler returns JSON-able data (200), ``None`` (204) or raises
:class:`ApiError`.  Routes are matched against the percent-decoded path
relative to ``/api/v10``; anything unmatched is answered 404 and recorded in
``FakeDiscord.unknown_requests``.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from . import permissions as P
from .models import Attachment, Channel, Message, emoji_key, parse_emoji
from .records import (
    EPHEMERAL,
    LOADING,
    ApiError,
    RequestRecord,
    form_error,
    missing_access,
    missing_permissions,
)
from .snowflake import now_iso, snowflake_time

if TYPE_CHECKING:
    from .records import InteractionRecord
    from .world import World

Handler = Callable[..., Awaitable[Any]]

_ID = r"(?P<{}>\d+)"
SUPPRESS_EMBEDS = 1 << 2


def _too_long(limit: int) -> dict:
    return {
        "_errors": [
            {"code": "BASE_TYPE_MAX_LENGTH", "message": f"Must be {limit} or fewer in length."}
        ]
    }


class RestApi:
    def __init__(self, fd: World) -> None:
        self.fd = fd
        self.routes: list[tuple[str, re.Pattern[str], Handler, bool]] = []
        r = self._route
        # misc / auth
        r("GET", "/gateway", self.get_gateway, auth=False)
        r("GET", "/gateway/bot", self.get_gateway_bot)
        r("GET", "/users/@me", self.get_me)
        r("GET", "/users/@me/guilds", self.get_my_guilds)
        r("DELETE", "/users/@me/guilds/{guild_id}", self.leave_guild)
        r("GET", "/users/{user_id}", self.get_user)
        r("GET", "/oauth2/applications/@me", self.get_application)
        r("GET", "/applications/@me", self.get_application)
        # application commands
        for scope in (
            "/applications/{app_id}/commands",
            "/applications/{app_id}/guilds/{guild_id}/commands",
        ):
            r("GET", scope, self.get_commands)
            r("PUT", scope, self.put_commands)
            r("POST", scope, self.post_command)
            r("GET", scope + "/{command_id}", self.get_command)
            r("DELETE", scope + "/{command_id}", self.delete_command)
        # channels & messages
        r("GET", "/channels/{channel_id}", self.get_channel)
        r("GET", "/channels/{channel_id}/messages", self.get_history)
        r("POST", "/channels/{channel_id}/messages", self.create_message)
        r("POST", "/channels/{channel_id}/messages/bulk-delete", self.bulk_delete)
        r("PUT", "/channels/{channel_id}/messages/pins/{message_id}", self.pin)
        r("DELETE", "/channels/{channel_id}/messages/pins/{message_id}", self.unpin)
        r("GET", "/channels/{channel_id}/messages/{message_id}", self.get_message)
        r("PATCH", "/channels/{channel_id}/messages/{message_id}", self.edit_message)
        r("DELETE", "/channels/{channel_id}/messages/{message_id}", self.delete_message)
        base = "/channels/{channel_id}/messages/{message_id}/reactions"
        r("PUT", base + "/{emoji}/@me", self.add_own_reaction)
        r("DELETE", base + "/{emoji}/@me", self.remove_own_reaction)
        r("DELETE", base + "/{emoji}/{user_id}", self.remove_user_reaction)
        r("GET", base + "/{emoji}", self.get_reaction_users)
        r("DELETE", base + "/{emoji}", self.clear_emoji)
        r("DELETE", base, self.clear_reactions)
        r("POST", "/channels/{channel_id}/typing", self.typing)
        # guilds
        r("GET", "/guilds/{guild_id}", self.get_guild)
        r("GET", "/guilds/{guild_id}/channels", self.get_guild_channels)
        r("GET", "/guilds/{guild_id}/roles", self.get_roles)
        r("GET", "/guilds/{guild_id}/members", self.get_members)
        r("GET", "/guilds/{guild_id}/members/{user_id}", self.get_member)
        # interactions (authenticated by the interaction token in the URL)
        r(
            "POST",
            "/interactions/{interaction_id}/{token}/callback",
            self.interaction_callback,
            auth=False,
        )
        r("POST", "/webhooks/{app_id}/{token}", self.followup, auth=False)
        wm = "/webhooks/{app_id}/{token}/messages/{message_id}"
        r("GET", wm, self.get_webhook_message, auth=False)
        r("PATCH", wm, self.edit_webhook_message, auth=False)
        r("DELETE", wm, self.delete_webhook_message, auth=False)

    def _route(self, method: str, template: str, handler: Handler, *, auth: bool = True) -> None:
        def repl(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == "emoji":
                return r"(?P<emoji>[^/]+)"
            if name == "token":
                return r"(?P<token>[^/]+)"
            if name == "message_id":
                return r"(?P<message_id>\d+|@original)"
            return _ID.format(name)

        pattern = re.compile(re.sub(r"\{(\w+)\}", repl, template))
        self.routes.append((method, pattern, handler, auth))

    def install(self, app: web.Application) -> None:
        app.router.add_route("*", "/api/v{version:\\d+}/{tail:.*}", self.dispatch)
        app.router.add_route("*", "/api/{tail:.*}", self.dispatch)
        for prefix in ("/attachments", "/media/attachments", "/ephemeral-attachments"):
            app.router.add_get(prefix + "/{channel_id}/{attachment_id}/{filename}", self.cdn)
        app.router.add_route("*", "/{tail:.*}", self.not_found)

    # ------------------------------------------------------------------ plumbing

    async def not_found(self, request: web.Request) -> web.Response:
        self.fd.unknown_requests.append((request.method, request.path))
        return _json({"message": "404: Not Found", "code": 0}, status=404)

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        fd = self.fd
        path = "/" + request.match_info["tail"]
        method = request.method
        record = RequestRecord(
            method=method, path=path, query=dict(request.query), json=None, files=[]
        )
        fd.requests.append((method, path))
        fd.request_log.append(record)
        try:
            for m, pattern, handler, auth in self.routes:
                if m != method:
                    continue
                match = pattern.fullmatch(path)
                if match is None:
                    continue
                if auth and request.headers.get("Authorization") != f"Bot {fd.token}":
                    raise ApiError(401, 0, "401: Unauthorized")
                result = await handler(request, record, **match.groupdict())
                if isinstance(result, web.StreamResponse):
                    record.status = result.status
                    return result
                if result is None:
                    record.status = 204
                    return web.Response(status=204)
                record.status = 200
                return _json(result)
            fd.unknown_requests.append((method, path))
            raise ApiError(404, 0, "404: Not Found")
        except ApiError as exc:
            record.status = exc.status
            return _json(exc.body(), status=exc.status)

    async def _body(
        self, request: web.Request, record: RequestRecord
    ) -> tuple[dict[str, Any], dict[int, tuple[str, bytes]]]:
        """JSON body or multipart (``payload_json`` + ``files[n]``)."""
        files: dict[int, tuple[str, bytes]] = {}
        payload: Any = {}
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                name = part.name or ""  # type: ignore[union-attr]
                if name == "payload_json":
                    payload = json.loads(await part.text())  # type: ignore[union-attr]
                else:
                    m = re.fullmatch(r"files\[(\d+)\]|file(\d*)", name)
                    data = bytes(await part.read(decode=False))  # type: ignore[union-attr]
                    if m is None:
                        continue
                    idx = int(m.group(1) or m.group(2) or len(files))
                    files[idx] = (part.filename or f"file{idx}", data)  # type: ignore[union-attr]
        else:
            raw = await request.read()
            if raw:
                try:
                    payload = json.loads(raw)
                except ValueError:
                    raise ApiError(400, 50109, "The request body contains invalid JSON.") from None
        record.json = payload
        record.files = [files[i][0] for i in sorted(files)]
        return payload if isinstance(payload, (dict, list)) else {}, files

    # -- lookups ------------------------------------------------------------------

    def _chan(self, channel_id: str) -> Channel:
        ch = self.fd._channels.get(int(channel_id))
        if ch is None:
            raise ApiError(404, 10003, "Unknown Channel")
        return ch

    def _msg(self, channel_id: str, message_id: str) -> Message:
        msgs = self.fd._messages.get(int(channel_id))
        if msgs is None:
            raise ApiError(404, 10003, "Unknown Channel")
        msg = msgs.get(int(message_id))
        if msg is None:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    def _guild(self, guild_id: str):
        guild = self.fd._guilds.get(int(guild_id))
        if guild is None or self.fd.bot_user_id not in guild.members:
            raise ApiError(404, 10004, "Unknown Guild")
        return guild

    def _perms(self, channel: Channel, *need: int) -> int:
        """Bot's permissions in ``channel``; 403 unless it can view it and has all of ``need``."""
        perms = self.fd.permissions_for(channel.id, self.fd.bot_user_id)
        if not perms & P.VIEW_CHANNEL:
            raise missing_access()
        for bit in need:
            if not perms & bit:
                raise missing_permissions()
        return perms

    # ------------------------------------------------------------------ misc

    async def get_gateway(self, request, record):
        return {"url": self.fd.gateway_url}

    async def get_gateway_bot(self, request, record):
        return {
            "url": self.fd.gateway_url,
            "shards": self.fd.recommended_shards,
            "session_start_limit": {
                "total": 1000,
                "remaining": 1000 - len(self.fd.identify_payloads),
                "reset_after": 0,
                "max_concurrency": self.fd.max_concurrency,
            },
        }

    async def get_me(self, request, record):
        return self.fd._bot_user_payload()

    async def get_my_guilds(self, request, record):
        return [
            {
                "id": str(g.id),
                "name": g.name,
                "icon": None,
                "owner": False,
                "permissions": "0",
                "features": [],
            }
            for g in self.fd._bot_guilds()
        ]

    async def leave_guild(self, request, record, guild_id):
        self._guild(guild_id)
        await self.fd.remove_guild(int(guild_id))
        return None

    async def get_user(self, request, record, user_id):
        user = self.fd._users.get(int(user_id))
        if user is None:
            raise ApiError(404, 10013, "Unknown User")
        return user.payload()

    async def get_application(self, request, record):
        return self.fd._application_payload()

    # ------------------------------------------------------------------ app commands

    def _scope(self, app_id: str, guild_id: str | None) -> int | None:
        if int(app_id) != self.fd.application_id:
            raise ApiError(403, 50001, "Missing Access")
        if guild_id is not None:
            self._guild(guild_id)
            return int(guild_id)
        return None

    def _store_command(self, scope: int | None, data: dict[str, Any]) -> dict[str, Any]:
        fd = self.fd
        if not isinstance(data, dict) or not data.get("name"):
            raise form_error(
                {
                    "name": {
                        "_errors": [
                            {"code": "BASE_TYPE_REQUIRED", "message": "This field is required"}
                        ]
                    }
                }
            )
        ctype = data.get("type", 1)
        key = (scope, data["name"], ctype)
        cid = fd._app_command_ids.setdefault(key, fd._ids.next())
        cmd = dict(data)
        cmd.update(
            id=str(cid),
            application_id=str(fd.application_id),
            version=str(fd._ids.next()),
            type=ctype,
            description=data.get("description", ""),
            options=data.get("options", []),
            default_member_permissions=data.get("default_member_permissions"),
            nsfw=data.get("nsfw", False),
        )
        if scope is not None:
            cmd["guild_id"] = str(scope)
        else:
            cmd.setdefault("integration_types", [0])
            cmd.setdefault("contexts", None)
        return cmd

    async def get_commands(self, request, record, app_id, guild_id=None):
        return self.fd._app_commands.get(self._scope(app_id, guild_id), [])

    async def put_commands(self, request, record, app_id, guild_id=None):
        scope = self._scope(app_id, guild_id)
        payload, _ = await self._body(request, record)
        if not isinstance(payload, list):
            raise form_error(
                {
                    "_errors": [
                        {
                            "code": "LIST_TYPE_CONVERT",
                            "message": "Only iterables may be used in a ListType",
                        }
                    ]
                }
            )
        cmds = [self._store_command(scope, c) for c in payload]
        self.fd._app_commands[scope] = cmds
        return cmds

    async def post_command(self, request, record, app_id, guild_id=None):
        scope = self._scope(app_id, guild_id)
        payload, _ = await self._body(request, record)
        cmd = self._store_command(scope, payload)
        cmds = [c for c in self.fd._app_commands.get(scope, []) if c["id"] != cmd["id"]]
        cmds.append(cmd)
        self.fd._app_commands[scope] = cmds
        return cmd

    async def get_command(self, request, record, app_id, command_id, guild_id=None):
        for cmd in self.fd._app_commands.get(self._scope(app_id, guild_id), []):
            if cmd["id"] == command_id:
                return cmd
        raise ApiError(404, 10063, "Unknown application command")

    async def delete_command(self, request, record, app_id, command_id, guild_id=None):
        scope = self._scope(app_id, guild_id)
        cmds = self.fd._app_commands.get(scope, [])
        kept = [c for c in cmds if c["id"] != command_id]
        if len(kept) == len(cmds):
            raise ApiError(404, 10063, "Unknown application command")
        self.fd._app_commands[scope] = kept
        return None

    # ------------------------------------------------------------------ channels

    async def get_channel(self, request, record, channel_id):
        ch = self._chan(channel_id)
        self._perms(ch)
        return ch.payload()

    async def typing(self, request, record, channel_id):
        self._perms(self._chan(channel_id), P.SEND_MESSAGES)
        return None

    async def get_history(self, request, record, channel_id):
        fd = self.fd
        ch = self._chan(channel_id)
        perms = self._perms(ch)
        q = request.query
        try:
            limit = int(q.get("limit", 50))
        except ValueError:
            raise form_error(
                {
                    "limit": {
                        "_errors": [{"code": "NUMBER_TYPE_COERCE", "message": "Value is not int."}]
                    }
                }
            ) from None
        if not 1 <= limit <= 100:
            raise form_error(
                {
                    "limit": {
                        "_errors": [
                            {
                                "code": "NUMBER_TYPE_MAX",
                                "message": "int value should be <= 100 and >= 1.",
                            }
                        ]
                    }
                }
            )
        if not perms & P.READ_MESSAGE_HISTORY:
            return []  # Discord: no messages without Read Message History
        ids = sorted(fd._messages[ch.id])
        if "around" in q:
            around = int(q["around"])
            older = [i for i in ids if i < around][-(limit // 2) :] if limit // 2 else []
            newer = [i for i in ids if i >= around][: limit - len(older)]
            chosen = older + newer
        elif "after" in q:
            after = int(q["after"])
            chosen = [i for i in ids if i > after][:limit]
        else:
            before = int(q["before"]) if "before" in q else None
            chosen = [i for i in ids if before is None or i < before][-limit:]
        return [fd._message_payload(fd._messages[ch.id][i]) for i in reversed(chosen)]

    async def get_message(self, request, record, channel_id, message_id):
        ch = self._chan(channel_id)
        self._perms(ch, P.READ_MESSAGE_HISTORY)
        return self.fd._message_payload(self._msg(channel_id, message_id))

    # -- message bodies -------------------------------------------------------------

    def _validate(
        self, content: str, embeds: list, attachments: list, components: list, payload: dict
    ) -> None:
        errors: dict[str, Any] = {}
        if len(content) > 2000:
            errors["content"] = _too_long(2000)
        if len(embeds) > 10:
            errors["embeds"] = _too_long(10)
        total = 0
        for i, e in enumerate(embeds[:10]):
            if not isinstance(e, dict):
                continue
            eerr: dict[str, Any] = {}
            for key, limit in (("title", 256), ("description", 4096)):
                n = len(e.get(key) or "")
                total += n
                if n > limit:
                    eerr[key] = _too_long(limit)
            fields = e.get("fields") or []
            if len(fields) > 25:
                eerr["fields"] = _too_long(25)
            for j, f in enumerate(fields):
                ferr = {}
                for key, limit in (("name", 256), ("value", 1024)):
                    n = len(str(f.get(key) or ""))
                    total += n
                    if n > limit:
                        ferr[key] = _too_long(limit)
                if ferr:
                    eerr.setdefault("fields", {})[str(j)] = ferr
            for part, key, limit in (("footer", "text", 2048), ("author", "name", 256)):
                n = len(((e.get(part) or {}).get(key)) or "")
                total += n
                if n > limit:
                    eerr[part] = {key: _too_long(limit)}
            if eerr:
                errors.setdefault("embeds", {})[str(i)] = eerr
        if total > 6000:
            errors.setdefault("embeds", {})["_errors"] = [
                {
                    "code": "MAX_EMBED_SIZE_EXCEEDED",
                    "message": "Embed size exceeds maximum size of 6000",
                }
            ]
        if len(attachments) > 10:
            errors["attachments"] = _too_long(10)
        if errors:
            raise form_error(errors)
        if not (
            content
            or embeds
            or attachments
            or components
            or payload.get("sticker_ids")
            or payload.get("poll")
        ):
            raise ApiError(400, 50006, "Cannot send an empty message")

    def _upload(
        self, channel_id: int, idx: int, files: dict[int, tuple[str, bytes]], meta: dict
    ) -> Attachment:
        filename, data = files[idx]
        if len(data) > self.fd.upload_limit:
            raise ApiError(413, 40005, "Request entity too large")
        att = self.fd._new_attachment(channel_id, meta.get("filename") or filename, data)
        if meta.get("description") is not None:
            att.description = meta["description"]
        return att

    def _new_attachments(
        self, channel_id: int, meta: Any, files: dict[int, tuple[str, bytes]]
    ) -> list[Attachment]:
        by_idx = {}
        for m in meta or []:
            if isinstance(m, dict) and str(m.get("id", "")).isdigit():
                by_idx[int(m["id"])] = m
        return [self._upload(channel_id, i, files, by_idx.get(i, {})) for i in sorted(files)]

    def _edited_attachments(
        self, msg: Message, meta: Any, files: dict[int, tuple[str, bytes]]
    ) -> list[Attachment]:
        """PATCH semantics: ``attachments`` lists what to keep (old ids) and new uploads (file
        indices); without it the uploads are appended."""
        if meta is None:
            return msg.attachments + self._new_attachments(msg.channel_id, None, files)
        existing = {a.id: a for a in msg.attachments}
        result: list[Attachment] = []
        used: set[int] = set()
        for m in meta:
            if not isinstance(m, dict) or not str(m.get("id", "")).isdigit():
                continue
            aid = int(m["id"])
            if aid in existing:
                result.append(existing[aid])
            elif aid in files and aid not in used:
                result.append(self._upload(msg.channel_id, aid, files, m))
                used.add(aid)
        for idx in sorted(files):
            if idx not in used:
                result.append(self._upload(msg.channel_id, idx, files, {}))
        return result

    def _reference(
        self, channel: Channel, payload: dict, perms: int | None
    ) -> tuple[dict | None, list[int]]:
        ref = payload.get("message_reference")
        if not ref or not ref.get("message_id"):
            return None, []
        if ref.get("type", 0) != 0:
            raise form_error(
                {
                    "message_reference": {
                        "_errors": [
                            {
                                "code": "UNSUPPORTED",
                                "message": "fakediscord: forwards are not supported",
                            }
                        ]
                    }
                }
            )
        ref_channel = int(ref.get("channel_id") or channel.id)
        target = self.fd._messages.get(ref_channel, {}).get(int(ref["message_id"]))
        if target is None:
            if ref.get("fail_if_not_exists", True) is False:
                return None, []
            raise form_error(
                {
                    "message_reference": {
                        "_errors": [
                            {
                                "code": "MESSAGE_REFERENCE_UNKNOWN_MESSAGE",
                                "message": "Unknown message",
                            }
                        ]
                    }
                }
            )
        if perms is not None and not perms & P.READ_MESSAGE_HISTORY:
            raise ApiError(403, 160002, "Cannot reply without permission to read message history")
        mentions = []
        allowed = payload.get("allowed_mentions")
        if not (isinstance(allowed, dict) and allowed.get("replied_user") is False):
            mentions.append(target.author_id)
        out = {
            "type": 0,
            "message_id": str(target.id),
            "channel_id": str(ref_channel),
            "guild_id": str(channel.guild_id),
        }
        return out, mentions

    def _new_message_fields(
        self, channel: Channel, payload: dict, files: dict, *, perms: int | None
    ) -> dict[str, Any]:
        """Validate a create payload; ``perms`` None means no permission checks (interactions)."""
        content = payload.get("content") or ""
        embeds = [e for e in (payload.get("embeds") or []) if isinstance(e, dict)]
        components = payload.get("components") or []
        if len(files) > 10:
            raise form_error({"attachments": _too_long(10)})
        reference, reply_mentions = self._reference(channel, payload, perms)
        attachments = self._new_attachments(channel.id, payload.get("attachments"), files)
        self._validate(str(content), embeds, attachments, components, payload)
        if perms is not None:
            if attachments and not perms & P.ATTACH_FILES:
                raise missing_permissions()
            if embeds and not perms & P.EMBED_LINKS:
                embeds = []  # Discord silently drops embeds without Embed Links
        return {
            "content": str(content),
            "embeds": embeds,
            "attachments": attachments,
            "components": components,
            "reference": reference,
            "extra_mentions": reply_mentions,
            "flags": int(payload.get("flags") or 0)
            & (SUPPRESS_EMBEDS | EPHEMERAL | (1 << 12) | (1 << 15)),
            "nonce": payload.get("nonce"),
            "tts": bool(payload.get("tts")),
        }

    def _apply_edit(self, msg: Message, payload: dict, files: dict, *, perms: int | None) -> None:
        content = msg.content if "content" not in payload else (payload["content"] or "")
        embeds = (
            msg.embeds
            if "embeds" not in payload
            else [e for e in (payload["embeds"] or []) if isinstance(e, dict)]
        )
        components = (
            msg.components if "components" not in payload else (payload["components"] or [])
        )
        if files and perms is not None and not perms & P.ATTACH_FILES:
            raise missing_permissions()
        attachments = (
            self._edited_attachments(msg, payload.get("attachments"), files)
            if ("attachments" in payload or files)
            else msg.attachments
        )
        self._validate(str(content), embeds, attachments, components, payload)
        if "embeds" in payload and perms is not None and not perms & P.EMBED_LINKS:
            embeds = []
        replied = self._replied_author(msg) if msg.reply_to else None
        keep_reply_mention = replied is not None and replied in msg.mentions
        msg.content = str(content)
        msg.mentions = self.fd._parse_mentions(msg.content, msg.guild_id)
        if keep_reply_mention and replied not in msg.mentions:
            msg.mentions.append(replied)
        msg.embeds = embeds
        msg.components = components
        msg.attachments = attachments
        self.fd._resolve_attachment_refs(msg.embeds, msg.attachments)
        if "flags" in payload and payload["flags"] is not None:
            keep = msg.flags & ~SUPPRESS_EMBEDS
            msg.flags = keep | (int(payload["flags"]) & SUPPRESS_EMBEDS)
        msg.flags &= ~LOADING
        msg.edited_timestamp = now_iso()

    def _replied_author(self, msg: Message) -> int | None:
        ref = self.fd._messages.get(msg.channel_id, {}).get(msg.reply_to or 0)
        return None if ref is None else ref.author_id

    # -- message routes -------------------------------------------------------------

    async def create_message(self, request, record, channel_id):
        fd = self.fd
        ch = self._chan(channel_id)
        perms = self._perms(ch, P.SEND_MESSAGES)
        payload, files = await self._body(request, record)
        fields = self._new_message_fields(ch, payload, files, perms=perms)
        fields["flags"] &= ~EPHEMERAL
        msg = fd._create_message(ch.id, fd.bot_user_id, **fields)
        await fd.gateway.drain()
        return fd._message_payload(msg)

    async def edit_message(self, request, record, channel_id, message_id):
        fd = self.fd
        ch = self._chan(channel_id)
        perms = self._perms(ch)
        msg = self._msg(channel_id, message_id)
        payload, files = await self._body(request, record)
        if msg.author_id != fd.bot_user_id:
            only_flags = set(payload) <= {"flags"} and not files
            if not only_flags:
                raise ApiError(403, 50005, "Cannot edit a message authored by another user")
            if not perms & P.MANAGE_MESSAGES:
                raise missing_permissions()
        self._apply_edit(msg, payload, files, perms=perms)
        fd._dispatch_message_update(msg)
        await fd.gateway.drain()
        return fd._message_payload(msg)

    async def delete_message(self, request, record, channel_id, message_id):
        fd = self.fd
        ch = self._chan(channel_id)
        perms = self._perms(ch)
        msg = self._msg(channel_id, message_id)
        if msg.author_id != fd.bot_user_id and not perms & P.MANAGE_MESSAGES:
            raise missing_permissions()
        fd._delete_message(msg)
        await fd.gateway.drain()
        return None

    async def bulk_delete(self, request, record, channel_id):
        fd = self.fd
        ch = self._chan(channel_id)
        self._perms(ch, P.MANAGE_MESSAGES)
        payload, _ = await self._body(request, record)
        ids = payload.get("messages") if isinstance(payload, dict) else None
        if not isinstance(ids, list) or not 2 <= len(ids) <= 100:
            raise form_error(
                {
                    "messages": {
                        "_errors": [
                            {
                                "code": "BASE_TYPE_BAD_LENGTH",
                                "message": "Must be between 2 and 100 in length.",
                            }
                        ]
                    }
                }
            )
        cutoff = _dt.datetime.now(tz=_dt.UTC) - _dt.timedelta(days=14)
        if any(snowflake_time(int(i)) < cutoff for i in ids):
            raise ApiError(
                400, 50034, "You can only bulk delete messages that are under 14 days old."
            )
        fd._bulk_delete(ch.id, [int(i) for i in ids])
        await fd.gateway.drain()
        return None

    async def pin(self, request, record, channel_id, message_id):
        self._perms(self._chan(channel_id), P.MANAGE_MESSAGES)
        self._msg(channel_id, message_id).pinned = True
        return None

    async def unpin(self, request, record, channel_id, message_id):
        self._perms(self._chan(channel_id), P.MANAGE_MESSAGES)
        self._msg(channel_id, message_id).pinned = False
        return None

    # -- reactions ------------------------------------------------------------------

    def _emoji(self, text: str) -> dict[str, Any]:
        emoji = parse_emoji(text)
        if emoji is None:
            raise ApiError(400, 10014, "Unknown Emoji")
        return emoji

    async def add_own_reaction(self, request, record, channel_id, message_id, emoji):
        fd = self.fd
        ch = self._chan(channel_id)
        perms = self._perms(ch, P.READ_MESSAGE_HISTORY)
        msg = self._msg(channel_id, message_id)
        parsed = self._emoji(emoji)
        key = emoji_key(parsed)
        if key not in msg.reactions:
            if not perms & P.ADD_REACTIONS:
                raise missing_permissions()
            if len(msg.reactions) >= 20:
                raise ApiError(400, 30010, "Maximum number of reactions reached (20)")
        fd._add_reaction(msg, parsed, fd.bot_user_id)
        await fd.gateway.drain()
        return None

    async def remove_own_reaction(self, request, record, channel_id, message_id, emoji):
        fd = self.fd
        self._perms(self._chan(channel_id))
        msg = self._msg(channel_id, message_id)
        fd._remove_reaction(msg, self._emoji(emoji), fd.bot_user_id)
        await fd.gateway.drain()
        return None

    async def remove_user_reaction(self, request, record, channel_id, message_id, emoji, user_id):
        fd = self.fd
        ch = self._chan(channel_id)
        if int(user_id) == fd.bot_user_id:
            self._perms(ch)
        else:
            self._perms(ch, P.MANAGE_MESSAGES)
        msg = self._msg(channel_id, message_id)
        fd._remove_reaction(msg, self._emoji(emoji), int(user_id))
        await fd.gateway.drain()
        return None

    async def get_reaction_users(self, request, record, channel_id, message_id, emoji):
        fd = self.fd
        self._perms(self._chan(channel_id), P.READ_MESSAGE_HISTORY)
        msg = self._msg(channel_id, message_id)
        reaction = msg.reactions.get(emoji_key(self._emoji(emoji)))
        users = sorted(reaction.users) if reaction else []
        after = int(request.query.get("after", 0))
        limit = int(request.query.get("limit", 25))
        return [fd._user_payload(u) for u in users if u > after][:limit]

    async def clear_emoji(self, request, record, channel_id, message_id, emoji):
        self._perms(self._chan(channel_id), P.MANAGE_MESSAGES)
        self.fd._clear_reactions(self._msg(channel_id, message_id), self._emoji(emoji))
        await self.fd.gateway.drain()
        return None

    async def clear_reactions(self, request, record, channel_id, message_id):
        self._perms(self._chan(channel_id), P.MANAGE_MESSAGES)
        self.fd._clear_reactions(self._msg(channel_id, message_id), None)
        await self.fd.gateway.drain()
        return None

    # ------------------------------------------------------------------ guilds

    async def get_guild(self, request, record, guild_id):
        guild = self._guild(guild_id)
        data = guild.payload()
        if request.query.get("with_counts") in ("true", "1", "True"):
            data["approximate_member_count"] = len(guild.members)
            data["approximate_presence_count"] = 0
        return data

    async def get_guild_channels(self, request, record, guild_id):
        guild = self._guild(guild_id)
        return [self.fd._channels[c].payload() for c in guild.channel_ids]

    async def get_roles(self, request, record, guild_id):
        return [r.payload() for r in self._guild(guild_id).roles.values()]

    async def get_members(self, request, record, guild_id):
        fd = self.fd
        guild = self._guild(guild_id)
        after = int(request.query.get("after", 0))
        limit = int(request.query.get("limit", 1))
        ids = sorted(u for u in guild.members if u > after)[:limit]
        return [guild.members[u].payload(fd._users[u]) for u in ids]

    async def get_member(self, request, record, guild_id, user_id):
        fd = self.fd
        guild = self._guild(guild_id)
        member = guild.members.get(int(user_id))
        if member is None:
            raise ApiError(404, 10007, "Unknown Member")
        return member.payload(fd._users[member.user_id])

    # ------------------------------------------------------------------ interactions

    def _interaction(self, token: str) -> InteractionRecord:
        rec = self.fd._interactions_by_token.get(token)
        if rec is None:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        return rec

    def _interaction_message(self, rec: InteractionRecord, message_id: str) -> Message:
        mid = rec.original_message_id if message_id == "@original" else int(message_id)
        if mid is None or (mid != rec.original_message_id and mid not in rec.followup_ids):
            raise ApiError(404, 10008, "Unknown Message")
        msg = self.fd._find_any_message(mid)
        if msg is None:
            raise ApiError(404, 10008, "Unknown Message")
        return msg

    def _interaction_create(
        self, rec: InteractionRecord, data: dict, files: dict, *, mtype: int
    ) -> Message:
        fd = self.fd
        ch = self._chan(str(rec.channel_id))
        fields = self._new_message_fields(ch, data, files, perms=None)
        ephemeral = bool(fields["flags"] & EPHEMERAL)
        return fd._create_message(
            ch.id,
            fd.bot_user_id,
            type=mtype,
            interaction_metadata=fd._interaction_metadata(rec),
            webhook_id=fd.application_id,
            application_id=fd.application_id,
            ephemeral=ephemeral,
            **fields,
        )

    async def interaction_callback(self, request, record, interaction_id, token):
        fd = self.fd
        rec = fd._interactions.get(int(interaction_id))
        if rec is None or rec.token != token:
            raise ApiError(404, 10062, "Unknown interaction")
        if rec.callback_types:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        payload, files = await self._body(request, record)
        ctype = int(payload.get("type", 0))
        data = payload.get("data") or {}
        msg: Message | None = None
        if ctype == 4:
            msg = self._interaction_create(rec, data, files, mtype=20 if rec.type == 2 else 0)
            rec.original_message_id = msg.id
        elif ctype == 5:
            ephemeral = bool(int(data.get("flags") or 0) & EPHEMERAL)
            msg = fd._create_message(
                rec.channel_id,
                fd.bot_user_id,
                type=20 if rec.type == 2 else 0,
                flags=LOADING,
                interaction_metadata=fd._interaction_metadata(rec),
                webhook_id=fd.application_id,
                application_id=fd.application_id,
                ephemeral=ephemeral,
            )
            rec.original_message_id = msg.id
        elif ctype in (6, 7):
            if rec.message_id is None:
                raise ApiError(
                    400,
                    40060 if ctype == 6 else 50035,
                    "Interaction is not a component interaction",
                )
            msg = self._msg(str(rec.channel_id), str(rec.message_id))
            rec.original_message_id = msg.id
            if ctype == 7:
                self._apply_edit(msg, data, files, perms=None)
                fd._dispatch_message_update(msg)
        elif ctype == 9:
            rec.modal = data
        elif ctype != 1:
            raise form_error(
                {
                    "type": {
                        "_errors": [
                            {
                                "code": "BASE_TYPE_CHOICES",
                                "message": "Value must be one of (1, 4, 5, 6, 7, 8, 9, 10, 12).",
                            }
                        ]
                    }
                }
            )
        rec.callback_types.append(ctype)
        await fd.gateway.drain()
        if request.query.get("with_response") not in ("1", "true", "True"):
            return None
        inter: dict[str, Any] = {"id": str(rec.id), "type": rec.type}
        result: dict[str, Any] = {"interaction": inter}
        if msg is not None:
            inter["response_message_id"] = str(msg.id)
            inter["response_message_loading"] = bool(msg.flags & LOADING)
            inter["response_message_ephemeral"] = bool(msg.flags & EPHEMERAL)
            result["resource"] = {"type": ctype, "message": fd._message_payload(msg)}
        else:
            result["resource"] = {"type": ctype}
        return result

    async def followup(self, request, record, app_id, token):
        fd = self.fd
        rec = self._interaction(token)
        if int(app_id) != fd.application_id:
            raise ApiError(404, 10015, "Unknown Webhook")
        if not rec.callback_types:
            raise ApiError(404, 10015, "Unknown Webhook")
        payload, files = await self._body(request, record)
        original = (
            fd._find_any_message(rec.original_message_id) if rec.original_message_id else None
        )
        if original is not None and original.flags & LOADING:
            # the first follow-up after a defer replaces the "thinking" message
            self._apply_edit(original, payload, files, perms=None)
            fd._dispatch_message_update(original)
            msg = original
        else:
            msg = self._interaction_create(rec, payload, files, mtype=0)
            rec.followup_ids.append(msg.id)
        await fd.gateway.drain()
        if request.query.get("wait") in ("1", "true", "True"):
            return fd._message_payload(msg)
        return None

    async def get_webhook_message(self, request, record, app_id, token, message_id):
        rec = self._interaction(token)
        return self.fd._message_payload(self._interaction_message(rec, message_id))

    async def edit_webhook_message(self, request, record, app_id, token, message_id):
        fd = self.fd
        rec = self._interaction(token)
        msg = self._interaction_message(rec, message_id)
        payload, files = await self._body(request, record)
        self._apply_edit(msg, payload, files, perms=None)
        fd._dispatch_message_update(msg)
        await fd.gateway.drain()
        return fd._message_payload(msg)

    async def delete_webhook_message(self, request, record, app_id, token, message_id):
        fd = self.fd
        rec = self._interaction(token)
        msg = self._interaction_message(rec, message_id)
        fd._delete_message(msg)
        await fd.gateway.drain()
        return None

    # ------------------------------------------------------------------ CDN

    async def cdn(self, request: web.Request) -> web.StreamResponse:
        fd = self.fd
        fd.cdn_requests.append((request.method, request.path))
        gone = web.Response(status=404, text="This content is no longer available.")
        try:
            att = fd._attachments.get(int(request.match_info["attachment_id"]))
            channel_id = int(request.match_info["channel_id"])
        except ValueError:
            return gone
        if att is None or att.channel_id != channel_id:
            return gone
        if request.query.get("hm") != fd._cdn_signature(att.id, fd._cdn_epoch):
            return gone
        if fd.cdn_delay_s:
            await asyncio.sleep(fd.cdn_delay_s)
        return web.Response(
            body=att.data,
            content_type=(att.content_type or "application/octet-stream").split(";")[0],
        )


def _json(obj: Any, status: int = 200) -> web.Response:
    # exactly "application/json": discord.py only decodes that (no "; charset=")
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()
    return web.Response(body=body, status=status, headers={"Content-Type": "application/json"})
