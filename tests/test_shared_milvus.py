"""Two processes, one store: a `milvus-lite server` on loopback stands in for a Milvus cluster.

This process adds gallery A to the shared collection (through MilvusStore); the
console bot (`python -m bot --console`, store = "milvus") is started on it; a CLI build
(`python -m index build --store milvus`) adds gallery B while the console keeps answering;
the console then lists B's images, and the build reports A's items in its total; a third
process (`python -m index remove`) removes items, and both the console and this process
stop seeing them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index.store import NewItem
from index.store.milvus import MilvusStore
from index.synthetic import write_gallery

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
ENV.pop("DISCORD_TOKEN", None)
MODEL, DIM = "builtin:tiny-shapes", 128  # the bundled model and its embedding size
END = "hello there"  # an unknown command: its error line marks the end of a batch of replies


def cli(*args) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "index", *map(str, args)], capture_output=True,
                       text=True, env=ENV, timeout=600)  # a safety net: a busy machine is slow
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return p


class ConsoleBot:
    """`python -m bot --console` fed line by line."""

    def __init__(self, cwd: Path, config: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot", "--console", "--config", str(config), "--out", "out"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=cwd, env=ENV)

    def read_until(self, marker: str, timeout: float = 600) -> list[str]:
        lines, deadline = [], time.time() + timeout
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise AssertionError(f"console ended: {lines} {self.proc.stderr.read()}")
            lines.append(line.rstrip("\n"))
            if marker in line:
                return lines
        raise AssertionError(f"no {marker!r} from the console: {lines}")

    def ask(self, *commands: str) -> list[str]:
        self.proc.stdin.write("\n".join([*commands, END]) + "\n")
        self.proc.stdin.flush()
        return self.read_until(f"unknown command '{END}'")

    def sources(self, pages: int) -> set[str]:
        """Every image file name the console lists for a search and its next pages."""
        out = self.ask("!find red circle", *["next"] * (pages - 1))
        names = {m.group(1) for ln in out if (m := re.search(r"[\[·/]\s?([^/\s\[]+\.png)\]$", ln))}
        for ln in out:  # and the near-copies listed under a result (index/nearcopies.py)
            if "near-cop" in ln:
                names.update(re.findall(r"(\S+\.png)", ln.split(":", 1)[1]))
        return names

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.mark.slow  # four Python processes with torch: ~70 s on the shared 2-core machine
def test_a_cli_build_a_console_bot_and_a_remove_share_one_milvus(tmp_path, milvus_server):
    uri = milvus_server
    write_gallery(tmp_path / "a", 12, seed=1)
    write_gallery(tmp_path / "b", 12, seed=2)
    for p in (tmp_path / "b").glob("*.png"):  # the console shows file names: make b's apart
        p.rename(p.with_name("b" + p.name))
    captions = tmp_path / "b" / "captions.csv"
    captions.write_text(captions.read_text().replace("shape_", "bshape_"))
    a_files = {p.name for p in (tmp_path / "a").glob("*.png")}
    b_files = {p.name for p in (tmp_path / "b").glob("*.png")}
    collection = tmp_path / "shared"

    # writer 1: this process, through the store (random vectors: no model to load here)
    with MilvusStore.create(uri, "shared", MODEL, DIM) as store:
        vecs = np.random.default_rng(0).standard_normal((12, DIM))
        store.add([NewItem(source=str(tmp_path / "a" / name)) for name in sorted(a_files)], vecs)

    cfg = tmp_path / "config.toml"
    cfg.write_text(f'collection = "{collection}"\nstore = "milvus"\nmilvus_uri = "{uri}"\n'
                   "results_per_page = 10\n")
    bot = ConsoleBot(tmp_path, cfg)
    try:
        assert "12 images" in bot.read_until("images, model")[-1]
        assert bot.sources(pages=3) == a_files

        # writer 2: a CLI build in another process, while the console is up
        built = cli("build", "--store", "milvus", "--milvus-uri", uri, "--index", collection,
                    tmp_path / "b")
        assert "added 12" in built.stdout and "24 items in the collection" in built.stdout
        assert bot.sources(pages=3) == a_files | b_files  # the console sees the build's items

        # a third process removes a's items; both the console and this process see it
        with MilvusStore.open(uri, "shared") as store:
            ids = [int(i) for i in store.ids()]
            victims = [it for it in store.get(ids) if Path(it.source).name in a_files][:5]
        gone = [it.id for it in victims]
        removed = cli("remove", "--store", "milvus", "--milvus-uri", uri, "--index", collection,
                      *gone)
        assert "removed 5 of 5" in removed.stdout
        with MilvusStore.open(uri, "shared") as store:
            left = {Path(it.source).name for it in store.get([int(i) for i in store.ids()])}
        assert left == (a_files | b_files) - {Path(it.source).name for it in victims}
        assert bot.sources(pages=3) == left
    finally:
        bot.close()
