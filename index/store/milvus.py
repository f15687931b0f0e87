"""A collection kept in Milvus: the same interface as the embedded FAISS+SQLite store.

Everything lives in Milvus, nothing only on this machine, so several processes (bot
shards, a CLI build) that share one Milvus see one collection:

- one Milvus collection per clipfind collection; each row is one item: its vector (the
  L2-normalised vector, rounded through float16 exactly as the embedded store keeps it, so
  both stores rank alike) and every field of `Item` (source, title, credit, page_url, the
  Discord guild/channel/message/attachment/author ids, posted_at, content hash, stamp,
  added_at, and the perceptual hash `phash` (nullable); a collection made before that
  field gets it where the server can add a field (Milvus 2.6), else (Milvus Lite) it goes
  on without: its items have no perceptual hash, and near-copies fall back to the cosine);
- the manifest (model, dim, index type, format version) is a property of that Milvus
  collection (`clipfind.manifest`, JSON);
- `guild_id` is the partition key (0 for items from no Discord server), so a server's
  library is its own partition on a cluster and a filter on it prunes the others.

A store opened with `guild_id=G` is that server's view: every count, get, search and
delete carries `guild_id == G`, so one server never sees or touches another's items,
even when all servers' libraries share one Milvus collection. `view(G)` makes such a
view over an open store's connection.

Ranking is the inner product (metric IP) on L2-normalised vectors, as with FAISS.
Deletes are Milvus deletes: a deleted item is never returned again.

Connection faults: opening a store that cannot be reached raises `StoreUnavailable`
naming the URI. A store that becomes unreachable later raises `StoreUnavailable` with
the fixed line "the image store is unreachable right now, try again shortly" from every
call; pymilvus reconnects by itself on the next call, and a collection the restarted
server has not loaded yet is loaded again here, so service resumes with nothing to do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import numpy as np
from pymilvus import DataType, MilvusClient

from index.errors import ModelMismatch, StoreError, StoreUnavailable
from index.phash import storable as phash_storable

from . import records
from .base import VectorStore, checked_query
from .filtered import PostFilter
from .items import Item, NewItem
from .manifest import Manifest
from .posts import Forgotten, Post

FORMAT_VERSION = 1
MANIFEST_KEY = "clipfind.manifest"
UNREACHABLE = StoreUnavailable().args[0]  # the one line every call gives while it lasts

# index_type -> (Milvus index type, build params, search params). "auto" is HNSW: the
# approximate index Milvus (Lite and server) supports that keeps recall@10 above 0.95
# with ef=EF_SEARCH (measured: bench/RESULTS.md); FLAT is exact, IVF_FLAT for clusters.
EF_SEARCH = 128
INDEX_TYPES: dict[str, tuple[str, dict[str, int], dict[str, int]]] = {
    "auto": ("HNSW", {"M": 16, "efConstruction": 200}, {"ef": EF_SEARCH}),
    "HNSW": ("HNSW", {"M": 16, "efConstruction": 200}, {"ef": EF_SEARCH}),
    "FLAT": ("FLAT", {}, {}),
    "IVF_FLAT": ("IVF_FLAT", {"nlist": 1024}, {"nprobe": 64}),
}
MAX_TOPK = 16384  # Milvus caps offset + limit of one search at this
CONNECT_TIMEOUT = 10.0  # seconds to reach the server when opening
CALL_TIMEOUT = 60.0  # seconds for one call that writes or reads many rows
SEARCH_TIMEOUT = 10.0  # seconds for one search: a member waits on it

_IN_CHUNK = 1000  # ids per `id in [...]` filter
_ITER_BATCH = 4000  # rows per query-iterator batch
_TEXT_MAX = 65535  # Milvus VARCHAR max_length (bytes)
_INT_FIELDS = ("channel_id", "message_id", "attachment_id", "author_id")
_TEXT_FIELDS = ("source", "title", "credit", "page_url", "content_hash", "stamp")
_ITEM_FIELDS = ["id", "guild_id", *_INT_FIELDS, "posted_at", *_TEXT_FIELDS, "added_at"]
_PHASH_MAX = 64  # hex digits of a perceptual hash (index/phash.py)
_UNHASHED = 'phash is null and content_hash != ""'  # read from a picture, no perceptual hash
_POST_FIELDS = ("source", "guild_id", "channel_id", "message_id", "attachment_id", "author_id",
                "posted_at", "title", "page_url")  # as index.store.posts.Post, less item_id
_POST_KEYS = ("guild_id", "channel_id", "message_id", "attachment_id")  # all set: a post
_FACTS = ("guild_id", "channel_id", "author_id", "posted_at")  # what a filter reads of a post
# an item row that is a post (as _is_post says): its channel, author and time are that post's
_ROW_IS_POST = " and ".join(f"{k} != 0" for k in _POST_KEYS)  # null != 0 is false in Milvus
ON_ROW = "on_row"  # posts field: this post's facts are its item row's (see search)
# A filtered search widens its HNSW walk by the share of items the filter allows. That share
# is estimated from the allowed items among a slice of the id space (ids are hashes: any
# slice is a uniform sample) holding about SHARE_SLICE of the view's items, read by the
# same query that reads the reposts: no count (Milvus Lite reads every row a query or
# count(*) matches, ~0.06 ms a row: a count of a whole guild of 20k took over a second).
# ef goes with 1/sqrt(share): a share known to 50% moves it by 25%.
SHARE_SLICE = 400
SHARE_HITS = 16  # a guild's size is counted in a slice 16x wider until this many are in it
# Few allowed (about EXACT_ROWS / 2 or fewer, under EXACT_SHARE of the view): the graph walk
# would meet almost none, so their vectors are read (at most EXACT_ROWS) and ranked exactly.
EXACT_ROWS = 256
EXACT_SHARE = 0.02
SIZE_TTL_S = 60.0  # how long a view's size (the share's denominator) is reused
_SIZES: dict[tuple[str, str, int | None], tuple[float, int]] = {}  # -> (monotonic time, size)
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,254}$")
_INT64_MAX = 2**63 - 1

log = logging.getLogger(__name__)
# pymilvus logs every failed RPC with a traceback; an unreachable store is reported by
# this module in one line instead (the bot keeps serving and says so to the member).
logging.getLogger("pymilvus").setLevel(logging.CRITICAL)
# Milvus Lite's server runs in this process and logs, with a traceback, each call it does
# not implement (adding a field to an old collection): answered in one line here instead.
logging.getLogger("grpc._server").setLevel(logging.CRITICAL)

T = TypeVar("T")
_DOWN: dict[str, bool] = {}  # URIs whose last call found them unreachable (for the log)
_LITE_WRITES: dict[str, threading.Lock] = {}  # Milvus Lite: one add (+ flush) at a time


def _write_lock(uri: str, lite: bool) -> Any:
    if not lite:
        return contextlib.nullcontext()
    return _LITE_WRITES.setdefault(uri, threading.Lock())


def item_id(source: str, salt: int = 0) -> int:
    """The int64 id of the item with this source (the `salt`-th candidate on a clash).

    Ids are not handed out by a counter (Milvus has none that two writers could share):
    an item's id is a 63-bit hash of its source. Two processes adding at once therefore
    never collide on a counter, and two processes adding the same source write the same
    row (an upsert), never two. Two different sources meeting on one id (about 1 in 10^7
    at a million items) is seen at add time: the later one takes its next candidate
    (salt 1, 2, ...), as does a source another server's view already holds. Removing
    an item and adding the same source again gives back the same id; a different source
    never gets a removed item's id.
    """
    key = source.encode("utf-8") if not salt else f"{salt}\x00{source}".encode()
    value = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") & _INT64_MAX
    return value or 1


def collection_name(path: str | Path) -> str:
    """The Milvus collection a collection path names: its last component, as Milvus spells names."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", Path(path).name) or "clipfind"
    return ("c_" + name if name[0].isdigit() else name)[:255]


