"""python -m bot.launch: shard slices, identify order, restarts, and stopping by SIGTERM.

The processes are stand-ins (tests/bot/launchchild.py): the launcher does not care what
a shard process does, only when it is ready, when it exits, and that it stops."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bot.launch import Launcher, LaunchError, main, slices

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def child_env(tmp_path, **extra) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{HERE}",
            "CHILD_LOG": str(tmp_path / "children.log"), **extra}


def command(ids):
    return [sys.executable, "-m", "launchchild", "--shard-count", "4",
            "--shard-ids", ",".join(map(str, ids))]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def logged(tmp_path) -> list[tuple[int, str]]:
    f = tmp_path / "children.log"
    if not f.exists():
        return []
    return [(int(p), ids) for p, ids in (line.split() for line in f.read_text().splitlines())]


def test_slices_follow_the_identify_order_and_bad_counts_are_one_line():
    assert slices(4, 2) == [[0, 1], [2, 3]]
    assert slices(5, 2) == [[0, 1, 2], [3, 4]]
    assert slices(3, 3) == [[0], [1], [2]]
    assert slices(8, 2, [4, 5, 6, 7]) == [[4, 5], [6, 7]]  # this machine's share
    with pytest.raises(LaunchError, match="--processes must be between 1 and the number"):
        slices(2, 3)
    with pytest.raises(LaunchError, match="shards are 0 to 1"):
        slices(2, 1, [2])
    assert main(["--processes", "2", "--shard-count", "2", "--shard-ids", "0"]) == 2
    assert main(["--processes", "1", "--shard-count", "2", "--shard-ids", "x"]) == 2


async def until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)
    return value


async def test_starts_in_order_restarts_a_killed_process_and_stops_them_all(tmp_path):
    launcher = Launcher(slices(4, 2), command, identify_window_s=0.3, backoff_start_s=0.2,
                        grace_s=5, env=child_env(tmp_path), workdir=tmp_path)
    run = asyncio.create_task(launcher.run())
    try:
        await until(lambda: sum(e[1] == "ready" for e in launcher.events) == 2)
        # identify order: shards 0-1 are READY (plus the identify window) before 2-3 start
        kinds = [(k, i) for _, k, i in launcher.events]
        assert kinds == [("start", 0), ("ready", 0), ("start", 1), ("ready", 1)]
        (t_ready0,) = [t for t, k, i in launcher.events if (k, i) == ("ready", 0)]
        (t_start1,) = [t for t, k, i in launcher.events if (k, i) == ("start", 1)]
        assert t_start1 - t_ready0 >= 0.3
        assert [ids for _, ids in logged(tmp_path)] == ["0,1", "2,3"]

        first = launcher.children[0].pids[0]
        os.kill(first, signal.SIGKILL)  # a crash
        await until(lambda: len(launcher.children[0].pids) == 2 and launcher.children[0].ever_ready
                    and sum(e[1] == "ready" for e in launcher.events) == 3)
        assert not alive(first) and alive(launcher.children[0].pids[1])
        assert [ids for _, ids in logged(tmp_path)] == ["0,1", "2,3", "0,1"]  # same shards
        assert launcher.children[1].pids == [logged(tmp_path)[1][0]]  # the other one untouched
    finally:
        launcher.stop()
        assert await asyncio.wait_for(run, 15) == 0
    pids = [p for c in launcher.children for p in c.pids]
    assert len(pids) == 3 and not any(alive(p) for p in pids)


async def test_a_process_that_cannot_start_stops_everything_with_its_status(tmp_path):
    launcher = Launcher(slices(2, 2), command, identify_window_s=0, env=child_env(
        tmp_path, CHILD_EXIT="2"), workdir=tmp_path)
    assert await asyncio.wait_for(launcher.run(), 20) == 2
    assert launcher.children[0].starts == 1 and launcher.children[1].starts == 0


def test_sigterm_stops_every_process_and_kills_the_stubborn(tmp_path):
    env = child_env(tmp_path, CHILD_IGNORE_TERM="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.launch", "--processes", "2", "--shard-count", "2",
         "--grace", "0.5", "--bot-module", "launchchild", "--identify-window", "0.2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(logged(tmp_path)) < 2:  # both started (the second after the first's window)
            assert time.monotonic() < deadline and proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        pids = [p for p, _ in logged(tmp_path)]
        assert all(alive(p) for p in pids)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert not any(alive(p) for p in pids)
    assert "did not stop within" in err  # they ignored SIGTERM: killed after the grace time
