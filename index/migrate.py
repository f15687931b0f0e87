"""Move a collection between stores: a folder (embedded FAISS + SQLite) and Milvus, either way.

    python -m index migrate --from /data/photos --to http://milvus:19530
    python -m index migrate --from http://milvus:19530 --to /data/photos

Items are copied in chunks, each chunk one `add` (one transaction in SQLite, one upsert in
Milvus), with every field of the item (its perceptual hash too, unless the destination is
a Milvus collection from before that field which cannot add it) and its vector. The
destination itself is the progress record: an item whose source is already there is not copied again, and `add` keys
items by source, so a migration killed at any point (kill -9 included) is resumed by running
the same command again, and a second run adds nothing twice.

At the end the destination is checked against the source: every source item is there, no
source is there twice, and a random sample of vectors matches within float16 rounding (both
stores keep vectors rounded through float16).

The provenance of library pictures (every Discord post of a stored picture) goes along: an
item's own post comes with the item, other posts of the same picture are recorded after
the items, per guild, and counted again at the end.

So do the collection's records (index/store/records.py: the relevance floor "floor", a
library's state): each one written whole after the posts (again only where the
destination's differs, so a second run writes nothing) and compared at the end. A Milvus
side's records are those of the collection itself (guild 0), which a folder's are; the
records of the servers sharing a Milvus collection belong to their namespaces.

Ids are the destination's own (sequential in a folder, a hash of the source in Milvus);
items are matched by source. `added_at` becomes the time of the copy.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StoreError
from .store import Collection, NewItem

CHUNK = 1000  # items per add
SAMPLE = 100  # vectors compared at the end
VECTOR_TOLERANCE = 2e-3  # max |difference| of a copied vector's components (float16 rounding)

_NEW_FIELDS = tuple(f.name for f in dataclasses.fields(NewItem))


def is_milvus(location: str) -> bool:
    """Whether `location` names a Milvus (a server URI, or a Milvus Lite `.db` file)."""
    return "://" in location or location.endswith(".db")


@dataclass
class Endpoint:
    """One side of a migration: a collection folder, or a collection in a Milvus."""

    location: str
    name: str | None = None  # Milvus collection name (default: the folder side's last part)
    token: str | None = None

    @property
    def milvus(self) -> bool:
        return is_milvus(self.location)

    def describe(self) -> str:
        return f"{self.location} ({self.name})" if self.milvus else self.location


@dataclass
class MigrateReport:
    source: str
    destination: str
    total: int = 0  # items in the source
    copied: int = 0  # items this run added
    already: int = 0  # items found in the destination already (an earlier, stopped run)
    posts: int = 0  # Discord posts of the pictures (provenance), verified per guild
    records: int = 0  # records of the collection (the floor, a library's state), verified
    records_written: int = 0  # of them, written by this run
    destination_items: int = 0  # items in the destination at the end
    checked: int = 0  # vectors compared
    max_difference: float = 0.0

    def summary(self) -> str:
        return (
            f"migrated {self.source} -> {self.destination}: {self.copied} copied, "
            f"{self.already} already there, {self.destination_items} items in the destination; "
            f"verified: all {self.total} source items present once, {self.posts} posts, "
            f"{self.records} records, "
            f"{self.checked} sampled "
            f"vectors equal within {self.max_difference:.1e}"
        )


def milvus_name(src: Endpoint, dst: Endpoint, name: str | None) -> str:
    """The Milvus collection name: `name`, else the folder side's last component."""
    if name:
        return name
    from .store.milvus import collection_name

    folder = dst if src.milvus else src
    if folder.milvus:
        raise StoreError(
            "both sides are Milvus: give the collection name with --name"
        )
    return collection_name(folder.location)


def open_source(end: Endpoint) -> Any:
    if end.milvus:
        from .store.milvus import MilvusStore

        return MilvusStore.open(end.location, end.name, token=end.token)
    return Collection.open(Path(end.location))


def open_destination(end: Endpoint, model: str, dim: int, index_type: str) -> Any:
    """The destination collection, created like the source (model, dim) if it is not there."""
    if end.milvus:
        from .store.milvus import MilvusStore

        return MilvusStore.create(end.location, end.name, model, dim, index_type, token=end.token)
    return Collection.create(Path(end.location), model, dim, index_type)


def migrate(
    src: Endpoint,
    dst: Endpoint,
    *,
    index_type: str = "auto",
    chunk: int = CHUNK,
    sample: int = SAMPLE,
    progress: Callable[[int, int], None] | None = None,
    seed: int = 0,
) -> MigrateReport:
    """Copy every item of `src` into `dst` (made if missing), then verify. Resumable."""
    if chunk < 1:
        raise StoreError(f"--chunk must be at least 1, not {chunk}")
    if _same(src, dst):
        raise StoreError(f"source and destination are the same: {src.describe()}")
    report = MigrateReport(src.describe(), dst.describe())
    source = open_source(src)
    try:
        m = source.manifest
        destination = open_destination(dst, m.model, m.dim, index_type)
        try:
            guilds = _copy(source, destination, report, chunk, progress)
            _copy_posts(source, destination, guilds, chunk)
            _copy_records(source, destination, report)
            destination.save()
            _verify(source, destination, report, sample, seed)
            _verify_posts(source, destination, guilds, report)
            _verify_records(source, destination, report)
        finally:
            destination.close()
    finally:
        source.close()
    return report


