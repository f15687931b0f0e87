"""The store interface the engine uses: what any vector store of clipfind must offer.

`Collection` (SQLite truth + derived FAISS index, embedded) implements it; so does the
Milvus store. Ids are the store's integers; vectors are float32 rows of manifest.dim,
compared by inner product (they are L2-normalised on the way in).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from types import TracebackType

import numpy as np

from ..errors import StoreError
from .filtered import PostFilter
from .items import Item, NewItem
from .manifest import Manifest
from .posts import Forgotten, Post


class VectorStore(abc.ABC):
    manifest: Manifest

    # -- reading -------------------------------------------------------------------------

    @abc.abstractmethod
    def __len__(self) -> int:
        """How many items the store holds."""

    @abc.abstractmethod
    def get(self, ids: Sequence[int]) -> list[Item]:
        """Items for `ids` in the given order; ids with no item are skipped."""

    @abc.abstractmethod
    def by_source(self, source: str) -> Item | None:
        """The item stored under this source key, if any."""

    @abc.abstractmethod
    def stamps(self) -> dict[str, str]:
        """source -> stamp of every item, for incremental builds."""

    @abc.abstractmethod
    def find_hash(self, content_hash: str, guild_id: int | None = None) -> Item | None:
        """The oldest item with this content hash (within `guild_id` when given, else any)."""

    @abc.abstractmethod
    def ids(self) -> np.ndarray:
        """Every item id, ascending (int64)."""

    @abc.abstractmethod
    def vectors(self, ids: Sequence[int] | None = None) -> np.ndarray:
        """float32 (n, dim): the given ids' vectors in that order (all items, id order, if None)."""

    @property
    @abc.abstractmethod
    def index_description(self) -> str:
        """One line saying which index serves searches (for status and logs)."""

    @property
    @abc.abstractmethod
    def rebuilding(self) -> bool:
        """Whether an index rebuild is in progress in the background."""

    @abc.abstractmethod
    def wait_for_rebuild(self, timeout: float | None = None) -> bool:
        """Wait for the background rebuild in progress, if any; False if still running."""

    @abc.abstractmethod
    def search(
        self, query: np.ndarray, k: int, offset: int = 0, where: PostFilter | None = None
    ) -> list[tuple[int, float]]:
        """(id, inner product), best first, ranks offset .. offset+k-1; with `where`, ranks
        among the items one of whose posts passes it (the others are never ranked)."""

    @abc.abstractmethod
    def has_posts(self) -> bool:
        """Whether any item has a Discord post (a channel, author and time to filter by)."""

    # -- writing -------------------------------------------------------------------------

    @abc.abstractmethod
    def add(self, items: Sequence[NewItem], vectors: np.ndarray) -> list[int]:
        """Store a batch at once; an existing source keeps its id. Returns the ids."""

    @abc.abstractmethod
    def remove(self, ids: Iterable[int]) -> int:
        """Delete items by id; returns how many went."""

    @abc.abstractmethod
    def remove_where(
        self,
        *,
        guild_id: int,
        channel_id: int | None = None,
        message_ids: Iterable[int] | None = None,
    ) -> list[int]:
        """Delete a guild's items (of one channel, of some messages); returns removed ids."""

    # -- provenance: the Discord posts of the pictures ----------------------------------
    # An item added with guild, channel, message and attachment ids is a post; add()
    # records it. The same picture posted again is another post of the same item.

    @abc.abstractmethod
    def add_posts(self, new_posts: Sequence[NewItem]) -> list[int | None]:
        """Record more posts of stored pictures (by source, else content hash in the guild);
        each post's item id, None where no such picture is stored."""

    @abc.abstractmethod
    def known(self, sources: Iterable[str]) -> set[str]:
        """Those of `sources` already stored, as an item or as a post of one."""

    @abc.abstractmethod
    def posts(
        self,
        guild_id: int,
        *,
        channel_id: int | None = None,
        message_ids: Iterable[int] | None = None,
        item_ids: Iterable[int] | None = None,
    ) -> list[Post]:
        """A guild's posts (of one channel; of some messages or of some items), oldest first."""

    @abc.abstractmethod
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
        (with its vector) each item left without posts; all at once. What changed."""

    # -- perceptual hashes of items stored before them (index/rehash.py) --------------

    @property
    def location(self) -> str:
        """Where the store is, for messages (no credentials)."""
        return repr(self)

    @property
    def readonly(self) -> bool:
        """Whether this process can only read the store."""
        return False

    @abc.abstractmethod
    def unhashed_ids(self) -> list[int]:
        """Ids of the items read from a picture that have no perceptual hash (not known:
        stored before hashes existed), in id order; imported vectors are not among them."""

    @abc.abstractmethod
    def count_unhashed(self) -> int:
        """How many items unhashed_ids would list."""

    @abc.abstractmethod
    def set_phashes(self, hashes: dict[int, str]) -> int:
        """Give items still without a perceptual hash theirs ('': the picture has none);
        how many changed. Neither the vectors nor the index change."""

    # -- records: small named values kept beside the items ----------------------------
    # What a face must find again on any machine (the Discord library's channels and
    # backfill progress). One record is written whole, atomically; the last write wins.

    @abc.abstractmethod
    def read_record(self, name: str) -> str | None:
        """The record's value, None when there is none."""

    @abc.abstractmethod
    def write_record(self, name: str, value: str | None) -> None:
        """Set the record (None deletes it)."""

    @abc.abstractmethod
    def all_records(self) -> dict[str, str]:
        """name -> value of every record (what a migration copies)."""

    @abc.abstractmethod
    def save(self) -> None:
        """Make what is held in memory durable (a no-op where nothing is)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Save if needed and release the store. Idempotent."""

    def __enter__(self) -> VectorStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def checked_query(query: np.ndarray, dim: int, where: str) -> np.ndarray:
    """A query vector as float32 (dim,); StoreError for another size or NaN/infinity."""
    q = np.asarray(query, dtype=np.float32).reshape(-1)
    if q.shape[0] != dim:
        raise StoreError(f"query vector has {q.shape[0]} dimensions; {where} holds {dim}")
    if not np.all(np.isfinite(q)):
        raise StoreError("query vector contains NaN or infinity")
    return q
