"""Every benchmark, one after another, each in its own process (so that one's memory and
threads do not colour the next), tables to standard output and, with --out, to a file.

    python -m bench.all                          # about 15-20 minutes on 2 idle CPU cores
    python -m bench.all --out bench/latest.md --quick

--quick runs smaller sizes (a few minutes in all): a smoke test, not the figures to quote.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import REPO

FULL = [
    ["bench.encoder"],
    ["bench.search", "--n", "100000", "1000000"],
    ["bench.e2e"],
    ["bench.memory"],
    ["bench.heatmap"],
]
QUICK = [
    ["bench.encoder", "--models", "builtin:tiny-shapes", "--repeats", "2"],
    ["bench.search", "--n", "50000", "--queries", "90", "--collection-n", "50000"],
    ["bench.e2e", "--n", "20000", "--queries", "12"],
    ["bench.memory", "--n", "60000"],
    ["bench.heatmap", "--repeats", "10"],
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.all", description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None, help="also write the tables here")
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    args = ap.parse_args(argv)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    failed = 0
    chunks = []
    for cmd in QUICK if args.quick else FULL:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, env=env,
                              capture_output=True, text=True)
        took = time.perf_counter() - t0
        text = proc.stdout
        if proc.returncode != 0:
            failed += 1
            text += f"\n**{' '.join(cmd)} failed (exit {proc.returncode}):**\n\n```\n" \
                    f"{proc.stderr[-3000:]}\n```\n"
        text += f"\n_{' '.join(cmd)}: {took / 60:.1f} min_\n"
        print(text, flush=True)
        chunks.append(text)
    if args.out:
        args.out.write_text("\n".join(chunks))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
