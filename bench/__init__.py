"""Benchmarks of clipfind; see bench/RESULTS.md. Run one with `python -m bench.<name>`.

OpenMP threads sleep at barriers instead of spinning (OMP_WAIT_POLICY=PASSIVE) unless the
environment says otherwise (CLIPFIND_BENCH_OMP=default keeps the OpenMP runtime's own
policy). It has to be set before torch loads, hence here. On a machine shared with other
work (this one runs a training job at a higher priority), a spinning torch thread that
waits at a barrier for its partner, which is waiting for a core, makes a 2-thread pass
10-40x slower, for the baselines and the engine alike; see RESULTS.md.
"""

import os

if os.environ.get("CLIPFIND_BENCH_OMP") != "default":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
