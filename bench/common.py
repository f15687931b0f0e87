"""Helpers shared by the benchmarks: timing, statistics, markdown tables, the machine."""

from __future__ import annotations

import gc
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def pct(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; nan for no samples."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return float(s[lo] + (s[hi] - s[lo]) * (pos - lo))


def timed(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds per call of fn, `repeats` samples after `warmup` unmeasured calls."""
    for _ in range(warmup):
        fn()
    out = []
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t0)
    finally:
        if gc_was:
            gc.enable()
    return out


def ms(x: float) -> str:
    if x != x:  # nan
        return "–"
    if x >= 1.0:
        return f"{x * 1000:,.0f}"
    if x >= 0.01:
        return f"{x * 1000:.1f}"
    return f"{x * 1000:.2f}"


def ratio(x: float) -> str:
    if x != x:
        return "–"
    return f"{x:.2f}×" if x < 100 else f"{x:,.0f}×"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; numbers right-aligned."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]

    def line(vals: Sequence[str]) -> str:
        return "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(list(headers)), sep, *(line(r) for r in cells)])


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, MiB (Linux ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float:
    """Current resident set size, MiB."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def machine() -> str:
    """A markdown description of the machine and the software under measurement."""
    import faiss
    import numpy as np
    import torch

    model = platform.processor() or "?"
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        fields = dict(
            (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in out.splitlines())
        )
        model = fields.get("Model name", model)
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
        mem = f"{mem_kb / 2**20:.1f} GiB"
    except (OSError, ValueError, IndexError):
        mem = "?"
    try:
        load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "?"
    busy = _busy_processes()
    gpu = "none (torch.cuda.is_available() is False)"
    if torch.cuda.is_available():
        gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    try:
        import open_clip
        oc = open_clip.__version__
    except Exception:  # pragma: no cover
        oc = "?"
    rows = [
        ("CPU", f"{model}, {os.cpu_count()} logical CPUs"),
        ("RAM", mem),
        ("GPU", gpu),
        ("load average at start (1/5/15 min)", load),
        ("other busy processes at start", busy or "none"),
        ("Python", platform.python_version()),
        ("torch", f"{torch.__version__}, {torch.get_num_threads()} intra-op threads "
                  f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, "
                  f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}"
                  + (f", GOMP_SPINCOUNT={os.environ['GOMP_SPINCOUNT']}"
                     if "GOMP_SPINCOUNT" in os.environ else "") + ")"),
        ("open_clip", oc),
        ("faiss", f"{faiss.__version__}, {faiss.omp_get_max_threads()} OpenMP threads"),
        ("numpy", np.__version__),
    ]
    return table(("", ""), rows)


def _busy_processes() -> str:
    """Other processes using over 20% CPU now, with their nice value (via ps)."""
    try:
        out = subprocess.run(["ps", "-eo", "pid,ni,pcpu,comm", "--sort=-pcpu"], capture_output=True,
                             text=True, timeout=10).stdout.splitlines()[1:]
    except (OSError, subprocess.SubprocessError):
        return "?"
    busy = []
    for line in out:
        parts = line.split(None, 3)
        if len(parts) == 4 and int(parts[0]) != os.getpid():
            try:
                if float(parts[2]) > 20:
                    busy.append(f"{parts[3]} at {parts[2]}% CPU, nice {parts[1]}")
            except ValueError:
                continue
    return "; ".join(busy[:3])


def header(title: str, argv: Sequence[str] | None = None) -> str:
    cmd = "python -m " + " ".join(
        [sys.modules["__main__"].__spec__.name if getattr(sys.modules["__main__"], "__spec__", None)
         else sys.argv[0], *(argv if argv is not None else sys.argv[1:])])
    return f"## {title}\n\n`{cmd}` — {time.strftime('%Y-%m-%d %H:%M')}\n"


class BusyHost:
    """`n` processes of our own that spin on the CPU for as long as the block lasts: a
    busier host, made on purpose and the same on every run (ratios measured under it show
    what another process's load does to each path). Only these processes are stopped."""

    def __init__(self, n: int):
        self.n = n
        self._procs: list[subprocess.Popen] = []

    def __enter__(self) -> BusyHost:
        self._procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                       for _ in range(self.n)]
        if self._procs:
            time.sleep(0.5)  # let them get going
        return self

    def __exit__(self, *exc) -> None:
        for p in self._procs:
            p.kill()
        for p in self._procs:
            p.wait()
        self._procs = []

    def describe(self) -> str:
        return (f"{self.n} busy-loop process{'es' if self.n != 1 else ''} of the benchmark's "
                f"own spinning beside it (`--busy {self.n}`)" if self.n else "")
