"""The item table: meta.sqlite, the truth of a collection.

One row per item: its metadata and its L2-normalised vector as float16. Table `state`
holds `generation`, bumped by every write transaction (so an index knows whether it is
current), and `uid`, a random number naming this database. Sources are UNIQUE, so
re-adding after a crash never duplicates.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import sqlite3
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import BadItem, StoreError
from index.phash import storable as phash_storable

META = "meta.sqlite"

IN_CHUNK = 500  # values per `IN (...)` query (SQLite caps the number of parameters)
ROW_CHUNK = 20_000  # rows per chunk when streaming vectors out of SQLite

META_COLUMNS = (
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
    "phash",
)
_INT_COLUMNS = frozenset({"guild_id", "channel_id", "message_id", "attachment_id", "author_id"})
ITEM_SELECT = "SELECT id, " + ", ".join(META_COLUMNS) + ", added_at FROM items"
_ADDED_COLUMNS = {"phash": "TEXT"}  # columns newer than some meta.sqlite files: name -> type
# indexes newer than some meta.sqlite files: name -> its CREATE statement. items_unhashed
# holds only the items read from pictures (a content hash) without a perceptual hash (a
# partial index): a collection that has them all answers "how many lack one" without
# reading its rows (index/rehash.py).
UNHASHED = "phash IS NULL AND content_hash != ''"
_ADDED_INDEXES = {
    "items_unhashed": f"CREATE INDEX IF NOT EXISTS items_unhashed ON items(id) WHERE {UNHASHED}",
}

SCHEMA = """
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
    phash         TEXT,
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
    # perceptual hash of the pixels (index/phash.py); None: not known (stored before it
    # existed, or imported vectors); '': the picture has none (one flat colour)
    phash: str | None = None


@dataclass(kw_only=True)
class Item(NewItem):
    id: int
    added_at: float


