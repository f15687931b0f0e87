"""Helpers for the bot's tests (importable as `botutil`: tests/bot is on sys.path)."""

from __future__ import annotations

import asyncio
import io
import struct
import zlib

import numpy as np
from PIL import Image


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


def noise_png(size: int = 64, seed: int = 0) -> bytes:
    """A picture unlike any gallery image (so it is no near-duplicate of a result)."""
    arr = (np.random.default_rng(seed).random((size, size, 3)) * 255).astype("uint8")
    return png_bytes(Image.fromarray(arr))


def bomb_png(width: int = 60_000, height: int = 60_000) -> bytes:
    """A tiny PNG whose header claims width × height pixels (a decompression bomb)."""
    data = png_bytes(Image.new("RGB", (1, 1)))
    ihdr = bytearray(data[8:8 + 25])  # length, 'IHDR', 13 bytes, crc
    ihdr[8:16] = struct.pack(">II", width, height)
    ihdr[21:25] = struct.pack(">I", zlib.crc32(bytes(ihdr[4:21])))
    return data[:8] + bytes(ihdr) + data[33:]


async def quiesce():
    """Let the bot finish the events it is handling (a command still adding its controls):
    what a handler dispatches after `close()` would be dropped by discord.py."""
    for _ in range(5):
        busy = [t for t in asyncio.all_tasks()
                if t.get_name().startswith(("discord.py: ", "CommandTree-invoker"))
                and not t.done()]
        if not busy:
            return
        await asyncio.wait(busy, timeout=2)


async def close_bots(bots) -> None:
    """Close the (bot, task) pairs a test started, once their events are handled."""
    await quiesce()
    for bot, task in bots:
        await bot.close()
        await asyncio.wait_for(task, 10)


async def settle():
    """Finish what closed bots left scheduled (event handlers), so no task dies pending."""
    for _ in range(3):
        leftovers = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        if not leftovers:
            return
        await asyncio.wait(leftovers, timeout=1)
    for t in leftovers:
        t.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
