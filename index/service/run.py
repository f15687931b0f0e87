"""`python -m index serve`: load the model, start the encoder, serve it until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from aiohttp import web

from ..errors import ClipfindError
from .protocol import DEFAULT_PORT, TOKEN_ENV, Limits
from .server import EncoderService


def serve(model: str, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
          token_env: str = TOKEN_ENV, device: str = "auto", threads: int | None = None,
          max_batch: int = 32, queue_size: int = 512, limits: Limits | None = None) -> int:
    """Serve `model` on host:port (port 0: any free one; the first line printed names it)."""
    token = os.environ.get(token_env, "").strip()
    if not token:
        raise ClipfindError(f"the environment variable {token_env} is not set: the encoder "
                            "service needs a token (the clients' encoder_token); set it, or name "
                            "another variable with --token-env")
    from ..encoder import Encoder
    from ..models import load_model
    encoder = Encoder(load_model(model, device), max_batch=max_batch, queue_size=queue_size,
                      threads=threads)
    try:
        service = EncoderService(encoder, token, limits)
        asyncio.run(_serve(service, host, port))
    finally:
        encoder.close()
    return 0


async def _serve(service: EncoderService, host: str, port: int) -> None:
    runner = web.AppRunner(service.app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        try:
            await site.start()
        except OSError as e:
            raise ClipfindError(f"cannot listen on {host}:{port} ({e.strerror or e}); "
                                "pick another --port") from e
        bound = runner.addresses[0][1]
        name = service.encoder.loaded.name
        shown = f"[{host}]" if ":" in host else host  # an IPv6 address, as URLs write it
        print(f"encoder service: {name} on http://{shown}:{bound}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await asyncio.to_thread(service.encoder.wait_ready)
        print(f"encoder service: ready ({name}, dim {service.encoder.dim})", flush=True,
              file=sys.stderr)
        await stop.wait()
    finally:
        await runner.cleanup()
