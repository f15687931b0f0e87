"""python -m bot: run the Discord bot, or the same commands on a local console.

    python -m bot --config config.toml                 the bot (token: DISCORD_TOKEN or config)
    python -m bot --console [--config F] [--demo] [--out DIR]   commands from standard input
    python -m bot --shard-count N --shard-ids 0,1      shards 0 and 1 of N (see bot/shards.py;
                                                       python -m bot.launch runs several)

Exit status 2 with one line on standard error for a bad configuration, a missing token,
a missing collection or an unreachable Milvus (store = "milvus"); 1 when Discord refuses
the token or an intent.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from . import config

log = logging.getLogger("bot")

NO_TOKEN = "no token: set DISCORD_TOKEN or token in config"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bot", description=(
        "clipfind: a Discord bot that searches images with CLIP. Without --console it "
        "connects to Discord; with --console it reads commands from standard input."))
    p.add_argument("--config", type=Path, default=None,
                   help="TOML settings (default: ./config.toml when it exists; "
                        "see config.example.toml)")
    p.add_argument("--console", action="store_true",
                   help="read commands such as '!find red circle' from standard input")
    p.add_argument("--demo", action="store_true",
                   help="build the demo collection (./demo) with the bundled model if missing, "
                        "and search it")
    p.add_argument("--out", type=Path, default=Path("out"),
                   help="console: folder for the pictures the bot would post (default ./out)")
    p.add_argument("--shard-count", type=int, default=None, metavar="N",
                   help="run as shards: N shards in all (at most 2,500 servers per shard)")
    p.add_argument("--shard-ids", default=None, metavar="IDS",
                   help="with --shard-count: the shards this process runs, e.g. 0,1 "
                        "(default: all)")
    return p


def _collection_found(settings: config.Settings) -> bool | str:
    """Whether the collection is there; a str: the one line saying why none can be (an
    unreachable Milvus, named by its URI)."""
    from index import collection_exists
    from index.errors import ClipfindError

    try:
        return collection_exists(settings.collection, **settings.store_options)
    except ClipfindError as e:
        return str(e)


def _encoder_problem(settings: config.Settings, built: bool = True) -> str | None:
    """With encoder_url: None when the encoder service answers, takes the token and runs the
    model the collection was built with (`built`: the collection is there to ask), else the
    one line saying why not (the token refused names encoder_token; another model, both)."""
    if not settings.encoder_url:
        return None
    from index import RemoteEncoder, open_store
    from index.errors import ClipfindError

    try:
        encoder = RemoteEncoder.connect(settings.encoder_url, settings.encoder_token or None)
        runs = encoder.loaded.name
        encoder.close()
        if not built:
            return None
        with open_store(settings.collection, **settings.store_options) as collection:
            wants = collection.manifest.model
    except ClipfindError as e:
        return str(e)
    if wants != runs:
        return (f"the encoder service at {settings.encoder_url} runs {runs}, but the collection "
                f"{settings.collection} was built with {wants}; start the service with "
                f"--model {wants} or point encoder_url at one that runs it")
    return None


def _fail(message: str) -> int:
    print(f"clipfind: {message}", file=sys.stderr)
    return 2


async def run_bot(settings: config.Settings, *, demo: bool, shards=None) -> int:
    import discord

    from .runtime import Runtime
    from .shards import make_bot, signal_ready

    runtime = await Runtime.demo(settings, out=sys.stderr) if demo else Runtime(settings)
    bot = make_bot(runtime.settings, shards, runtime=runtime)
    ready = asyncio.create_task(signal_ready(bot), name="clipfind-ready-file")
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(bot.close()))
        except (NotImplementedError, RuntimeError):
            pass
    try:
        async with bot:
            await bot.start(settings.token)
    except discord.LoginFailure:
        log.error("Discord refused the token; check DISCORD_TOKEN or token in the config")
        return 1
    except discord.PrivilegedIntentsRequired:
        log.error("Discord refused the Message Content intent: enable it for the bot in the "
                  "developer portal (Bot > Privileged Gateway Intents), or set "
                  "message_content = false to use /find only; see docs/DISCORD.md")
        return 1
    finally:
        ready.cancel()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .shardplan import ShardError, parse_plan

    try:
        shards = parse_plan(args.shard_count, args.shard_ids)
    except ShardError as e:
        return _fail(str(e))
    path = args.config
    if path is None and Path("config.toml").exists():
        path = Path("config.toml")
    try:
        settings = config.load(path)
    except config.ConfigError as e:
        return _fail(f"config error: {e}")
    if args.console:
        from .console import run_console

        logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
        try:
            return asyncio.run(run_console(settings, out_dir=args.out, demo=args.demo))
        except KeyboardInterrupt:
            return 130
    if not settings.token:
        return _fail(NO_TOKEN)
    found = True if args.demo else _collection_found(settings)
    if isinstance(found, str):
        return _fail(found)
    if not found:
        return _fail(f"no collection at {settings.collection}: build one with "
                     f"`python -m index build --index {settings.collection} FOLDER` "
                     "(or try `python -m bot --console --demo`)")
    if (problem := _encoder_problem(settings, built=not args.demo)) is not None:
        return _fail(problem)
    from .app import setup_logging

    setup_logging(settings)
    try:
        return asyncio.run(run_bot(settings, demo=args.demo, shards=shards))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
