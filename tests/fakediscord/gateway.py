"""The websocket gateway: HELLO, IDENTIFY/READY, heartbeats, RESUME, dispatch.

Every outgoing frame goes through a per-connection queue drained by one writer
task, so dispatching is synchronous for callers, frames keep their order and a
``zlib-stream`` connection's compressor sees them in sequence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .intents import (
    DISPATCH,
    GUILD_MEMBERS,
    GUILD_PRESENCES,
    HEARTBEAT,
    HEARTBEAT_ACK,
    HELLO,
    IDENTIFY,
    INVALID_SESSION,
    MESSAGE_CONTENT,
    PRESENCE_UPDATE,
    PRIVILEGED,
    RECONNECT,
    REQUEST_MEMBERS,
    RESUME,
    VOICE_STATE,
)

if TYPE_CHECKING:
    from .world import World

log = logging.getLogger("fakediscord.gateway")

_CLOSE = object()


@dataclass
class Session:
    """A gateway session: survives its connection so that RESUME can replay."""

    id: str
    intents: int
    shard: list[int] | None
    seq: int = 0
    buffer: list[dict[str, Any]] = field(default_factory=list)
    conn: Connection | None = None
    ready: bool = False

    def owns(self, guild_id: int | None) -> bool:
        """Whether this session's shard receives the guild's events (Discord's routing:
        ``(guild_id >> 22) % shard_count``; an unsharded session gets every guild)."""
        if guild_id is None or not self.shard:
            return True
        shard_id, count = self.shard
        return (int(guild_id) >> 22) % count == shard_id

    def dispatch(self, event: str, data: Any) -> None:
        self.seq += 1
        frame = {"op": DISPATCH, "t": event, "s": self.seq, "d": data}
        self.buffer.append(frame)
        if self.conn is not None:
            self.conn.send(frame)


class Connection:
    """One websocket connection from a client."""

    def __init__(self, ws: web.WebSocketResponse, *, compress: str | None) -> None:
        self.ws = ws
        self.compress = compress
        self._zlib = zlib.compressobj() if compress == "zlib-stream" else None
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.session: Session | None = None
        self.closed = False
        self.sent_close_code: int | None = None
        self.writer = asyncio.create_task(self._write_loop(), name="fakediscord-gateway-writer")

    def send(self, frame: dict[str, Any]) -> None:
        if not self.closed:
            self.queue.put_nowait(json.dumps(frame, separators=(",", ":")))

    def close(self, code: int = 4000, message: str = "") -> None:
        """Close after the frames queued so far have been sent."""
        if not self.closed:
            self.queue.put_nowait((_CLOSE, code, message))

    async def _write_loop(self) -> None:
        while True:
            item = await self.queue.get()
            try:
                if self.closed:
                    continue
                if isinstance(item, tuple) and item[0] is _CLOSE:
                    self.closed = True
                    self.sent_close_code = item[1]
                    await self.ws.close(code=item[1], message=item[2].encode())
                elif self._zlib is not None:
                    data = self._zlib.compress(item.encode()) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
                    await self.ws.send_bytes(data)
                else:
                    await self.ws.send_str(item)
            except (ConnectionError, RuntimeError) as exc:
                log.debug("gateway send failed: %r", exc)
                self.closed = True
            finally:
                self.queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued frame has been written (or the connection is gone)."""
        if self.writer.done():
            return
        join = asyncio.ensure_future(self.queue.join())
        try:
            await asyncio.wait({join, self.writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            join.cancel()


def event_guild(event: str, data: Any) -> int | None:
    """The guild an event is about (None: none, it goes to every shard)."""
    if not isinstance(data, dict):
        return None
    if event in ("GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"):
        raw = data.get("id")
    else:
        raw = data.get("guild_id")
    return int(raw) if raw is not None else None


def valid_shard(shard: Any) -> bool:
    return (
        isinstance(shard, list)
        and len(shard) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
        and 0 <= shard[0] < shard[1]
    )


class Gateway:
    """Websocket endpoint plus the sessions it has created."""

    def __init__(self, fd: World) -> None:
        self.fd = fd
        self.sessions: dict[str, Session] = {}
        self.connections: list[Connection] = []
        self.stopping = False

    # -- dispatch ---------------------------------------------------------------

    def dispatch(
        self,
        event: str,
        data: Any,
        *,
        intent: int | None = None,
        guild_id: int | None = None,
        transform=None,
    ) -> None:
        """Send ``event`` to every session that asked for ``intent`` (None = always) and
        whose shard owns the event's guild (``guild_id``, else the payload's).

        ``transform(session, data)`` may return a per-session variant of ``data``.
        """
        self.fd.events.append((event, data))
        if guild_id is None:
            guild_id = event_guild(event, data)
        for session in list(self.sessions.values()):
            if not session.ready and event not in ("READY", "GUILD_CREATE"):
                continue
            if intent is not None and not session.intents & intent:
                continue
            if not session.owns(guild_id):
                continue
            session.dispatch(event, transform(session, data) if transform else data)

    async def drain(self) -> None:
        for conn in list(self.connections):
            await conn.drain()

    def reconnect_all(self) -> None:
        """Send op 7 RECONNECT to every connection (clients then RESUME)."""
        for conn in list(self.connections):
            conn.send({"op": RECONNECT, "d": None})

    def close_all(self, code: int = 4000, message: str = "") -> None:
        for conn in list(self.connections):
            conn.close(code, message)

    def invalidate_all(self) -> None:
        """Forget every session (a later RESUME gets INVALID_SESSION)."""
        self.sessions.clear()

    # -- websocket handler ------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        fd = self.fd
        if self.stopping:
            return web.Response(status=503, text="fakediscord is shutting down")
        ws = web.WebSocketResponse(max_msg_size=0, autoping=True)
        await ws.prepare(request)
        compress = request.query.get("compress")
        fd.gateway_connections.append(
            {
                "path": request.path,
                "query": dict(request.query),
                "compress": compress,
                "resumed": False,
            }
        )
        info = fd.gateway_connections[-1]
        # zstd-stream cannot be produced without the zstandard package; the client also
        # accepts plain text frames, so anything but zlib-stream gets uncompressed text.
        conn = Connection(ws, compress=compress)
        self.connections.append(conn)
        conn.send(
            {
                "op": HELLO,
                "d": {"heartbeat_interval": fd.heartbeat_interval_ms, "_trace": ["fakediscord"]},
            }
        )
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    try:
                        frame = json.loads(msg.data)
                    except ValueError:
                        conn.close(4002, "Error while decoding payload.")
                        continue
                    await self._on_frame(conn, frame, info)
                elif msg.type == WSMsgType.BINARY:
                    conn.close(4002, "Error while decoding payload.")
                elif msg.type == WSMsgType.ERROR:
                    break
        finally:
            conn.closed = True
            code = ws.close_code
            # the code we closed with, else the client's
            info["close_code"] = conn.sent_close_code or code
            session = conn.session
            if session is not None and session.conn is conn:
                session.conn = None
                if conn.sent_close_code is None and code in (1000, 1001):
                    # a clean close by the client ends the session, as on Discord
                    self.sessions.pop(session.id, None)
            if conn in self.connections:
                self.connections.remove(conn)
            conn.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.writer
        return ws

    async def _on_frame(
        self, conn: Connection, frame: dict[str, Any], info: dict[str, Any]
    ) -> None:
        fd = self.fd
        op = frame.get("op")
        d = frame.get("d")
        if op == HEARTBEAT:
            fd.heartbeats += 1
            conn.send({"op": HEARTBEAT_ACK})
        elif op == IDENTIFY:
            if conn.session is not None:
                conn.close(4005, "Already authenticated.")
                return
            if not isinstance(d, dict) or d.get("token") != fd.token:
                conn.close(4004, "Authentication failed.")
                return
            intents = d.get("intents")
            if not isinstance(intents, int):
                conn.close(4013, "Invalid intent(s).")
                return
            enabled = 0
            for name in fd.enabled_privileged_intents:
                enabled |= PRIVILEGED[name]
            if intents & (GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT) & ~enabled:
                conn.close(4014, "Disallowed intent(s).")
                return
            shard = d.get("shard")
            if shard is not None and not valid_shard(shard):
                conn.close(4010, "Invalid shard.")
                return
            fd.identify_payloads.append(d)
            fd.identify_times.append((time.monotonic(), shard))
            session = Session(id=secrets.token_hex(16), intents=intents, shard=shard)
            self.sessions[session.id] = session
            session.conn = conn
            conn.session = session
            ready = fd._ready_payload(session)
            session.dispatch("READY", ready)
            fd.events.append(("READY", ready))
            for guild in fd._bot_guilds():
                if not session.owns(guild.id):
                    continue
                payload = fd._guild_create_payload(guild, intents)
                session.dispatch("GUILD_CREATE", payload)
                fd.events.append(("GUILD_CREATE", payload))
            session.ready = True
        elif op == RESUME:
            info["resumed"] = True
            session = self.sessions.get((d or {}).get("session_id"))
            if session is None or d.get("token") != fd.token:
                conn.send({"op": INVALID_SESSION, "d": False})
                return
            old = session.conn
            if old is not None and old is not conn:
                old.session = None
                old.close(4000)
            session.conn = conn
            conn.session = session
            seq = d.get("seq") or 0
            for frame in session.buffer:
                if frame["s"] > seq:
                    conn.send(frame)
            fd.resumes += 1
            session.dispatch("RESUMED", {"_trace": ["fakediscord"]})
            fd.events.append(("RESUMED", {}))
        elif op == REQUEST_MEMBERS:
            if conn.session is None:
                conn.close(4003, "Not authenticated.")
                return
            conn.session.dispatch("GUILD_MEMBERS_CHUNK", fd._members_chunk(d or {}))
        elif op in (PRESENCE_UPDATE, VOICE_STATE):
            pass
        else:
            conn.close(4001, "Unknown opcode.")
