"""Collection: one collection folder, coordinating its item table and its FAISS index.

    manifest.json        model, dim, index type (manifest.py)
    meta.sqlite          the truth: items and their vectors (items.py)
    vectors.faiss(.json) the search index derived from it, and what it reflects (faissindex.py)

Every add/remove is one SQLite transaction that bumps the table's generation; the
in-memory index follows in place. Before each search the index is checked against the
generation (another process, or another Collection on the same folder, may have written)
and against the tuning policy (tuning.py); it is reloaded from vectors.faiss or rebuilt
from SQLite (rebuild.py) as needed. Opened with `background_rebuilds=True` (a long-lived
process: the bot), a rebuild the policy asks for runs in a thread while the current, valid
index keeps serving; a missing, stale or corrupt index is still rebuilt at once: without
it there is nothing right to serve.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from index.errors import ModelMismatch, StoreError

from . import posts, records, tuning
from .base import VectorStore, checked_query
from .facts import FactsReader
from .faissindex import (
    VECTORS,
    Built,
    IndexState,
    can_remove_in_place,
    read_index_file,
    validate_index_type,
    write_index_file,
)
from .files import remove_dead_tmp_files
from .filtered import PostFacts, PostFilter
from .filterplan import FilterCache
from .items import (
    META,
    Item,
    ItemTable,
    NewItem,
    create_database,
    item_values,
    nonfinite_note,
    prepare_vectors,
)
from .manifest import MANIFEST, Manifest, read_manifest, write_manifest
from .posts import Forgotten, Post
from .rebuild import BackgroundRebuild, build_index

log = logging.getLogger("index.store")


class Collection(VectorStore):
    """One collection directory. Thread-safe: one SQLite connection behind one lock."""

    manifest: Manifest
    path: Path

    # -- opening -----------------------------------------------------------------------

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
        validate_index_type(dim, index_type)
        if p.exists() and not p.is_dir():
            raise StoreError(f"cannot create collection {p}: it exists and is not a directory")
        try:
            p.mkdir(parents=True, exist_ok=True)
            create_database(p / META)
            write_manifest(p, model, dim, index_type)
        except (OSError, sqlite3.Error) as e:
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
        manifest = read_manifest(p)
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
        table = ItemTable.open(db, manifest.dim)
        return cls(p, manifest, table, background_rebuilds=background_rebuilds)

    def __init__(
        self,
        path: Path,
        manifest: Manifest,
        table: ItemTable,
        *,
        background_rebuilds: bool = False,
    ):
        """Use create() or open()."""
        self.path = path
        self.manifest = manifest
        self._table: ItemTable | None = table
        self._lock = threading.RLock()
        self._dim = manifest.dim
        self._ix = IndexState()  # the in-memory FAISS index and what it reflects
        # Policy rebuilds in a thread (see _policy_rebuild); may be switched on later.
        self.background_rebuilds = background_rebuilds
        self._bg = BackgroundRebuild(path, self._lock)
        self._cache_warned = False  # said once that vectors.faiss could not be written
        self._writes = 0  # our own write transactions (the post facts follow them)
        self._removes = 0  # removals from the index in place (its IVF lists move)
        self._facts = FactsReader()  # the posts' facts, read as the table grows
        self._facts_seen: tuple[int, int] | None = None  # _posts_version they were read at
        self._filters = FilterCache()  # each recent filter's allowed items and copies
        try:
            with self._lock:
                table.check_schema()
                self._ensure_posts_table()
                self._uid = table.state("uid")
                if not table.readonly:  # else the index is kept in memory only
                    remove_dead_tmp_files(self.path)
                self._load_or_rebuild(save=not table.readonly)
        except BaseException:
            self._bg.stop()
            table.close()
            self._table = None
            raise

    def __repr__(self) -> str:
        return f"Collection({str(self.path)!r}, model={self.manifest.model!r})"

    # -- reading -----------------------------------------------------------------------

    def __len__(self) -> int:
        with self._lock:
            return self._db().count()

    def get(self, ids: Sequence[int]) -> list[Item]:
        with self._lock:
            return self._db().get(ids)

    def by_source(self, source: str) -> Item | None:
        with self._lock:
            return self._db().by_source(source)

    def stamps(self) -> dict[str, str]:
        with self._lock:
            return self._db().stamps()

    def find_hash(self, content_hash: str, guild_id: int | None = None) -> Item | None:
        if not content_hash:
            return None
        with self._lock:
            return self._db().find_hash(content_hash, guild_id)

    def ids(self) -> np.ndarray:
        with self._lock:
            return self._db().ids()

    def vectors(self, ids: Sequence[int] | None = None) -> np.ndarray:
        with self._lock:
            return self._db().vectors(ids)

    @property
    def index_description(self) -> str:
        with self._lock:
            head, notes = self._ix.describe()
            if self._ix.fallback and not self._bg.running:
                notes.append(f"{self._ix.wanted} is trained once there are enough items")
            if self._bg.running:
                notes.append(f"{self._bg.target} being built in the background")
            return f"{head} ({'; '.join(notes)})"

    @property
    def rebuilding(self) -> bool:
        with self._lock:
            return self._bg.running

    def wait_for_rebuild(self, timeout: float | None = None) -> bool:
        return self._bg.wait(timeout)

    # -- search ------------------------------------------------------------------------

    def search(
        self, query: np.ndarray, k: int, offset: int = 0, where: PostFilter | None = None
    ) -> list[tuple[int, float]]:
        if k <= 0:
            return []
        offset = max(0, int(offset))
        q = checked_query(query, self._dim, f"collection {self.path}")
        with self._lock:
            self._db()
            self._refresh()
            index = self._ix.index
            assert index is not None
            n = int(index.ntotal)
            if n == 0 or offset >= n:
                return []
            if where is None:
                scores, labels = index.search(q[None, :], min(n, offset + int(k)))
                scores, labels = scores[0], labels[0]
            else:
                facts = self._follow_posts(index)
                plan = self._filters.plan(where, self._facts.reads, lambda: facts.allowed(where))
                if offset >= plan.allowed.count:
                    return []
                depth = min(plan.allowed.count, offset + int(k))
                scores, labels = self._filters.search(
                    index, q, depth, plan, self._ix.params, self._db().vectors
                )
        hits = [(int(i), float(s)) for s, i in zip(scores, labels, strict=True) if i >= 0]
        return hits[offset : offset + int(k)]

    def has_posts(self) -> bool:
        with self._lock:
            return self._db().conn.execute("SELECT 1 FROM posts LIMIT 1").fetchone() is not None

    def _posts_version(self) -> tuple[int, int]:
        """Changes whenever the database does: another connection's commit (SQLite's
        data_version) or one of ours (every write of ours also moves the index). Lock held."""
        conn = self._db().conn
        return int(conn.execute("PRAGMA data_version").fetchone()[0]), self._writes

    def _follow_posts(self, index: Any) -> PostFacts:
        """The posts' facts, brought up to the database when it changed (only the posts
        appended, when that is all that happened: facts.py), and the filter plans with
        them: kept and extended across appends, dropped otherwise. Lock held."""
        self._filters.index_changed((self._ix.loads, self._removes))
        version = self._posts_version()
        if version != self._facts_seen:
            change = self._facts.refresh(self._db().conn)
            self._facts_seen = version
            if change.appended is not None and len(change.appended):
                self._filters.appended(change.appended, index, self._db().vectors)
        assert self._facts.facts is not None
        return self._facts.facts

    # -- writing -----------------------------------------------------------------------

    def add(self, items: Sequence[NewItem], vectors: np.ndarray) -> list[int]:
        """Store a batch in one transaction; an existing source keeps its id. Returns ids."""
        items = list(items)
        rows = [item_values(it) for it in items]
        vecs = prepare_vectors(vectors, len(items), self._dim, [it.source for it in items])
        if not items:
            return []
        blobs = [v.tobytes() for v in vecs]
        now = time.time()

        def body(conn: sqlite3.Connection) -> tuple[list[int], dict[int, int], set[int]]:
            ids, changed, replaced = ItemTable.upsert(conn, rows, blobs, now)
            for item_id, values in zip(ids, rows, strict=True):
                if posts.is_post(values):
                    posts.record(conn, item_id, values)
            return ids, changed, replaced

        with self._lock:
            try:
                ids, changed, replaced = self._write(body)
            except (sqlite3.Error, OverflowError) as e:
                raise StoreError(f"cannot add to collection {self.path}: {e}") from e
            self._bg.note_written(changed)
            if replaced:
                self._removes += 1
                self._ix.remove(sorted(replaced))
            if changed:
                new_ids = np.fromiter(changed.keys(), dtype=np.int64, count=len(changed))
                self._ix.add(vecs[list(changed.values())], new_ids)
        return ids

    def remove(self, ids: Iterable[int]) -> int:
        """Delete items by id; returns how many rows went."""
        wanted = sorted({int(i) for i in ids})
        if not wanted:
            return 0
        return len(self._remove_with(lambda conn: ItemTable.delete_ids(conn, wanted)))

    def remove_where(
        self,
        *,
        guild_id: int,
        channel_id: int | None = None,
        message_ids: Iterable[int] | None = None,
    ) -> list[int]:
        messages = None if message_ids is None else sorted({int(m) for m in message_ids})
        if messages is not None and not messages:
            return []
        return sorted(
            self._remove_with(
                lambda conn: ItemTable.delete_where(conn, guild_id, channel_id, messages)
            )
        )

    # -- perceptual hashes of items stored before them (index/rehash.py) ----------------

    @property
    def location(self) -> str:
        return f"collection {self.path}"

    @property
    def readonly(self) -> bool:
        with self._lock:
            return self._db().readonly

    def unhashed_ids(self) -> list[int]:
        with self._lock, self._sqlite_errors("read"):
            return self._db().unhashed_ids()

    def count_unhashed(self) -> int:
        with self._lock, self._sqlite_errors("read"):
            return self._db().count_unhashed()

    def set_phashes(self, hashes: dict[int, str]) -> int:
        with self._lock, self._sqlite_errors("store perceptual hashes in"):
            return self._write(lambda conn: ItemTable.set_phashes(conn, hashes), lambda _: False)

    @contextlib.contextmanager
    def _sqlite_errors(self, doing: str):
        """SQLite's errors as one StoreError line naming the collection."""
        try:
            yield
        except sqlite3.Error as e:
            raise StoreError(f"cannot {doing} collection {self.path}: {e}") from e

    # -- provenance: the Discord posts of the pictures (posts.py) --------------------------

    def add_posts(self, new_posts: Sequence[NewItem]) -> list[int | None]:
        """Record more posts of pictures already stored (a picture posted again).

        Each points at the item stored under its source, else the oldest item with its
        content hash in its guild; returns each post's item id (None: no such picture,
        nothing recorded). Items added by add() record their own post already. One
        transaction; recording a post again updates it.
        """
        new_posts = list(new_posts)
        if not new_posts:
            return []
        with self._lock:
            try:
                return self._write(lambda conn: posts.link(conn, new_posts), lambda _: False)
            except (sqlite3.Error, OverflowError) as e:
                raise StoreError(f"cannot record posts in collection {self.path}: {e}") from e

    def known(self, sources: Iterable[str]) -> set[str]:
        """Those of `sources` already stored, as an item or as a post of one."""
        with self._lock:
            return posts.known(self._db().conn, sources)

    def posts(
        self,
        guild_id: int,
        *,
        channel_id: int | None = None,
        message_ids: Iterable[int] | None = None,
        item_ids: Iterable[int] | None = None,
    ) -> list[Post]:
        """A guild's posts (of one channel; of some messages or of some items), oldest first."""
        messages = None if message_ids is None else list(message_ids)
        items = None if item_ids is None else list(item_ids)
        with self._lock:
            return posts.select(self._db().conn, guild_id, channel_id, messages, items)

    def forget_posts(
        self,
        *,
        guild_id: int,
        channel_id: int | None = None,
        message_ids: Iterable[int] | None = None,
        attachment_ids: Iterable[int] | None = None,
        keep_attachments: Iterable[int] | None = None,
    ) -> Forgotten:
        """Forget a guild's posts, and what they alone kept, in ONE transaction.

        Which posts: those of `channel_id`, of `message_ids` (in any channel of the guild
        unless channel_id is given), of `attachment_ids`, all that apply; with
        `keep_attachments` (the attachments a message still has after an edit) all but
        those. At least one of channel_id, message_ids, attachment_ids is needed.
        A picture whose item named a forgotten post is re-pointed at its oldest post left
        (same id, same vector); one with no post left is removed, its vector too.
        Returns the posts forgotten, the items removed and the items re-pointed.
        """
        messages = None if message_ids is None else list(message_ids)
        attachments = None if attachment_ids is None else list(attachment_ids)
        if messages is not None and not messages:
            return Forgotten()

        def body(conn: sqlite3.Connection) -> Forgotten:
            return posts.forget(conn, guild_id, channel_id, messages, attachments, keep_attachments)

        with self._lock:
            try:
                out = self._write(body, lambda f: bool(f.removed))  # re-pointing keeps vectors
            except sqlite3.Error as e:
                raise StoreError(f"cannot forget posts in collection {self.path}: {e}") from e
            if out.removed:
                self._bg.note_written(out.removed)
                self._removes += 1
                self._ix.remove(out.removed)
        return out

    # -- records (records.py) -------------------------------------------------------------

    def read_record(self, name: str) -> str | None:
        """The record's value (table `records` of meta.sqlite), None when there is none."""
        records.checked(name, None, f"collection {self.path}")
        with self._lock:
            return records.read(self._db().conn, name)

    def all_records(self) -> dict[str, str]:
        """name -> value of every record (table `records`)."""
        with self._lock:
            return records.read_all(self._db().conn)

    def write_record(self, name: str, value: str | None) -> None:
        """Set the record (None deletes it), in one transaction."""
        records.checked(name, value, f"collection {self.path}")
        with self._lock:
            try:
                self._write(lambda conn: records.write(conn, name, value), lambda _: False)
            except sqlite3.Error as e:
                raise StoreError(f"cannot write record {name} in collection {self.path}: {e}") from e

    def save(self) -> None:
        """Write vectors.faiss (+ its sidecar) if the in-memory index differs from it.

        Raises StoreError when it cannot (a build wants to know); a read-only collection
        has nothing to save, its index lives in memory.
        """
        with self._lock:
            self._db()
            self._refresh()
            if self._ix.dirty and not self._db().readonly:
                try:
                    self._write_index_file()
                except (OSError, RuntimeError) as e:
                    raise StoreError(f"cannot write {self.path / VECTORS}: {_reason(e)}") from e

    def close(self) -> None:
        """Save if dirty, then close SQLite. Idempotent. Never fails for want of disk
        space: vectors.faiss is a cache (see _save_or_warn).

        A background rebuild in progress is abandoned, not waited for: its thread reads
        only its own snapshot connection and drops its result; the next open starts again.
        """
        with self._lock:
            if self._table is None:
                return
            self._bg.stop()
            try:
                # Our own unsaved work is saved; if someone wrote after us, the next opener
                # (or that writer) brings vectors.faiss up to date instead.
                if (
                    not self._table.readonly
                    and self._ix.dirty
                    and self._table.state("generation") == self._ix.gen
                ):
                    self._refresh()
                    if self._ix.dirty:
                        self._save_or_warn()
            finally:
                self._table.close()
                self._table = None

    # -- internals: SQLite -------------------------------------------------------------

    def _db(self) -> ItemTable:
        if self._table is None:
            raise StoreError(f"collection {self.path} is closed")
        return self._table

    def _ensure_posts_table(self) -> None:
        """A collection from before the posts table gets it, filled from its items."""
        table = self._db()
        if posts.has_table(table.conn):
            return
        if table.readonly:
            posts.view_from_items(table.conn)
            return
        try:
            table.write(
                lambda conn: posts.has_table(conn) or posts.create_and_fill(conn),
                lambda _: False,
            )
        except sqlite3.Error as e:
            raise StoreError(f"cannot add the posts table to {table.db}: {e}") from e

    def _write(
        self,
        body: Callable[[sqlite3.Connection], Any],
        items_changed: Callable[[Any], bool] | None = None,
    ) -> Any:
        """Run body in one write transaction (see ItemTable.write); keep our index in step.

        Lock held. If someone else wrote since our index was made, it is marked stale.
        """
        self._writes += 1
        result, before, after = self._db().write(body, items_changed)
        if after is None:
            return result
        if before != self._ix.gen:
            self._ix.stale = True
        self._ix.gen = after
        self._ix.dirty = True
        return result

    def _remove_with(self, delete: Callable[[sqlite3.Connection], list[int]]) -> list[int]:
        """Delete items (and their posts) in one transaction; keep the index in step."""

        def body(conn: sqlite3.Connection) -> list[int]:
            gone = delete(conn)
            posts.drop_of_items(conn, gone)
            return gone

        with self._lock:
            try:
                gone = self._write(body, items_changed=bool)
            except sqlite3.Error as e:
                raise StoreError(f"cannot remove from collection {self.path}: {e}") from e
            if gone:
                self._bg.note_written(gone)
                self._removes += 1
                self._ix.remove(gone)
        return gone

    # -- internals: the FAISS index ----------------------------------------------------

    def _refresh(self) -> None:
        """Bring the index up to the current generation and the index-type policy. Lock held."""
        if self._db().state("generation") != self._ix.gen:
            self._ix.stale = True
        if self._ix.stale:
            self._load_or_rebuild(save=False)
        elif self._rebuild_wanted():
            self._policy_rebuild()

    def _rebuild_wanted(self) -> bool:
        ix = self._ix
        assert ix.index is not None
        return tuning.rebuild_wanted(
            int(ix.index.ntotal),
            auto=self.manifest.index_type == "auto",
            factory=ix.factory,
            fallback=ix.fallback,
            trainable=ix.trainable,
            trained_n=ix.trained_n,
        )

    def _policy_rebuild(self) -> None:
        """The index is valid but not the type the policy wants. Lock held."""
        if not self.background_rebuilds:
            self._rebuild()
            return
        assert self._ix.index is not None
        n = int(self._ix.index.ntotal)
        index_type = self.manifest.index_type
        epoch = self._ix.loads

        def build(cancel: threading.Event) -> Built | None:
            table = ItemTable.open(self.path / META, self._dim)  # our own snapshot, no lock
            try:
                return build_index(table, index_type, cancel)
            finally:
                table.close()

        def finish(built: Built, touched: set[int]) -> None:
            if self._table is not None:
                self._swap_in(built, epoch, touched)

        self._bg.start(
            tuning.choose_factory(n) if index_type == "auto" else index_type,
            build,
            finish,
            keeping=lambda: self._ix.factory,
        )

    def _load_or_rebuild(self, *, save: bool) -> None:
        if not self._try_load():
            self._rebuild()
            if save:
                self._save_or_warn()
        elif self._rebuild_wanted():
            self._policy_rebuild()

    def _try_load(self) -> bool:
        """Load vectors.faiss if it provably reflects the current SQLite state."""
        table = self._db()
        with table.snapshot():
            gen, count = table.state("generation"), table.count()
        index_type = self.manifest.index_type
        built = read_index_file(
            self.path,
            gen=gen,
            count=count,
            uid=self._uid,
            dim=self._dim,
            factories=None if index_type == "auto" else (index_type, "Flat"),
        )
        if built is None:
            return False
        self._ix.use(built, gen, from_file=True)
        return True

    def _rebuild(self) -> None:
        """Build the index afresh from SQLite and use it. Lock held."""
        built = build_index(self._db(), self.manifest.index_type)
        assert built is not None
        self._ix.use(built, built.gen, from_file=False)
        self._report(built)

    def _swap_in(self, built: Built, epoch: int, touched: set[int]) -> None:
        """Use a background-built index, brought up to date with our writes since. Lock held.

        Our writes since the build began (`touched` ids: added, changed or removed, some
        perhaps already in the snapshot) are re-applied from SQLite: each is removed from
        the new index and added again with its current vector if it still exists, so none
        is lost or doubled. If the index was reloaded or rebuilt meanwhile, or another
        process wrote (our index is stale), the result is dropped: the next refresh decides.
        """
        table = self._db()
        if epoch != self._ix.loads or self._ix.stale or table.state("generation") != self._ix.gen:
            return
        index = built.index
        if touched:
            if not can_remove_in_place(index):
                raise StoreError(f"{built.factory} cannot remove ids: writes came meanwhile")
            wanted = sorted(touched)
            index.remove_ids(np.asarray(wanted, dtype=np.int64))
            found = table.vector_blobs(wanted)
            if found:
                ids = np.fromiter(found.keys(), dtype=np.int64, count=len(found))
                index.add_with_ids(table.decode(list(found.values())), ids)
        self._ix.use(built, self._ix.gen, from_file=False)
        self._report(built)

    def _report(self, built: Built) -> None:
        if built.nonfinite:
            log.warning(nonfinite_note(self.path, built.nonfinite))

    def _save_or_warn(self) -> None:
        """Write vectors.faiss where a failure must not fail the caller (an open, a close).

        vectors.faiss is a cache of meta.sqlite: when it cannot be written (a full disk)
        the index stays in memory, the next open rebuilds it, and this is said once.
        """
        try:
            self._write_index_file()
        except (OSError, RuntimeError) as e:
            if not self._cache_warned:
                self._cache_warned = True
                log.warning(
                    "cannot write %s (%s): the index is kept in memory and rebuilt at the "
                    "next open; free some space to save it",
                    self.path / VECTORS,
                    _reason(e),
                )

    def _write_index_file(self) -> None:
        """vectors.faiss and its sidecar for the index in memory. Lock held."""
        write_index_file(self.path, self._ix, uid=self._uid, dim=self._dim)


def _reason(e: BaseException) -> str:
    """One line of an OSError or of FAISS's multi-line C++ message."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    lines = [line for line in str(e).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(e).__name__
