"""Many collections that share one model and one encoder worker, one per namespace.

The Discord library gives each server its own namespace, so no search, page or export in
one server can reach another server's items: they live in different collections on disk.
"""

from __future__ import annotations

import re
import shutil
import threading
from pathlib import Path

from .encoder import Encoder
from .engine import Engine, EngineOptions
from .errors import StoreError
from .store import Collection

_KEY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class Namespaces:
    def __init__(self, root: str | Path, encoder: Encoder, options: EngineOptions | None = None,
                 index_type: str = "auto"):
        self.root = Path(root)
        self.encoder = encoder
        self.options = options or EngineOptions()
        self.index_type = index_type
        self._open: dict[str, Engine] = {}
        self._lock = threading.Lock()

    def _path(self, key: str) -> Path:
        if not _KEY.match(str(key)):
            raise StoreError(f"bad namespace name {key!r}: use letters, digits, _ and - only")
        return self.root / str(key)

    def exists(self, key: str) -> bool:
        return (self._path(key) / "manifest.json").exists()

    def get(self, key: str, create: bool = False) -> Engine | None:
        """The namespace's engine; None when it does not exist and create is False."""
        path = self._path(key)
        with self._lock:
            if key in self._open:
                return self._open[key]
            if not create and not (path / "manifest.json").exists():
                return None
            loaded = self.encoder.loaded
            if (path / "manifest.json").exists():
                collection = Collection.open(path, loaded.name)
            else:
                collection = Collection.create(path, loaded.name, loaded.dim, self.index_type)
            engine = Engine(collection, self.encoder, self.options, owns_encoder=False)
            self._open[key] = engine
            return engine

    def keys(self) -> list[str]:
        if not self.root.exists():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "manifest.json").exists())

    def drop(self, key: str) -> bool:
        """Delete a namespace and everything in it (e.g. the bot left the server)."""
        path = self._path(key)
        with self._lock:
            engine = self._open.pop(key, None)
            if engine is not None:
                engine.close()
            if not path.exists():
                return False
            shutil.rmtree(path)
            return True

    def close(self) -> None:
        with self._lock:
            for engine in self._open.values():
                engine.close()
            self._open.clear()
