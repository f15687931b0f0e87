"""What both faces run on, built in one place from the settings.

A `Runtime` holds the engine options made from the settings, opens the global
collection's engine (in a thread, so a face can start talking while the model loads),
says when it is ready (`ready`, an asyncio.Event; `load_error` when it could not start),
and gives the server libraries their namespaces on the same encoder. The Discord bot
(`bot.app.ClipfindBot`) and the console (`bot.console`) each receive one.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TextIO

from index import Engine, EngineOptions, Namespaces
from index.errors import ClipfindError

from .config import Settings

log = logging.getLogger("bot")

DEMO_ROOT = Path("demo")


def engine_options(settings: Settings) -> EngineOptions:
    # A long-lived process: retraining the approximate index as the collection grows
    # runs beside the searches instead of freezing them (see Collection.open).
    return EngineOptions(device=settings.device, threads=settings.threads or None,
                         queue_size=settings.queue_size, background_rebuilds=True,
                         encoder_url=settings.encoder_url or None,
                         encoder_token=settings.encoder_token or None)


def open_engine(settings: Settings) -> Engine:
    """The configured collection with the model that built it (blocking: run it in a thread)."""
    return Engine.open(settings.collection, model=settings.model or None,
                       options=engine_options(settings), **settings.store_options)


class Runtime:
    """The engine of one process and its readiness. `engine` given: used as is (and not
    closed); else opened by `opener` when `start` is called."""

    def __init__(self, settings: Settings, *, engine: Engine | None = None,
                 opener: Callable[[Settings], Engine] = open_engine, owns_engine: bool | None = None):
        self.settings = settings
        self.engine = engine
        self.owns_engine = engine is None if owns_engine is None else owns_engine
        self.load_error: str | None = None  # one line: why the engine could not start
        self.ready = asyncio.Event()  # the engine is open and its model warmed up
        self._opener = opener
        self._task: asyncio.Task | None = None

    @classmethod
    async def demo(cls, settings: Settings, root: Path = DEMO_ROOT, *,
                   out: TextIO = sys.stdout) -> Runtime:
        """The demo collection under `root` (made or completed first, see index.demo)."""
        from index import make_demo  # here: it loads the model (torch), which a process
        # that encodes through the encoder service never needs
        engine = await make_demo(root, engine_options(settings), out=out)
        return cls(replace(settings, collection=Path(root) / "collection"), engine=engine,
                   owns_engine=True)

    def start(self) -> asyncio.Task:
        """Open the engine (unless given) and wait for its warm-up, in a task; once."""
        if self._task is None:
            self._task = asyncio.create_task(self._start(), name="clipfind-engine")
        return self._task

    async def wait(self) -> bool:
        """Until the start is over: True when ready, False when it failed (`load_error`)."""
        await asyncio.shield(self.start())
        return self.ready.is_set()

    async def _start(self) -> None:
        if self.engine is None:
            log.info("opening collection %s and loading the model", self.settings.collection)
            try:
                engine = await asyncio.to_thread(self._opener, self.settings)
            except ClipfindError as e:  # the face tells its operator
                self.load_error = str(e)
                return
            except Exception as e:
                self.load_error = "unexpected error, see the bot's log"
                log.exception("the search engine could not start: %r", e)
                return
            self.engine = engine
        if not self.engine.ready:
            await asyncio.to_thread(self.engine.wait_ready)
        log.info("ready: %d images, model %s", len(self.engine.collection), self.engine.model_name)
        self.ready.set()

    def namespaces(self) -> Namespaces:
        """The server libraries' collections (one per server), on this engine's encoder."""
        if self.engine is None:
            raise RuntimeError("the engine is not open")
        s = self.settings
        return Namespaces(s.library_root, self.engine.encoder, engine_options(s),
                          **s.store_options)

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            # a model still loading in its thread cannot be interrupted: let it finish, then
            # close it below rather than leave its encoder thread behind
            await asyncio.wait({self._task}, timeout=120)
        engine = self.engine
        if self.owns_engine and engine is not None:
            self.engine = None
            await asyncio.to_thread(engine.close)
