"""A collection (namespace) on disk: SQLite is the truth, FAISS is derived from it.

A collection is a directory::

    manifest.json        {"format_version", "model", "dim", "index_type"}, written atomically
    meta.sqlite          one row per item: metadata + the L2-normalised vector as float16.
                         table `state` holds `generation`, bumped by every write transaction,
                         and `uid`, a random number naming this database.
    vectors.faiss        the search index over those vectors, labelled with the SQLite ids
    vectors.faiss.json   what vectors.faiss reflects: generation, uid, ntotal, factory,
                         tuned search parameters, size and sha256 of vectors.faiss

vectors.faiss is never the only copy of anything. It is loaded only when its sidecar says
it reflects the current generation of this very database, its size and sha256 match (so a
torn, garbled or swapped file is never handed to FAISS) and its ntotal equals the row
count; otherwise it is rebuilt from SQLite. A generation change made by another process
(or another `Collection` on the same directory) is noticed before every search.

Every `add`/`remove` is one SQLite transaction, so a process killed mid-build leaves
whole batches only; sources are UNIQUE, so re-adding after a crash never duplicates.

Opened with `background_rebuilds=True` (a long-lived process: the bot), a rebuild the
index-type policy asks for (Flat -> IVF at EXACT_LIMIT, retraining after growth) runs in a
thread on its own SQLite snapshot while searches and adds keep using the current, valid
index; it is swapped in with this collection's writes since then re-applied. A missing,
stale or corrupt index is still rebuilt at once: without it there is nothing right to serve.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from index.errors import ModelMismatch, StoreError

FORMAT_VERSION = 1
EXACT_LIMIT = 50_000  # 'auto' uses an exact index below this many items
TARGET_RECALL = 0.95  # recall@10 that tune() aims for on an approximate index
TUNE_MARGIN = 0.02  # tune() aims this far above TARGET_RECALL: calibration is a sample

MANIFEST = "manifest.json"
META = "meta.sqlite"
VECTORS = "vectors.faiss"
VECTORS_META = "vectors.faiss.json"

_IN_CHUNK = 500  # ids per `IN (...)` query
_ROW_CHUNK = 20_000  # rows per chunk when streaming vectors out of SQLite
_CALIB_QUERIES = 50  # queries of each kind (item, blend, off-cone) used by tune()
_RETRY_FIRST = 60.0  # seconds before a failed background rebuild is tried again (doubling)
_RETRY_MAX = 3600.0

log = logging.getLogger(__name__)

_META_COLUMNS = (
    "source",
    "title",
    "credit",
    "page_url",
    "guild_id",
    "channel_id",
    "message_id",
    "attachment_id",
    "author_id",
    "posted_at",
    "content_hash",
    "stamp",
)
_INT_COLUMNS = frozenset({"guild_id", "channel_id", "message_id", "attachment_id", "author_id"})
_ITEM_SELECT = "SELECT id, " + ", ".join(_META_COLUMNS) + ", added_at FROM items"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    source        TEXT UNIQUE NOT NULL,
    title         TEXT NOT NULL DEFAULT '',
    credit        TEXT NOT NULL DEFAULT '',
    page_url      TEXT NOT NULL DEFAULT '',
    guild_id      INTEGER,
    channel_id    INTEGER,
    message_id    INTEGER,
    attachment_id INTEGER,
    author_id     INTEGER,
    posted_at     REAL,
    content_hash  TEXT NOT NULL DEFAULT '',
    stamp         TEXT NOT NULL DEFAULT '',
    added_at      REAL NOT NULL,
    vector        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS items_content_hash ON items(content_hash);
CREATE INDEX IF NOT EXISTS items_discord ON items(guild_id, channel_id, message_id);
CREATE INDEX IF NOT EXISTS items_message ON items(message_id);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO state(key, value) VALUES ('generation', 0);
"""


@dataclass
class NewItem:
    # unique key: absolute path, URL, or 'discord:<guild>/<channel>/<message>/<attachment>'
    source: str
    title: str = ""
    credit: str = ""
    page_url: str = ""
    guild_id: int | None = None
    channel_id: int | None = None
    message_id: int | None = None
    attachment_id: int | None = None
    author_id: int | None = None
    posted_at: float | None = None
    content_hash: str = ""
    stamp: str = ""  # freshness of the source, e.g. 'mtime_ns:size', for incremental builds


@dataclass(kw_only=True)
class Item(NewItem):
    id: int
    added_at: float


@dataclass(frozen=True)
class Manifest:
    model: str
    dim: int
    index_type: str
    format_version: int


@dataclass
class _Built:
    """An index made from one SQLite snapshot, not yet in use."""

    index: faiss.Index
    factory: str
    params: dict[str, int]
    gen: int  # the snapshot's generation
    n: int  # items in the snapshot
    wanted: str
    fallback: bool
    trainable: bool


# ---------------------------------------------------------------------------------------
# Index choice and tuning (module-level so a benchmark can replace them)


def choose_factory(n: int) -> str:
    """The FAISS factory string 'auto' uses for a collection of n items.

    Exact below EXACT_LIMIT. Above it an inverted file with ~4·sqrt(n) lists and 8-bit
    scalar quantisation (a quarter of the memory of float32, supports add and remove
    in place); tune() then picks nprobe by measuring recall.
    """
    if n < EXACT_LIMIT:
        return "Flat"
    nlist = max(1, round(4 * math.sqrt(n)))
    return f"IVF{nlist},SQ8"


