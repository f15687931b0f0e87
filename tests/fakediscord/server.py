"""FakeDiscord: a loopback Discord (gateway + REST + CDN) for testing discord.py bots.

Typical use::

    async with FakeDiscord() as fd, fd.patch_discord():
        guild = fd.add_guild("test")
        chan = fd.add_channel(guild, "general")
        alice = fd.add_member(guild, "alice")
        bot = commands.Bot(command_prefix="!", intents=intents, guild_ready_timeout=0.05)
        task = asyncio.create_task(bot.start(fd.token))
        await fd.wait_ready()
        await bot.wait_until_ready()
        await fd.post_message(chan, alice, "!ping")
        reply = await fd.wait_for(lambda: fd.bot_messages(chan))
        ...
        await bot.close()
        await task

Everything runs on 127.0.0.1 with a random port; nothing leaves the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .gateway import Gateway
from .members import MemberActions
from .records import (
    EPHEMERAL,
    LOADING,
    ApiError,
    InteractionRecord,
    RequestRecord,
    form_error,
    missing_access,
    missing_permissions,
)
from .rest import RestApi

__all__ = [
    "EPHEMERAL",
    "LOADING",
    "ApiError",
    "FakeDiscord",
    "InteractionRecord",
    "RequestRecord",
    "form_error",
    "missing_access",
    "missing_permissions",
]


class _PatchContext:
    """Sync *and* async context manager returned by ``FakeDiscord.patch_discord``."""

    def __init__(self, fd: FakeDiscord) -> None:
        self._fd = fd
        self._saved: list[tuple[Any, str, Any]] = []

    def __enter__(self) -> FakeDiscord:
        import discord.asset
        import discord.gateway
        import discord.http
        import yarl

        targets = [
            (discord.http.Route, "BASE", self._fd.api_base),
            (discord.gateway.DiscordWebSocket, "DEFAULT_GATEWAY", yarl.URL(self._fd.gateway_url)),
            (discord.asset.Asset, "BASE", self._fd.base_url),
        ]
        for obj, name, value in targets:
            self._saved.append((obj, name, obj.__dict__.get(name)))
            setattr(obj, name, value)
        return self._fd

    def __exit__(self, *exc: object) -> None:
        while self._saved:
            obj, name, value = self._saved.pop()
            setattr(obj, name, value)

    async def __aenter__(self) -> FakeDiscord:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__(*exc)



class FakeDiscord(MemberActions):
    """A fake Discord server (gateway, REST API v10 and CDN) on 127.0.0.1.

    State lives in memory; the test drives it through the methods below and
    inspects it with :meth:`messages`, :meth:`bot_messages`, :attr:`requests`,
    :attr:`events` and friends.  A real, unmodified ``discord.Client`` or
    ``commands.Bot`` connects to it once :meth:`patch_discord` is active.

    Options (all keyword-only, all may also be changed as attributes later):

    ``bot_name``
        Username of the bot user.
    ``heartbeat_interval_ms``
        Sent in HELLO.
    ``enabled_privileged_intents``
        Privileged intents "enabled in the developer portal"; IDENTIFY asking
        for any other is closed with 4014 (``discord.PrivilegedIntentsRequired``).
    ``enforce_message_content``
        When true, a session without the message-content intent receives
        empty ``content``/``embeds``/``attachments``/``components`` for other
        users' messages that do not mention the bot (Discord's rule).  Off by
        default: content is always included.
    ``upload_limit``
        Largest accepted file in bytes (10 MiB, an unboosted server); larger
        uploads get 413 / code 40005.
    """


    def __init__(
        self,
        *,
        bot_name: str = "TestBot",
        heartbeat_interval_ms: int = 41250,
        enabled_privileged_intents: Iterable[str] = ("members", "presences", "message_content"),
        enforce_message_content: bool = False,
        upload_limit: int = 10 * 1024 * 1024,
    ) -> None:
        super().__init__(
            bot_name=bot_name,
            heartbeat_interval_ms=heartbeat_interval_ms,
            enabled_privileged_intents=enabled_privileged_intents,
            enforce_message_content=enforce_message_content,
            upload_limit=upload_limit,
        )
        self._runner: web.AppRunner | None = None
        self.gateway = Gateway(self)
        self._rest = RestApi(self)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start listening on 127.0.0.1 (random port)."""
        if self._runner is not None:
            return
        app = web.Application(client_max_size=1024**3)
        app.router.add_get("/gateway", self.gateway.handle)
        app.router.add_get("/gateway/", self.gateway.handle)
        app.router.add_get("/resume-gateway", self.gateway.handle)
        app.router.add_get("/resume-gateway/", self.gateway.handle)
        self._rest.install(app)
        runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, 0)
        await site.start()
        self._runner = runner
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close every gateway connection and stop the server.

        Close your clients first (``await bot.close()``).  A client still
        connected is closed with code 4004, which discord.py does not retry:
        its ``start()`` ends with ``ConnectionClosed`` (code 4004) instead of
        looping on reconnect attempts to a dead port.
        """
        if self._runner is None:
            return
        self.gateway.stopping = True
        self.gateway.close_all(4004, "fakediscord stopped")
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.gateway.drain(), 2)
        await self._runner.cleanup()
        self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def patch_discord(self) -> _PatchContext:
        """Point discord.py at this server; restores the old values on exit.

        Sets ``discord.http.Route.BASE``, ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY``
        and ``discord.asset.Asset.BASE``.  Usable as ``with`` or ``async with``.
        Call after :meth:`start` (the port must be known).
        """
        if self._runner is None:
            raise RuntimeError("start() the FakeDiscord before patch_discord()")
        return _PatchContext(self)

