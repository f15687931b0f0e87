"""Thumbnails of local image files, made once and kept on disk for later replies.

A result that is a local file is shown as a JPEG thumbnail. Making one (decode, resize,
encode) is the costliest part of a reply, so each is made once per file and size and kept
in a folder (by default `thumbnails/` in the collection), where it survives restarts; a
reply then only reads bytes. Entries are keyed by the file's identity (device, inode,
size, modification time), so an edited file gets a new thumbnail and the same file seen
through two paths (links) shares one. The folder is bounded (`max_bytes`): past it, the
entries used longest ago go first (reads refresh an entry's time). Where the folder cannot
be written (a read-only collection), thumbnails are kept in memory only, and that is
said once in the log.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections import OrderedDict
from pathlib import Path

from PIL import Image

from .errors import ClipfindError
from .images import open_image, thumbnail_jpeg

log = logging.getLogger(__name__)

MAX_BYTES = 1 << 30  # on disk, per folder
MEMORY_ENTRIES = 512  # also kept in memory (~50 kB each): popular results and page turns
SUFFIX = ".jpg"


class ThumbnailStore:
    def __init__(self, folder: str | Path, *, max_bytes: int = MAX_BYTES,
                 memory_entries: int = MEMORY_ENTRIES):
        self.folder = Path(folder)
        self.max_bytes = max_bytes
        self.memory_entries = memory_entries
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._writable: bool | None = None  # found out at the first write
        self._disk_bytes: int | None = None  # counted at the first write

    # -- reading ----------------------------------------------------------------------
    def key(self, path: str | Path, side: int, quality: int) -> str | None:
        """The entry name of this file at this size; None when the file cannot be stat'ed."""
        try:
            st = os.stat(path)
        except OSError:
            return None
        ident = f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{side}:{quality}"
        return hashlib.sha1(ident.encode()).hexdigest()

    def cached(self, path: str | Path, side: int, quality: int = 85) -> bytes | None:
        """The thumbnail when it was made before (memory or disk); no image work."""
        key = self.key(path, side, quality)
        return None if key is None else self._read(key)

    def get(self, path: str | Path, side: int, quality: int = 85) -> bytes | None:
        """The thumbnail, made now if it was never made; None (and a warning) for a file
        that cannot be shown."""
        key = self.key(path, side, quality)
        if key is not None and (data := self._read(key)) is not None:
            return data
        return self.make(path, side, quality, key=key)

    def make(self, path: str | Path, side: int, quality: int = 85, *,
             image: Image.Image | None = None, key: str | None = None) -> bytes | None:
        """Make (from `image`, when the caller has the file decoded already) and keep it."""
        try:
            if image is None:
                image = open_image(Path(path), draft=side)
            data = thumbnail_jpeg(image, max_side=side, quality=quality)
        except ClipfindError as e:
            log.warning("no thumbnail for a result: %s", e)
            return None
        key = key or self.key(path, side, quality)
        if key is not None:
            self._remember(key, data)
            self._write(key, data)
        return data

    # -- memory -----------------------------------------------------------------------
    def _read(self, key: str) -> bytes | None:
        with self._lock:
            data = self._memory.get(key)
            if data is not None:
                self._memory.move_to_end(key)
                return data
        file = self._file(key)
        try:
            data = file.read_bytes()
        except OSError:
            return None
        try:
            os.utime(file)  # recently used: evicted last
        except OSError:
            pass
        self._remember(key, data)
        return data

    def _remember(self, key: str, data: bytes) -> None:
        with self._lock:
            self._memory[key] = data
            self._memory.move_to_end(key)
            while len(self._memory) > self.memory_entries:
                self._memory.popitem(last=False)

    # -- disk -------------------------------------------------------------------------
    def _file(self, key: str) -> Path:
        return self.folder / key[:2] / (key + SUFFIX)

    def _write(self, key: str, data: bytes) -> None:
        if self._writable is False:
            return
        file = self._file(key)
        try:
            file.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=file.parent, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, file)
        except OSError as e:
            if self._writable is None or self._writable:
                log.warning("thumbnails are kept in memory only: cannot write %s (%s)",
                            self.folder, e.strerror or e)
            self._writable = False
            return
        self._writable = True
        with self._lock:
            if self._disk_bytes is None:
                self._disk_bytes = sum(size for _, size, _ in self._entries())
            else:
                self._disk_bytes += len(data)
            over = self._disk_bytes > self.max_bytes
        if over:
            self._evict()

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for f in self.folder.glob(f"*/*{SUFFIX}"):
            try:
                st = f.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, f))
        return out

    def _evict(self) -> None:
        """Remove the entries used longest ago, down to 3/4 of the bound."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        goal = self.max_bytes * 3 // 4
        for _, size, f in entries:
            if total <= goal:
                break
            try:
                f.unlink()
            except OSError:
                continue
            total -= size
        with self._lock:
            self._disk_bytes = total
