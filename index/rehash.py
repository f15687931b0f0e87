"""Perceptual hashes for the items stored before they existed (python -m index rehash).

Near-copies are told apart by their perceptual hashes (index/nearcopies.py); an item
stored before the hash was made at ingestion has none, and falls back to the cosine,
which merges distinct pictures of one shape under the bundled model. Ingesting such an
item again would re-encode it; its vector is right, only the hash is missing, so this
reads the picture again, decodes it and stores its hash, nothing else:

- the items listed are those read from a picture (they have a content hash) with no
  perceptual hash; imported vectors (no picture was ever read) are not;
- a source is read where it was at build time: a local file, or an http(s) URL through
  the safe fetcher (index/netfetch.py: its size and time limits, and with `public_only`
  only public addresses); a Discord library's items (`discord:` sources, whose CDN URLs
  expire) only through a `fetch` the caller hands in (the bot can fetch a post again);
- bytes that are no longer those stored (their content hash differs: the file was
  replaced) are not hashed: the hash would describe another picture than the vector;
- a picture of one flat colour has no hash: it is marked '' (looked at, none), so the
  next run does not read it again;
- each batch is committed as it is hashed (one transaction in SQLite, one upsert in
  Milvus), and only items still without a hash are listed and written: a stopped run
  loses at most its batch in flight, and a second run has nothing left to hash.

Sources that cannot be read are reported and kept without a hash (their items keep
working, grouped by the cosine). A complete run records how many it left (the record
"rehash"), so that opening the collection, which says in one line how many items lack a
hash (`unhashed_note`), stops saying it for those: the run's summary named them. A store
that cannot keep hashes (a Milvus Lite collection made before the field, which Lite
cannot add) is refused in one line that says how to move it into one that can.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ClipfindError, StoreError
from .images import content_hash, open_image
from .netfetch import FetchLimits, fetch_many
from .phash import phash
from .store import Item

BATCH = 64  # items read, hashed and committed together
RECORD = "rehash"  # the store record: how many items the last full run left without a hash
WORKERS = min(8, os.cpu_count() or 1)  # threads reading, decoding and hashing a batch

# a caller's reader for sources the engine cannot read itself (a Discord library's posts):
# items -> (item, its bytes or why they cannot be had), for every item given
Fetch = Callable[[list[Item]], Awaitable[list[tuple[Item, bytes | str]]]]


@dataclass
class RehashReport:
    missing: int = 0  # items without a hash when the run started
    hashed: int = 0
    flat: int = 0  # pictures of one flat colour: none to make (marked, not read again)
    unreachable: list[tuple[str, str]] = field(default_factory=list)  # (source, why)
    elsewhere: int = 0  # sources only their face can read (discord:), none handed in

    def summary(self) -> str:
        s = f"hashed {self.hashed}"
        if self.flat:
            s += f", {self.flat} flat (one colour: no hash to make)"
        s += f", unreachable {len(self.unreachable)} sources kept without a hash"
        if self.elsewhere:
            s += (f", {self.elsewhere} Discord library items left (the bot hashes its "
                  "library itself)")
        return s


def cannot_keep(store: Any) -> str | None:
    """Why `store` cannot keep perceptual hashes, and how to move it into one that can
    (None: it can)."""
    if getattr(store, "keeps_phash", True):
        return None
    from .store.milvus import redact  # (only a Milvus store may lack the field)
    uri, name = redact(getattr(store, "uri", "URI")), getattr(store, "name", "NAME")
    return (f"{store.location} cannot keep perceptual hashes (it was made before them, and "
            f"this Milvus cannot add a field to it): migrate it into a new collection, which "
            f"keeps them (python -m index migrate --from {uri} --name {name} --to NEW_FOLDER), "
            f"then rehash that")


def unhashed_count(store: Any) -> int | None:
    """How many of `store`'s items read from a picture have no perceptual hash (None: the
    store cannot keep them, see cannot_keep)."""
    if cannot_keep(store):
        return None
    return store.count_unhashed()


def unhashed_note(store: Any, fix: str) -> str | None:
    """One line for a collection that has items without a perceptual hash (None: it has
    none): how many, what it costs, and `fix` (the command that makes them)."""
    why = cannot_keep(store)
    n, where = store.count_unhashed(), store.location
    if not n or (not why and n <= _left_by_last_run(store)):
        return None  # (those the last run could not read: its summary said so)
    what = (f"{n} items of {where} have no perceptual hash (stored before it existed), so "
            f"near-copies among them are told by the vectors alone" if n > 1 else
            f"1 item of {where} has no perceptual hash (stored before it existed), so its "
            f"near-copies are told by the vectors alone")
    return f"{what}; {why}" if why else f"{what}; `{fix}` makes them"


def _left_by_last_run(store: Any) -> int:
    """How many items the last complete rehash could not hash (0: none, or never run)."""
    try:
        return int(store.read_record(RECORD) or 0)
    except ValueError:
        return 0


async def rehash(store: Any, *, batch: int = BATCH, limits: FetchLimits | None = None,
                 public_only: bool = True, fetch: Fetch | None = None,
                 progress: Callable[[int], None] | None = None,
                 started: Callable[[int], None] | None = None) -> RehashReport:
    """Make and store the perceptual hash of `store`'s items that lack one (see the
    module's rule). `started(n)` is told how many there are before the first is read;
    `progress(k)` after each batch of k."""
    why = cannot_keep(store)
    if why:
        raise StoreError(why)
    limits = limits or FetchLimits()
    pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="clipfind-rehash")
    try:
        if store.readonly:
            raise StoreError(f"{store.location} is read-only here (its folder cannot be written): "
                             "copy it somewhere writable to rehash it")
        ids = await asyncio.to_thread(store.unhashed_ids)
        report = RehashReport(missing=len(ids))
        if started:
            started(len(ids))
        for s in range(0, len(ids), max(1, batch)):
            part = ids[s:s + max(1, batch)]
            items = await asyncio.to_thread(store.get, part)
            pairs = await _load(items, limits, public_only, fetch, report)
            found = await _hash_all(pairs, pool, report)
            if found:
                await asyncio.to_thread(store.set_phashes, found)
            if progress:
                progress(len(part))
        left = await asyncio.to_thread(store.count_unhashed)
        await asyncio.to_thread(store.write_record, RECORD, str(left))
        return report
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


async def _load(items: list[Item], limits: FetchLimits, public_only: bool,
                fetch: Fetch | None, report: RehashReport
                ) -> list[tuple[Item, bytes | str | None]]:
    """Each readable item with its bytes, or why they cannot be had, or None: a local file,
    read by the hashing thread (`_hash_all`)."""
    urls = [it for it in items if it.source.startswith(("http://", "https://"))]
    posts = [it for it in items if it.source.startswith("discord:")]
    out: list[tuple[Item, bytes | str | None]] = [
        (it, None) for it in items if not it.source.startswith(("http://", "https://", "discord:"))]
    if urls:
        ok, bad = await fetch_many([it.source for it in urls], public_only=public_only,
                                   limits=limits)
        got, reasons = dict(ok), dict(bad)
        out += [(it, got[it.source] if it.source in got
                 else reasons.get(it.source, "not fetched")) for it in urls]
    if posts and fetch is None:
        report.elsewhere += len(posts)
    elif posts:
        out += await fetch(posts)
    return out


class _Unreadable(str):
    """Why a picture could not be hashed (what `_hash_one` answers instead of a hash)."""


def _hash_one(it: Item, data: bytes | str | None) -> str:
    """The item's perceptual hash ('' for a flat picture), or an _Unreadable: the bytes
    cannot be had, or are no longer those stored (the hash would describe another picture
    than the vector). Runs in a worker thread; local files are read here."""
    if isinstance(data, str):
        return _Unreadable(data)
    try:
        if data is None:
            data = Path(it.source).read_bytes()
        if content_hash(data) != it.content_hash:
            return _Unreadable("it is not the picture stored any more (its bytes changed): "
                               "build again to index it anew")
        return phash(open_image(data, name=it.source)) or ""
    except OSError as e:
        return _Unreadable(f"cannot read: {e.strerror or e}")
    except ClipfindError as e:
        return _Unreadable(str(e))


async def _hash_all(pairs: Sequence[tuple[Item, bytes | str | None]], pool: Executor,
                    report: RehashReport) -> dict[int, str]:
    """id -> perceptual hash of the pictures that could be read, made on `pool`'s threads
    (decoding releases the GIL); the others go to `report.unreachable`."""
    loop = asyncio.get_running_loop()
    made = await asyncio.gather(*(loop.run_in_executor(pool, _hash_one, it, data)
                                  for it, data in pairs))
    out: dict[int, str] = {}
    for (it, _), ph in zip(pairs, made, strict=True):
        if isinstance(ph, _Unreadable):
            report.unreachable.append((it.source, str(ph)))
            continue
        out[it.id] = ph
        if ph:
            report.hashed += 1
        else:
            report.flat += 1
    return out
