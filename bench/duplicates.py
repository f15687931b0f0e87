"""Indexing a folder where every picture appears three times: duplicates dropped as soon
as their bytes are read, against dropped after decoding and encoding (the store step).

    python bench/duplicates.py [--count 150] [--rounds 3] [--busy 0]

Galleries (bench.encoder.make_folder): 128-px shapes PNGs, and photo-like 640×480 JPEGs
(decoding costs more). Each picture is written three times under other names (the same
bytes: a repost). Each round builds both ways into fresh collections with one encoder of
the bundled model, in alternating order, so both see the same load. "store step" is the
way before: the early check switched off (index.build._repeat answering no), so every
copy is decoded, hashed and encoded, and dropped after that by the rule the store step
had (`store_step_rule` here: a content hash seen earlier in the run). Prints the median
seconds of each way, their ratio, and how many pictures the model encoded
(bench/RESULTS.md, "Duplicates dropped before decoding").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BusyHost, header, machine, median, ratio, table  # noqa: E402


def tripled(src: Path, dst: Path) -> int:
    """Each picture of `src` three times in `dst` (the same bytes under three names)."""
    dst.mkdir(parents=True)
    for p in sorted(src.iterdir()):
        for k in range(3):
            shutil.copyfile(p, dst / f"{p.stem}_{k}{p.suffix}")
    return len(list(dst.iterdir()))


def store_step_rule(real_store):
    """index.build._store as it was: the copies reach it encoded, and it drops those whose
    content hash came earlier in the run (a fresh collection holds nothing else)."""
    seen: set = set()

    def store(collection, prepared, vectors, report):
        keep = []
        for i, (j, h) in enumerate(zip(prepared.jobs, prepared.hashes, strict=True)):
            if (j.item.guild_id, h) in seen:
                prepared.repeats.append((j, h))
            else:
                seen.add((j.item.guild_id, h))
                keep.append(i)
        prepared.jobs = [prepared.jobs[i] for i in keep]
        prepared.hashes = [prepared.hashes[i] for i in keep]
        prepared.phashes = [prepared.phashes[i] for i in keep]
        return real_store(collection, prepared, vectors[keep], report)

    return store


async def one_build(folder: Path, coll_dir: Path, encoder, early: bool) -> tuple[float, int, int]:
    """Seconds to build `folder` into a new collection, pictures encoded, items stored."""
    import index.build as build_mod
    from index.sources import scan_folder
    from index.store import Collection
    coll = Collection.create(coll_dir, encoder.loaded.name, encoder.loaded.dim)
    encoded = 0
    real_encode, real_repeat, real_store = encoder.encode_pixels, build_mod._repeat, build_mod._store

    async def counting(pixels, **kw):
        nonlocal encoded
        encoded += len(pixels)
        return await real_encode(pixels, **kw)

    encoder.encode_pixels = counting
    if not early:
        build_mod._repeat = lambda *a: False
        build_mod._store = store_step_rule(real_store)
    try:
        records = scan_folder(folder)
        t0 = time.perf_counter()
        report = await build_mod.build(coll, encoder, records)
        seconds = time.perf_counter() - t0
    finally:
        encoder.encode_pixels = real_encode
        build_mod._repeat, build_mod._store = real_repeat, real_store
        coll.close()
    return seconds, encoded, report.added


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count", type=int, default=150, help="distinct pictures per gallery")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--busy", type=int, default=0, help="busy-loop processes beside it")
    a = p.parse_args(argv)
    from bench.encoder import make_folder
    from index.encoder import Encoder
    from index.models import load_model
    print(header("Duplicates dropped before decoding", argv))
    print(machine())
    encoder = Encoder(load_model("builtin:tiny-shapes", device="cpu"))
    encoder.wait_ready(300)
    rows = []
    with tempfile.TemporaryDirectory() as tmp, BusyHost(a.busy) as busy:
        tmp = Path(tmp)
        loads = [os.getloadavg()[0]]
        for name, photo in (("shapes 128-px PNG", False), ("photo-like 640×480 JPEG", True)):
            src, folder = tmp / f"src-{photo}", tmp / f"tripled-{photo}"
            make_folder(src, a.count, photo=photo, seed=5)
            n = tripled(src, folder)
            times: dict[bool, list[float]] = {True: [], False: []}
            seen: dict[bool, tuple[int, int]] = {}
            for r in range(a.rounds):
                for early in ((True, False) if r % 2 == 0 else (False, True)):
                    s, enc, added = await one_build(folder, tmp / f"c-{photo}-{r}-{early}",
                                                    encoder, early)
                    times[early].append(s)
                    seen[early] = (enc, added)
                    loads.append(os.getloadavg()[0])
            before, after = median(times[False]), median(times[True])
            rows.append((name, n, f"{before:.2f}", f"{after:.2f}", ratio(before / after),
                         f"{seen[False][0]} / {seen[True][0]}",
                         f"{seen[False][1]} / {seen[True][1]}"))
        encoder.close()
    print(table(("gallery (each picture 3×)", "files", "store step s", "early s",
                 "store step / early", "encoded (store step / early)",
                 "stored (store step / early)"), rows))
    print(f"\nmedian of {a.rounds} rounds, the two ways alternating; 1-min load average "
          f"during the runs: {min(loads):.2f}–{max(loads):.2f}"
          + (f"; {busy.describe()}" if a.busy else ""))


if __name__ == "__main__":
    asyncio.run(main())
