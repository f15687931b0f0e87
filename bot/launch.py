"""python -m bot.launch: run the bot's shards as several processes and keep them running.

    python -m bot.launch --processes 2 --shard-count 4 --config config.toml

spawns 2 processes of `python -m bot --shard-count 4 --shard-ids ...` (shards 0,1 and
2,3; every other argument goes to each of them; `--shard-ids 4-7` runs only those, this
machine's share when several machines run the bot), and:

- starts them in Discord's identify order: one process at a time, lowest shards first;
  the next starts once the previous one's shards are READY (it writes the file named by
  CLIPFIND_READY_FILE; its engine goes on loading meanwhile), plus the identify window (5 s: Discord
  lets each rate-limit bucket, `shard_id % max_concurrency`, IDENTIFY once per 5 s), or
  after --ready-timeout seconds if it never says so;
- restarts a process that exits (a crash, kill -9) after a backoff that doubles from 1 s
  up to 60 s, back to 1 s once it has run a minute; a process that refuses to start
  (exit 1 or 2 before it was ever ready: a bad config, a refused token) is not retried:
  everything stops and the launcher exits with that status;
- on SIGTERM or SIGINT forwards SIGTERM to every process, waits --grace seconds for them
  to close their gateway connections and stores, then kills what is left, and exits 0.

Each process can run on any machine: what a shard needs beyond its connection (the
collection, the server libraries and their progress) is in the shared store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .shardplan import IDENTIFY_WINDOW_S, READY_FILE_ENV

log = logging.getLogger("bot.launch")

FATAL_EXITS = (1, 2)  # the bot's "cannot start" statuses: retrying would not help
BACKOFF_START_S, BACKOFF_MAX_S, STABLE_S = 1.0, 60.0, 60.0


class LaunchError(ValueError):
    """Bad launcher arguments (its text is the one line to show)."""


def slices(shard_count: int, processes: int, shard_ids: Sequence[int] | None = None
           ) -> list[list[int]]:
    """Contiguous, near-equal slices of the shard ids (all of them, or `shard_ids`: this
    machine's), lowest first (identify order)."""
    if shard_count < 1:
        raise LaunchError(f"--shard-count must be at least 1, not {shard_count}")
    ids = sorted(set(range(shard_count) if shard_ids is None else shard_ids))
    if any(not 0 <= i < shard_count for i in ids):
        raise LaunchError(f"--shard-ids: shards are 0 to {shard_count - 1} with --shard-count "
                          f"{shard_count}")
    if not 1 <= processes <= len(ids):
        raise LaunchError(f"--processes must be between 1 and the number of shards to run "
                          f"({len(ids)}), not {processes}: a process runs at least one shard")
    base, extra = divmod(len(ids), processes)
    out, start = [], 0
    for i in range(processes):
        n = base + (1 if i < extra else 0)
        out.append(ids[start:start + n])
        start += n
    return out


@dataclass
class Child:
    shard_ids: list[int]
    ready_file: Path
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    ever_ready: bool = False
    starts: int = 0
    backoff_s: float = BACKOFF_START_S
    pids: list[int] = field(default_factory=list)  # every pid it had, in order

    @property
    def name(self) -> str:
        ids = self.shard_ids
        return f"shard {ids[0]}" if len(ids) == 1 else f"shards {ids[0]}-{ids[-1]}"


class Launcher:
    """Starts, watches and stops the shard processes; `command(shard_ids)` is each one's argv."""

    def __init__(self, plan: Sequence[Sequence[int]], command: Callable[[list[int]], list[str]],
                 *, ready_timeout_s: float = 300.0, identify_window_s: float = IDENTIFY_WINDOW_S,
                 grace_s: float = 20.0, backoff_start_s: float = BACKOFF_START_S,
                 backoff_max_s: float = BACKOFF_MAX_S, stable_s: float = STABLE_S,
                 env: dict[str, str] | None = None, workdir: Path | None = None) -> None:
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="clipfind-launch-")
            workdir = Path(self._tmp.name)
        self.children = [Child(list(ids), Path(workdir) / f"ready-{ids[0]}") for ids in plan]
        self.command = command
        self.ready_timeout_s = ready_timeout_s
        self.identify_window_s = identify_window_s
        self.grace_s = grace_s
        self.backoff_start_s, self.backoff_max_s, self.stable_s = (
            backoff_start_s, backoff_max_s, stable_s)
        self.env = dict(os.environ if env is None else env)
        self.stopping = asyncio.Event()
        self.exit_status = 0
        self._gate = asyncio.Lock()  # one process identifies at a time
        self.events: list[tuple[float, str, int]] = []  # (time, "start"/"ready"/"exit", index)

    # -- running -------------------------------------------------------------------------------
    async def run(self) -> int:
        """Until stopped (`stop()`, SIGTERM, SIGINT) or a process cannot start; the exit status."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.stop)
        watchers = []
        try:
            for i, child in enumerate(self.children):  # in identify order
                watchers.append(asyncio.create_task(self._watch(i, child),
                                                    name=f"clipfind-launch-{child.name}"))
                await asyncio.sleep(0)  # it takes the gate before the next one asks
            await self.stopping.wait()
        finally:
            self.stopping.set()
            await self._stop_all()
            for t in watchers:
                t.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            if self._tmp is not None:
                self._tmp.cleanup()
        return self.exit_status

    def stop(self, status: int | None = None) -> None:
        if status is not None and not self.stopping.is_set():
            self.exit_status = status
        self.stopping.set()

    def live_pids(self) -> list[int]:
        return [c.proc.pid for c in self.children
                if c.proc is not None and c.proc.returncode is None]

    async def _watch(self, index: int, child: Child) -> None:
        while not self.stopping.is_set():
            async with self._gate:
                if self.stopping.is_set():
                    return
                await self._start(index, child)
                await self._until_ready(index, child)
                if not self.stopping.is_set():
                    await self._sleep(self.identify_window_s)  # the next IDENTIFY may go
            status = await child.proc.wait()
            if self.stopping.is_set():
                return
            self.events.append((time.monotonic(), "exit", index))
            ran = time.monotonic() - child.started_at
            if not child.ever_ready and status in FATAL_EXITS:
                log.error("%s could not start (exit %d): stopping everything", child.name, status)
                self.stop(status)
                return
            if ran >= self.stable_s:
                child.backoff_s = self.backoff_start_s
            log.warning("%s (pid %d) exited with status %s after %.0f s: restarting in %.1f s",
                        child.name, child.proc.pid, status, ran, child.backoff_s)
            await self._sleep(child.backoff_s)
            child.backoff_s = min(self.backoff_max_s, child.backoff_s * 2)

    async def _start(self, index: int, child: Child) -> None:
        with contextlib.suppress(FileNotFoundError):
            child.ready_file.unlink()
        argv = self.command(child.shard_ids)
        env = {**self.env, READY_FILE_ENV: str(child.ready_file)}
        child.proc = await asyncio.create_subprocess_exec(*argv, env=env)
        child.started_at = time.monotonic()
        child.starts += 1
        child.pids.append(child.proc.pid)
        self.events.append((time.monotonic(), "start", index))
        log.info("%s started (pid %d)", child.name, child.proc.pid)

    async def _until_ready(self, index: int, child: Child) -> None:
        deadline = time.monotonic() + self.ready_timeout_s
        while not self.stopping.is_set() and child.proc.returncode is None:
            if child.ready_file.exists():
                child.ever_ready = True
                self.events.append((time.monotonic(), "ready", index))
                log.info("%s ready (pid %d) after %.1f s", child.name, child.proc.pid,
                         time.monotonic() - child.started_at)
                return
            if time.monotonic() > deadline:
                log.warning("%s is not ready after %.0f s: starting the next one anyway",
                            child.name, self.ready_timeout_s)
                return
            await asyncio.sleep(0.05)

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)

    async def _stop_all(self) -> None:
        live = [c.proc for c in self.children if c.proc is not None and c.proc.returncode is None]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)
        if not live:
            return
        done, pending = await asyncio.wait([asyncio.ensure_future(p.wait()) for p in live],
                                           timeout=self.grace_s)
        for p in live:
            if p.returncode is None:
                log.warning("pid %d did not stop within %.0f s: killing it", p.pid, self.grace_s)
                with contextlib.suppress(ProcessLookupError):
                    p.kill()
        if pending:
            await asyncio.wait(pending, timeout=5)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m bot.launch",
        description="Run the bot as P processes sharing N shards; every argument not listed "
                    "here goes to each `python -m bot` (e.g. --config F).")
    p.add_argument("--processes", type=int, required=True, metavar="P",
                   help="how many bot processes")
    p.add_argument("--shard-count", type=int, required=True, metavar="N",
                   help="shards in all (Discord: at most 2,500 servers per shard)")
    p.add_argument("--shard-ids", default=None, metavar="IDS",
                   help="the shards this launcher runs (this machine's share), e.g. 0,1,2,3 "
                        "or 0-3 (default: all)")
    p.add_argument("--ready-timeout", type=float, default=300.0, metavar="S",
                   help="start the next process after S seconds even if this one never "
                        "reports ready (default 300)")
    p.add_argument("--grace", type=float, default=20.0, metavar="S",
                   help="on SIGTERM, seconds the processes get to stop before they are killed")
    p.add_argument("--bot-module", default="bot", help=argparse.SUPPRESS)  # tests, wrappers
    p.add_argument("--identify-window", type=float, default=IDENTIFY_WINDOW_S,
                   help=argparse.SUPPRESS)  # tests: Discord's is 5 s
    return p


def main(argv: list[str] | None = None) -> int:
    args, bot_args = _parser().parse_known_args(argv)
    try:
        plan = slices(args.shard_count, args.processes, _ids(args.shard_ids))
    except LaunchError as e:
        return _fail(str(e))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: "
                                                   "%(message)s")

    def command(ids: list[int]) -> list[str]:
        return [sys.executable, "-m", args.bot_module, *bot_args,
                "--shard-count", str(args.shard_count), "--shard-ids", ",".join(map(str, ids))]

    async def run() -> int:
        launcher = Launcher(plan, command, ready_timeout_s=args.ready_timeout,
                            grace_s=args.grace, identify_window_s=args.identify_window)
        return await launcher.run()

    return asyncio.run(run())


def _ids(text: str | None) -> list[int] | None:
    """'0,1,5-7' -> [0, 1, 5, 6, 7]; None -> None (all)."""
    if text is None:
        return None
    out: list[int] = []
    try:
        for part in filter(None, (p.strip() for p in text.split(","))):
            lo, _, hi = part.partition("-")
            out.extend(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise LaunchError(f"--shard-ids {text!r}: give shard numbers and ranges, e.g. 0-3 "
                          "or 0,1,4") from None
    if not out:
        raise LaunchError(f"--shard-ids {text!r} names no shard")
    return out


def _fail(message: str) -> int:
    print(f"clipfind launch: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