def _same(a: Endpoint, b: Endpoint) -> bool:
    if a.milvus != b.milvus:
        return False
    if a.milvus:
        return a.location.rstrip("/") == b.location.rstrip("/") and a.name == b.name
    return Path(a.location).resolve() == Path(b.location).resolve()


def _copy(source: Any, destination: Any, report: MigrateReport, chunk: int,
          progress: Callable[[int, int], None] | None) -> list[int]:
    """Copy the items; returns the guilds they come from (whose posts go next)."""
    there = set(destination.stamps())  # what an earlier run (or anyone) already put there
    ids = [int(i) for i in source.ids()]
    report.total = len(ids)
    guilds: set[int] = set()
    for start in range(0, len(ids), chunk):
        items = source.get(ids[start:start + chunk])
        guilds.update(it.guild_id for it in items if it.guild_id)
        todo = [it for it in items if it.source not in there]
        report.already += len(items) - len(todo)
        if todo:
            vectors = source.vectors([it.id for it in todo])
            destination.add([_as_new(it) for it in todo], vectors)
            there.update(it.source for it in todo)
            report.copied += len(todo)
        if progress is not None:
            progress(min(start + chunk, len(ids)), len(ids))
    return sorted(guilds)


def _copy_posts(source: Any, destination: Any, guilds: list[int], chunk: int) -> None:
    """Record every post of every picture; an item's own post came with it (add records it).

    A post is found again in the destination by the content hash of its picture (within
    its guild), as the library finds a picture posted again; recording it twice updates it.
    """
    for guild in guilds:
        posts = source.posts(guild)
        owners = {it.id: it for it in source.get(sorted({p.item_id for p in posts}))}
        more = [
            NewItem(source=p.source, title=p.title, page_url=p.page_url, guild_id=p.guild_id,
                    channel_id=p.channel_id, message_id=p.message_id,
                    attachment_id=p.attachment_id, author_id=p.author_id,
                    posted_at=p.posted_at, content_hash=owners[p.item_id].content_hash)
            for p in posts
            if p.item_id in owners and owners[p.item_id].source != p.source
        ]
        for start in range(0, len(more), chunk):
            destination.add_posts(more[start:start + chunk])


def _verify_posts(source: Any, destination: Any, guilds: list[int],
                  report: MigrateReport) -> None:
    for guild in guilds:
        want = {p.source for p in source.posts(guild)}
        have = {p.source for p in destination.posts(guild)}
        if want - have:
            raise StoreError(
                f"verification failed: {len(want - have)} posts of guild {guild} are not in "
                f"{report.destination} (e.g. {sorted(want - have)[0]}); run the same command again"
            )
        report.posts += len(want)


def _copy_records(source: Any, destination: Any, report: MigrateReport) -> None:
    """Write each record the destination lacks or holds another value of."""
    for name, value in source.all_records().items():
        if destination.read_record(name) != value:
            destination.write_record(name, value)
            report.records_written += 1


def _verify_records(source: Any, destination: Any, report: MigrateReport) -> None:
    want = source.all_records()
    for name, value in want.items():
        if destination.read_record(name) != value:
            raise StoreError(
                f"verification failed: record {name} is not in {report.destination} as in the "
                "source; run the same command again"
            )
    report.records = len(want)


def _as_new(item: Any) -> NewItem:
    return NewItem(**{f: getattr(item, f) for f in _NEW_FIELDS})


def _verify(source: Any, destination: Any, report: MigrateReport, sample: int, seed: int) -> None:
    wanted = set(source.stamps())
    there = destination.stamps()
    missing = wanted - set(there)
    if missing:
        raise StoreError(
            f"verification failed: {len(missing)} of {len(wanted)} source items are not in "
            f"{report.destination} (e.g. {sorted(missing)[0]}); run the same command again"
        )
    report.destination_items = len(destination)
    if report.destination_items != len(there):
        raise StoreError(
            f"verification failed: {report.destination} holds {report.destination_items} "
            f"items but {len(there)} distinct sources: some source is there twice"
        )
    ids = source.ids()
    if not len(ids):
        return
    rng = np.random.default_rng(seed)
    picked = [int(i) for i in rng.choice(ids, size=min(sample, len(ids)), replace=False)]
    items = source.get(picked)
    src_vecs = source.vectors([it.id for it in items])
    copies = [destination.by_source(it.source) for it in items]
    lost = [it.source for it, c in zip(items, copies, strict=True) if c is None]
    if lost:
        raise StoreError(f"verification failed: {lost[0]} is not in {report.destination}")
    keeps_phash = getattr(destination, "keeps_phash", True)  # (an old Milvus Lite collection)
    for it, c in zip(items, copies, strict=True):
        if not keeps_phash:
            it = dataclasses.replace(it, phash=None)
        if _as_new(it) != _as_new(c):
            raise StoreError(
                f"verification failed: {it.source} arrived with other metadata in "
                f"{report.destination}; run the same command again"
            )
    dst_vecs = destination.vectors([c.id for c in copies])
    diff = float(np.max(np.abs(dst_vecs - src_vecs))) if len(items) else 0.0
    report.checked, report.max_difference = len(items), diff
    if diff > VECTOR_TOLERANCE:
        raise StoreError(
            f"verification failed: a copied vector differs by {diff:.2e} (more than float16 "
            f"rounding, {VECTOR_TOLERANCE:.0e}) in {report.destination}"
        )
