"""A stand-in shard process for the launcher's tests (python -m launchchild --shard-ids ...).

It appends "<pid> <shard ids>" to $CHILD_LOG, writes the launcher's ready file, then waits;
SIGTERM ends it (unless $CHILD_IGNORE_TERM is set); $CHILD_EXIT makes it exit at once."""

from __future__ import annotations

import os
import signal
import sys
import time

ids = sys.argv[sys.argv.index("--shard-ids") + 1]
if os.environ.get("CHILD_EXIT"):
    sys.exit(int(os.environ["CHILD_EXIT"]))
with open(os.environ["CHILD_LOG"], "a") as f:
    f.write(f"{os.getpid()} {ids}\n")
if os.environ.get("CHILD_IGNORE_TERM"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
else:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
time.sleep(0.05)
ready = os.environ["CLIPFIND_READY_FILE"]
with open(ready + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace(ready + ".tmp", ready)
while True:
    time.sleep(1)
