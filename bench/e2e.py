"""End to end: `!find` with two text terms through the bot's console transport.

    python -m bench.e2e                          # 100k items, ViT-B-32 (random weights), 512-d
    python -m bench.e2e --n 20000 --model builtin:tiny-shapes --queries 40

The collection is a real one (SQLite + FAISS, `auto` index) holding --n items whose
vectors come from bench/vectors.py (the model's dimension), added through
Collection.add; each item's source is a 640x480 JPEG on disk (a symlink into a pool of
100 pictures) so that rendering reads and shrinks real files, as the bot does.

Each command is one line handed to `bot.console.Console.handle` (the console transport
of the bot: `bot.core.Core.find`, the engine, `bot.render`, the reply printed and its
pictures written), timed from the line in to the reply out. Every command uses two text
terms never asked before (`!find <a>*1 <b>*2`), so the text cache never answers.
The engine's own timings split each command: encoding the terms, searching the index
(plus fetching the items from SQLite), the word-attention read-out; what is left is the
bot: parsing, cards and thumbnails, the word-weights picture, the reply.

Baseline in the same run: a straightforward pipeline without the engine: open_clip's
stock `encode_text` per term, numpy float16 brute force with a full argsort (as public
CLIP demos do), the same items fetched and the same cards rendered (no attention).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import header, machine, median, ms, pct, ratio, table

WORDS_A = ("red", "blue", "old", "tiny", "bright", "wooden", "frozen", "golden", "broken", "misty")
WORDS_B = ("car", "lake", "house", "flower", "bridge", "dog", "tower", "boat", "forest", "street",
           "cake", "train")
WORDS_C = ("at night", "in the rain", "from above", "in winter", "at sunset", "on a beach")


def commands(n: int) -> list[str]:
    """n distinct `!find A*1 B*2` lines, no text repeated across lines."""
    out, seen = [], set()
    i = 0
    while len(out) < n:
        a = f"{WORDS_A[i % 10]} {WORDS_B[(i // 10) % 12]}"
        b = f"{WORDS_B[(i * 7 + 3) % 12]} {WORDS_C[(i // 3) % 6]} {i}"
        i += 1
        if a in seen or b in seen:
            a = f"{a} {i}"
        seen.update((a, b))
        out.append(f"!find {a}*1 {b}*2")
    return out


def make_collection(path: Path, model: str, dim: int, n: int, pool: Path) -> float:
    """Items whose sources are symlinks to the pool's JPEGs; returns seconds to build."""
    from bench.encoder import make_folder
    from bench.vectors import Space
    from index.store import Collection, NewItem

    make_folder(pool, 100, photo=True)
    pictures = sorted(pool.glob("*.jpg"))
    links = path.parent / "items"
    links.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    space = Space(dim, seed=0)
    with Collection.create(path, model, dim) as c:
        for s in range(0, n, 10_000):
            m = min(10_000, n - s)
            items = []
            for i in range(s, s + m):
                link = links / f"item_{i:07d}.jpg"
                if not link.exists():
                    os.symlink(pictures[i % len(pictures)], link)
                items.append(NewItem(source=str(link), title=f"item {i}"))
            c.add(items, space.items(m, seed=1000 + s))
        c.save()
    return time.perf_counter() - t0


async def run_engine(engine, lines: list[str], out_dir: Path) -> dict:
    from bot.config import Settings
    from bot.console import Console

    settings = Settings(collection=engine.collection.path, threads=0)
    sink = io.StringIO()
    console = Console(settings, engine, out_dir, stdin=io.StringIO(), stdout=sink)
    timings: list[dict] = []
    search = engine.search

    async def recording_search(*a, **kw):
        result = await search(*a, **kw)
        timings.append(dict(result.timings))
        return result

    engine.search = recording_search
    totals = []
    try:
        await console.handle(lines[0])  # warm: first thumbnails, fonts, SQLite pages
        timings.clear()
        for line in lines[1:]:
            t0 = time.perf_counter()
            await console.handle(line)
            totals.append(time.perf_counter() - t0)
    finally:
        engine.search = search
        await console.core.close()
    text = sink.getvalue()
    if "error:" in text:
        raise RuntimeError("a command failed: " + text[text.index("error:"):][:200])
    return {"total": totals, "parts": timings}


