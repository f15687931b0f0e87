"""Make and open collections of either store kind in tests (importable as `storekit`:
tests/ is on sys.path). The fixtures `store` and `milvus_uri` are in tests/conftest.py."""

from __future__ import annotations

import time
from pathlib import Path

from bench.liteserver import LiteServer, free_port  # noqa: F401 (the tests' names)


class Stores:
    """Make and open collections of one kind ('faiss' or 'milvus') at test paths."""

    def __init__(self, kind: str, milvus_uri: str):
        self.kind, self.milvus_uri = kind, milvus_uri

    def __repr__(self) -> str:
        return self.kind

    def at(self, path):
        """The path to hand the engine: for Milvus its name is unique in the shared file."""
        import hashlib
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
