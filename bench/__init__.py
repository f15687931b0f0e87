"""Benchmarks of clipfind; see bench/RESULTS.md. Run one with `python -m bench.<name>`.

The benchmarks measure the product as it runs, so they load the engine's facade first:
`index` sets the OpenMP wait policy (PASSIVE) before torch loads, and it must come before
any benchmark imports torch. To measure GNU OpenMP's own default instead (workers spin
~300k rounds before they sleep), set `GOMP_SPINCOUNT=300000` in the environment.
"""

import index  # noqa: F401 (sets the product's OpenMP policy before torch loads)
