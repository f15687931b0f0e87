"""index/store/facts.py: after a write, the post facts read only the posts appended when
that is all that happened, and read the whole table again whenever rows read before may
have changed; either way they equal a whole read."""

from __future__ import annotations

import sqlite3

import numpy as np

from index.store.facts import TOP, FactsReader
from index.store.filtered import PostFacts, PostFilter
from index.store.posts import SCHEMA

FILTERS = [PostFilter(channels=frozenset({1})), PostFilter(channels=frozenset({2, 3})),
           PostFilter(authors=frozenset({7}), since=50.0), PostFilter(until=20.0)]


def table(n: int) -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.executescript(SCHEMA.replace("REFERENCES items(id)", ""))
    insert(conn, range(n))
    return conn


def insert(conn: sqlite3.Connection, posts, replace: bool = False, item=None, author=None) -> None:
    verb = "INSERT OR REPLACE" if replace else "INSERT"
    conn.executemany(
        f"{verb} INTO posts (source, guild_id, channel_id, message_id, attachment_id, author_id,"
        " posted_at, item_id) VALUES (?, 1, ?, ?, ?, ?, ?, ?)",
        [(f"p{i}", i % 4, i, i, author if author is not None else i % 9, float(i % 100),
          item if item is not None else i // 2) for i in posts])


def same_as_whole(reader: FactsReader, conn: sqlite3.Connection) -> None:
    whole = FactsReader()
    whole.refresh(conn)
    assert reader.facts is not None and whole.facts is not None
    assert len(reader.facts) == len(whole.facts)
    for where in FILTERS:
        assert np.array_equal(reader.facts.allowed(where).ids(), whole.facts.allowed(where).ids())


def test_appended_posts_are_read_alone_and_the_facts_equal_a_whole_read():
    conn = table(300)
    reader = FactsReader()
    assert reader.refresh(conn).whole and reader.reads == 1
    change = reader.refresh(conn)  # nothing changed
    assert not change.whole and len(change.appended) == 0
    for start in range(300, 700, 40):  # appends: a tail, merged into the whole as it grows
        insert(conn, range(start, start + 40))
        change = reader.refresh(conn)
        assert not change.whole and len(change.appended) == 40
        assert np.array_equal(change.appended.allowed(FILTERS[0]).ids(),
                              np.unique([i // 2 for i in range(start, start + 40) if i % 4 == 1]))
        same_as_whole(reader, conn)
    assert reader.reads == 1


def test_a_deletion_a_replacement_or_a_reused_rowid_reads_the_whole_table_again():
    cases = {
        "an old post deleted": lambda c: c.execute("DELETE FROM posts WHERE source = 'p5'"),
        "deleted and another appended": lambda c: (
            c.execute("DELETE FROM posts WHERE source = 'p5'"), insert(c, [900])),
        "an old post recorded again": lambda c: insert(c, [5], replace=True, item=77),
        "the newest recorded again": lambda c: insert(c, [99], replace=True, item=77),
        # the newest rows deleted, then others given their rowids: the same count of rows
        "the newest rowids given again": lambda c: (
            c.execute(f"DELETE FROM posts WHERE rowid > {100 - TOP - 2}"),
            insert(c, range(500, 500 + TOP + 2))),
        "the newest given again, the newest re-inserted last as it was": lambda c: (
            c.execute("DELETE FROM posts WHERE rowid > 97"), insert(c, [500, 501]),
            insert(c, [99])),
    }
    for name, change in cases.items():
        conn = table(100)
        reader = FactsReader()
        reader.refresh(conn)
        change(conn)
        assert reader.refresh(conn).whole, name
        same_as_whole(reader, conn)
        assert reader.reads == 2, name


def test_a_table_without_rowids_is_read_whole_at_every_change():
    """A read-only collection from before the posts table sees its items' posts as a view."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, channel_id INTEGER,"
                 " author_id INTEGER, posted_at REAL, source TEXT)")
    conn.execute("CREATE VIEW posts AS SELECT id AS item_id, channel_id, author_id, posted_at,"
                 " source FROM items")
    conn.executemany("INSERT INTO items VALUES (?, ?, 1, 1.0, ?)", [(i, i % 3, f"s{i}") for i in range(10)])
    reader = FactsReader()
    reader.refresh(conn)
    conn.execute("INSERT INTO items VALUES (10, 1, 1, 1.0, 's10')")
    assert reader.refresh(conn).whole and reader.reads == 2
    assert 10 in reader.facts.allowed(PostFilter(channels=frozenset({1}))).ids().tolist()


def test_appended_facts_sort_as_the_whole_would():
    """Tails merged into tails and into the whole by insertion equal a stable sort of all
    the posts (ties: the older post first), so a filter finds the same posts."""
    rng = np.random.default_rng(2)

    def some(n, first):
        return PostFacts(np.arange(first, first + n), rng.integers(0, 6, n),
                         rng.integers(0, 4, n), rng.integers(0, 9, n).astype(float))

    facts, n = some(200, 0), 200
    for size in (5, 7, 11, 13, 30, 3):  # tails, then merges into the whole
        facts = facts.appended(some(size, n))
        n += size
        whole = PostFacts(*facts.arrays())
        flat = facts if facts._tail is None else None
        if flat is not None:
            for name, (order, values) in whole._sorted.items():
                assert np.array_equal(flat._sorted[name][0], order), name
                assert np.array_equal(flat._sorted[name][1], values), name
        for where in FILTERS:
            assert np.array_equal(facts.allowed(where).ids(), whole.allowed(where).ids())
    assert len(facts) == n