def tune(
    index: faiss.Index,
    calibration: tuple[np.ndarray, ...] | None = None,
) -> dict[str, int]:
    """Set an approximate index's search-time knob; return {knob: value} (saved with it).

    The knob is IVF's nprobe or HNSW's efSearch. With `calibration` = (queries, ids the
    query itself is (-1: none), exact top-10 ids[, group of each query]), it is the
    smallest power of two from a low start whose recall@10 reaches TARGET_RECALL +
    TUNE_MARGIN in every group (every kind of question, see calibration_queries), or
    where doubling stops paying (recall above the target and gaining under 0.003 over two
    doublings: the codes, not the probes, limit it), or the ceiling. Latency grows with the
    knob, so the smallest that is good enough is the one to keep: starting high (as a
    fixed nlist/16 did) costs 5-10x in latency at a million items for no recall.
    Without calibration the conservative default is kept (IVF: max(16, nlist/16);
    HNSW: 64). An exact index has no knob: {}.
    """
    knob = _knob(index)
    if knob is None:
        return {}
    name, setter, default, ceiling, floor = knob
    if calibration is None or not len(calibration[0]):
        setter(default)
        return {name: int(default)}
    goal = TARGET_RECALL + TUNE_MARGIN
    queries, self_ids, truth = calibration[:3]
    groups = calibration[3] if len(calibration) > 3 else np.zeros(len(queries), dtype=np.int64)
    value, history = min(floor, ceiling), []
    while True:
        setter(value)
        recall = min(
            _recall_at_10(index, queries[groups == g], self_ids[groups == g], truth[groups == g])
            for g in np.unique(groups)
        )
        history.append(recall)
        if recall >= goal or value >= ceiling:
            break
        # saturated: above the target and flat over the last two doublings (4x the knob);
        # one flat step is not enough, recall often pauses and climbs again
        if recall >= TARGET_RECALL and len(history) >= 3 and recall - history[-3] < 0.003:
            break
        value = min(ceiling, value * 2)
    return {name: int(value)}


def _unwrap(index: faiss.Index) -> faiss.Index:
    """The index under IDMap/IDMap2 and pre-transform wrappers."""
    idx = faiss.downcast_index(index)
    while isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
        idx = faiss.downcast_index(idx.index)
    return idx


