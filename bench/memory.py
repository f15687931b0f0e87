"""Memory: peak RSS of the bot process, idle, with a 1M-item collection loaded.

    python -m bench.memory                       # 1M items, ViT-B-32 (random weights), 512-d
    python -m bench.memory --n 200000 --keep /tmp/coll1m   # keep the collection for reruns
    python -m bench.memory --at-rest             # only the memory-at-rest rows (issue 13)

Builds a collection of --n items through Collection.add (vectors from bench/vectors.py,
`auto` index saved to vectors.faiss), then starts fresh processes and reads their peak
(VmHWM) and current (VmRSS) resident memory from /proc once they are idle:

- the bot: `python -m bot --console --config cfg.toml` on that collection, read when it
  has printed that the collection is open and sits waiting for a command (the console
  transport: the same process as the Discord bot minus the gateway connection);
- the bot on an empty collection of the same model (the model and runtime alone);
- memory at rest: a bare `import torch` process, and the bot with the bundled model on an
  empty collection (goal: at most 150 MB over the bare torch process);
- baseline: what public CLIP search demos hold: the model plus the N×512 feature matrix
  in float16 (np.load of a features .npy), and the same in float32.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import REPO, header, machine, table

_DEMO = """
import sys, time, numpy as np, open_clip, torch
torch.set_num_threads(2)
model, _, pre = open_clip.create_model_and_transforms(sys.argv[2], pretrained=None)
model.eval()
feats = np.load(sys.argv[1], mmap_mode=None)
if sys.argv[3] == "float32":
    feats = feats.astype(np.float32)
