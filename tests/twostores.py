"""Make and open collections of either store kind in tests (importable as `storekit`:
tests/ is on sys.path). The fixtures `store` and `milvus_uri` are in tests/conftest.py."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


class Stores:
    """Make and open collections of one kind ('faiss' or 'milvus') at test paths."""

    def __init__(self, kind: str, milvus_uri: str):
        self.kind, self.milvus_uri = kind, milvus_uri

    def __repr__(self) -> str:
        return self.kind

    def at(self, path):
        """The path to hand the engine: for Milvus its name is unique in the shared file."""
        import hashlib
        from pathlib import Path
        path = Path(path)
        if self.kind == "faiss":
            return path
        tag = hashlib.blake2b(str(path).encode(), digest_size=5).hexdigest()
        return path.with_name(f"{path.name}_{tag}")

    def create(self, path, model, dim, index_type="auto", **kw):
        if self.kind == "faiss":
            from index.store import Collection
            return Collection.create(path, model, dim, index_type, **kw)
        from index.store.milvus import MilvusStore
        return MilvusStore.create(self.milvus_uri, self.at(path).name, model, dim, index_type, **kw)

    def open(self, path, model=None, **kw):
        if self.kind == "faiss":
            from index.store import Collection
            return Collection.open(path, model, **kw)
        from index.store.milvus import MilvusStore
        return MilvusStore.open(self.milvus_uri, self.at(path).name, model, **kw)

    def engine(self, path, **kw):
        from index.engine import Engine
        if self.kind == "milvus":
            kw.update(store="milvus", milvus_uri=self.milvus_uri)
        return Engine.open(self.at(path), **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiteServer:
    """`milvus-lite server` on 127.0.0.1 in a subprocess; stopped by its pid."""

    def __init__(self, data: Path):
        self.data, self.port, self.proc = data, free_port(), None
        self.uri = f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        exe = Path(sys.executable).with_name("milvus-lite")
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "milvus_lite"]
        self.proc = subprocess.Popen(
            [*cmd, "server", "--data-dir", str(self.data), "--host", "127.0.0.1",
             "--port", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "milvus-lite server exited"
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("milvus-lite server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def wait_until_back(fn, timeout: float = 30.0):
    """fn() once the store answers again (StoreUnavailable until then)."""
    from index.errors import StoreUnavailable
    deadline = time.monotonic() + timeout
    while True:
        try:
            return fn()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
