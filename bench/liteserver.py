"""`milvus-lite server` in a subprocess on a loopback port: the Milvus stand-in that the
benchmarks and the tests share (one class, so both stop it the same safe way)."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _default_sigint() -> None:
    """SIGINT back to its default in the server: a background job (nohup ... &, a CI runner)
    inherits it ignored, and then the server never shuts down cleanly on it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class LiteServer:
    """One data folder served on one free port of 127.0.0.1, kept across restarts so that
    clients holding the URI reconnect by themselves; stopped by its own pid only."""

    def __init__(self, data: Path, log: Path | None = None):
        self.data, self.log_path = Path(data), log
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> str:
        exe = Path(sys.executable).with_name("milvus-lite")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "milvus_lite"]
        out = open(self.log_path, "a") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                [*cmd, "server", "--data-dir", str(self.data), "--host", "127.0.0.1",
                 "--port", str(self.port)], stdout=out, stderr=subprocess.STDOUT,
                preexec_fn=_default_sigint)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()  # the child holds its own copy
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                where = f": see {self.log_path}" if self.log_path else ""
                raise RuntimeError(f"milvus-lite server exited{where}")
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return self.uri
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("milvus-lite server did not start")

    def stop(self, timeout: float = 60.0) -> None:
        """An orderly shutdown: SIGINT makes the server drain its calls and background work
        (compaction, index builds) and close its data. SIGTERM would kill Python outright,
        and Milvus Lite writes its scalar index files in place: a kill during a background
        index build leaves a 0-byte file that the restarted server then fails to load
        ("File is too small: 0") for good."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
