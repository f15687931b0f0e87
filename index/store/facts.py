"""The post facts of a collection (filtered.PostFacts), kept in step with its posts table.

Reading every post again after each write would cost the whole table each time, and a
library being backfilled commits a chunk every few seconds, each only appending posts.
So after a first whole read, a change of the database (ours or another process's commit)
reads only the rows beyond the last rowid read, once it is sure that the rows read before
are all still there, unchanged:

- SQLite gives a new row the largest rowid in the table plus one, so the rows appended
  since the last read are those above the last rowid read, unless the newest rows read
  were deleted meanwhile (their rowids can then be given again);
- the check: the table holds as many rows as were read plus those above the last rowid
  (a row read and deleted since would have to be made up by a row re-inserted at or below
  it), and the TOP newest rows read are still there with the same source and facts (a
  rowid given again shows there, unless the rows given those rowids are the same posts
  with the same facts, in the same order, TOP of them).

The store never updates a post row in place (recording a post again is INSERT OR REPLACE:
a delete, then an insert above every rowid), and it deletes posts only with their item or
by forgetting them: both show in the check. Anything the check cannot vouch for (a
deletion, a replacement, a table without rowids such as a read-only collection's view of
its items) reads the whole table again, so an answer is never served from stale facts.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from .filtered import FACT_COLUMNS, PostFacts

TOP = 16  # newest rows read, checked again at each incremental read


@dataclass
class Change:
    """What a refresh found: `whole` (the facts were read again: every plan made from
    the old ones is void) or `appended` (the facts of the posts appended; empty: none)."""

    whole: bool = False
    appended: PostFacts | None = None


@dataclass
class FactsReader:
    """The facts of the posts table as last read, and where the reading stopped."""

    facts: PostFacts | None = None
    reads: int = 0  # whole reads (tests, logs)
    _count: int = 0  # rows read
    _top: list[tuple] = field(default_factory=list)  # the TOP newest rows read, oldest first

    def refresh(self, conn: sqlite3.Connection) -> Change:
        """Bring the facts up to the table (call when the database may have changed)."""
        if self.facts is not None and self._top is not None:
            try:
                new = self._appended(conn)
            except sqlite3.Error:
                new = None  # e.g. a view without rowids: read whole
            if new is not None:
                return Change(appended=new)
        self._read_whole(conn)
        return Change(whole=True)

    def _read_whole(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN")
        try:
            facts = PostFacts.read(conn)
            try:
                top = conn.execute(
                    f"SELECT rowid, {FACT_COLUMNS}, source FROM posts ORDER BY rowid DESC LIMIT {TOP}"
                ).fetchall()[::-1]
            except sqlite3.Error:
                top = None  # no rowids: every change reads whole again
        finally:
            conn.execute("COMMIT")
        self.facts = facts
        self._count, self._top = len(facts), top
        self.reads += 1

    def _appended(self, conn: sqlite3.Connection) -> PostFacts | None:
        """The facts of the rows appended since the last read; None when the rows read
        before may have changed."""
        assert self.facts is not None and self._top is not None
        first = self._top[0][0] if self._top else 0
        conn.execute("BEGIN")
        try:
            rows = conn.execute(
                f"SELECT rowid, {FACT_COLUMNS}, source FROM posts WHERE rowid >= ? ORDER BY rowid",
                (first,),
            ).fetchall()
            count = conn.execute("SELECT count(*) FROM posts").fetchone()[0]
        finally:
            conn.execute("COMMIT")
        old, new = rows[: len(self._top)], rows[len(self._top):]
        if old != self._top or count != self._count + len(new):
            return None
        facts = PostFacts.of_rows([r[1:5] for r in new])
        if new:
            self.facts = self.facts.appended(facts)
            self._count = count
            self._top = (self._top + new)[-TOP:]
        return facts