def index_kind(index_type: str) -> str:
    """`index_type` as a key of INDEX_TYPES ('auto', 'FLAT', ...); StoreError if none."""
    key = "auto" if str(index_type).lower() == "auto" else str(index_type).upper()
    if key not in INDEX_TYPES:
        raise StoreError(
            f"invalid Milvus index type {index_type!r}: give one of {', '.join(INDEX_TYPES)}"
        )
    return key


def redact(uri: str) -> str:
    """The URI without any user:password part (a token never reaches a message or log)."""
    try:
        parts = urlsplit(uri)
    except ValueError:
        return "<unparseable URI>"
    if parts.username is None and parts.password is None:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def is_local(uri: str) -> bool:
    """Whether `uri` names a Milvus Lite file run in this process (not a server)."""
    return "://" not in uri and not uri.startswith("unix:")


def _unreachable(e: BaseException) -> bool:
    """Whether a pymilvus/gRPC error means the server cannot be reached (vs. refused us)."""
    try:
        import grpc
    except ImportError:  # pragma: no cover - pymilvus depends on grpc
        grpc = None
    if grpc is not None and isinstance(e, grpc.RpcError):
        code = e.code() if callable(getattr(e, "code", None)) else None
        return code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    text = str(getattr(e, "message", "") or e).lower()
    code = getattr(e, "code", None)
    return code == 2 or any(
        s in text
        for s in ("fail connecting", "server unavailable", "connection refused", "deadline")
    )


def _not_loaded(e: BaseException) -> bool:
    text = str(getattr(e, "message", "") or e).lower()
    return getattr(e, "code", None) == 101 or "not loaded" in text or "call load()" in text


def _one_line(e: BaseException) -> str:
    text = str(getattr(e, "message", "") or e).strip() or type(e).__name__
    return text.splitlines()[0]


