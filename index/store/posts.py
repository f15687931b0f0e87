"""Provenance: every Discord post of every stored picture, in the collection's meta.sqlite.

A server's library stores a picture once (by content hash) and its item names one post
of it, the oldest; table `posts` knows them all, each pointing at its item. A picture
stays while any post of it remains. Forgetting posts (a channel leaves the library,
messages are deleted, attachments edited away) and re-pointing or removing their items
happen in ONE SQLite transaction, so a crash can never leave the two disagreeing.

The functions here run inside the caller's transaction on `conn` (see Collection).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from index.errors import StoreError

from .items import META_COLUMNS, NewItem, item_values, rows_in, source_key, source_of_key

POST_COLUMNS = (
    "source",
    "guild_id",
    "channel_id",
    "message_id",
    "attachment_id",
    "author_id",
    "posted_at",
    "title",
    "page_url",
)
_FROM_ITEM = [META_COLUMNS.index(c) for c in POST_COLUMNS]  # item values -> post values
_KEYS = ("guild_id", "channel_id", "message_id", "attachment_id")  # all set: it is a post
_POST_SELECT = "SELECT " + ", ".join(POST_COLUMNS) + ", item_id FROM posts"
_ORDER = "message_id, attachment_id"  # oldest post first (Discord ids grow with time)

SCHEMA = """
CREATE TABLE IF NOT EXISTS posts (
    source        TEXT PRIMARY KEY,
    guild_id      INTEGER NOT NULL,
    channel_id    INTEGER NOT NULL,
    message_id    INTEGER NOT NULL,
    attachment_id INTEGER NOT NULL,
    author_id     INTEGER,
    posted_at     REAL,
    title         TEXT NOT NULL DEFAULT '',
    page_url      TEXT NOT NULL DEFAULT '',
    item_id       INTEGER NOT NULL REFERENCES items(id)
);
CREATE INDEX IF NOT EXISTS posts_item ON posts(item_id, message_id, attachment_id);
CREATE INDEX IF NOT EXISTS posts_channel ON posts(guild_id, channel_id, message_id);
CREATE INDEX IF NOT EXISTS posts_message ON posts(message_id);
"""


@dataclass(frozen=True)
class Post:
    """One Discord post (message attachment) of a stored picture."""

    source: str  # 'discord:<guild>/<channel>/<message>/<attachment>'
    guild_id: int
    channel_id: int
    message_id: int
    attachment_id: int
    author_id: int | None
    posted_at: float | None
    title: str
    page_url: str
    item_id: int  # the item holding the picture


@dataclass
class Forgotten:
    """What Collection.forget_posts changed."""

    posts: list[str] = field(default_factory=list)  # sources of the posts forgotten
    removed: list[int] = field(default_factory=list)  # items gone with their last post
    repointed: dict[int, str] = field(default_factory=dict)  # item id -> the post it names now

    def __bool__(self) -> bool:
        return bool(self.posts)


def has_table(conn: sqlite3.Connection) -> bool:
    return (
        conn.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='posts'").fetchone()
        is not None
    )


def create_and_fill(conn: sqlite3.Connection) -> int:
    """Make the table (a collection from before it) and fill it from the items' own posts.

    Statement by statement: executescript would commit the caller's transaction."""
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)
    cols = ", ".join(POST_COLUMNS)
    where = " AND ".join(f"{k} IS NOT NULL" for k in _KEYS)
    cur = conn.execute(
        f"INSERT OR IGNORE INTO posts ({cols}, item_id) SELECT {cols}, id FROM items WHERE {where}"
    )
    return cur.rowcount


def view_from_items(conn: sqlite3.Connection) -> None:
    """A read-only collection from before the table: its items' own posts, as a view
    (a TEMP view lives in memory, so it needs no write to the database)."""
    cols = ", ".join(POST_COLUMNS)
    where = " AND ".join(f"{k} IS NOT NULL" for k in _KEYS)
    conn.execute(f"CREATE TEMP VIEW posts AS SELECT {cols}, id AS item_id FROM items WHERE {where}")


def is_post(values: Sequence[Any]) -> bool:
    """Whether item values (items.item_values) describe a Discord post."""
    return all(values[META_COLUMNS.index(k)] is not None for k in _KEYS)


def record(conn: sqlite3.Connection, item_id: int, values: Sequence[Any]) -> None:
    """Record the post described by item values as a post of item `item_id`."""
    post = [values[i] for i in _FROM_ITEM]
    conn.execute(
        f"INSERT OR REPLACE INTO posts ({', '.join(POST_COLUMNS)}, item_id) "
        f"VALUES ({', '.join('?' * (len(POST_COLUMNS) + 1))})",
        (*post, item_id),
    )


def link(conn: sqlite3.Connection, posts: Sequence[NewItem]) -> list[int | None]:
    """Record posts of pictures already stored: each points at the item stored under its
    source, else the oldest item with its content hash in its guild. Returns each post's
    item id (None: no such picture, not recorded)."""
    out: list[int | None] = []
    for p in posts:
        values = item_values(p)
        if not is_post(values):
            raise StoreError(
                f"{p.source} is not a Discord post (guild, channel, message, attachment)"
            )
        row = conn.execute("SELECT id FROM items WHERE source = ?", (values[0],)).fetchone()
        if row is None and p.content_hash:
            row = conn.execute(
                "SELECT id FROM items WHERE content_hash = ? AND guild_id = ? ORDER BY id LIMIT 1",
                (p.content_hash, int(p.guild_id)),
            ).fetchone()
        if row is not None:
            record(conn, row[0], values)
        out.append(None if row is None else row[0])
    return out


