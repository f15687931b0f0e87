"""Many collections that share one model and one encoder worker, one per namespace.

The Discord library gives each server its own namespace, so no search, page or export in
one server can reach another server's items. With the embedded store they live in
different collections on disk. With store="milvus" all namespaces share one Milvus
collection (named by the root folder's name; a namespace key is the server's guild id)
and each namespace is that server's view of it, filtered by guild id on every call; the
namespace's folder under the root holds nothing the namespace needs: it exists when the
shared collection holds its record "namespace", so a process on another machine (a bot
shard) finds every server's namespace in the Milvus alone.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .engine import Engine, EngineOptions
from .errors import StoreError
from .store import Collection

if TYPE_CHECKING:
    from .encoder import Encoder

_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
MILVUS_MARKER = "milvus-namespace"  # a namespace folder whose items are in the shared Milvus
NAMESPACE_RECORD = "namespace"  # in the shared Milvus: this guild has a namespace


class Namespaces:
    def __init__(self, root: str | Path, encoder: Encoder, options: EngineOptions | None = None,
                 index_type: str = "auto", *, store: str = "faiss",
                 milvus_uri: str | None = None, milvus_token: str | None = None):
        self.root = Path(root)
        self.encoder = encoder
        self.options = options or EngineOptions()
        self.index_type = index_type
        if store not in ("faiss", "milvus"):
            raise StoreError(f"unknown store {store!r}: use faiss or milvus")
        self.store = store
        self.milvus_uri = str(milvus_uri) if milvus_uri else str(self.root / "milvus.db")
        self._milvus_token = milvus_token
        self._shared = None  # the Milvus collection all namespaces share (opened on first use)
        self._open: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        if not _KEY.match(str(key)):
            raise StoreError(f"bad namespace name {key!r}: use letters, digits, _ and - only")
        if self.store == "milvus" and not str(key).isdigit():
            raise StoreError(f"bad namespace name {key!r}: with Milvus it is a server's id")
        return self.root / str(key)

    def _marker(self, path: Path) -> Path:
        return path / ("manifest.json" if self.store == "faiss" else MILVUS_MARKER)

    def exists(self, key: str) -> bool:
        path = self._path(key)
        if self._marker(path).exists():
            return True
        return self.store == "milvus" and key in self._milvus_keys()

    def _milvus_keys(self) -> set[str]:
        """The namespaces the shared Milvus collection knows (none when it is not there)."""
        from .store.milvus import MilvusStore, collection_name
        with self._lock:
            if self._shared is None:
                name = collection_name(self.root)
                if not MilvusStore.exists(self.milvus_uri, name, token=self._milvus_token):
                    return set()
                self._shared = MilvusStore.open(self.milvus_uri, name, self.encoder.loaded.name,
                                                token=self._milvus_token)
            return {str(g) for g in self._shared.records_named(NAMESPACE_RECORD)}

    def _milvus_view(self, key: str, create: bool):
        """The server's view of the shared Milvus collection (lock held)."""
        from .store.milvus import MilvusStore, collection_name
        if self._shared is None:
            loaded, name = self.encoder.loaded, collection_name(self.root)
            if create:
                self._shared = MilvusStore.create(self.milvus_uri, name, loaded.name, loaded.dim,
                                                  self.index_type, token=self._milvus_token)
            else:
                self._shared = MilvusStore.open(self.milvus_uri, name, loaded.name,
                                                token=self._milvus_token)
        return self._shared.view(int(key))

    def get(self, key: str, create: bool = False) -> Engine | None:
        """The namespace's engine; None when it does not exist and create is False."""
        path = self._path(key)
        with self._lock:
            if key in self._open:
                return self._open[key]
        if not create and not self._marker(path).exists():
            if self.store != "milvus" or key not in self._milvus_keys():
                return None
        with self._lock:
            if key in self._open:
                return self._open[key]
            loaded = self.encoder.loaded
            if self.store == "milvus":
                collection = self._milvus_view(key, create)
                if collection.read_record(NAMESPACE_RECORD) is None:
                    collection.write_record(NAMESPACE_RECORD, "1")
            elif (path / "manifest.json").exists():
                collection = Collection.open(path, loaded.name)
            else:
                collection = Collection.create(path, loaded.name, loaded.dim, self.index_type)
            engine = Engine(collection, self.encoder, self.options, owns_encoder=False)
            self._open[key] = engine
            return engine

    def keys(self) -> list[str]:
        keys = set()
        if self.root.exists():
            keys = {p.name for p in self.root.iterdir() if self._marker(p).exists()}
        if self.store == "milvus":
            keys |= self._milvus_keys()
        return sorted(keys)

    def drop(self, key: str) -> bool:
        """Delete a namespace and everything in it (e.g. the bot left the server)."""
        path = self._path(key)
        with self._lock:
            engine = self._open.pop(key, None)
            if engine is not None:
                engine.close()
            if self.store == "milvus":  # its items and records in the shared collection go first
                from .store.milvus import MilvusStore, collection_name
                if self._shared is None and not MilvusStore.exists(
                        self.milvus_uri, collection_name(self.root), token=self._milvus_token):
                    return False
                view = self._milvus_view(key, create=False)
                had = path.exists()
                try:
                    had = view.read_record(NAMESPACE_RECORD) is not None or had
                    view.remove_where(guild_id=int(key))
                    view.drop_records()
                finally:
                    view.close()
                if path.exists():
                    shutil.rmtree(path)
                return had
            if not path.exists():
                return False
            shutil.rmtree(path)
            return True

    def close(self) -> None:
        with self._lock:
            for engine in self._open.values():
                engine.close()
            self._open.clear()
            if self._shared is not None:
                self._shared.close()
                self._shared = None
