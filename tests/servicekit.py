"""The encoder service in the test's own process: an `EncoderService` over an in-process
encoder, on an ephemeral loopback port (aiohttp's TestServer), for index and bot tests."""

from __future__ import annotations

import asyncio
import threading
from contextlib import asynccontextmanager

from aiohttp.test_utils import TestServer

from index.service.protocol import Limits
from index.service.server import EncoderService

TOKEN = "test-token-0123"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def served(encoder, limits: Limits | None = None, token: str = TOKEN,
                 port: int | None = None):
    """(service, base URL) while the block runs (on `port`, or a free one)."""
    service = EncoderService(encoder, token, limits)
    server = TestServer(service.app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        yield service, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


def hold_model_thread(encoder):
    """Occupy the encoder's model thread until the returned event is set: requests made
    meanwhile wait in its queue. Returns (task, started, release)."""
    release, started = threading.Event(), threading.Event()

    def hold():
        started.set()
        release.wait(20)

    task = asyncio.ensure_future(encoder.call(hold))
    return task, started, release