def drop_of_items(conn: sqlite3.Connection, ids: Sequence[int]) -> None:
    """The posts of removed items go with them."""
    for _ in rows_in(conn, "DELETE FROM posts WHERE item_id IN (%s) RETURNING 1", sorted(ids)):
        pass


def known(conn: sqlite3.Connection, sources: Iterable[str]) -> set[str]:
    """Those of `sources` stored as a post or as an item."""
    wanted = list({source_key(s) for s in sources})
    found = {r[0] for r in rows_in(conn, "SELECT source FROM posts WHERE source IN (%s)", wanted)}
    found.update(
        r[0] for r in rows_in(conn, "SELECT source FROM items WHERE source IN (%s)", wanted)
    )
    return {source_of_key(s) for s in found}


def _where(guild_id: int, channel_id: int | None) -> tuple[str, list[Any]]:
    where, args = "guild_id = ?", [int(guild_id)]
    if channel_id is not None:
        where += " AND channel_id = ?"
        args.append(int(channel_id))
    return where, args


def select(
    conn: sqlite3.Connection,
    guild_id: int,
    channel_id: int | None = None,
    message_ids: Sequence[int] | None = None,
    item_ids: Sequence[int] | None = None,
) -> list[Post]:
    """A guild's posts (of one channel, of some messages, of some items), oldest first."""
    where, args = _where(guild_id, channel_id)
    if message_ids is not None and item_ids is not None:
        raise StoreError("posts: give message ids or item ids, not both")
    if message_ids is None and item_ids is None:
        rows = conn.execute(f"{_POST_SELECT} WHERE {where}", args).fetchall()
    else:
        column, values = ("message_id", message_ids) if item_ids is None else ("item_id", item_ids)
        sql = f"{_POST_SELECT} WHERE {where} AND {column} IN (%s)"
        rows = list(rows_in(conn, sql, sorted({int(v) for v in values}), args))
    posts = [Post(*r) for r in rows]
    return sorted(posts, key=lambda p: (p.message_id, p.attachment_id))


def forget(
    conn: sqlite3.Connection,
    guild_id: int,
    channel_id: int | None = None,
    message_ids: Sequence[int] | None = None,
    attachment_ids: Sequence[int] | None = None,
    keep_attachments: Iterable[int] | None = None,
) -> Forgotten:
    """Forget posts; re-point or remove their items (see Collection.forget_posts)."""
    if channel_id is None and message_ids is None and attachment_ids is None:
        raise StoreError(
            "forget_posts needs a channel, message ids or attachment ids; "
            "to drop a whole server's library, drop its collection"
        )
    where, args = _where(guild_id, channel_id)
    sql = f"SELECT source, item_id, attachment_id FROM posts WHERE {where}"
    if message_ids is not None:
        rows = list(rows_in(conn, sql + " AND message_id IN (%s)", sorted(set(message_ids)), args))
    else:
        rows = conn.execute(sql, args).fetchall()
    if attachment_ids is not None:
        wanted = {int(a) for a in attachment_ids}
        rows = [r for r in rows if r[2] in wanted]
    if keep_attachments is not None:
        keep = {int(a) for a in keep_attachments}
        rows = [r for r in rows if r[2] not in keep]
    out = Forgotten(posts=sorted(r[0] for r in rows))
    if not rows:
        return out
    for _ in rows_in(conn, "DELETE FROM posts WHERE source IN (%s) RETURNING 1", out.posts):
        pass
    gone = set(out.posts)
    items = sorted({r[1] for r in rows})
    heirs: dict[int, tuple[Any, ...]] = {}  # item -> its oldest post left
    sql = f"{_POST_SELECT} WHERE item_id IN (%s) ORDER BY {_ORDER}"
    for r in rows_in(conn, sql, items):
        heirs.setdefault(r[-1], r)
    current = dict(rows_in(conn, "SELECT id, source FROM items WHERE id IN (%s)", items))
    orphans = [i for i in items if i not in heirs]
    for item_id, heir in heirs.items():
        if current.get(item_id) not in gone:
            continue  # the post it names is still there
        taken = conn.execute("SELECT id FROM items WHERE source = ?", (heir[0],)).fetchone()
        if taken is not None and taken[0] != item_id:  # cannot happen in a consistent table
            orphans.append(item_id)
            continue
        conn.execute(
            "UPDATE items SET "
            + ", ".join(f"{c} = ?" for c in POST_COLUMNS if c != "guild_id")
            + " WHERE id = ?",
            (*(v for c, v in zip(POST_COLUMNS, heir, strict=False) if c != "guild_id"), item_id),
        )
        out.repointed[item_id] = heir[0]
    out.removed = [
        r[0]
        for r in rows_in(conn, "DELETE FROM items WHERE id IN (%s) RETURNING id", sorted(orphans))
    ]
    drop_of_items(conn, out.removed)
    out.removed.sort()
    return out