def run_naive(engine, lines: list[str], X16: np.ndarray, ids: np.ndarray) -> dict:
    """The same commands without the engine: stock encode_text, float16 argsort, cards."""

    from bot.render import make_cards
    from index.engine import Hit
    from index.query import parse_query

    m = engine.encoder.loaded
    totals, parts = [], []
    for line in lines[1:]:
        t0 = time.perf_counter()
        query = parse_query(line.removeprefix("!find").strip(), 0)
        # on the encoder's model thread, as bench.encoder does (one OpenMP team in the process)
        vecs = asyncio.run(engine.encoder.call(lambda query=query: [
            m.model.encode_text(m.tokenizer([t.text]), normalize=True)[0].numpy()
            for t in query.terms]))
        q = sum(t.weight * v for t, v in zip(query.terms, vecs, strict=True))
        q = q / np.linalg.norm(q)
        t1 = time.perf_counter()
        scores = X16 @ q.astype(np.float16)
        order = np.argsort(-scores)[:5]
        items = engine.collection.get(ids[order].tolist())
        t2 = time.perf_counter()
        make_cards([Hit(r + 1, float(scores[j]), it) for r, (j, it) in enumerate(zip(order, items, strict=True))])
        t3 = time.perf_counter()
        totals.append(t3 - t0)
        parts.append({"encode": t1 - t0, "search": t2 - t1, "render": t3 - t2})
    return {"total": totals, "parts": parts}


def summarise(name: str, run: dict, baseline: float | None) -> list[str]:
    tot = run["total"]
    parts = run["parts"]
    enc = [p.get("encode", 0.0) for p in parts]
    sea = [p.get("search", 0.0) for p in parts]
    exp = [p.get("explain", 0.0) for p in parts]
    if "render" in parts[0]:
        rest = [p["render"] for p in parts]
    else:
        rest = [t - e - s - x for t, e, s, x in zip(tot, enc, sea, exp, strict=True)]
    whole = sum(tot)

    def share(xs: list[float]) -> str:
        return f"{ms(median(xs))} ({100 * sum(xs) / whole:.0f}%)"

    return [name, ms(median(tot)), ms(pct(tot, 99)), share(enc), share(sea),
            share(exp) if any(exp) else "–", share(rest),
            ratio(baseline / median(tot)) if baseline else "1.00×"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--model", default="ViT-B-32:random")
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None,
                    help="build the collection here and keep it for later runs")
    args = ap.parse_args(argv)

    import torch

    from index.engine import Engine, EngineOptions
    from index.models import load_model

    print(header("End to end: !find through the bot's console transport", argv))
    print(machine() + "\n")
    torch.set_num_threads(args.threads)
    root = args.keep or Path(tempfile.mkdtemp(prefix="clipfind-bench-e2e-"))
    try:
        path = root / "collection"
        built = None
        if not (path / "manifest.json").exists():
            loaded = load_model(args.model, "cpu")
            built = make_collection(path, loaded.name, loaded.dim, args.n, root / "pool")
            del loaded
        engine = Engine.open(path, options=EngineOptions(device="cpu", threads=args.threads))
        engine.encoder.wait_ready(300)
        lines = commands(args.queries + 1)
        try:
            desc = engine.collection.index_description
            n = len(engine.collection)
            eng = asyncio.run(run_engine(engine, lines, root / "out"))
            ids = engine.collection.ids()
            X16 = engine.collection.vectors().astype(np.float16)
            naive = run_naive(engine, lines, X16, ids)
        finally:
            engine.close()
        base = median(naive["total"])
        rows = [summarise("straightforward: stock encode_text ×2, numpy f16 argsort, cards",
                          naive, None),
                summarise("**engine: `!find` via bot.console (Core.find → Engine.search → render)**",
                          eng, base)]
        print(f"{n:,} items ({engine.encoder.loaded.name}, {engine.encoder.loaded.dim}-d, index "
              f"{desc}); {len(eng['total'])} commands `!find A*1 B*2`, each text new; "
              f"{args.threads} torch threads; 5 results per page (the bot's default)."
              + (f" Collection built in {built:.0f} s." if built else "") + "\n")
        print(table(("path", "p50 ms", "p99 ms", "encode p50 (share)", "search p50 (share)",
                     "attention p50 (share)", "render + bot p50 (share)", "speed-up (p50)"), rows))
        print("\nShares are of the summed time of all commands. The baseline has no word "
              "attention; the engine row includes it.\n")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