def _knob(index: faiss.Index) -> tuple[str, Callable[[int], None], int, int, int] | None:
    """(name, setter, default without calibration, ceiling, where tuning starts)."""
    inner = _unwrap(index)
    if isinstance(inner, faiss.IndexIVF):

        def set_nprobe(v: int) -> None:
            inner.nprobe = int(v)

        default = min(inner.nlist, max(16, inner.nlist // 16))
        return "nprobe", set_nprobe, default, inner.nlist, 4
    if isinstance(inner, faiss.IndexHNSW):

        def set_ef(v: int) -> None:
            inner.hnsw.efSearch = int(v)

        return "efSearch", set_ef, 64, 1024, 16
    return None


def training_size(index: faiss.Index, n: int) -> int:
    """How many of n items a trainable index is trained on (64 per IVF list, >= 50k)."""
    ivf = faiss.try_extract_index_ivf(index)
    return min(n, max(50_000, 64 * (ivf.nlist if ivf is not None else 1)))


def calibration_queries(
    vecs: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Queries for tune(), made from 3m sampled stored vectors `vecs` (rows of `ids`).

    Three kinds, m each, because users ask three kinds of question:
    - a stored item itself (its own hit excluded): a search with a picture;
    - normalise(a + b) of two items: a joint query (`flower*1 bee*1`);
    - an item with the shared component of the collection taken out, normalise(a - mean):
      CLIP's text vectors sit outside the cone the image vectors fill (the modality gap),
      so a text query is far from every item and its top 10 are spread over more of the
      index than an image query's. These off-cone queries stand in for text (own hit
      excluded); without them tune() undershoots on text queries.
    Returns (queries float32, the id each query must not count as a hit (-1: none), the
    kind of each query: 0 item, 1 blend, 2 off-cone).
    """
    m = len(vecs) // 3
    own, a, b = vecs[:m], vecs[m : 2 * m], vecs[2 * m : 3 * m]
    blend = a + b
    blend /= np.maximum(np.linalg.norm(blend, axis=1, keepdims=True), 1e-12)
    off = b - vecs.mean(axis=0, keepdims=True)
    off /= np.maximum(np.linalg.norm(off, axis=1, keepdims=True), 1e-12)
    queries = np.ascontiguousarray(np.concatenate([own, blend, off]), dtype=np.float32)
    self_ids = np.concatenate([ids[:m], np.full(m, -1, dtype=np.int64), ids[2 * m : 3 * m]])
    return queries, self_ids, np.repeat(np.arange(3), m)


def _apply_params(index: faiss.Index, params: dict[str, int]) -> None:
    knob = _knob(index)
    if knob is not None and knob[0] in params:
        knob[1](int(params[knob[0]]))


def _recall_at_10(
    index: faiss.Index, queries: np.ndarray, self_ids: np.ndarray, truth: np.ndarray
) -> float:
    _, found = index.search(queries, 11)
    hits = total = 0
    for row, me, want in zip(found, self_ids, truth, strict=True):
        got = [int(i) for i in row if i >= 0 and i != me][:10]
        want_set = {int(i) for i in want if i >= 0}
        hits += len(want_set.intersection(got))
        total += len(want_set)
    return hits / total if total else 1.0


def _is_exact(index: faiss.Index) -> bool:
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2):
        idx = faiss.downcast_index(idx.index)
    return isinstance(idx, faiss.IndexFlat)


def _can_remove_in_place(index: faiss.Index) -> bool:
    """Whether remove_ids keeps the id labels right (flat under IDMap2; IVF carries ids)."""
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2):
        return isinstance(faiss.downcast_index(idx.index), faiss.IndexFlat)
    while isinstance(idx, faiss.IndexPreTransform):
        idx = faiss.downcast_index(idx.index)
    return isinstance(idx, faiss.IndexIVF)


def _make_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product index built from `factory` that carries our ids."""
    try:
        base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except Exception as e:  # faiss raises RuntimeError with a C++ backtrace
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise StoreError(f"invalid FAISS index type {factory!r} for dim {dim}: {reason}") from e
    idx = faiss.downcast_index(base)
    inner = idx
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2) or isinstance(inner, faiss.IndexIVF):
        return base
    return faiss.IndexIDMap2(base)


def _validate_index_type(dim: int, index_type: str) -> None:
    if not isinstance(index_type, str) or not index_type.strip():
        raise StoreError(
            f"invalid FAISS index type {index_type!r}: give 'auto' or a factory string"
        )
    if index_type != "auto":
        _make_index(dim, index_type)


# ---------------------------------------------------------------------------------------
# Small file helpers


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _atomic_write_json(path: Path, obj: dict[str, Any]) -> None:
    _atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def _remove_dead_tmp_files(directory: Path) -> None:
    """Temp files left by killed writers (name carries the writer's pid)."""
    with contextlib.suppress(OSError):
        for p in directory.glob(".*.tmp"):
            parts = p.name.split(".")
            try:
                pid = int(parts[-3])
            except (IndexError, ValueError):
                continue
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    p.unlink()
            except OSError:
                pass


def _not_a_collection(path: Path) -> StoreError:
    return StoreError(
        f"{path} is not a clipfind collection (no manifest.json); "
        f"build one with: python -m index build --index {path} SOURCE"
    )


def _read_manifest(path: Path) -> Manifest:
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise _not_a_collection(path)
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StoreError(
            f"{mpath} is unreadable or garbled ({e}); restore it or build a new collection"
        ) from e
    if not isinstance(raw, dict):
        raise StoreError(
            f"{mpath} is garbled (not a JSON object); restore it or build a new collection"
        )
    version = raw.get("format_version")
    model, dim, index_type = raw.get("model"), raw.get("dim"), raw.get("index_type")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(
            f"{mpath} is garbled (format_version {version!r}); restore it or build a new collection"
        )
    if version > FORMAT_VERSION:
        raise StoreError(
            f"collection {path} has format version {version}, newer than this clipfind reads "
            f"({FORMAT_VERSION}); upgrade clipfind"
        )
    if not isinstance(model, str) or not model:
        raise StoreError(
            f"{mpath} is garbled (model {model!r}); restore it or build a new collection"
        )
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise StoreError(f"{mpath} is garbled (dim {dim!r}); restore it or build a new collection")
    if not isinstance(index_type, str) or not index_type:
        raise StoreError(
            f"{mpath} is garbled (index_type {index_type!r}); restore it or build a new collection"
        )
    return Manifest(model=model, dim=dim, index_type=index_type, format_version=version)


def _connect(db: Path) -> sqlite3.Connection:
    try:
        conn = sqlite3.connect(str(db), timeout=30.0, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as e:
        raise StoreError(f"cannot open {db}: {e}") from e
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
    except sqlite3.Error as e:
        conn.close()
        raise StoreError(f"{db} is not a usable SQLite database: {e}") from e
    return conn


def _chunks(seq: Sequence[Any], size: int = _IN_CHUNK) -> Iterator[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _row_to_item(row: Sequence[Any]) -> Item:
    return Item(id=row[0], **dict(zip(_META_COLUMNS, row[1:-1], strict=True)), added_at=row[-1])


def _top10_merge(
    best_s: np.ndarray, best_i: np.ndarray, scores: np.ndarray, ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    s = np.concatenate([best_s, scores], axis=1)
    i = np.concatenate([best_i, np.broadcast_to(ids, scores.shape)], axis=1)
    keep = min(10, s.shape[1])
    part = np.argpartition(-s, keep - 1, axis=1)[:, :keep]
    return np.take_along_axis(s, part, 1), np.take_along_axis(i, part, 1)


# ---------------------------------------------------------------------------------------


class Collection:
    """One collection directory. Thread-safe: one SQLite connection behind one lock."""

    manifest: Manifest
    path: Path

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        path: str | os.PathLike[str],
        model: str,
        dim: int,
        index_type: str = "auto",
        *,
        background_rebuilds: bool = False,
    ) -> Collection:
        """Make a new collection at `path`; if one is already there, open it (with `model`)."""
        p = Path(path)
        if (p / MANIFEST).exists():
            coll = cls.open(p, model, background_rebuilds=background_rebuilds)
            if coll.manifest.dim != dim:
                coll.close()
                raise StoreError(
                    f"collection {p} holds {coll.manifest.dim}-d vectors, not {dim}-d; "
                    "build a new collection"
                )
            return coll
        if not isinstance(model, str) or not model:
            raise StoreError(f"cannot create collection {p}: model spec {model!r} is empty")
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise StoreError(f"cannot create collection {p}: dim {dim!r} is not a positive integer")
        _validate_index_type(dim, index_type)
        if p.exists() and not p.is_dir():
            raise StoreError(f"cannot create collection {p}: it exists and is not a directory")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create collection {p}: {e}") from e
        conn = _connect(p / META)
        try:
            conn.executescript(_SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO state(key, value) VALUES ('uid', ?)",
                (secrets.randbits(62),),
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot create collection {p}: {e}") from e
        finally:
            conn.close()
        manifest = {
            "format_version": FORMAT_VERSION,
            "model": model,
            "dim": dim,
            "index_type": index_type,
        }
        try:
            _atomic_write_json(p / MANIFEST, manifest)
        except OSError as e:
            raise StoreError(f"cannot create collection {p}: {e}") from e
        return cls.open(p, model, background_rebuilds=background_rebuilds)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        model: str | None = None,
        *,
        background_rebuilds: bool = False,
    ) -> Collection:
        """Open an existing collection; `model`, when given, must be the one that built it.

        background_rebuilds: policy rebuilds (a bigger index type, retraining) run in a
        thread instead of inside the search that noticed them. For long-lived processes;
        a one-shot command keeps the default so that its save() writes the trained index.
        """
        p = Path(path)
        manifest = _read_manifest(p)
        if model is not None and model != manifest.model:
            raise ModelMismatch(
                f"collection {p} was built with model {manifest.model}; open it with "
                f"--model {manifest.model} or build a new collection (asked for {model})"
            )
        db = p / META
        if not db.is_file():
            raise StoreError(
                f"collection {p} has no {META}; its items are gone, build a new collection"
            )
        return cls(p, manifest, _connect(db), background_rebuilds=background_rebuilds)

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        conn: sqlite3.Connection,
        *,
        background_rebuilds: bool = False,
    ):
        """Use create() or open()."""
        self.path = path
        self.manifest = manifest
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()
        self._dim = manifest.dim
        self._auto = manifest.index_type == "auto"
        # The in-memory FAISS index and what it reflects.
        self._index: faiss.Index | None = None
        self._factory = "Flat"  # factory string the index was built from
        self._params: dict[str, int] = {}
        self._gen = -1  # SQLite generation the index reflects
        self._trained_n = 0  # item count when it was built (trained)
        self._trainable = False  # the index type learns from the data (IVF, PQ, SQ)
        self._fallback = False  # the factory could not be trained yet: exact meanwhile
        self._wanted = "Flat"  # the factory asked for (differs from _factory in a fallback)
        self._stale = True  # must be rebuilt (or reloaded) before use
        self._dirty = False  # differs from vectors.faiss on disk
        self._loads = 0  # times vectors.faiss was loaded / rebuilt (tests, status)
        self._rebuilds = 0
        # Policy rebuilds in a thread (see _start_background); may be switched on later.
        self.background_rebuilds = background_rebuilds
        self._bg: threading.Thread | None = None  # the background rebuild in progress
        self._bg_cancel = threading.Event()  # set: its result is not wanted (closing)
        self._bg_target = ""  # the factory it builds (for index_description)
        self._bg_touched: set[int] | None = None  # ids we wrote since it began
        self._bg_failures = 0
        self._bg_not_before = 0.0  # time.monotonic() before which none is started
        self._closing = False
        try:
            with self._lock:
                self._check_schema()
                self._uid = self._state("uid")
                _remove_dead_tmp_files(self.path)
                self._load_or_rebuild(save=True)
        except BaseException:
            self._closing = True
            self._bg_cancel.set()
            conn.close()
            self._conn = None
            raise

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r}, model={self.manifest.model!r})"

    # -- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return int(self._db().execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def get(self, ids: Sequence[int]) -> list[Item]:
        """Items for `ids` in the given order; ids with no item are skipped."""
        wanted = [int(i) for i in ids]
        found: dict[int, Item] = {}
        with self._lock:
            conn = self._db()
            for chunk in _chunks(sorted(set(wanted))):
                q = f"{_ITEM_SELECT} WHERE id IN ({','.join('?' * len(chunk))})"
                for row in conn.execute(q, tuple(chunk)):
                    found[row[0]] = _row_to_item(row)
        return [found[i] for i in wanted if i in found]

    def by_source(self, source: str) -> Item | None:
        with self._lock:
            row = self._db().execute(f"{_ITEM_SELECT} WHERE source = ?", (source,)).fetchone()
        return _row_to_item(row) if row else None

    def stamps(self) -> dict[str, str]:
        """source -> stamp of every item, for incremental builds."""
        with self._lock:
            return dict(self._db().execute("SELECT source, stamp FROM items"))

    def find_hash(self, content_hash: str, guild_id: int | None = None) -> Item | None:
        """The oldest item with this content hash (within `guild_id` when given, else any)."""
        if not content_hash:
            return None
        q = f"{_ITEM_SELECT} WHERE content_hash = ?"
        args: tuple[Any, ...] = (content_hash,)
        if guild_id is not None:
            q += " AND guild_id = ?"
            args += (int(guild_id),)
        with self._lock:
            row = self._db().execute(q + " ORDER BY id LIMIT 1", args).fetchone()
        return _row_to_item(row) if row else None

    def ids(self) -> np.ndarray:
        with self._lock:
            rows = self._db().execute("SELECT id FROM items ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def vectors(self, ids: Sequence[int] | None = None) -> np.ndarray:
        """float32 (n, dim): the given ids' vectors in that order (all items, id order, if None)."""
        with self._lock:
            conn = self._db()
            if ids is None:
                blobs = [r[0] for r in conn.execute("SELECT vector FROM items ORDER BY id")]
                return self._decode(blobs)
            wanted = [int(i) for i in ids]
            found: dict[int, bytes] = {}
            for chunk in _chunks(sorted(set(wanted))):
                q = f"SELECT id, vector FROM items WHERE id IN ({','.join('?' * len(chunk))})"
                found.update(conn.execute(q, tuple(chunk)))
        missing = [i for i in wanted if i not in found]
        if missing:
            raise StoreError(f"collection {self.path} has no item with id {missing[0]}")
        return self._decode([found[i] for i in wanted])

    @property
    def index_description(self) -> str:
        with self._lock:
            if self._fallback:
                head, notes = "Flat", ["exact"]
                if self._bg is None:
                    notes.append(f"{self._wanted} is trained once there are enough items")
            elif self._factory == "Flat" or (self._index is not None and _is_exact(self._index)):
                head, notes = self._factory, ["exact"]
            else:
                knobs = ", ".join(f"{k}={v}" for k, v in sorted(self._params.items()))
                head, notes = self._factory, [f"approximate{', ' + knobs if knobs else ''}"]
            if self._bg is not None:
                notes.append(f"{self._bg_target} being built in the background")
            return f"{head} ({'; '.join(notes)})"

    @property
    def rebuilding(self) -> bool:
        """Whether a background rebuild is in progress."""
        with self._lock:
            return self._bg is not None

    def wait_for_rebuild(self, timeout: float | None = None) -> bool:
        """Wait for the background rebuild in progress, if any; False if still running."""
        thread = self._bg
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    # -- search ----------------------------------------------------------------------

    def search(self, query: np.ndarray, k: int, offset: int = 0) -> list[tuple[int, float]]:
        """(id, inner product), best first, ranks offset .. offset+k-1."""
        if k <= 0:
            return []
        offset = max(0, int(offset))
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        if q.shape[0] != self._dim:
            raise StoreError(
                f"query vector has {q.shape[0]} dimensions; collection {self.path} holds {self._dim}"
            )
        if not np.all(np.isfinite(q)):
            raise StoreError("query vector contains NaN or infinity")
        with self._lock:
            self._db()
            self._refresh()
            assert self._index is not None
            n = int(self._index.ntotal)
            if n == 0 or offset >= n:
                return []
            scores, labels = self._index.search(q[None, :], min(n, offset + int(k)))
        hits = [(int(i), float(s)) for s, i in zip(scores[0], labels[0], strict=True) if i >= 0]
        return hits[offset : offset + int(k)]

    # -- writing ---------------------------------------------------------------------

    def add(self, items: Sequence[NewItem], vectors: np.ndarray) -> list[int]:
        """Store a batch in one transaction; an existing source keeps its id. Returns ids."""
        items = list(items)
        vecs = self._prepare_vectors(vectors, len(items))
        rows = [self._item_values(it) for it in items]
        if not items:
            return []
        blobs = [v.tobytes() for v in vecs]
        now = time.time()
        cols = ", ".join(_META_COLUMNS)
        insert = (
            f"INSERT INTO items ({cols}, added_at, vector) "
            f"VALUES ({', '.join('?' * (len(_META_COLUMNS) + 2))}) RETURNING id"
        )
        update = (
            "UPDATE items SET "
            + ", ".join(f"{c} = ?" for c in _META_COLUMNS[1:])
            + ", vector = ? WHERE id = ?"
        )

        def body(conn: sqlite3.Connection) -> tuple[list[int], dict[int, int], set[int]]:
            out: list[int] = []
            changed: dict[int, int] = {}  # id -> batch position of its final vector
            replaced: set[int] = set()  # ids whose old vector is in the index
            new: set[int] = set()
            for pos, (values, blob) in enumerate(zip(rows, blobs, strict=True)):
                old = conn.execute(
                    "SELECT id, vector FROM items WHERE source = ?", (values[0],)
                ).fetchone()
                if old is None:
                    item_id = conn.execute(insert, (*values, now, blob)).fetchone()[0]
                    new.add(item_id)
                    changed[item_id] = pos
                else:
                    item_id = old[0]
                    conn.execute(update, (*values[1:], blob, item_id))
                    if old[1] != blob:
                        changed[item_id] = pos
                        if item_id not in new:
                            replaced.add(item_id)
                out.append(item_id)
            return out, changed, replaced

        with self._lock:
            try:
                ids, changed, replaced = self._write(body)
            except (sqlite3.Error, OverflowError) as e:
                raise StoreError(f"cannot add to collection {self.path}: {e}") from e
            if self._bg_touched is not None:
                self._bg_touched.update(changed)
            if replaced:
                self._index_remove(sorted(replaced))
            if changed and not self._stale:
                new_ids = np.fromiter(changed.keys(), dtype=np.int64, count=len(changed))
                positions = list(changed.values())
                try:
                    assert self._index is not None
                    self._index.add_with_ids(
                        np.ascontiguousarray(vecs[positions], dtype=np.float32), new_ids
                    )
                except Exception:
                    self._stale = True  # SQLite has it; rebuild before the next use
        return ids

    def remove(self, ids: Iterable[int]) -> int:
        """Delete items by id; returns how many rows went."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return 0

        def body(conn: sqlite3.Connection) -> list[int]:
            gone: list[int] = []
            for chunk in _chunks(wanted):
                q = f"DELETE FROM items WHERE id IN ({','.join('?' * len(chunk))}) RETURNING id"
                gone.extend(r[0] for r in conn.execute(q, tuple(chunk)))
            return gone

        return len(self._remove_with(body))

    def remove_where(
        self,
        *,
        guild_id: int,
        channel_id: int | None = None,
        message_ids: Iterable[int] | None = None,
    ) -> list[int]:
        """Delete a guild's items (of one channel, of some messages); returns removed ids."""
        where = "guild_id = ?"
        args: list[Any] = [int(guild_id)]
        if channel_id is not None:
            where += " AND channel_id = ?"
            args.append(int(channel_id))
        messages = None if message_ids is None else sorted({int(m) for m in message_ids})
        if messages is not None and not messages:
            return []

        def body(conn: sqlite3.Connection) -> list[int]:
            if messages is None:
                return [
                    r[0]
                    for r in conn.execute(f"DELETE FROM items WHERE {where} RETURNING id", args)
                ]
            gone: list[int] = []
            for chunk in _chunks(messages):
                q = (
                    f"DELETE FROM items WHERE {where} AND message_id IN "
                    f"({','.join('?' * len(chunk))}) RETURNING id"
                )
                gone.extend(r[0] for r in conn.execute(q, (*args, *chunk)))
            return gone

        return sorted(self._remove_with(body))

    def save(self) -> None:
        """Write vectors.faiss (+ its sidecar) if the in-memory index differs from it."""
        with self._lock:
            self._db()
            self._refresh()
            if self._dirty:
                try:
                    self._write_index_file()
                except (OSError, RuntimeError) as e:
                    raise StoreError(f"cannot write {self.path / VECTORS}: {e}") from e

    def close(self) -> None:
        """Save if dirty, then close SQLite. Idempotent.

        A background rebuild in progress is abandoned, not waited for: its thread reads
        only its own snapshot connection and drops its result; the next open starts again.
        """
        with self._lock:
            if self._conn is None:
                return
            self._closing = True
            self._bg_cancel.set()
            try:
                # Our own unsaved work is saved; if someone wrote after us, the next opener
                # (or that writer) brings vectors.faiss up to date instead.
                if self._dirty and self._state("generation") == self._gen:
                    self.save()
            finally:
                self._conn.close()
                self._conn = None

    # -- internals: SQLite -----------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"collection {self.path} is closed")
        return self._conn

    def _check_schema(self) -> None:
        try:
            tables = {
                r[0]
                for r in self._db().execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path / META} is not a usable SQLite database: {e}") from e
        if not {"items", "state"} <= tables:
            raise StoreError(
                f"{self.path / META} is not a clipfind database (no items/state tables)"
            )

    def _state(self, key: str, conn: sqlite3.Connection | None = None) -> int:
        conn = self._db() if conn is None else conn
        row = conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    def _write(
        self, body: Callable[[sqlite3.Connection], Any], noop: Callable[[Any], bool] | None = None
    ) -> Any:
        """Run body in one write transaction that bumps the generation; keep our index in step.

        Lock held. Rolls back (no bump) when body raises or `noop(result)` says nothing
        changed. If someone else wrote since our index was made, the index is marked stale.
        """
        conn = self._db()
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = self._state("generation")
            result = body(conn)
            if noop is not None and noop(result):
                conn.execute("ROLLBACK")
                return result
            after = conn.execute(
                "UPDATE state SET value = value + 1 WHERE key = 'generation' RETURNING value"
            ).fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if before != self._gen:
            self._stale = True
        self._gen = int(after)
        self._dirty = True
        return result

    def _remove_with(self, body: Callable[[sqlite3.Connection], list[int]]) -> list[int]:
        with self._lock:
            try:
                gone = self._write(body, noop=lambda g: not g)
            except sqlite3.Error as e:
                raise StoreError(f"cannot remove from collection {self.path}: {e}") from e
            if gone and self._bg_touched is not None:
                self._bg_touched.update(gone)
            if gone:
                self._index_remove(gone)
        return gone

    def _index_remove(self, ids: Sequence[int]) -> None:
        if self._stale or self._index is None:
            return
        if not _can_remove_in_place(self._index):
            self._stale = True  # e.g. HNSW: rebuilt before the next search
            return
        try:
            self._index.remove_ids(np.asarray(ids, dtype=np.int64))
        except Exception:
            self._stale = True

    def _decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        width = 2 * self._dim
        for b in blobs:
            if len(b) != width:
                raise StoreError(
                    f"{self.path / META} holds a vector of {len(b) // 2} dims, manifest says {self._dim}"
                )
        if not blobs:
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(-1, self._dim).astype(np.float32)

    def _prepare_vectors(self, vectors: np.ndarray, n: int) -> np.ndarray:
        v = np.asarray(vectors)
        if v.ndim != 2 or v.shape != (n, self._dim):
            raise StoreError(
                f"expected vectors of shape ({n}, {self._dim}) for {n} items, got {tuple(v.shape)}"
            )
        if not np.issubdtype(v.dtype, np.floating):
            raise StoreError(f"vectors must be floating point, got {v.dtype}")
        v = v.astype(np.float32)
        if not np.all(np.isfinite(v)):
            raise StoreError("vectors contain NaN or infinity")
        norms = np.linalg.norm(v, axis=1, keepdims=True)
        if n and float(norms.min()) < 1e-12:
            raise StoreError(
                f"vector {int(np.argmin(norms))} has zero length and cannot be normalised"
            )
        # Stored as float16; the index gets exactly these values, as a rebuild would.
        return (v / np.maximum(norms, 1e-12)).astype("<f2")

    @staticmethod
    def _item_values(it: NewItem) -> tuple[Any, ...]:
        source = getattr(it, "source", None)
        if not isinstance(source, str) or not source:
            raise StoreError(f"item {it!r} has no source")
        values: list[Any] = []
        for col in _META_COLUMNS:
            v = getattr(it, col, None)
            try:
                if col in _INT_COLUMNS:
                    v = None if v is None else int(v)
                elif col == "posted_at":
                    v = None if v is None else float(v)
                else:
                    v = "" if v is None else str(v)
            except (TypeError, ValueError) as e:
                raise StoreError(f"item {source}: {col} {v!r} is not a number") from e
            values.append(v)
        return tuple(values)

    # -- internals: the FAISS index --------------------------------------------------

    def _refresh(self) -> None:
        """Bring the index up to the current generation and the index-type policy. Lock held."""
        if self._state("generation") != self._gen:
            self._stale = True
        if self._stale:
            self._load_or_rebuild(save=False)
        elif self._rebuild_wanted():
            self._policy_rebuild()

    def _policy_rebuild(self) -> None:
        """The index is valid but not the type the policy wants. Lock held."""
        if self.background_rebuilds:
            self._start_background()
        else:
            self._rebuild()

    def _rebuild_wanted(self) -> bool:
        """The index-type policy: when the item count calls for another index."""
        assert self._index is not None
        n = int(self._index.ntotal)
        if self._fallback:  # retry training once the collection has doubled
            return n >= 2 * max(self._trained_n, 1)
        if not self._auto:
            return False
        if self._factory == "Flat":
            return choose_factory(n) != "Flat"
        # approximate: back to exact only once even twice as many items would be exact
        # (no flapping around the limit); retrain what was trained once it has grown 4x
        if choose_factory(2 * n) == "Flat":
            return True
        return self._trainable and n >= 4 * max(self._trained_n, 1)

    def _load_or_rebuild(self, *, save: bool) -> None:
        if not self._try_load():
            self._rebuild()
            if save:
                try:
                    self._write_index_file()
                except (OSError, RuntimeError):
                    pass  # read-only directory: keep it in memory, stay dirty
        elif self._rebuild_wanted():
            self._policy_rebuild()

    def _try_load(self) -> bool:
        """Load vectors.faiss if it provably reflects the current SQLite state."""
        vpath, mpath = self.path / VECTORS, self.path / VECTORS_META
        conn = self._db()
        try:
            meta = json.loads(mpath.read_text(encoding="utf-8"))
            conn.execute("BEGIN")
            try:
                gen = self._state("generation")
                count = int(conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])
            finally:
                conn.execute("COMMIT")
            if not (
                isinstance(meta, dict)
                and meta.get("generation") == gen
                and meta.get("uid") == self._uid
                and meta.get("dim") == self._dim
                and meta.get("ntotal") == count
                and meta.get("size") == vpath.stat().st_size
                and isinstance(meta.get("factory"), str)
                and (self._auto or meta["factory"] in (self.manifest.index_type, "Flat"))
            ):
                return False
            if _sha256_file(vpath) != meta.get("sha256"):
                return False
            index = faiss.read_index(str(vpath))
            if index.ntotal != count or index.d != self._dim:
                return False
            params = {str(k): int(v) for k, v in dict(meta.get("params") or {}).items()}
            _apply_params(index, params)
            trained_n = int(meta.get("trained_n", count))
            trainable = bool(meta.get("trainable", False))
            fallback = bool(meta.get("fallback", False))
            wanted = str(meta.get("wanted", meta["factory"]))
        except (OSError, ValueError, TypeError, KeyError, RuntimeError, AttributeError):
            return False
        self._index, self._factory, self._params = index, meta["factory"], params
        self._gen, self._trained_n, self._fallback = gen, trained_n, fallback
        self._wanted, self._trainable = wanted, trainable
        self._stale = self._dirty = False
        self._loads += 1
        return True

    def _rebuild(self) -> None:
        """Build the index afresh from SQLite and use it. Lock held."""
        built = self._build(self._db())
        assert built is not None
        self._install(built, built.gen)

    def _install(self, built: _Built, gen: int) -> None:
        """Use `built` as the index of generation `gen`. Lock held."""
        self._index, self._factory, self._params = built.index, built.factory, dict(built.params)
        self._gen, self._trained_n, self._fallback = gen, built.n, built.fallback
        self._wanted, self._trainable = built.wanted, built.trainable
        self._stale, self._dirty = False, True
        self._loads += 1
        self._rebuilds += 1

    def _build(
        self, conn: sqlite3.Connection, cancel: threading.Event | None = None
    ) -> _Built | None:
        """Build an index from one read snapshot of `conn`; None if `cancel` was set.

        Touches no index state of self, so a background thread may run it on its own
        connection without the lock.
        """
        rng = np.random.default_rng(0)
        conn.execute("BEGIN")
        try:
            gen = self._state("generation", conn)
            ids = np.fromiter(
                (r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")), dtype=np.int64
            )
            n = len(ids)
            factory = choose_factory(n) if self._auto else self.manifest.index_type
            index = _make_index(self._dim, factory)
            wanted, fallback = factory, False
            trainable = not index.is_trained
            if trainable:
                try:
                    if n == 0:
                        raise RuntimeError("no items to train on")
                    m = training_size(index, n)
                    sample = self._fetch(np.sort(rng.choice(ids, size=m, replace=False)), conn)
                    index.train(sample)
                    del sample
                except Exception:  # too few items for this factory: exact until there are more
                    wanted, factory, fallback, trainable = factory, "Flat", True, False
                    index = _make_index(self._dim, "Flat")
            calib = None
            if not _is_exact(index) and n > 1:
                m = min(_CALIB_QUERIES, len(ids) // 3)
                picked = rng.choice(ids, size=3 * m, replace=False)
                calib = calibration_queries(self._fetch(picked, conn), picked) if m else None
            best_s = best_i = None
            if calib is not None:
                best_s = np.full((len(calib[0]), 0), -np.inf, dtype=np.float32)
                best_i = np.zeros((len(calib[0]), 0), dtype=np.int64)
            cur = conn.execute("SELECT id, vector FROM items ORDER BY id")
            while rows := cur.fetchmany(_ROW_CHUNK):
                chunk_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                chunk = self._decode([r[1] for r in rows])
                index.add_with_ids(chunk, chunk_ids)
                if calib is not None:
                    scores = calib[0] @ chunk.T
                    scores[calib[1][:, None] == chunk_ids[None, :]] = -np.inf  # not itself
                    best_s, best_i = _top10_merge(best_s, best_i, scores, chunk_ids)
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if cancel is not None and cancel.is_set():
            return None
        calibration = None
        if calib is not None:
            truth = np.where(np.isfinite(best_s), best_i, -1)
            calibration = (calib[0], calib[1], truth, calib[2])
        params = tune(index, calibration) if not _is_exact(index) else {}
        return _Built(index, factory, dict(params), gen, n, wanted, fallback, trainable)

    def _start_background(self) -> None:
        """Start a policy rebuild in a thread, unless one runs, we close or back off. Lock held."""
        if self._bg is not None or self._closing or time.monotonic() < self._bg_not_before:
            return
        assert self._index is not None
        n = int(self._index.ntotal)
        self._bg_target = choose_factory(n) if self._auto else self.manifest.index_type
        self._bg_touched = set()
        self._bg_cancel = cancel = threading.Event()
        self._bg = threading.Thread(
            target=self._background_build,
            args=(self._loads, cancel),
            name=f"clipfind-rebuild:{self.path.name}",
            daemon=True,
        )
        self._bg.start()

    def _background_build(self, epoch: int, cancel: threading.Event) -> None:
        """Thread body: build on our own snapshot without the lock, then swap in under it.

        Never raises: a failure is logged, the current index stays, and the next attempt
        waits _RETRY_FIRST seconds, doubling per failure up to _RETRY_MAX.
        """
        built: _Built | None = None
        error: Exception | None = None
        try:
            conn = _connect(self.path / META)
            try:
                built = self._build(conn, cancel)
            finally:
                conn.close()
        except Exception as e:
            error = e
        with self._lock:
            touched, self._bg_touched, self._bg = self._bg_touched, None, None
            if cancel.is_set() or self._conn is None:
                return  # closed meanwhile: nobody wants the result
            if error is None and built is not None:
                try:
                    self._swap_in(built, epoch, touched or set())
                except Exception as e:
                    error = e
            if error is None:
                self._bg_failures = 0
                return
            self._bg_failures += 1
            delay = min(_RETRY_MAX, _RETRY_FIRST * 2 ** (self._bg_failures - 1))
            self._bg_not_before = time.monotonic() + delay
            log.error(
                "background rebuild of %s failed; keeping the %s index, retrying in %.0f s",
                self.path,
                self._factory,
                delay,
                exc_info=error,
            )

    def _swap_in(self, built: _Built, epoch: int, touched: set[int]) -> None:
        """Use a background-built index, brought up to date with our writes since. Lock held.

        Our writes since the build began (`touched` ids: added, changed or removed, some
        perhaps already in the snapshot) are re-applied from SQLite: each is removed from
        the new index and added again with its current vector if it still exists, so none
        is lost or doubled. If the index was reloaded or rebuilt meanwhile, or another
        process wrote (our index is stale), the result is dropped: the next refresh decides.
        """
        if epoch != self._loads or self._stale or self._state("generation") != self._gen:
            return
        index = built.index
        if touched:
            if not _can_remove_in_place(index):
                raise StoreError(f"{built.factory} cannot remove ids: writes came meanwhile")
            wanted = sorted(touched)
            index.remove_ids(np.asarray(wanted, dtype=np.int64))
            rows: list[tuple[int, bytes]] = []
            for chunk in _chunks(wanted):
                q = f"SELECT id, vector FROM items WHERE id IN ({','.join('?' * len(chunk))})"
                rows.extend(self._db().execute(q, tuple(chunk)))
            if rows:
                ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
                index.add_with_ids(self._decode([r[1] for r in rows]), ids)
        self._install(built, self._gen)

    def _fetch(self, ids: np.ndarray, conn: sqlite3.Connection) -> np.ndarray:
        """Vectors for existing ids, in order (inside the caller's transaction on conn)."""
        found: dict[int, bytes] = {}
        wanted = [int(i) for i in ids]
        for chunk in _chunks(sorted(set(wanted))):
            q = f"SELECT id, vector FROM items WHERE id IN ({','.join('?' * len(chunk))})"
            found.update(conn.execute(q, tuple(chunk)))
        return self._decode([found[i] for i in wanted])

    def _write_index_file(self) -> None:
        """vectors.faiss then its sidecar, each via a temp file and os.replace. Lock held."""
        assert self._index is not None
        vpath = self.path / VECTORS
        tmp = _tmp_name(vpath)
        try:
            faiss.write_index(self._index, str(tmp))
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            digest, size = _sha256_file(tmp), tmp.stat().st_size
            os.replace(tmp, vpath)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _atomic_write_json(
            self.path / VECTORS_META,
            {
                "generation": self._gen,
                "uid": self._uid,
                "dim": self._dim,
                "ntotal": int(self._index.ntotal),
                "factory": self._factory,
                "params": self._params,
                "trained_n": self._trained_n,
                "trainable": self._trainable,
                "fallback": self._fallback,
                "wanted": self._wanted,
                "size": size,
                "sha256": digest,
            },
        )
        self._dirty = False
