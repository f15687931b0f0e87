"""bot/runtime.py: what both faces run on, built once from the settings."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from types import SimpleNamespace

from bot.runtime import Runtime, engine_options
from index.errors import StoreError


def test_engine_options_come_from_the_settings(settings):
    s = replace(settings, device="cpu", threads=3, queue_size=77)
    o = engine_options(s)
    assert (o.device, o.threads, o.queue_size, o.background_rebuilds) == ("cpu", 3, 77, True)
    assert engine_options(replace(s, threads=0)).threads is None  # 0: torch's default


async def test_ready_is_an_event_set_when_the_model_is_warm(settings):
    warm = threading.Event()
    closed = []
    fake = SimpleNamespace(ready=False, wait_ready=lambda timeout=None: warm.wait(timeout),
                           collection=[], model_name="fake", close=lambda: closed.append(1))
    runtime = Runtime(settings, opener=lambda s: fake)
    runtime.start()
    await asyncio.sleep(0.2)
    assert runtime.engine is fake and not runtime.ready.is_set()
    warm.set()
    await asyncio.wait_for(runtime.ready.wait(), 10)
    assert await runtime.wait() and runtime.load_error is None
    await runtime.close()
    assert closed == [1] and runtime.engine is None  # it opened the engine: it closes it


async def test_an_engine_that_cannot_open_is_one_line(settings):
    def broken(s):
        raise StoreError(f"{s.collection}: not a clipfind collection")

    runtime = Runtime(settings, opener=broken)
    assert not await runtime.wait()
    assert not runtime.ready.is_set()
    assert runtime.load_error.endswith("not a clipfind collection")
    await runtime.close()


async def test_a_given_engine_is_used_and_left_open(settings, engine, tmp_path):
    runtime = Runtime(replace(settings, library_root=tmp_path / "lib"), engine=engine)
    assert await runtime.wait()
    spaces = runtime.namespaces()  # the server libraries share the engine's encoder
    assert spaces.root == tmp_path / "lib" and spaces.encoder is engine.encoder
    await runtime.close()
    assert runtime.engine is engine and engine.ready
