"""Small named records a collection keeps beside its items (meta.sqlite, table `records`).

What a face must find again on any machine lives here rather than in a file next to the
collection: the Discord library keeps each server's channels and backfill progress as
the record "library" (see bot/library.py). A record is one text value (JSON, say),
written whole in one transaction, so two writers never leave it half-written; the last
write wins.
"""

from __future__ import annotations

import sqlite3
import time

from index.errors import StoreError

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS records ("
    "name TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL NOT NULL)"
)
MAX_NAME = 200
MAX_VALUE = 60_000  # characters: what the Milvus store can keep in one row as well


def checked(name: str, value: str | None, where: str) -> None:
    """StoreError (one line) for a record name or value no store can keep."""
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise StoreError(f"bad record name {name!r} for {where}: 1 to {MAX_NAME} characters")
    if value is not None and (not isinstance(value, str) or len(value.encode()) > MAX_VALUE):
        size = len(value.encode()) if isinstance(value, str) else type(value).__name__
        raise StoreError(f"record {name} for {where} is too large ({size} bytes, at most "
                         f"{MAX_VALUE})")


def has_table(conn: sqlite3.Connection) -> bool:
    row = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"
    ).fetchone()
    return row is not None


def read(conn: sqlite3.Connection, name: str) -> str | None:
    if not has_table(conn):  # a read-only collection from before the table
        return None
    row = conn.execute("SELECT value FROM records WHERE name = ?", (name,)).fetchone()
    return None if row is None else str(row[0])


def read_all(conn: sqlite3.Connection) -> dict[str, str]:
    if not has_table(conn):
        return {}
    return {str(n): str(v) for n, v in conn.execute("SELECT name, value FROM records ORDER BY name")}


def write(conn: sqlite3.Connection, name: str, value: str | None) -> None:
    """Inside the caller's transaction: set (or with None, delete) the record."""
    conn.execute(SCHEMA)
    if value is None:
        conn.execute("DELETE FROM records WHERE name = ?", (name,))
    else:
        conn.execute(
            "INSERT INTO records (name, value, updated) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value, updated = excluded.updated",
            (name, value, time.time()),
        )
