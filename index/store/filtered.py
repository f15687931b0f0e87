"""Which items a filter allows, found from the posts of the pictures.

A filter (channel, author, time: `PostFilter`) applies to the posts of a picture; an item
is allowed when one of its posts passes all of it. The facts of every post are read from
the posts table once into arrays (`PostFacts`, kept until the table changes), so finding
the allowed items is a few vector operations, not a SQL query per search. Posts appended
since (facts.py reads only those) join as a small sorted tail, merged into the whole once
it grows: an append costs about its own size, not the table's. The result, `Allowed`, is
a bitmap over item ids (what FAISS's `IDSelectorBitmap` reads) and the sorted ids; how
the allowed items are then searched is filterplan.py.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np

NO_TIME = -1e308  # a post without a time in PostFacts.posted (passes no date filter)
FACT_COLUMNS = f"item_id, channel_id, COALESCE(author_id, 0), COALESCE(posted_at, {NO_TIME})"
TAIL_SHARE = 8  # the appended tail is merged into the whole once it is 1/this of it


@dataclass(frozen=True)
class PostFilter:
    """Which posts pass: any of `channels` (empty: any channel), any of `authors` (empty:
    anyone), posted in [since, until) (None: unbounded). Guild: the store's own."""

    channels: frozenset[int] = frozenset()
    authors: frozenset[int] = frozenset()
    since: float | None = None
    until: float | None = None

    def milvus(self) -> str:
        """This filter as a Milvus boolean expression over the posts collection."""
        parts = []
        if self.channels:
            parts.append(f"channel_id in {sorted(self.channels)}")
        if self.authors:
            parts.append(f"author_id in {sorted(self.authors)}")
        if self.since is not None:
            parts.append(f"posted_at >= {float(self.since)!r}")
        if self.until is not None:
            parts.append(f"posted_at < {float(self.until)!r}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Allowed:
    """The items a filter allows: a little-endian bitmap over item ids and how many.

    `members` (when known) are the allowed ids as found, one per passing post (unsorted,
    an item passing through two posts twice): enough to count allowed items per IVF list
    or to sort the ids without walking the whole bitmap."""

    bits: np.ndarray  # uint8
    count: int
    members: np.ndarray | None = None  # int64

    @classmethod
    def of(cls, flags: np.ndarray, members: np.ndarray | None = None) -> Allowed:
        """From a boolean array over item ids (and the ids set in it, if known)."""
        return cls(np.packbits(flags, bitorder="little"), int(np.count_nonzero(flags)), members)

    def has(self, ids: np.ndarray) -> np.ndarray:
        """Whether each of these ids is allowed (bool array)."""
        ids = np.asarray(ids, dtype=np.int64)
        inside = (ids >= 0) & (ids < 8 * len(self.bits))
        out = np.zeros(len(ids), dtype=bool)
        at = ids[inside]
        out[inside] = (self.bits[at >> 3] >> (at & 7)) & 1 == 1
        return out

    def union(self, other: Allowed) -> tuple[Allowed, np.ndarray]:
        """Both sets as one, and the ids `other` adds (sorted): what a kept plan gains
        from appended posts."""
        theirs = other.ids()
        size = max(len(self.bits), len(other.bits))
        bits = np.zeros(size, dtype=np.uint8)
        bits[: len(self.bits)] = self.bits
        fresh = theirs[~self.has(theirs)]
        bits[: len(other.bits)] |= other.bits
        members = None
        if self.members is not None and other.members is not None:
            members = np.concatenate([self.members, other.members])
        out = Allowed(bits, self.count + len(fresh), members)
        ids = self.__dict__.get("_ids")
        if ids is not None:  # sorted, and fresh (sorted) holds none of them
            out.__dict__["_ids"] = np.insert(ids, np.searchsorted(ids, fresh), fresh)
        return out, fresh

    def ids(self) -> np.ndarray:
        """The allowed ids in increasing order (worked out once)."""
        got = self.__dict__.get("_ids")
        if got is None:
            if self.members is not None and len(self.members) * 16 < 8 * len(self.bits):
                got = np.unique(self.members)  # few: sorting them beats walking the bitmap
            else:
                got = np.flatnonzero(np.unpackbits(self.bits, bitorder="little"))
            got = got.astype(np.int64)
            self.__dict__["_ids"] = got
        return got


class PostFacts:
    """Item id, channel, author and time of every post, as arrays, each kind also sorted
    (so the posts of some channels, authors or a time span are found by binary search and
    a filter costs about the number of posts it passes, not the number of posts)."""

    def __init__(self, item: np.ndarray, channel: np.ndarray, author: np.ndarray,
                 posted: np.ndarray):
        self.item = np.asarray(item, dtype=np.int64)
        self.channel = np.asarray(channel, dtype=np.int64)
        self.author = np.asarray(author, dtype=np.int64)
        self.posted = np.asarray(posted, dtype=np.float64)
        self._size = int(self.item.max()) + 1 if len(self.item) else 0
        self._sorted: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        self._tail: PostFacts | None = None  # posts appended since the arrays were sorted
        for name in ("channel", "author", "posted"):
            values = getattr(self, name)
            order = np.argsort(values, kind="stable")
            self._sorted[name] = (order, values[order])

    def appended(self, new: PostFacts) -> PostFacts:
        """These facts and `new` (posts appended to the table since), without sorting the
        whole again: `new` joins a tail (its sorted arrays merged into the tail's), which
        allowed scans as a second part and which is merged into the whole once it is
        1/TAIL_SHARE of it. Each merge copies the arrays once, no sort. `self` is kept."""
        tail = new if self._tail is None else _merged(self._tail, new)
        out = PostFacts.__new__(PostFacts)
        out.__dict__.update(self.__dict__)
        out._tail = None
        if len(tail) * TAIL_SHARE > len(self.item):
            return _merged(out, tail)
        out._tail = tail
        return out

    @classmethod
    def read(cls, conn: sqlite3.Connection) -> PostFacts:
        """The facts of every post of the table."""
        return cls.of_rows(conn.execute(f"SELECT {FACT_COLUMNS} FROM posts").fetchall())

    @classmethod
    def of_rows(cls, rows: list[tuple]) -> PostFacts:
        """From rows of FACT_COLUMNS."""
        if not rows:
            return cls(*(np.zeros(0) for _ in range(4)))
        item, channel, author, posted = zip(*rows, strict=True)
        return cls(np.array(item), np.array(channel), np.array(author), np.array(posted))

    def __len__(self) -> int:
        return len(self.item) + (len(self._tail) if self._tail is not None else 0)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(item, channel, author, posted) of every post, the tail's last."""
        mine = (self.item, self.channel, self.author, self.posted)
        if self._tail is None:
            return mine
        return tuple(np.concatenate([a, b]) for a, b in zip(mine, self._tail.arrays(), strict=True))

    def _ranges(self, name: str, lo: np.ndarray, hi: np.ndarray, side: str = "right"):
        """The posts (indexes) whose `name` lies in [lo_i, hi_i) or [lo_i, hi_i] (side)."""
        order, values = self._sorted[name]
        a = np.searchsorted(values, lo, "left")
        b = np.searchsorted(values, hi, side)
        return order, a, b

    def allowed(self, where: PostFilter) -> Allowed:
        """The items one of whose posts passes `where`."""
        got = self._allowed(where)
        if self._tail is not None:
            got = got.union(self._tail.allowed(where))[0]
        return got

    def _allowed(self, where: PostFilter) -> Allowed:
        picks = []  # (size, name, order, starts, ends) of each kind the filter names
        if where.channels:
            v = np.array(sorted(where.channels), dtype=np.int64)
            picks.append(("channel", *self._ranges("channel", v, v)))
        if where.authors:
            v = np.array(sorted(where.authors), dtype=np.int64)
            picks.append(("author", *self._ranges("author", v, v)))
        if where.since is not None or where.until is not None:
            lo = np.array([where.since if where.since is not None else np.nextafter(NO_TIME, 0)])
            hi = np.array([where.until if where.until is not None else np.inf])
            picks.append(("posted", *self._ranges("posted", lo, hi, "left")))
        if not picks:
            posts = np.arange(len(self.item))
        else:  # start from the kind that passes fewest posts, check the others on those
            name, order, a, b = min(picks, key=lambda p: int((p[3] - p[2]).sum()))
            posts = order[_spans(a, b)]
            if where.channels and name != "channel":
                posts = posts[np.isin(self.channel[posts], list(where.channels))]
            if where.authors and name != "author":
                posts = posts[np.isin(self.author[posts], list(where.authors))]
            if name != "posted" and (where.since is not None or where.until is not None):
                t = self.posted[posts]
                if where.since is not None:
                    posts = posts[t >= where.since]
                    t = self.posted[posts]
                if where.until is not None:
                    posts = posts[(t < where.until) & (t > NO_TIME)]
        members = self.item[posts]
        flags = np.zeros(self._size, dtype=bool)
        flags[members] = True
        return Allowed.of(flags, members)


def _merged(a: PostFacts, b: PostFacts) -> PostFacts:
    """One PostFacts of a's posts then b's (neither with a tail), its sorted arrays made
    by inserting b's into a's: the same as sorting the whole again (stable: a's posts
    before b's among equal values), at the cost of a copy."""
    out = PostFacts.__new__(PostFacts)
    out.item, out.channel, out.author, out.posted = (
        np.concatenate([x, y]) for x, y in zip(a.arrays(), b.arrays(), strict=True))
    out._size = max(a._size, b._size)
    out._tail = None
    out._sorted = {}
    for name, (a_order, a_values) in a._sorted.items():
        b_order, b_values = b._sorted[name]
        put = np.searchsorted(a_values, b_values, side="right")
        out._sorted[name] = (np.insert(a_order, put, b_order + len(a.item)),
                             np.insert(a_values, put, b_values))
    return out


def _spans(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The positions of all the spans [a_i, b_i), concatenated (without a Python loop)."""
    lengths = np.maximum(b - a, 0)
    total = int(lengths.sum())
    if not total:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    return np.arange(total, dtype=np.int64) + np.repeat(a - (ends - lengths), lengths)