class MilvusStore(VectorStore):
    """One clipfind collection in Milvus (optionally one guild's view of it). Thread-safe.

    Open with `MilvusStore.create(uri, name, model, dim)` or `MilvusStore.open(uri, name)`;
    `uri` is a Milvus server (`http://host:19530`, with `token`) or a Milvus Lite file
    (`/path/file.db`, run in this process).
    """

    manifest: Manifest
    uri: str
    name: str
    guild_id: int | None

    # -- opening ---------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        uri: str | Path,
        name: str,
        model: str,
        dim: int,
        index_type: str = "auto",
        *,
        token: str | None = None,
        guild_id: int | None = None,
    ) -> MilvusStore:
        """Make collection `name` in the Milvus at `uri`; if it is there, open it (with `model`)."""
        uri = str(uri)
        client = _connect(uri, token)
        try:
            _check_name(name)
            if _call(lambda: client.has_collection(name), uri, at_open=True):
                store = cls(client, uri, name, None, guild_id=guild_id, owns_client=True)
                have = store.manifest
                if have.dim != dim or have.model != model:
                    store._owns_client = False  # released below
                    store.close()
                    error = ModelMismatch if have.model != model else StoreError
                    raise error(
                        f"{store.location} holds {have.dim}-d vectors of model {have.model}, "
                        f"not {dim}-d vectors of model {model}; open it with --model "
                        f"{have.model} or use another collection name"
                    )
                return store
            if not isinstance(model, str) or not model:
                raise StoreError(f"cannot create Milvus collection {name}: model spec {model!r} is empty")
            if not isinstance(dim, int) or isinstance(dim, bool) or not 2 <= dim <= 32768:
                raise StoreError(
                    f"cannot create Milvus collection {name}: dim {dim!r} is not an integer in 2..32768"
                )
            index_type = index_kind(index_type)
            _call(lambda: _create_or_join(
                client, name, lambda c: _create_collection(c, name, model, dim, index_type)),
                uri, at_open=True)
            return cls(client, uri, name, model, guild_id=guild_id, owns_client=True)
        except BaseException:
            _release(client)
            raise

    @classmethod
    def open(
        cls,
        uri: str | Path,
        name: str,
        model: str | None = None,
        *,
        token: str | None = None,
        guild_id: int | None = None,
    ) -> MilvusStore:
        """Open existing collection `name`; `model`, when given, must be the one that built it."""
        uri = str(uri)
        client = _connect(uri, token)
        try:
            _check_name(name)
            if not _call(lambda: client.has_collection(name), uri, at_open=True):
                raise StoreError(
                    f"Milvus at {redact(uri)} has no collection {name}; build one with: "
                    f"python -m index build --store milvus --milvus-uri URI --index {name} SOURCE"
                )
            return cls(client, uri, name, model, guild_id=guild_id, owns_client=True)
        except BaseException:
            _release(client)
            raise

    @staticmethod
    def exists(uri: str | Path, name: str, *, token: str | None = None) -> bool:
        """Whether the Milvus at `uri` holds collection `name`."""
        uri = str(uri)
        client = _connect(uri, token)
        try:
            _check_name(name)
            return bool(_call(lambda: client.has_collection(name), uri, at_open=True))
        finally:
            _release(client)

    def __init__(
        self,
        client: Any,
        uri: str,
        name: str,
        model: str | None,
        *,
        guild_id: int | None = None,
        owns_client: bool = False,
        manifest: Manifest | None = None,
        item_fields: list[str] | None = None,
    ):
        """Use create(), open() or view()."""
        self._client = client
        self._owns_client = owns_client
        self._closed = False
        self._lock = threading.Lock()
        self.uri, self.name = uri, name
        self.guild_id = None if guild_id is None else _int64(guild_id, "guild_id")
        self.background_rebuilds = False  # nothing to rebuild: Milvus indexes by itself
        self.manifest = manifest if manifest is not None else self._read_manifest(model)
        self._dim = self.manifest.dim
        kind, _, search_params = INDEX_TYPES.get(self.manifest.index_type, INDEX_TYPES["auto"])
        self._kind, self._search_params = kind, dict(search_params)
        self._load()
        # the item fields this collection has (one made before `phash` may lack it)
        self._item_fields = item_fields if item_fields is not None else self._fields_with_phash()
        # Milvus Lite searches its unflushed rows by rebuilding them into a matrix per search:
        # its writes are flushed at once so searches go through sealed, indexed segments.
        self._lite = "lite" in str(self._rpc(lambda c: c.get_server_version())).lower()
        self._on_row: bool | None = None  # whether the posts collection has ON_ROW (lazily)
        if owns_client:
            self._ensure_posts()
            self._ensure_records()
            self._has_on_row()  # once here, for every view of it

    def view(self, guild_id: int) -> MilvusStore:
        """This collection as server `guild_id` sees it (shares this store's connection)."""
        self._check_open()
        view = MilvusStore(
            self._client, self.uri, self.name, None, guild_id=guild_id, manifest=self.manifest,
            item_fields=self._item_fields,
        )
        view._on_row = self._on_row
        return view

    def __enter__(self) -> MilvusStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        scope = "" if self.guild_id is None else f", guild_id={self.guild_id}"
        return f"MilvusStore({redact(self.uri)!r}, {self.name!r}, model={self.manifest.model!r}{scope})"

    @property
    def location(self) -> str:
        return f"Milvus collection {self.name} at {redact(self.uri)}"

    # -- reading ---------------------------------------------------------------------

    def __len__(self) -> int:
        rows = self._rpc(
            lambda c: c.query(
                self.name, filter=self._where(), output_fields=["count(*)"], timeout=CALL_TIMEOUT
            )
        )
        return int(rows[0]["count(*)"]) if rows else 0

    def get(self, ids: Sequence[int]) -> list[Item]:
        """Items for `ids` in the given order; ids with no item (in this view) are skipped."""
        wanted = [int(i) for i in ids]
        found = {r["id"]: r for r in self._rows_by_id(wanted, self._item_fields)}
        return [_to_item(found[i]) for i in wanted if i in found]

    def by_source(self, source: str) -> Item | None:
        rows = self._query(f"source == {_quote(source)}", self._item_fields)
        return _to_item(_oldest(rows)) if rows else None

    def stamps(self) -> dict[str, str]:
        """source -> stamp of every item, for incremental builds."""
        return {r["source"]: r["stamp"] for r in self._scan(["source", "stamp"])}

    def find_hash(self, content_hash: str, guild_id: int | None = None) -> Item | None:
        """The oldest item with this content hash (within `guild_id` when given, else any)."""
        if not content_hash:
            return None
        where = f"content_hash == {_quote(content_hash)}"
        if guild_id is not None:
            where += f" and guild_id == {int(guild_id)}"
        rows = self._query(where, self._item_fields)
        return _to_item(_oldest(rows)) if rows else None

    def ids(self) -> np.ndarray:
        got = sorted(int(r["id"]) for r in self._scan(["id"]))
        return np.asarray(got, dtype=np.int64).reshape(-1)

    def vectors(self, ids: Sequence[int] | None = None) -> np.ndarray:
        """float32 (n, dim): the given ids' vectors in that order (all items, id order, if None)."""
        if ids is None:
            rows = sorted(self._scan(["id", "vector"]), key=lambda r: r["id"])
            return self._stack([r["vector"] for r in rows])
        wanted = [int(i) for i in ids]
        found = {r["id"]: r["vector"] for r in self._rows_by_id(wanted, ["id", "vector"])}
        missing = [i for i in wanted if i not in found]
        if missing:
            raise StoreError(f"{self.location} has no item with id {missing[0]}")
        return self._stack([found[i] for i in wanted])

    def _passing(self, where: PostFilter, extra: str = "",
                 fields: Sequence[str] = ("item_id",)) -> list[dict[str, Any]]:
        """The posts rows that pass `where` (and `extra`): one query, or (more pass than a
        query returns) the iterator."""
        cond = " and ".join(f"({c})" for c in (extra, where.milvus()) if c)
        rows = self._rpc(lambda c: c.query(self.posts_name, filter=self._where(cond),
                                           output_fields=list(fields), limit=MAX_TOPK,
                                           timeout=SEARCH_TIMEOUT))
        if len(rows) >= MAX_TOPK:
            rows = self._iterate(self.posts_name, list(fields), cond)
        return rows

    def _filter(self, where: PostFilter) -> tuple[str, int, bool]:
        """The items collection's expression for the items `where` allows, about how many
        it allows, and whether that number is exact.

        A picture matches through ANY of its posts, and all facts of one post must hold
        together, so the vector rows (each carrying one post) cannot answer alone. But each
        item row's channel, author and time are those of one of its posts, the one its posts
        row marks ON_ROW; most items have only that post. So the expression is the filter
        on the row itself, or the ids of the items whose other posts (ON_ROW false: reposts,
        usually few) pass, read from the posts collection. The same query reads the posts
        that pass within a slice of the item ids, which tells the share allowed (see
        SHARE_SLICE). Without ON_ROW (a collection from before it) every allowed id is read
        from the posts collection."""
        if not self._has_on_row():
            allowed = sorted({int(r["item_id"]) for r in self._passing(where)})
            return self._where(f"id in {allowed}"), len(allowed), True
        part = min(1.0, SHARE_SLICE / max(self._size(), 1))
        cut = int(part * _INT64_MAX)
        rows = self._passing(where, f"{ON_ROW} == false or item_id < {cut}" if part < 1.0 else "",
                             ("item_id", ON_ROW))
        others = sorted({int(r["item_id"]) for r in rows if not r[ON_ROW]})
        sampled = len({r["item_id"] for r in rows if part >= 1.0 or r["item_id"] < cut})
        facts = where.milvus()
        row = f"{_ROW_IS_POST} and ({facts})" if facts else _ROW_IS_POST
        # a literal list: Milvus Lite does not take expression templates (filter_params)
        expr = self._where(f"({row}) or id in {others}" if others else row)
        return expr, round(sampled / part), part >= 1.0

    def _has_on_row(self) -> bool:
        if self._on_row is None:
            desc = self._rpc(lambda c: c.describe_collection(self.posts_name, timeout=CALL_TIMEOUT))
            self._on_row = any(f.get("name") == ON_ROW for f in desc.get("fields", []))
        return self._on_row

    def _count(self, expr: str) -> int:
        rows = self._rpc(lambda c: c.query(self.name, filter=expr, output_fields=["count(*)"],
                                           timeout=SEARCH_TIMEOUT))
        return int(rows[0]["count(*)"]) if rows else 0

    def _size(self) -> int:
        """About how many items this view holds (reused SIZE_TTL_S: it only sizes a walk;
        a guild's is counted in a slice of the ids, as SHARE_SLICE says)."""
        key = (self.uri, self.name, self.guild_id)
        now = time.monotonic()
        hit = _SIZES.get(key)
        if hit is not None and now - hit[0] < SIZE_TTL_S:
            return hit[1]
        size = total = self._count("")  # the whole collection: no rows read
        if self.guild_id is not None and total:
            part = min(1.0, SHARE_SLICE / total)
            while True:
                inside = "" if part >= 1.0 else f"id < {int(part * _INT64_MAX)}"
                hits = self._count(self._where(inside))
                if hits >= SHARE_HITS or part >= 1.0:
                    break
                part = min(1.0, part * 16)
            size = round(hits / part)
        _SIZES[key] = (now, size)
        return size

    def has_posts(self) -> bool:
        rows = self._rpc(
            lambda c: c.query(self.posts_name, filter=self._where(), output_fields=["count(*)"],
                              timeout=CALL_TIMEOUT)
        )
        return bool(rows and int(rows[0]["count(*)"]))

    @property
    def index_description(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in sorted(self._search_params.items()))
        kind = "exact" if self._kind == "FLAT" else f"approximate, {knobs}"
        return f"Milvus {self._kind} ({kind})"

    @property
    def rebuilding(self) -> bool:
        """Milvus builds its indexes by itself: never a rebuild of ours in progress."""
        return False

    def wait_for_rebuild(self, timeout: float | None = None) -> bool:
        return True

    # -- search ----------------------------------------------------------------------

    def search(
        self, query: np.ndarray, k: int, offset: int = 0, where: PostFilter | None = None
    ) -> list[tuple[int, float]]:
        """(id, inner product), best first, ranks offset .. offset+k-1 (at most MAX_TOPK deep).

        With `where`: one search whose expression admits the items it allows (see _filter)."""
        if k <= 0:
            return []
        offset = max(0, int(offset))
        q = checked_query(query, self._dim, self.location)
        depth = min(offset + int(k), MAX_TOPK)
        if offset >= depth:
            return []
        expr = self._where()
        params = dict(self._search_params)
        if where is not None:
            expr, count, exact = self._filter(where)
            if exact and offset >= count:
                return []
            size = self._size()
            if count <= EXACT_ROWS // 2 and count < EXACT_SHARE * size:
                rows = self._rpc(lambda c: c.query(
                    self.name, filter=expr, output_fields=["id", "vector"],
                    limit=EXACT_ROWS + 1, timeout=SEARCH_TIMEOUT))
                if len(rows) <= EXACT_ROWS:
                    return _ranked(rows, q)[offset:depth]
                count = len(rows)  # more than the slice said: at least these
            # an HNSW walk (IVF probe) meets allowed items at the rate they are allowed: widen
            # it as the share shrinks (Milvus Lite's filtered HNSW kept half the exact top 10
            # at ef 128 with 1% allowed, all of it at ef 2048; ef/share (12800) cost 8x the
            # unfiltered search, ef/sqrt(share): see bench/RESULTS.md)
            share = min(1.0, max(count, 0.5) / max(size, 1))
            if "ef" in params:
                params["ef"] = min(MAX_TOPK, math.ceil(params["ef"] / math.sqrt(share)))
            if "nprobe" in params:
                nlist = INDEX_TYPES["IVF_FLAT"][1]["nlist"]
                params["nprobe"] = min(nlist, math.ceil(params["nprobe"] / share))
        if "ef" in params:
            params["ef"] = max(params["ef"], depth)  # HNSW needs ef >= the depth asked
        res = self._rpc(
            lambda c: c.search(
                self.name,
                data=[q.tolist()],
                limit=depth,
                filter=expr,
                output_fields=["id"],
                search_params={"metric_type": "IP", "params": params},
                timeout=SEARCH_TIMEOUT,
            )
        )
        hits = [(int(h["id"]), float(h["distance"])) for h in (res[0] if res else [])]
        return hits[offset:depth]

    # -- writing ---------------------------------------------------------------------

    def add(self, items: Sequence[NewItem], vectors: np.ndarray) -> list[int]:
        """Store a batch (one upsert); an existing source keeps its id. Returns ids."""
        items = list(items)
        vecs = self._prepare_vectors(vectors, len(items))
        rows = [self._row(it) for it in items]
        if not items:
            return []
        with _write_lock(self.uri, self._lite):
            return self._add(rows, vecs)

    def _add(self, rows: list[dict[str, Any]], vecs: np.ndarray) -> list[int]:
        ids = self._assign_ids(rows)
        now = time.time()
        existing = {r["id"]: r for r in self._rows_by_id(sorted(set(ids)), ["id", "added_at"])}
        last: dict[int, int] = {}  # id -> batch position of its final version
        for pos, i in enumerate(ids):
            last[i] = pos
        data = []
        for i, pos in last.items():
            row = dict(rows[pos])
            row["id"] = i
            row["added_at"] = float(existing[i]["added_at"]) if i in existing else now
            row["vector"] = vecs[pos].astype(np.float32).tolist()
            data.append(row)
        self._rpc(lambda c: c.upsert(self.name, data, timeout=CALL_TIMEOUT))
        self._record_posts([(row["id"], row, True) for row in data if _is_post(row)])
        self._settle(self.name)
        return ids

    def remove(self, ids: Iterable[int]) -> int:
        """Delete items by id (in this view); returns how many went."""
        wanted = sorted({int(i) for i in ids})
        gone = [r["id"] for r in self._rows_by_id(wanted, ["id"])]
        self._delete(gone)
        return len(gone)

    def remove_where(
        self,
        *,
        guild_id: int,
        channel_id: int | None = None,
        message_ids: Iterable[int] | None = None,
    ) -> list[int]:
        """Delete a guild's items (of one channel, of some messages); returns removed ids."""
        where = f"guild_id == {_int64(guild_id, 'guild_id')}"
        if channel_id is not None:
            where += f" and channel_id == {_int64(channel_id, 'channel_id')}"
        messages = None if message_ids is None else sorted({int(m) for m in message_ids})
        if messages is not None and not messages:
            return []
        gone: list[int] = []
        if messages is None:
            gone = [r["id"] for r in self._scan(["id"], where)]
        else:
            for chunk in _chunks(messages):
                rows = self._query(f"{where} and message_id in {list(chunk)}", ["id"])
                gone.extend(r["id"] for r in rows)
        self._delete(gone)
        return sorted(gone)

    def save(self) -> None:
        """Nothing to do: every write is in Milvus when the call returns."""
        self._check_open()

    def close(self) -> None:
        """Let go of the connection (a view leaves its parent's open). Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._owns_client:
            _release(self._client)

    # -- provenance: the Discord posts of the pictures --------------------------------
    # Kept in the companion collection `<name>_posts` (one row per post, keyed by its source,
    # guild id as partition key; ON_ROW marks the post whose facts its item row carries, so
    # a filtered search reads only the others). Milvus has no transaction over two
    # collections: every change is ordered so that a crash leaves a state the same call,
    # run again, completes (a post not yet marked ON_ROW is found through this collection).

    def add_posts(self, new_posts: Sequence[NewItem]) -> list[int | None]:
        """Record more posts of pictures already stored (a picture posted again).

        Each points at the item stored under its source, else the oldest item with its
        content hash in its guild; None (not recorded) where no such picture is stored."""
        rows = [self._row(p) for p in new_posts]
        for p, row in zip(new_posts, rows, strict=True):
            if not _is_post(row):
                raise StoreError(
                    f"{p.source} is not a Discord post (guild, channel, message, attachment)"
                )
        by_source = self._oldest_by("source", {None: [r["source"] for r in rows]})
        by_hash = self._oldest_by("content_hash", {  # per guild, those not stored by source
            g: [r["content_hash"] for r in rows
                if r["guild_id"] == g and r["content_hash"] and r["source"] not in by_source]
            for g in {r["guild_id"] for r in rows}})
        out: list[int | None] = []
        found: list[tuple[int, dict[str, Any], bool]] = []
        stale: dict[int, dict[str, Any]] = {}  # item -> its own post, with other facts
        for row in rows:
            item = by_source.get(row["source"])
            if item is None and row["content_hash"]:
                item = by_hash.get((row["guild_id"], row["content_hash"]))
            out.append(None if item is None else item.id)
            if item is not None:  # its item row carries it if it is that row's own post
                found.append((item.id, row, item.source == row["source"]))
                if item.source == row["source"] and any(
                        getattr(item, k) != row[k] for k in _FACTS if k != "guild_id"):
                    stale[item.id] = row
        if stale:  # its own post recorded again with other facts: the row takes them first
            current = self._rows_by_id(sorted(stale), ["*"])  # every field: an upsert is whole
            fresh = [{**r, **{k: stale[r["id"]][k] for k in _POST_FIELDS if k != "guild_id"}}
                     for r in current]
            self._rpc(lambda c: c.upsert(self.name, fresh, timeout=CALL_TIMEOUT))
        self._record_posts(found)
        return out

    def _oldest_by(self, field: str, wanted: dict[int | None, list[str]]) -> dict[Any, Item]:
        """The oldest item for each value of `field` (a string field), a few queries per
        batch rather than one per value: {value: item} for the values of key None, and
        {(guild, value): item} for those of a guild key (looked up within that guild)."""
        out: dict[Any, Item] = {}
        for guild, values in wanted.items():
            rows: dict[str, list[dict[str, Any]]] = {}
            for chunk in _chunks(sorted(set(values))):
                where = f"{field} in {_quote_list(chunk)}"
                if guild is not None:
                    where += f" and guild_id == {int(guild)}"
                for r in self._query(where, self._item_fields):
                    rows.setdefault(r[field], []).append(r)
            for value, found in rows.items():
                out[value if guild is None else (guild, value)] = _to_item(_oldest(found))
        return out

    def known(self, sources: Iterable[str]) -> set[str]:
        """Those of `sources` already stored, as an item or as a post of one."""
        wanted = sorted({str(s) for s in sources})
        out: set[str] = set()
        for chunk in _chunks(wanted):
            where = f"source in {_quote_list(chunk)}"
            out.update(r["source"] for r in self._query(where, ["source"]))
            out.update(r["source"] for r in self._post_rows(where))
        return out

    def posts(
        self,
        guild_id: int,
        *,
        channel_id: int | None = None,
        message_ids: Iterable[int] | None = None,
        item_ids: Iterable[int] | None = None,
    ) -> list[Post]:
        """A guild's posts (of one channel; of some messages or of some items), oldest first."""
        if message_ids is not None and item_ids is not None:
            raise StoreError("posts: give message ids or item ids, not both")
        rows = self._posts_where(guild_id, channel_id, message_ids, item_ids)
        return sorted((_to_post(r) for r in rows), key=lambda p: (p.message_id, p.attachment_id))

    def forget_posts(
        self,
        *,
        guild_id: int,
        channel_id: int | None = None,
        message_ids: Iterable[int] | None = None,
        attachment_ids: Iterable[int] | None = None,
        keep_attachments: Iterable[int] | None = None,
    ) -> Forgotten:
        """Forget posts; re-point each item that named one at its oldest post left, remove
        (with its vector) each item left without posts.

        Order: items re-pointed, then orphaned items removed, then the posts forgotten; a
        crash part-way leaves the posts to forget in place, so the same call completes it."""
        if channel_id is None and message_ids is None and attachment_ids is None:
            raise StoreError(
                "forget_posts needs a channel, message ids or attachment ids; "
                "to drop a whole server's library, drop its collection"
            )
        rows = self._posts_where(guild_id, channel_id, message_ids, None)
        if attachment_ids is not None:
            wanted = {int(a) for a in attachment_ids}
            rows = [r for r in rows if r["attachment_id"] in wanted]
        if keep_attachments is not None:
            keep = {int(a) for a in keep_attachments}
            rows = [r for r in rows if r["attachment_id"] not in keep]
        out = Forgotten(posts=sorted(r["source"] for r in rows))
        if not rows:
            return out
        gone = set(out.posts)
        items = sorted({int(r["item_id"]) for r in rows})
        heirs: dict[int, dict[str, Any]] = {}  # item -> its oldest post left
        left = [r for r in self._posts_where(guild_id, None, None, items) if r["source"] not in gone]
        for r in sorted(left, key=lambda r: (r["message_id"], r["attachment_id"])):
            heirs.setdefault(int(r["item_id"]), r)
        current = {int(r["id"]): r for r in self._rows_by_id(items, [*self._item_fields, "vector"])}
        orphans = [i for i in items if i not in heirs and i in current]
        repoint = []
        for item_id, heir in heirs.items():
            row = current.get(item_id)
            if row is None or row["source"] not in gone:
                continue  # the post it names is still there
            holder = self.by_source(heir["source"])
            if holder is not None and holder.id != item_id:  # cannot happen if consistent
                orphans.append(item_id)
                continue
            new = {k: row[k] for k in (*self._item_fields, "vector")}
            for k in _POST_FIELDS:
                if k != "guild_id":
                    new[k] = heir[k]
            repoint.append(new)
            out.repointed[item_id] = heir["source"]
        if repoint:
            self._rpc(lambda c: c.upsert(self.name, repoint, timeout=CALL_TIMEOUT))
        # then the posts left that their rows now carry are marked so (a crash before this
        # leaves them found through the posts collection; the same call, run again, marks)
        self._record_posts([
            (int(r["item_id"]), r, True) for r in left
            if r["source"] == out.repointed.get(int(r["item_id"]))
            or (r.get(ON_ROW) is False and r["item_id"] in current
                and current[r["item_id"]]["source"] == r["source"])
        ])
        out.removed = sorted(orphans)
        self._delete(out.removed)
        for chunk in _chunks(out.posts):
            self._rpc(
                lambda c, chunk=chunk: c.delete(
                    self.posts_name,
                    filter=f"guild_id == {int(guild_id)} and source in {_quote_list(chunk)}",
                    timeout=CALL_TIMEOUT,
                )
            )
        return out

    # -- records: small named values beside the items ------------------------------------
    # Kept in the companion collection `<name>_records`, one row per (guild, name), guild id
    # as partition key: a view reads and writes its guild's records only.

    @property
    def records_name(self) -> str:
        return f"{self.name}_records"

    def _record_key(self, name: str) -> str:
        return f"{self.guild_id or 0}:{name}"

    def read_record(self, name: str) -> str | None:
        records.checked(name, None, self.location)
        rows = self._rpc(
            lambda c: c.query(
                self.records_name,
                filter=f"key == {_quote(self._record_key(name))}",
                output_fields=["value"],
                timeout=CALL_TIMEOUT,
            )
        )
        return str(rows[0]["value"]) if rows else None

    def write_record(self, name: str, value: str | None) -> None:
        records.checked(name, value, self.location)
        key = self._record_key(name)
        if value is None:
            self._rpc(lambda c: c.delete(self.records_name, filter=f"key == {_quote(key)}",
                                         timeout=CALL_TIMEOUT))
        else:
            row = {"key": key, "guild_id": self.guild_id or 0, "name": name, "value": value,
                   "v": [1.0, 0.0]}
            self._rpc(lambda c: c.upsert(self.records_name, [row], timeout=CALL_TIMEOUT))
        # no flush (_settle): a record is read by its key, which a query finds unflushed;
        # the library writes its progress after every chunk, and a flush each time is slow

    def all_records(self) -> dict[str, str]:
        """name -> value of every record of this view's guild (of guild 0 on the whole
        collection: the collection's own, as a folder collection keeps them)."""
        rows = self._iterate(self.records_name, ["name", "value"],
                             "" if self.guild_id is not None else "guild_id == 0")
        return {str(r["name"]): str(r["value"]) for r in rows}

    def records_named(self, name: str) -> dict[int, str]:
        """guild id -> value of every guild's record `name` (this view's guild only, if any)."""
        records.checked(name, None, self.location)
        rows = self._iterate(self.records_name, ["guild_id", "value"], f"name == {_quote(name)}")
        return {int(r["guild_id"]): str(r["value"]) for r in rows}

    def drop_records(self) -> None:
        """Delete every record of this view's guild (of guild 0 on the whole collection)."""
        self._rpc(lambda c: c.delete(self.records_name, filter=f"guild_id == {self.guild_id or 0}",
                                     timeout=CALL_TIMEOUT))

    def _ensure_records(self) -> None:
        if self._rpc(lambda c: c.has_collection(self.records_name, timeout=CALL_TIMEOUT)):
            self._rpc(lambda c: _load_when_made(c, self.records_name))
        else:
            self._rpc(lambda c: _create_or_join(
                c, self.records_name, lambda c2: _create_records_collection(c2, self.records_name)))

    def _settle(self, name: str) -> None:
        """Milvus Lite: flush what was written (see __init__); a server needs nothing."""
        if self._lite:
            self._rpc(lambda c: c.flush(name, timeout=CALL_TIMEOUT))

    @property
    def posts_name(self) -> str:
        return posts_collection(self.name)

    def _record_posts(self, posts: list[tuple[int, dict[str, Any], bool]]) -> None:
        """Upsert post rows (item id, item row describing the post, whether that item's
        own row carries this post's facts: ON_ROW, where the collection has it)."""
        if not posts:
            return
        last = {row["source"]: (i, row, on) for i, row, on in posts}  # one row per source
        flag = self._has_on_row()
        data = [
            {**{k: row[k] for k in _POST_FIELDS}, "item_id": int(i), "v": [1.0, 0.0],
             **({ON_ROW: bool(on)} if flag else {})}
            for i, row, on in last.values()
        ]
        self._rpc(lambda c: c.upsert(self.posts_name, data, timeout=CALL_TIMEOUT))
        self._settle(self.posts_name)  # Lite: unflushed rows are scanned by every query

    def _post_rows(self, where: str) -> list[dict[str, Any]]:
        """Post rows matching `where` (within this view's guild)."""
        return list(
            self._rpc(
                lambda c: c.query(
                    self.posts_name,
                    filter=self._where(where),
                    output_fields=self._post_fields(),
                    limit=MAX_TOPK,
                    timeout=CALL_TIMEOUT,
                )
            )
        )

    def _posts_where(
        self,
        guild_id: int,
        channel_id: int | None,
        message_ids: Iterable[int] | None,
        item_ids: Iterable[int] | None,
    ) -> list[dict[str, Any]]:
        where = f"guild_id == {_int64(guild_id, 'guild_id')}"
        if channel_id is not None:
            where += f" and channel_id == {_int64(channel_id, 'channel_id')}"
        if message_ids is None and item_ids is None:
            return self._scan_posts(where)
        column, values = ("message_id", message_ids) if item_ids is None else ("item_id", item_ids)
        out: list[dict[str, Any]] = []
        for chunk in _chunks(sorted({int(v) for v in values})):
            out.extend(self._post_rows(f"{where} and {column} in {list(chunk)}"))
        return out

    def _scan_posts(self, where: str) -> list[dict[str, Any]]:
        return self._iterate(self.posts_name, self._post_fields(), where)

    def _post_fields(self) -> list[str]:
        return [*_POST_FIELDS, "item_id", *([ON_ROW] if self._has_on_row() else [])]

    def _iterate(self, collection: str, fields: list[str], where: str) -> list[dict[str, Any]]:
        """Every row of `collection` in this view matching `where`, read in batches."""

        def run(c: Any) -> list[dict[str, Any]]:
            it = c.query_iterator(
                collection,
                batch_size=_ITER_BATCH,
                filter=self._where(where),
                output_fields=fields,
                timeout=CALL_TIMEOUT,
            )
            rows: list[dict[str, Any]] = []
            try:
                while batch := it.next():
                    rows.extend(batch)
            finally:
                it.close()
            return rows

        return self._rpc(run)

    def _ensure_posts(self) -> None:
        """The companion posts collection, made (and filled from the items' own posts) when
        a collection from before it is opened."""
        if self._rpc(lambda c: c.has_collection(self.posts_name, timeout=CALL_TIMEOUT)):
            self._rpc(lambda c: _load_when_made(c, self.posts_name))
            return
        self._rpc(lambda c: _create_or_join(
            c, self.posts_name, lambda c2: _create_posts_collection(c2, self.posts_name)))
        rows = [
            r
            for r in self._scan(self._item_fields, "message_id is not null and attachment_id is not null")
            if _is_post(r)
        ]
        self._record_posts([(int(r["id"]), r, True) for r in rows])

    # -- internals -------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"{self.location} is closed")

    def _rpc(self, fn: Callable[[Any], T]) -> T:
        """Run one call; a collection the (restarted) server has not loaded is loaded first."""
        self._check_open()
        try:
            try:
                result = fn(self._client)
            except Exception as e:
                if not _not_loaded(e):
                    raise
                self._client.load_collection(self.name, timeout=CALL_TIMEOUT)
                result = fn(self._client)
        except StoreError:
            raise
        except Exception as e:
            # while a store that went away is coming back (a restarted server still loading
            # its segments answers odd errors for a moment), a failure still means "not back"
            if _unreachable(e) or _DOWN.get(self.uri):
                if not _DOWN.get(self.uri):  # one line when it goes, one when it is back
                    _DOWN[self.uri] = True
                    log.warning("%s is unreachable: %s", self.location, _one_line(e))
                raise StoreUnavailable(UNREACHABLE) from e
            raise StoreError(f"{self.location}: {_one_line(e)}") from e
        if _DOWN.pop(self.uri, False):
            log.warning("%s is reachable again", self.location)
        return result

    def _load(self) -> None:
        try:
            self._rpc(lambda c: c.load_collection(self.name, timeout=CALL_TIMEOUT))
        except StoreUnavailable as e:
            raise StoreUnavailable(_unreachable_at_open(self.uri)) from e

    def _where(self, extra: str = "") -> str:
        parts = [] if self.guild_id is None else [f"guild_id == {self.guild_id}"]
        if extra:
            parts.append(f"({extra})")
        return " and ".join(parts)

    def _query(self, where: str, fields: list[str]) -> list[dict[str, Any]]:
        return list(
            self._rpc(
                lambda c: c.query(
                    self.name,
                    filter=self._where(where),
                    output_fields=fields,
                    limit=MAX_TOPK,
                    timeout=CALL_TIMEOUT,
                )
            )
        )

    def _rows_by_id(self, ids: Sequence[int], fields: list[str]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        wanted = sorted({int(i) for i in ids if 0 <= int(i) <= _INT64_MAX})
        for chunk in _chunks(wanted):
            out.extend(self._query(f"id in {list(chunk)}", fields))
        return out

    def _scan(self, fields: list[str], where: str = "") -> list[dict[str, Any]]:
        """Every row of this view (matching `where`), in batches."""

        return self._iterate(self.name, fields, where)

    def _delete(self, ids: Sequence[int]) -> None:
        """Delete items (in this view) and then their posts: a crash between the two leaves
        posts of a gone item, which posts() skips and the next forget or remove clears."""
        for chunk in _chunks(sorted(ids)):
            self._rpc(
                lambda c, chunk=chunk: c.delete(
                    self.name, filter=self._where(f"id in {list(chunk)}"), timeout=CALL_TIMEOUT
                )
            )
            self._rpc(
                lambda c, chunk=chunk: c.delete(
                    self.posts_name, filter=f"item_id in {list(chunk)}", timeout=CALL_TIMEOUT
                )
            )

    def _assign_ids(self, rows: list[dict[str, Any]]) -> list[int]:
        """Each row's id: its source's first free candidate (see item_id)."""
        ids: list[int | None] = [None] * len(rows)
        salt = [0] * len(rows)
        taken: dict[int, tuple[str, int]] = {}  # id -> (source, guild) chosen in this batch
        stored: dict[str, int] = {}  # source -> id of the item stored under it (this view)
        for chunk in _chunks(sorted({r["source"] for r in rows})):
            for r in self._query(f"source in {_quote_list(chunk)}", ["id", "source"]):
                stored[r["source"]] = min(int(r["id"]), stored.get(r["source"], _INT64_MAX))
        pending = []
        for p, row in enumerate(rows):
            if row["source"] in stored:
                ids[p] = stored[row["source"]]
                taken.setdefault(ids[p], (row["source"], row["guild_id"]))
            else:
                pending.append(p)
        while pending:
            cand = {p: item_id(rows[p]["source"], salt[p]) for p in pending}
            found = {
                r["id"]: r
                for r in self._rows_by_id_all(sorted(set(cand.values())), ["id", "source", "guild_id"])
            }
            again = []
            for p in pending:
                i, row = cand[p], rows[p]
                mine = (row["source"], row["guild_id"])
                other = found.get(i)
                clash = other is not None and (
                    other["source"] != row["source"]
                    or (self.guild_id is not None and other["guild_id"] != self.guild_id)
                )
                if not clash and i in taken and taken[i][0] != row["source"]:
                    clash = True
                if clash:
                    salt[p] += 1
                    if salt[p] > 16:
                        raise StoreError(f"cannot find a free id for {row['source']}")
                    again.append(p)
                else:
                    ids[p] = i
                    taken.setdefault(i, mine)
            pending = again
        return [int(i) for i in ids if i is not None]

    def _rows_by_id_all(self, ids: Sequence[int], fields: list[str]) -> list[dict[str, Any]]:
        """Rows by id across all guilds (id assignment must see other views' rows)."""
        out: list[dict[str, Any]] = []
        for chunk in _chunks(list(ids)):
            out.extend(
                self._rpc(
                    lambda c, chunk=chunk: c.query(
                        self.name,
                        filter=f"id in {list(chunk)}",
                        output_fields=fields,
                        limit=MAX_TOPK,
                        timeout=CALL_TIMEOUT,
                    )
                )
            )
        return out

    def _stack(self, vecs: list[Any]) -> np.ndarray:
        if not vecs:
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.asarray(vecs, dtype=np.float32).reshape(-1, self._dim)

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
        # rounded through float16 as the embedded store keeps them: both stores rank alike
        return (v / np.maximum(norms, 1e-12)).astype("<f2").astype(np.float32)

    def _row(self, it: NewItem) -> dict[str, Any]:
        source = getattr(it, "source", None)
        if not isinstance(source, str) or not source:
            raise StoreError(f"item {it!r} has no source")
        row: dict[str, Any] = {}
        guild = getattr(it, "guild_id", None)
        if guild is None:
            guild = self.guild_id
        row["guild_id"] = 0 if guild is None else _int64(guild, "guild_id", source)
        if self.guild_id is not None and row["guild_id"] != self.guild_id:
            raise StoreError(
                f"item {source} belongs to guild {row['guild_id']}, not to this store's "
                f"guild {self.guild_id}"
            )
        for f in _INT_FIELDS:
            v = getattr(it, f, None)
            row[f] = None if v is None else _int64(v, f, source)
        posted = getattr(it, "posted_at", None)
        try:
            row["posted_at"] = None if posted is None else float(posted)
        except (TypeError, ValueError) as e:
            raise StoreError(f"item {source}: posted_at {posted!r} is not a number") from e
        for f in _TEXT_FIELDS:
            v = getattr(it, f, None)
            text = "" if v is None else str(v)
            if len(text.encode("utf-8")) > _TEXT_MAX:
                raise StoreError(f"item {source[:80]}: {f} is longer than {_TEXT_MAX} bytes")
            row[f] = text
        if "phash" in self._item_fields:  # (a collection from before the field: not kept)
            ph = getattr(it, "phash", None)
            if not phash_storable(ph):
                raise StoreError(f"item {source[:80]}: phash {ph!r} is not a perceptual hash")
            row["phash"] = ph  # ('': the picture has none; None: not known)
        return row

    @property
    def keeps_phash(self) -> bool:
        """Whether this collection has the perceptual-hash field (see _fields_with_phash)."""
        return "phash" in self._item_fields

    def unhashed_ids(self) -> list[int]:
        """Ids of this view's items read from a picture that have no perceptual hash (null:
        stored before it existed; '' is a picture that has none), in id order; none where
        the collection cannot keep hashes (keeps_phash False). Imported vectors (no content
        hash: no picture was read) are not among them."""
        if not self.keeps_phash:
            return []
        return sorted(int(r["id"]) for r in self._scan(["id"], _UNHASHED))

    def count_unhashed(self) -> int:
        """How many items unhashed_ids would list (where the collection cannot keep hashes:
        how many it would, could it)."""
        where = _UNHASHED if self.keeps_phash else 'content_hash != ""'
        rows = self._rpc(lambda c: c.query(self.name, filter=self._where(where),
                                           output_fields=["count(*)"], timeout=CALL_TIMEOUT))
        return int(rows[0]["count(*)"]) if rows else 0

    def set_phashes(self, hashes: dict[int, str]) -> int:
        """Give items still without a perceptual hash theirs ('': the picture has none);
        returns how many changed. A partial upsert (id, partition key and hash): the vector
        and the other fields stay as they are, and an item removed meanwhile is refused by
        Milvus (its row would lack a vector), never written back."""
        if not self.keeps_phash:
            raise StoreError(f"{self.location} cannot keep perceptual hashes")
        for item_id, h in hashes.items():
            if not phash_storable(h):
                raise StoreError(f"item {item_id}: phash {h!r} is not a perceptual hash")
        rows = [{"id": int(r["id"]), "guild_id": r["guild_id"], "phash": hashes[int(r["id"])]}
                for r in self._rows_by_id(list(hashes), ["id", "guild_id", "phash"])
                if r.get("phash") is None]
        if not rows:
            return 0

        def upsert(part: list[dict[str, Any]]) -> None:
            self._rpc(lambda c: c.upsert(self.name, part, partial_update=True,
                                         timeout=CALL_TIMEOUT))

        done = len(rows)
        with _write_lock(self.uri, self._lite):
            try:
                upsert(rows)
            except StoreUnavailable:
                raise
            except StoreError:  # one was removed meanwhile? the others one by one
                done = 0
                for row in rows:
                    try:
                        upsert([row])
                    except StoreUnavailable:
                        raise
                    except StoreError:
                        if self._rows_by_id([row["id"]], ["id"]):
                            raise  # still there: the write itself failed
                        continue
                    done += 1
            self._settle(self.name)
        return done

    def _fields_with_phash(self) -> list[str]:
        """_ITEM_FIELDS, with `phash` where the collection has it, or the server can add it
        to a collection made before it (Milvus Lite cannot: its items then have none)."""
        def has(c: Any) -> bool:
            desc = c.describe_collection(self.name, timeout=CALL_TIMEOUT)
            return any(f.get("name") == "phash" for f in desc.get("fields", []))

        if self._rpc(has):
            return [*_ITEM_FIELDS, "phash"]
        try:
            self._client.add_collection_field(self.name, field_name="phash",
                                              data_type=DataType.VARCHAR,
                                              max_length=_PHASH_MAX, nullable=True,
                                              timeout=CALL_TIMEOUT)
        except Exception as e:  # Lite: not implemented; a server: another process added it
            log.info("%s: no phash field added (%s)", self.location, _one_line(e))
        return [*_ITEM_FIELDS, "phash"] if self._rpc(has) else list(_ITEM_FIELDS)

    def _read_manifest(self, model: str | None) -> Manifest:
        where = self.location
        desc = self._rpc(lambda c: c.describe_collection(self.name, timeout=CALL_TIMEOUT))
        raw = (desc.get("properties") or {}).get(MANIFEST_KEY)
        if raw is None:
            raise StoreError(
                f"{where} is not a clipfind collection (no {MANIFEST_KEY} property); "
                "use another collection name"
            )
        try:
            m = json.loads(raw)
            manifest = Manifest(
                model=str(m["model"]),
                dim=int(m["dim"]),
                index_type=str(m["index_type"]),
                format_version=int(m["format_version"]),
            )
        except (ValueError, TypeError, KeyError) as e:
            raise StoreError(f"{where} has a garbled {MANIFEST_KEY} property ({e})") from e
        if manifest.format_version > FORMAT_VERSION:
            raise StoreError(
                f"{where} has format version {manifest.format_version}, newer than this "
                f"clipfind reads ({FORMAT_VERSION}); upgrade clipfind"
            )
        dims = [
            f.get("params", {}).get("dim")
            for f in desc.get("fields", [])
            if f.get("name") == "vector"
        ]
        if not dims or int(dims[0]) != manifest.dim:
            raise StoreError(
                f"{where}: its vector field does not hold {manifest.dim}-d vectors as its "
                "manifest says; use another collection name"
            )
        if model is not None and model != manifest.model:
            raise ModelMismatch(
                f"{where} was built with model {manifest.model} ({manifest.dim}-d); open it "
                f"with --model {manifest.model} or use another collection (asked for {model})"
            )
        return manifest


# ---------------------------------------------------------------------------------------


# pymilvus pings every 10 s even with no call in flight; gRPC servers (milvus-lite's among
# them) answer pings more often than every 5 minutes with GOAWAY "too_many_pings", and the
# next connect to that address then fails. Ping only while calls are in flight, rarely.
GRPC_OPTIONS = {"grpc.keepalive_time_ms": 300_000, "grpc.keepalive_permit_without_calls": 0}


def _connect(uri: str, token: str | None) -> Any:
    """A MilvusClient for `uri`; StoreUnavailable naming the URI when it cannot be reached."""
    if not isinstance(uri, str) or not uri.strip():
        raise StoreError("milvus_uri is empty: give http://HOST:19530 or a Milvus Lite file path")
    if is_local(uri):
        if not uri.endswith(".db"):
            raise StoreError(
                f"Milvus Lite file {uri} must end in .db (or give a server as http://HOST:PORT)"
            )
        try:
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the folder of Milvus Lite file {uri}: {e}") from e
    for attempt in range(2):
        try:
            return MilvusClient(uri=uri, token=token or "", timeout=CONNECT_TIMEOUT,
                                grpc_options=GRPC_OPTIONS)
        except Exception as e:
            if attempt == 0 and is_local(uri):  # Lite's server may still be (re)starting
                time.sleep(0.5)
                continue
            raise StoreUnavailable(_unreachable_at_open(uri, e)) from e
    raise AssertionError("unreachable")


def _unreachable_at_open(uri: str, e: BaseException | None = None) -> str:
    why = f" ({_one_line(e)})" if e is not None and str(e).strip() else ""
    return f"cannot reach Milvus at {redact(uri)}{why}; start it or fix milvus_uri"


def _release(client: Any) -> None:
    try:
        client.close()
    except Exception:  # closing a dead connection: nothing left to release
        pass


def _call(fn: Callable[[], T], uri: str, *, at_open: bool = False) -> T:
    try:
        return fn()
    except StoreError:
        raise
    except Exception as e:
        if _unreachable(e):
            raise StoreUnavailable(_unreachable_at_open(uri, e) if at_open else UNREACHABLE) from e
        raise StoreError(f"Milvus at {redact(uri)}: {_one_line(e)}") from e


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise StoreError(
            f"bad Milvus collection name {name!r}: use letters, digits and _ "
            "(not starting with a digit), at most 255"
        )


JOIN_WAIT_S = 30.0  # how long a process waits for another one's new collection to load


def _create_or_join(client: Any, name: str, make: Callable[[Any], None]) -> None:
    """make(client) creates collection `name`; if another process (another bot shard)
    created it at the same moment, wait until it can be loaded instead of failing."""
    try:
        make(client)
        return
    except Exception:
        if not client.has_collection(name, timeout=CALL_TIMEOUT):
            raise
    _load_when_made(client, name)


def _load_when_made(client: Any, name: str) -> None:
    """Load `name`; while its maker is still adding its indexes, loading fails: retry."""
    deadline = time.monotonic() + JOIN_WAIT_S
    while True:
        try:
            client.load_collection(name, timeout=CALL_TIMEOUT)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def _create_collection(client: Any, name: str, model: str, dim: int, index_type: str) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("guild_id", DataType.INT64, is_partition_key=True)
    for f in _INT_FIELDS:
        schema.add_field(f, DataType.INT64, nullable=True)
    schema.add_field("posted_at", DataType.DOUBLE, nullable=True)
    schema.add_field("added_at", DataType.DOUBLE)
    for f in _TEXT_FIELDS:
        schema.add_field(f, DataType.VARCHAR, max_length=_TEXT_MAX)
    schema.add_field("phash", DataType.VARCHAR, max_length=_PHASH_MAX, nullable=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=dim)
    kind, build, _ = INDEX_TYPES[index_type]
    params = client.prepare_index_params()
    params.add_index("vector", index_type=kind, metric_type="IP", params=dict(build))
    for f in ("source", "content_hash", "message_id"):
        params.add_index(f, index_type="INVERTED")
    manifest = {
        "format_version": FORMAT_VERSION,
        "model": model,
        "dim": dim,
        "index_type": index_type,
    }
    client.create_collection(
        name,
        schema=schema,
        consistency_level="Strong",
        properties={MANIFEST_KEY: json.dumps(manifest)},
        timeout=CALL_TIMEOUT,
    )
    # sync=False: pymilvus would poll each index's state every 0.5 s; an empty collection's
    # indexes are there at once, and load_collection (next) waits for what it needs
    client.create_index(name, params, timeout=CALL_TIMEOUT, sync=False)
    client.load_collection(name, timeout=CALL_TIMEOUT)


def posts_collection(name: str) -> str:
    """The Milvus collection holding the posts of collection `name`."""
    return f"{name}_posts"


def _create_posts_collection(client: Any, name: str) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("source", DataType.VARCHAR, is_primary=True, max_length=4096)
    schema.add_field("guild_id", DataType.INT64, is_partition_key=True)
    for f in ("channel_id", "message_id", "attachment_id", "item_id"):
        schema.add_field(f, DataType.INT64)
    schema.add_field("author_id", DataType.INT64, nullable=True)
    schema.add_field("posted_at", DataType.DOUBLE, nullable=True)
    schema.add_field("title", DataType.VARCHAR, max_length=_TEXT_MAX)
    schema.add_field("page_url", DataType.VARCHAR, max_length=_TEXT_MAX)
    # a process of a clipfind from before ON_ROW writes rows without it: False, which is
    # always right (the post is then found through this collection)
    schema.add_field(ON_ROW, DataType.BOOL, default_value=False)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field
    client.create_collection(name, schema=schema, consistency_level="Strong",
                             timeout=CALL_TIMEOUT)
    params = client.prepare_index_params()
    params.add_index("v", index_type="FLAT", metric_type="IP")
    for f in ("item_id", "message_id"):
        params.add_index(f, index_type="INVERTED")
    client.create_index(name, params, timeout=CALL_TIMEOUT, sync=False)
    client.load_collection(name, timeout=CALL_TIMEOUT)


def _create_records_collection(client: Any, name: str) -> None:
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("guild_id", DataType.INT64, is_partition_key=True)
    schema.add_field("name", DataType.VARCHAR, max_length=512)
    schema.add_field("value", DataType.VARCHAR, max_length=_TEXT_MAX)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=2)  # Milvus wants a vector field
    client.create_collection(name, schema=schema, consistency_level="Strong",
                             timeout=CALL_TIMEOUT)
    params = client.prepare_index_params()
    params.add_index("v", index_type="FLAT", metric_type="IP")
    client.create_index(name, params, timeout=CALL_TIMEOUT, sync=False)
    client.load_collection(name, timeout=CALL_TIMEOUT)


