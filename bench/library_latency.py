"""A search's latency while a server library backfills 1000 images, against idle.

    python -m bench.library_latency                      # the bundled model, CPU
    python -m bench.library_latency --model ViT-B-32:random --images 300 --device cuda

One encoder (as in the bot: the main engine's), one server library (a namespace with
--seed-items pictures already in it). First --searches searches one after another on an
idle encoder (idle latency); then the backfill of --images new pictures runs the way
bot/library.py runs it (chunks of at most CHUNK_IMAGES pictures, as many as the model
encodes in about PASS_BUDGET_S, each one `Engine.add_images(priority=BULK)`, one chunk
after another) while a member searches every
--gap-ms milliseconds until it is over. Every search is `Engine.search(k=5)` with word
weights, a query text never seen before (so the text cache does not help). Target: the
median search during the backfill takes at most 2x the idle median.

Self-contained (no bench.common) so it runs from a bare checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bot.library import CHUNK_IMAGES, PASS_BUDGET_S, ChunkSizer  # noqa: E402
from index.encoder import BULK, Encoder  # noqa: E402
from index.models import load_model  # noqa: E402
from index.namespaces import Namespaces  # noqa: E402
from index.store import NewItem  # noqa: E402
from index.synthetic import CONCEPTS, random_scene, render  # noqa: E402


def pct(xs, q):
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def ms(x: float) -> str:
    return f"{x * 1000:.1f}"


def pictures(n: int, seed: int, size: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        render(random_scene(rng), size).save(buf, "PNG")
        out.append(buf.getvalue())
    return out


def items(guild: int, start: int, n: int) -> list[NewItem]:
    return [NewItem(source=f"discord:{guild}/1/{i}/{i}", title=f"{i}.png", guild_id=guild,
                    channel_id=1, message_id=i, attachment_id=i, author_id=7, posted_at=1.7e9)
            for i in range(start, start + n)]


class Queries:
    """Texts never asked before: a concept, a second concept and a counter."""

    def __init__(self, seed: int):
        self.rng = random.Random(seed)
        self.n = 0

    def __call__(self) -> str:
        self.n += 1
        a, b = self.rng.sample(CONCEPTS, 2)
        return f"{a} next to a {b} number {self.n}"


async def run(args) -> str:
    loaded = load_model(args.model, args.device)
    enc = Encoder(loaded, threads=args.threads or None)
    assert enc.wait_ready(120)
    tmp = Path(tempfile.mkdtemp(prefix="clipfind-bench-"))
    spaces = Namespaces(tmp / "libs", enc)
    lib = spaces.get("1", create=True)
    size = 224 if "ViT" in args.model else 128
    seed_pics = pictures(args.seed_items, 1, size)
    for i in range(0, len(seed_pics), 32):
        await lib.add_images(items(1, i, len(seed_pics[i:i + 32])), seed_pics[i:i + 32])
    new_pics = pictures(args.images, 2, size)
    query = Queries(3)

    async def one_search() -> float:
        t0 = time.perf_counter()
        res = await lib.search(query(), k=5)
        assert res.hits
        return time.perf_counter() - t0

    for _ in range(3):  # warm-up
        await one_search()
    idle = []
    for _ in range(args.searches):
        idle.append(await one_search())
        await asyncio.sleep(args.gap_ms / 1000)

    busy: list[float] = []
    done = asyncio.Event()
    sizer, sizes = ChunkSizer(), []

    async def backfill() -> float:
        t0 = time.perf_counter()
        base, i = args.seed_items, 0
        while i < len(new_pics):
            part = new_pics[i:i + sizer.size()]
            t1 = time.perf_counter()
            await lib.add_images(items(1, base + i, len(part)), part, priority=BULK)
            sizer.record(len(part), time.perf_counter() - t1)
            sizes.append(len(part))
            i += len(part)
        done.set()
        return time.perf_counter() - t0

    async def searcher() -> None:
        await asyncio.sleep(0.05)
        while not done.is_set():
            busy.append(await one_search())
            await asyncio.sleep(args.gap_ms / 1000)

    seconds, _ = await asyncio.gather(backfill(), searcher())
    stored = len(lib.collection)
    spaces.close()
    enc.close()

    rows = [("idle", idle), (f"during a {args.images}-image backfill", busy)]
    lines = ["| searches | n | median ms | p90 ms | max ms |", "|---|---:|---:|---:|---:|"]
    for name, xs in rows:
        lines.append(f"| {name} | {len(xs)} | {ms(statistics.median(xs))} | {ms(pct(xs, 90))} "
                     f"| {ms(max(xs))} |")
    ratio = statistics.median(busy) / statistics.median(idle)
    p90 = pct(busy, 90) / pct(idle, 90)
    verdict = "meets" if ratio <= 2.0 else "misses"
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    text = "\n".join([
        "## Library: search latency during a backfill (`bench/library_latency.py`)",
        "",
        f"`python -m bench.library_latency {' '.join(sys.argv[1:])}` — {time.strftime('%Y-%m-%d %H:%M')}",
        "",
        f"Model `{loaded.name}` on {loaded.device} ({torch_threads()} torch threads), "
        f"{os.cpu_count()} logical CPUs ({platform.processor() or platform.machine()}), "
        f"load average at the end {load}. Library of {args.seed_items} pictures growing to "
        f"{stored}; backfill chunks of up to {CHUNK_IMAGES} pictures sized to ~{PASS_BUDGET_S * 1000:g} ms of "
        f"model time (median {statistics.median(sizes):g} here) at priority BULK; a search "
        f"(k=5, word weights, a new text each time) every {args.gap_ms:g} ms.",
        "",
        *lines,
        "",
        f"Median during / idle: **{ratio:.2f}×** (p90: {p90:.2f}×) — {verdict} the ≤ 2× target. "
        f"Backfill: {args.images} pictures in {seconds:.1f} s ({args.images / seconds:.0f} per s) "
        "with the searches going on.",
        "",
    ])
    return text


def torch_threads() -> int:
    import torch
    return torch.get_num_threads()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:tiny-shapes")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--seed-items", type=int, default=200)
    p.add_argument("--searches", type=int, default=40)
    p.add_argument("--gap-ms", type=float, default=50.0)
    p.add_argument("--out", type=Path, help="append the table to this markdown file")
    args = p.parse_args(argv)
    text = asyncio.run(run(args))
    print(text)
    if args.out:
        with open(args.out, "a", encoding="utf-8") as f:
            f.write("\n" + text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
