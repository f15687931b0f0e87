"""How fast a shard process is back after kill -9 (issue 10: within 30 s, bundled model).

Runs the cross-process test (tests/test_shards_e2e.py: `python -m bot.launch`, 2 bot
processes of one shard each, a `milvus-lite server`, the loopback fake Discord) --runs
times and reports, from its timings: launch to both shards READY and answering, and
kill -9 of shard 0's process (mid-backfill) to its restarted process's shard READY and to
its first search answered with results. The baseline in the same run is the first start
of the same process (launch to READY/answering), so a loaded machine shows as both.

    python -m bench.shards [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import REPO, header, machine, median, table

TEST = "tests/test_shards_e2e.py"


def one_run() -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "times.json"
        env = {**os.environ, "PYTHONPATH": str(REPO), "SHARDS_E2E_TIMES": str(out)}
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                            TEST], cwd=REPO, env=env, capture_output=True, text=True)
        if p.returncode != 0 or not out.exists():
            raise SystemExit(f"{TEST} failed:\n{p.stdout[-3000:]}\n{p.stderr[-2000:]}")
        return json.loads(out.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.shards", description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    print(header("Shards: a restarted shard process (bench/shards.py)", argv))
    print(machine())
    runs = [one_run() for _ in range(args.runs)]
    loads = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    rows = []
    for key, what in (("launch_to_both_ready_s", "launch -> both shards READY (2 processes, in turn)"),
                      ("launch_to_both_answering_s", "launch -> both answering a search"),
                      ("kill_to_ready_s", "kill -9 -> restarted shard READY"),
                      ("kill_to_answering_s", "kill -9 -> restarted process answering")):
        xs = [r[key] for r in runs]
        rows.append((what, f"{median(xs):.1f}", f"{min(xs):.1f}", f"{max(xs):.1f}"))
    print(table(("", "median s", "min s", "max s"), rows))
    print(f"\n{len(runs)} runs; load average at the end (1/5/15 min): {loads}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
