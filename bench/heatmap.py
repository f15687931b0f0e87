"""What a heatmap costs, and what it costs the searches running meanwhile.

    python -m bench.heatmap [--model builtin:tiny-shapes] [--repeats 30]

In one process, through the engine (`Engine.explain_image`, cache missed each time):

- cost: one heatmap of a one-term query (`red circle`) against one image encode of the
  same model through the same encoder (`Encoder.encode_pixels`, one picture), interleaved;
- interference: `!find`-like searches (`Engine.search`, word weights on, each query text
  new so the text cache never answers) alone, and while heatmaps are drawn back to back
  in the background; blocks of each alternate, so that drift on a shared machine falls
  on both.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from pathlib import Path

from bench.common import header, machine, median, ms, pct, ratio, table


async def run(model: str, repeats: int, workdir: Path) -> str:
    from index.build import build
    from index.engine import Engine
    from index.errors import Busy
    from index.sources import scan_folder
    from index.synthetic import CONCEPTS, write_gallery

    folder = workdir / "gallery"
    write_gallery(folder, 200, 31)
    engine = Engine.open(workdir / "collection", model=model, create=True)
    try:
        await build(engine.collection, engine.encoder, scan_folder(folder))
        ids = list(engine.collection.ids())
        pixels = await engine.encoder.preprocess([folder / "shape_000.png"])
        fresh = itertools.count()

        def new_query() -> str:
            i = next(fresh)
            return f"{CONCEPTS[i % len(CONCEPTS)]} number {i}"

        # warm both paths
        await engine.encoder.encode_pixels(pixels)
        await engine.explain_image(ids[0], "red circle")
        encode, heat = [], []
        for i in range(repeats):
            t0 = time.perf_counter()
            await engine.encoder.encode_pixels(pixels)
            encode.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await engine.explain_image(ids[(i + 1) % len(ids)], "red circle")
            heat.append(time.perf_counter() - t0)

        alone, loaded = [], []
        drawn = 0

        async def background(stop: asyncio.Event) -> None:
            nonlocal drawn
            for j in itertools.count():
                if stop.is_set():
                    return
                try:
                    await engine.explain_image(ids[j % len(ids)], new_query())
                    drawn += 1
                except Busy:
                    await asyncio.sleep(0)

        async def searches(out: list[float], n: int) -> None:
            for _ in range(n):
                t0 = time.perf_counter()
                await engine.search(new_query(), k=10)
                out.append(time.perf_counter() - t0)
                await asyncio.sleep(0.002)  # a member's pace: not back to back

        block = max(3, repeats // 5)
        for _ in range(5):
            await searches(alone, block)
            stop = asyncio.Event()
            task = asyncio.create_task(background(stop))
            await asyncio.sleep(0.01)
            await searches(loaded, block)
            stop.set()
            await task
    finally:
        engine.close()
    rows = [
        ["one image encode (encoder, 1 picture)", ms(median(encode)), ms(pct(encode, 90)), "1.00×"],
        ["one heatmap, one-term query (explain_image)", ms(median(heat)), ms(pct(heat, 90)),
         ratio(median(heat) / median(encode))],
        ["search alone", ms(median(alone)), ms(pct(alone, 90)), "1.00×"],
        [f"search while heatmaps are drawn ({drawn} drawn)", ms(median(loaded)), ms(pct(loaded, 90)),
         ratio(median(loaded) / median(alone))],
    ]
    return (f"model {model}, {repeats} repeats\n\n"
            + table(["what", "p50 ms", "p90 ms", "ratio (p50)"], rows)
            + "\n\ntargets: heatmap <= 3x an encode; search meanwhile <= 1.5x alone")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.heatmap", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="builtin:tiny-shapes")
    ap.add_argument("--repeats", type=int, default=30)
    a = ap.parse_args(argv)
    print(header("heatmap"))
    print(machine())
    with tempfile.TemporaryDirectory() as tmp:
        print(asyncio.run(run(a.model, a.repeats, Path(tmp))))


if __name__ == "__main__":
    main()