print("ready", feats.shape, flush=True)
sys.stdin.readline()
"""


_BARE_TORCH = """
import sys, torch
print("ready", flush=True)
sys.stdin.readline()
"""

TINY_GOAL_MB = 150  # issue 13: the idle bot with the bundled model over a bare `import torch`


def status(pid: int) -> dict[str, float]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, val = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                out[key] = int(val.split()[0]) / 1024.0  # MiB
    return out


def measure(cmd: list[str], ready: str, env: dict | None = None, settle: float = 3.0,
            timeout: float = 600.0) -> tuple[dict[str, float], float, str]:
    """Start cmd, wait for a stdout line containing `ready`, settle, read memory, stop it."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    try:
        while True:
            line = proc.stdout.readline()
            if not line:
                raise RuntimeError(f"{cmd[:4]} ended before '{ready}': {''.join(seen)[-500:]}"
                                   f"{proc.stderr.read()[-1000:]}")
            seen.append(line)
            if ready in line:
                break
            if time.perf_counter() - t0 > timeout:
                raise TimeoutError(f"{cmd[:4]}: no '{ready}' in {timeout} s")
        took = time.perf_counter() - t0
        time.sleep(settle)
        mem = status(proc.pid)
    finally:
        try:
            proc.stdin.write("quit\n")
            proc.stdin.close()
            proc.wait(timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
    return mem, took, line.strip()


def build(path: Path, model: str, dim: int, n: int) -> float:
    from bench.vectors import Space
    from index.store import Collection, NewItem

    t0 = time.perf_counter()
    space = Space(dim, seed=0)
    with Collection.create(path, model, dim) as c:
        for s in range(0, n, 20_000):
            m = min(20_000, n - s)
            c.add([NewItem(source=f"/photos/{i:07d}.jpg", title=f"photo {i}")
                   for i in range(s, s + m)], space.items(m, seed=1000 + s))
        c.save()
    return time.perf_counter() - t0


def config(folder: Path, collection: Path, threads: int) -> Path:
    cfg = folder / f"{collection.name}.toml"
    cfg.write_text(f'collection = "{collection}"\ndevice = "cpu"\nthreads = {threads}\n')
    return cfg


def at_rest(threads: int, argv: list[str] | None) -> int:
    """The idle bot with the bundled model against a bare `import torch` process."""
    from index.models import load_model
    from index.modelspec import DEFAULT_MODEL
    from index.store import Collection

    print(header("Memory at rest: the bot with the bundled model against bare torch", argv))
    print(machine() + "\n")
    work = Path(tempfile.mkdtemp(prefix="clipfind-bench-mem-work-"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        mem, took, _ = measure([sys.executable, "-c", _BARE_TORCH], "ready", env=env)
        bare = mem["VmRSS"]
        rows = [["bare `import torch` process", f"{mem['VmHWM']:,.0f}", f"{bare:,.0f}",
                 f"{took:.1f}"]]
        tiny = work / "tiny"
        Collection.create(tiny, DEFAULT_MODEL, load_model(DEFAULT_MODEL, "cpu").dim).close()
        bot = [sys.executable, "-m", "bot", "--console", "--out", str(work / "out"), "--config",
               str(config(work, tiny, threads))]
        mem, took, _ = measure(bot, "collection ", env=env)
        rows.append([f"bot, bundled model ({DEFAULT_MODEL}), empty collection",
                     f"{mem['VmHWM']:,.0f}", f"{mem['VmRSS']:,.0f}", f"{took:.1f}"])
        print(table(("process", "peak RSS MiB (VmHWM)", "idle RSS MiB (VmRSS)", "start-up s"), rows))
        extra = mem["VmRSS"] - bare
        verdict = "met" if extra <= TINY_GOAL_MB * 1e6 / 2**20 else "NOT met"
        print(f"\nThe idle bot with the bundled model holds {extra:,.0f} MiB more than a bare "
              f"`import torch` process (goal: at most {TINY_GOAL_MB} MB more): {verdict}.\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--model", default="ViT-B-32:random")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None,
                    help="build the collection here (or reuse it) and keep it")
    ap.add_argument("--at-rest", action="store_true",
                    help="only the bare `import torch` and bundled-model rows")
    args = ap.parse_args(argv)
    if args.at_rest:
        return at_rest(args.threads, argv)

    from index.models import load_model
    from index.modelspec import DEFAULT_MODEL
    from index.store import Collection

    print(header("Memory: the bot process idle with a large collection", argv))
    print(machine() + "\n")
    root = args.keep or Path(tempfile.mkdtemp(prefix="clipfind-bench-mem-"))
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="clipfind-bench-mem-work-"))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    try:
        big, empty = root / "collection", work / "empty"
        loaded = load_model(args.model, "cpu")
        name, dim = loaded.name, loaded.dim
        del loaded
        built = None
        if not (big / "manifest.json").exists():
            built = build(big, name, dim, args.n)
        with Collection.open(big) as c:
            n, desc = len(c), c.index_description
        Collection.create(empty, name, dim).close()
        faiss_mb = (big / "vectors.faiss").stat().st_size / 2**20
        sqlite_mb = sum(p.stat().st_size for p in big.glob("meta.sqlite*")) / 2**20

        rows = []
        bot = [sys.executable, "-m", "bot", "--console", "--out", str(work / "out"), "--config"]
        # memory at rest: the bot with the bundled model against a bare `import torch`
        mem, took, _ = measure([sys.executable, "-c", _BARE_TORCH], "ready", env=env)
        bare = mem["VmRSS"]
        rows.append(["bare `import torch` process", f"{mem['VmHWM']:,.0f}", f"{bare:,.0f}",
                     f"{took:.1f}"])
        tiny = work / "tiny"
        Collection.create(tiny, DEFAULT_MODEL, load_model(DEFAULT_MODEL, "cpu").dim).close()
        mem, took, _ = measure(bot + [str(config(work, tiny, args.threads))], "collection ", env=env)
        tiny_idle = mem["VmRSS"]
        rows.append([f"bot, bundled model ({DEFAULT_MODEL}), empty collection",
                     f"{mem['VmHWM']:,.0f}", f"{tiny_idle:,.0f}", f"{took:.1f}"])
        for label, coll in (("bot, empty collection (model + runtime)", empty),
                            (f"**bot, {n:,}-item collection**", big)):
            mem, took, _ = measure(bot + [str(config(work, coll, args.threads))], "collection ",
                                   env=env)
            rows.append([label, f"{mem['VmHWM']:,.0f}", f"{mem['VmRSS']:,.0f}", f"{took:.1f}"])
        feats = work / "features.npy"
        with Collection.open(big) as c:  # the same vectors, as a demo's features file
            np.save(feats, c.vectors().astype(np.float16))
        for dtype in ("float16", "float32"):
            mem, took, _ = measure([sys.executable, "-c", _DEMO, str(feats), args.model.split(":")[0],
                                    dtype], "ready", env=env)
            rows.append([f"baseline: model + {n:,}×{dim} features in {dtype} (numpy demo)",
                         f"{mem['VmHWM']:,.0f}", f"{mem['VmRSS']:,.0f}", f"{took:.1f}"])
        base_idle = float(rows[2][2].replace(",", ""))
        big_idle = float(rows[3][2].replace(",", ""))
        print(f"{n:,} items, {name} ({dim}-d), index {desc}; vectors.faiss {faiss_mb:,.0f} MiB, "
              f"meta.sqlite {sqlite_mb:,.0f} MiB on disk (the SQLite truth is read on demand, not "
              f"held)." + (f" Collection built in {built:.0f} s." if built else "") + "\n")
        print(table(("process", "peak RSS MiB (VmHWM)", "idle RSS MiB (VmRSS)", "start-up s"), rows))
        print(f"\nThe collection adds {big_idle - base_idle:,.0f} MiB to the idle bot: "
              f"{(big_idle - base_idle) * 2**20 / n:,.0f} bytes per item "
              f"({(big_idle - base_idle) / 1024 * 1e6 / n:.2f} GiB per million).\n")
        verdict = "met" if tiny_idle - bare <= TINY_GOAL_MB else "NOT met"
        print(f"The idle bot with the bundled model holds {tiny_idle - bare:,.0f} MiB more than a "
              f"bare `import torch` process (goal: at most {TINY_GOAL_MB} MB more): {verdict}.\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
