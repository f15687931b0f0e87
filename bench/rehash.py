"""What making the missing perceptual hashes costs against building the collection again
(the other way to get them).

    python -m bench.rehash [--count 300] [--rounds 3]

Galleries (bench.encoder.make_folder): 128-px shapes PNGs and photo-like 640×480 JPEGs.
Each round builds a collection with the bundled model, forgets its hashes (as a collection
from before them), and times `rehash` against a build of the same folder into a fresh
collection, in alternating order, so both see the same load. Prints the median seconds
of each and their ratio (bench/RESULTS.md, "Rehash against a rebuild").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import header, machine, median, ratio, table  # noqa: E402


async def timed_build(folder: Path, coll_dir: Path, encoder) -> float:
    from index.build import build
    from index.sources import scan_folder
    from index.store import Collection
    coll = Collection.create(coll_dir, encoder.loaded.name, encoder.loaded.dim)
    try:
        records = scan_folder(folder)
        t0 = time.perf_counter()
        await build(coll, encoder, records)
        return time.perf_counter() - t0
    finally:
        coll.close()


async def timed_rehash(coll_dir: Path, workers: int) -> tuple[float, int]:
    import index.rehash
    from index.rehash import rehash
    from index.store import Collection
    index.rehash.WORKERS = workers
    db = sqlite3.connect(coll_dir / "meta.sqlite")
    db.execute("UPDATE items SET phash = NULL")  # as stored before the hash
    db.commit()
    db.close()
    coll = Collection.open(coll_dir)
    try:
        t0 = time.perf_counter()
        report = await rehash(coll)
        return time.perf_counter() - t0, report.hashed
    finally:
        coll.close()


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=300, help="pictures per gallery")
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args(argv)
    from bench.encoder import make_folder
    from index.encoder import Encoder
    from index.models import load_model
    print(header("Rehash against a rebuild", argv))
    print(machine())
    encoder = Encoder(load_model("builtin:tiny-shapes", device="cpu"))
    encoder.wait_ready(300)
    import index.rehash
    workers = index.rehash.WORKERS
    rows, loads = [], [os.getloadavg()[0]]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, photo in (("shapes 128-px PNG", False), ("photo-like 640×480 JPEG", True)):
            folder = tmp / f"src-{photo}"
            make_folder(folder, a.count, photo=photo, seed=5)
            old = tmp / f"old-{photo}"
            await timed_build(folder, old, encoder)
            times: dict[str, list[float]] = {"build": [], "one": [], "pool": []}
            hashed = 0
            for r in range(a.rounds):
                order = ["pool", "one", "build"]
                for way in order[r % 3:] + order[:r % 3]:  # each way first in turn
                    if way == "build":
                        times[way].append(await timed_build(folder, tmp / f"c-{photo}-{r}",
                                                            encoder))
                    else:
                        s, hashed = await timed_rehash(old, workers if way == "pool" else 1)
                        times[way].append(s)
                    loads.append(os.getloadavg()[0])
            b, one, pool = (median(times[k]) for k in ("build", "one", "pool"))
            rows.append((name, a.count, hashed, f"{pool:.2f}", f"{one:.2f}", f"{b:.2f}",
                         ratio(pool / b), ratio(one / pool), f"{a.count / pool:,.0f}"))
    encoder.close()
    print(table(("gallery", "items", "hashed", f"rehash s ({workers} threads)",
                 "rehash s (1 thread)", "rebuild s", "rehash / rebuild",
                 "1 thread / pool", "rehash items/s"), rows))
    print(f"\nmedian of {a.rounds} rounds, alternating; 1-min load average during the runs: "
          f"{min(loads):.2f}–{max(loads):.2f}")


if __name__ == "__main__":
    asyncio.run(main())