def _is_post(row: dict[str, Any]) -> bool:
    return all(row.get(k) not in (None, 0) for k in _POST_KEYS)


def _to_post(r: dict[str, Any]) -> Post:
    return Post(**{k: r[k] for k in _POST_FIELDS}, item_id=int(r["item_id"]))


def _quote_list(values: Iterable[str]) -> str:
    return "[" + ", ".join(_quote(v) for v in values) + "]"


def _chunks(seq: Sequence[Any], size: int = _IN_CHUNK) -> Iterable[Sequence[Any]]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


def _int64(v: Any, field: str, source: str | None = None) -> int:
    where = f"item {source}: " if source else ""
    try:
        i = int(v)
    except (TypeError, ValueError) as e:
        raise StoreError(f"{where}{field} {v!r} is not a number") from e
    if not -(2**63) <= i <= _INT64_MAX:
        raise StoreError(f"{where}{field} {v!r} does not fit in 64 bits")
    return i


def _quote(text: str) -> str:
    """A Milvus filter string literal."""
    return json.dumps(str(text), ensure_ascii=False)


def _oldest(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return min(rows, key=lambda r: (r["added_at"], r["id"]))


def _ranked(rows: list[dict[str, Any]], q: np.ndarray) -> list[tuple[int, float]]:
    """(id, inner product) of rows with vectors, best first (ties: lower id first)."""
    if not rows:
        return []
    ids = np.asarray([int(r["id"]) for r in rows], dtype=np.int64)
    scores = np.asarray([r["vector"] for r in rows], dtype=np.float32) @ q
    order = np.lexsort((ids, -scores))
    return [(int(ids[i]), float(scores[i])) for i in order]


def _to_item(r: dict[str, Any]) -> Item:
    return Item(
        id=int(r["id"]),
        source=r["source"],
        title=r["title"],
        credit=r["credit"],
        page_url=r["page_url"],
        guild_id=int(r["guild_id"]) or None,
        channel_id=r["channel_id"],
        message_id=r["message_id"],
        attachment_id=r["attachment_id"],
        author_id=r["author_id"],
        posted_at=r["posted_at"],
        content_hash=r["content_hash"],
        stamp=r["stamp"],
        phash=r.get("phash") or None,
        added_at=float(r["added_at"]),
    )