def connect(db: Path) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit), WAL, full fsync."""
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


def writable(db: Path) -> bool:
    """Whether this process may change `db` and make its side files (-wal, -shm) beside it."""
    return os.access(db.parent, os.W_OK) and os.access(db, os.W_OK)


def connect_readonly(db: Path) -> sqlite3.Connection:
    """A read-only connection to `db` in a folder that cannot be written (a `:ro` mount).

    WAL mode needs its side files: read-only they must exist already (mode=ro); after a
    clean close they are gone and cannot be made, and then the file is read as immutable,
    which is right for a folder nobody can write.
    """
    uri = "file:" + urllib.parse.quote(os.fsencode(os.path.abspath(db)))
    error: sqlite3.Error | None = None
    for mode in ("mode=ro", "immutable=1"):
        conn = None
        try:
            conn = sqlite3.connect(
                f"{uri}?{mode}",
                uri=True,
                timeout=30.0,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return conn
        except sqlite3.Error as e:
            error = e
            if conn is not None:
                conn.close()
    raise StoreError(f"{db} is not a usable SQLite database: {error}")


def create_database(db: Path) -> None:
    """Make the tables of a new collection (and its uid) in `db`."""
    conn = connect(db)
    try:
        conn.executescript(SCHEMA)
        for statement in _ADDED_INDEXES.values():
            conn.execute(statement)
        conn.execute(
            "INSERT OR IGNORE INTO state(key, value) VALUES ('uid', ?)", (secrets.randbits(62),)
        )
    finally:
        conn.close()


def rows_in(
    conn: sqlite3.Connection, sql: str, values: Sequence[Any], args: Sequence[Any] = ()
) -> Iterator[tuple[Any, ...]]:
    """Rows of `sql` run once per chunk of `values`; `%s` in sql stands for the `?, ?, ...`.

    e.g. rows_in(conn, "SELECT id FROM items WHERE id IN (%s)", ids). `args` are bound
    before each chunk's values.
    """
    for i in range(0, len(values), IN_CHUNK):
        chunk = values[i : i + IN_CHUNK]
        yield from conn.execute(sql % ",".join("?" * len(chunk)), (*args, *chunk))


def source_key(source: str) -> str | bytes:
    """How a source is stored: as text, or as the bytes of a path that is not UTF-8.

    A file name need not be valid UTF-8; Python hands it over with surrogate escapes,
    which SQLite text cannot hold. Such a source is stored as its bytes (a BLOB never
    equals a text value), so the path comes back exactly and stays unique.
    """
    try:
        source.encode("utf-8")
        return source
    except UnicodeEncodeError:
        return source.encode("utf-8", "surrogateescape")


def source_of_key(value: str | bytes) -> str:
    """The source a stored key (source_key) stands for."""
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else value


def _text(value: str) -> str:
    """Display text SQLite can hold: what is not UTF-8 shows as U+FFFD."""
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def row_to_item(row: Sequence[Any]) -> Item:
    fields = dict(zip(META_COLUMNS, row[1:-1], strict=True))
    fields["source"] = source_of_key(fields["source"])
    return Item(id=row[0], **fields, added_at=row[-1])


def item_values(it: NewItem) -> tuple[Any, ...]:
    """The META_COLUMNS values of `it`, typed for SQLite; a bad field is a StoreError."""
    source = getattr(it, "source", None)
    if not isinstance(source, str) or not source:
        raise BadItem(repr(it), "the item has no source")
    values: list[Any] = []
    for col in META_COLUMNS:
        v = getattr(it, col, None)
        try:
            if col in _INT_COLUMNS:
                v = None if v is None else int(v)
            elif col == "posted_at":
                v = None if v is None else float(v)
            elif col == "source":
                v = source_key(v)
            elif col == "phash":
                if not phash_storable(v):
                    raise BadItem(source, f"phash {v!r} is not a perceptual hash")
            else:
                v = "" if v is None else _text(str(v))
        except (TypeError, ValueError) as e:
            raise BadItem(source, f"{col} {v!r} is not a number") from e
        values.append(v)
    return tuple(values)


def prepare_vectors(
    vectors: np.ndarray, n: int, dim: int, sources: Sequence[str] | None = None
) -> np.ndarray:
    """n vectors checked and L2-normalised, as the float16 rows SQLite will hold.

    A vector that is not finite or has zero length is refused (BadItem naming its item,
    sources[i]): it could never be found, and it would spoil an index trained on it.
    """
    v = np.asarray(vectors)
    if v.ndim != 2 or v.shape != (n, dim):
        raise StoreError(
            f"expected vectors of shape ({n}, {dim}) for {n} items, got {tuple(v.shape)}"
        )
    if not np.issubdtype(v.dtype, np.floating):
        raise StoreError(f"vectors must be floating point, got {v.dtype}")
    v = v.astype(np.float32)

    def name(i: int) -> str:
        return sources[i] if sources is not None else f"vector {i}"

    finite = np.isfinite(v).all(axis=1)
    if not finite.all():
        i = int(np.argmin(finite))
        raise BadItem(name(i), "its vector contains NaN or infinity; not stored")
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    if n and float(norms.min()) < 1e-12:
        raise BadItem(name(int(np.argmin(norms))), "its vector has zero length; not stored")
    # Stored as float16; the index gets exactly these values, as a rebuild would.
    return (v / np.maximum(norms, 1e-12)).astype("<f2")


def nonfinite_note(path: Path, ids: Sequence[int]) -> str:
    """One line: stored vectors that are not finite, and how to repair them."""
    shown = " ".join(str(i) for i in ids[:10]) + (" ..." if len(ids) > 10 else "")
    return (
        f"collection {path}: {len(ids)} item(s) have stored vectors with NaN or infinity "
        f"so no search finds them by their content (ids {shown}); remove them with "
        f"`python -m index remove --index {path} ID...` and build again to re-encode them"
    )


class ItemTable:
    """Items on one SQLite connection. Not thread-safe: the owner serialises calls."""

    def __init__(self, conn: sqlite3.Connection, db: Path, dim: int, readonly: bool = False):
        self.conn, self.db, self.dim, self.readonly = conn, db, dim, readonly
        self.select = ITEM_SELECT  # (a read-only table from before a column: see check_schema)

    @classmethod
    def open(cls, db: Path, dim: int) -> ItemTable:
        """Read-write; read-only when the folder or file cannot be written."""
        if writable(db):
            return cls(connect(db), db, dim)
        return cls(connect_readonly(db), db, dim, readonly=True)

    def close(self) -> None:
        self.conn.close()

    def check_schema(self) -> None:
        try:
            tables = {
                r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.db} is not a usable SQLite database: {e}") from e
        if not {"items", "state"} <= tables:
            raise StoreError(f"{self.db} is not a clipfind database (no items/state tables)")
        self._add_new_columns()

    def _add_new_columns(self) -> None:
        """A table from before a column (`phash`) gets it, NULL in the old rows, and the
        indexes newer than it; read-only, the column is read as NULL."""
        have = {r[1] for r in self.conn.execute("PRAGMA table_info(items)")}
        missing = [c for c in _ADDED_COLUMNS if c not in have]
        indexes = {
            r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='index'")
        }
        new_indexes = [i for i in _ADDED_INDEXES if i not in indexes]
        if not missing and not new_indexes:
            return
        if self.readonly:
            cols = ", ".join(f"NULL AS {c}" if c in missing else c for c in META_COLUMNS)
            self.select = f"SELECT id, {cols}, added_at FROM items"
            return

        def add(conn: sqlite3.Connection) -> None:  # (another process may have, meanwhile)
            now = {r[1] for r in conn.execute("PRAGMA table_info(items)")}
            for c in missing:
                if c not in now:
                    conn.execute(f"ALTER TABLE items ADD COLUMN {c} {_ADDED_COLUMNS[c]}")
            for i in new_indexes:
                conn.execute(_ADDED_INDEXES[i])

        try:
            self.write(add, lambda _: False)
        except sqlite3.Error as e:
            what = ", ".join(missing) or ", ".join(new_indexes)
            raise StoreError(f"cannot add {what} to {self.db}: {e}") from e

    def state(self, key: str) -> int:
        row = self.conn.execute("SELECT value FROM state WHERE key = ?", (key,)).fetchone()
        return int(row[0]) if row else 0

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """One consistent read of several queries (a read transaction)."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def write(
        self,
        body: Callable[[sqlite3.Connection], Any],
        items_changed: Callable[[Any], bool] | None = None,
    ) -> tuple[Any, int, int | None]:
        """Run body in one write transaction; it bumps the generation if items changed.

        Returns (body's result, generation before, generation after; None when
        `items_changed(result)` says no item or vector changed: then the transaction
        commits without a bump, so that the index stays current). Rolls back when body raises.
        """
        if self.readonly:
            raise StoreError(
                f"collection {self.db.parent} is read-only here (its folder cannot be "
                "written): search it, or copy it somewhere writable to change it"
            )
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            before = self.state("generation")
            result = body(conn)
            after = None
            if items_changed is None or items_changed(result):
                after = conn.execute(
                    "UPDATE state SET value = value + 1 WHERE key = 'generation' RETURNING value"
                ).fetchone()[0]
            conn.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        return result, before, None if after is None else int(after)

    # -- reading -----------------------------------------------------------------------

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def get(self, ids: Sequence[int]) -> list[Item]:
        wanted = [int(i) for i in ids]
        found = {
            row[0]: row_to_item(row)
            for row in rows_in(self.conn, f"{self.select} WHERE id IN (%s)", sorted(set(wanted)))
        }
        return [found[i] for i in wanted if i in found]

    def by_source(self, source: str) -> Item | None:
        row = self.conn.execute(f"{self.select} WHERE source = ?", (source_key(source),)).fetchone()
        return row_to_item(row) if row else None

    def stamps(self) -> dict[str, str]:
        rows = self.conn.execute("SELECT source, stamp FROM items")
        return {source_of_key(source): stamp for source, stamp in rows}

    def find_hash(self, content_hash: str, guild_id: int | None = None) -> Item | None:
        q = f"{self.select} WHERE content_hash = ?"
        args: tuple[Any, ...] = (content_hash,)
        if guild_id is not None:
            q += " AND guild_id = ?"
            args += (int(guild_id),)
        row = self.conn.execute(q + " ORDER BY id LIMIT 1", args).fetchone()
        return row_to_item(row) if row else None

    def unhashed_ids(self) -> list[int]:
        """Ids of the items read from a picture that have no perceptual hash (NULL: stored
        before it existed; '' is a picture that has none), in id order. Imported vectors
        (no content hash: no picture was read) are not among them."""
        sql = f"SELECT id FROM ({self.select}) WHERE {UNHASHED} ORDER BY id"
        return [r[0] for r in self.conn.execute(sql)]

    def count_unhashed(self) -> int:
        """How many items unhashed_ids would list (read from the partial index)."""
        sql = f"SELECT COUNT(*) FROM ({self.select}) WHERE {UNHASHED}"
        return int(self.conn.execute(sql).fetchone()[0])

    def ids(self) -> np.ndarray:
        rows = self.conn.execute("SELECT id FROM items ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def vector_blobs(self, ids: Iterable[int]) -> dict[int, bytes]:
        """id -> stored vector of those ids that exist."""
        wanted = sorted({int(i) for i in ids})
        return dict(rows_in(self.conn, "SELECT id, vector FROM items WHERE id IN (%s)", wanted))

    def vectors(self, ids: Sequence[int] | None = None) -> np.ndarray:
        """float32 (n, dim): the given ids' vectors in that order (all, id order, if None)."""
        if ids is None:
            return self.decode(
                [r[0] for r in self.conn.execute("SELECT vector FROM items ORDER BY id")]
            )
        wanted = [int(i) for i in ids]
        found = self.vector_blobs(wanted)
        missing = [i for i in wanted if i not in found]
        if missing:
            raise StoreError(f"collection {self.db.parent} has no item with id {missing[0]}")
        return self.decode([found[i] for i in wanted])

    def decode(self, blobs: Sequence[bytes]) -> np.ndarray:
        width = 2 * self.dim
        for b in blobs:
            if len(b) != width:
                raise StoreError(
                    f"{self.db} holds a vector of {len(b) // 2} dims, manifest says {self.dim}"
                )
        if not blobs:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.frombuffer(b"".join(blobs), dtype="<f2").reshape(-1, self.dim).astype(np.float32)

    # -- writing (inside a write() body) -------------------------------------------------

    @staticmethod
    def upsert(
        conn: sqlite3.Connection,
        rows: Sequence[tuple[Any, ...]],
        blobs: Sequence[bytes],
        now: float,
    ) -> tuple[list[int], dict[int, int], set[int]]:
        """Insert new sources, update known ones (they keep their id).

        Returns (id per row, {id: row whose vector it now has} for new or changed vectors,
        ids whose previous vector was already stored before this call).
        """
        cols = ", ".join(META_COLUMNS)
        insert = (
            f"INSERT INTO items ({cols}, added_at, vector) "
            f"VALUES ({', '.join('?' * (len(META_COLUMNS) + 2))}) RETURNING id"
        )
        update = (
            "UPDATE items SET "
            + ", ".join(f"{c} = ?" for c in META_COLUMNS[1:])
            + ", vector = ? WHERE id = ?"
        )
        out: list[int] = []
        changed: dict[int, int] = {}
        replaced: set[int] = set()
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

    @staticmethod
    def set_phashes(conn: sqlite3.Connection, hashes: dict[int, str]) -> int:
        """Give items still without a perceptual hash theirs ('' : the picture has none);
        returns how many changed. Neither vectors nor the index change: the caller writes
        it without a generation bump."""
        changed = 0
        for item_id, h in hashes.items():
            if not phash_storable(h):
                raise StoreError(f"item {item_id}: phash {h!r} is not a perceptual hash")
            cur = conn.execute(
                "UPDATE items SET phash = ? WHERE id = ? AND phash IS NULL", (h, int(item_id))
            )
            changed += cur.rowcount
        return changed

    @staticmethod
    def delete_ids(conn: sqlite3.Connection, ids: Iterable[int]) -> list[int]:
        wanted = sorted({int(i) for i in ids})
        return [
            r[0] for r in rows_in(conn, "DELETE FROM items WHERE id IN (%s) RETURNING id", wanted)
        ]

    @staticmethod
    def delete_where(
        conn: sqlite3.Connection,
        guild_id: int,
        channel_id: int | None,
        message_ids: Sequence[int] | None,
    ) -> list[int]:
        """Delete a guild's items (of one channel, of some messages); returns their ids."""
        where = "guild_id = ?"
        args: list[Any] = [int(guild_id)]
        if channel_id is not None:
            where += " AND channel_id = ?"
            args.append(int(channel_id))
        if message_ids is None:
            return [
                r[0] for r in conn.execute(f"DELETE FROM items WHERE {where} RETURNING id", args)
            ]
        sql = f"DELETE FROM items WHERE {where} AND message_id IN (%s) RETURNING id"
        return [r[0] for r in rows_in(conn, sql, message_ids, args)]
