"""Adding images to a collection: load, decode, encode and store them, resumably.

This is the one ingestion path: folders, URL lists and Unsplash rows (`SourceRecord`s: a
file or URL to read) and Discord posts (`Upload`s: the bytes in hand, with where they were
posted; `Engine.add_images`) all go through `build`, with one de-duplication rule:

- by source: a source already stored with the same stamp is unchanged and not read again;
  with another stamp it is read again and its row updated (it keeps its id).
- by content: an image whose content hash (sha256 of its bytes) is already stored under
  another source in its scope, or came earlier in the same run, is a duplicate and not stored. The scope of an
  item with a guild id is that guild; of one without, the whole collection. A duplicate
  Discord post is recorded as another post of the stored picture (provenance, see
  index/store/posts.py), so the picture stays while any of its posts remains. The hash
  comes from the bytes, so a duplicate is recognised as soon as they are read (looked up
  once), and is neither decoded nor encoded. (Two processes storing the same bytes under
  two sources at the same moment may both store them, as a check before any write could
  let them: the two items are then one result, by their content hash.)

Every picture stored also gets its perceptual hash (index/phash.py), made from the decoded
pixels here, whatever the path: what index/nearcopies.py recognises re-encoded copies by
('' for a picture of one flat colour, which has none: looked at, so never listed by
index/rehash.py, which makes the hashes of items stored before them).

Each chunk of images is committed to SQLite in one transaction with its vectors, so a
killed build resumes where it stopped: sources already stored with the same stamp are
skipped, and nothing is stored twice. Loading and decoding of the next chunks, and
storing of the previous one, overlap the model's work on the current one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .codes import BULK
from .errors import BadItem, ClipfindError
from .images import content_hash, open_image
from .netfetch import FetchLimits, fetch_many
from .phash import phash
from .sources import SourceRecord
from .store import Collection, NewItem

if TYPE_CHECKING:  # torch: not imported where the encoder service encodes (preprocess None)
    import torch

    from .encoder import Encoder

log = logging.getLogger(__name__)


_LOOKUP_LIMIT = 256  # inputs up to this many look their sources up one by one


@dataclass
class BuildReport:
    added: int = 0
    unchanged: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    ids: list[int] = field(default_factory=list)  # of the items stored, in input order
    skipped: list[str] = field(default_factory=list)  # sources unchanged or duplicates

    def summary(self) -> str:
        s = f"added {self.added}, unchanged {self.unchanged}"
        if self.duplicates:
            s += f", duplicates skipped {self.duplicates}"
        return s + f", failed {len(self.failed)}"


@dataclass
class Upload:
    """An image whose bytes are in hand (a Discord post), with everything to store about it;
    the pipeline's other input beside `SourceRecord` (a file or a URL to read)."""

    item: NewItem
    data: bytes = field(repr=False)


@dataclass
class _Job:
    item: NewItem  # what to store; its content hash is filled in once the bytes are read
    location: str = ""  # a file path or URL to read, when the bytes are not in hand
    is_url: bool = False
    data: bytes | None = field(default=None, repr=False)


def _job(r: SourceRecord | Upload) -> _Job:
    if isinstance(r, Upload):
        return _Job(r.item, data=r.data)
    return _Job(NewItem(source=r.source, title=r.title, credit=r.credit, page_url=r.page_url,
                        stamp=r.stamp), r.location, r.is_url)


@dataclass
class _Prepared:
    jobs: list[_Job]
    hashes: list[str]
    pixels: torch.Tensor | list[bytes] | None  # bytes: for an encoder that decodes them itself
    phashes: list[str] = field(default_factory=list)  # perceptual hash per job ('': none)
    repeats: list[tuple[_Job, str]] = field(default_factory=list)  # duplicates, with their hash


def _stored_stamps(collection: Collection, sources: list[str]) -> dict[str, str]:
    if len(sources) <= _LOOKUP_LIMIT:  # a few posts: no need to read every source stored
        return {s: it.stamp for s in sources if (it := collection.by_source(s)) is not None}
    return collection.stamps()


def pending(collection: Collection, jobs: list[_Job]) -> tuple[list[_Job], list[str]]:
    """The inputs not yet stored with the same stamp (first of each source), and the
    sources that are (unchanged)."""
    stamps = _stored_stamps(collection, list({j.item.source: None for j in jobs}))
    todo, unchanged, seen = [], [], set()
    for j in jobs:
        source = j.item.source
        if source in seen:
            continue
        seen.add(source)
        if source in stamps and stamps[source] == j.item.stamp:
            unchanged.append(source)
        else:
            todo.append(j)
    return todo, unchanged


async def _load(jobs: list[_Job], limits: FetchLimits, public_only: bool,
                failed: list) -> list[tuple[_Job, bytes | None]]:
    """Fetch the URL inputs' bytes; local files are read later, by the decoding thread."""
    urls = [j.location for j in jobs if j.is_url and j.data is None]
    fetched: dict[str, bytes] = {}
    reasons: dict[str, str] = {}
    if urls:
        ok, bad = await fetch_many(urls, public_only=public_only, limits=limits)
        fetched = dict(ok)
        reasons = dict(bad)
    out: list[tuple[_Job, bytes | None]] = []
    for j in jobs:
        if j.data is not None or not j.is_url:
            out.append((j, j.data))
        elif j.location in fetched:
            out.append((j, fetched[j.location]))
        else:
            failed.append((j.item.source, reasons.get(j.location, "not fetched")))
    return out


def _read(pairs: list[tuple[_Job, bytes | None]], failed: list):
    """Each job with its bytes: those it came with, or its file's (a file that cannot be
    read goes to `failed`)."""
    for j, data in pairs:
        if data is None:
            try:
                data = Path(j.location).read_bytes()
            except OSError as e:
                failed.append((j.item.source, f"cannot read: {e.strerror or e}"))
                continue
        yield j, data


def _repeat(collection: Collection, claimed: set[tuple[int | None, str]], j: _Job,
            h: str) -> bool:
    """Whether the picture with content hash `h` is a duplicate (the module's rule), told
    from its bytes alone: one earlier in this run (`claimed`), or one stored under another
    source in its scope."""
    scope = j.item.guild_id
    if (scope, h) in claimed:
        return True
    dup = collection.find_hash(h, scope)
    return dup is not None and dup.source != j.item.source


def _decode(loaded, pairs: list[tuple[_Job, bytes | None]], failed: list,
            collection: Collection, claimed: set[tuple[int | None, str]]) -> _Prepared:
    """Read (files), hash, drop duplicates, decode and preprocess one chunk; runs in a
    worker thread, one chunk after another in input order (so `claimed`, the pictures this
    run keeps, is filled in that order). A model without `preprocess` (the encoder
    service's stand-in) gets the bytes, checked to decode, instead of pixels."""
    stage = None
    if loaded.preprocess is not None:
        from .pixels import resize_stage, to_pixels
        stage = resize_stage(loaded.preprocess)
    jobs, hashes, phashes, inputs, repeats = [], [], [], [], []
    for j, data in _read(pairs, failed):
        source = j.item.source
        h = j.item.content_hash or content_hash(data)
        if _repeat(collection, claimed, j, h):
            repeats.append((j, h))
            continue
        try:
            img = open_image(data, name=source)
            inputs.append(stage(img) if stage else data)
        except ClipfindError as e:
            failed.append((source, str(e)))
            continue
        claimed.add((j.item.guild_id, h))
        jobs.append(j)
        hashes.append(h)
        ph = j.item.phash or phash(img)
        phashes.append("" if ph is None else ph)  # '': looked at, one flat colour, none
    if not inputs:
        return _Prepared(jobs, hashes, None, phashes, repeats)
    pixels = to_pixels(loaded.preprocess, inputs) if stage else inputs
    return _Prepared(jobs, hashes, pixels, phashes, repeats)


def _store(collection: Collection, prepared: _Prepared, vectors: np.ndarray,
           report: BuildReport) -> None:
    """Store one encoded chunk in one transaction, then the posts of its repeats (the
    duplicates `_decode` set aside, see the module's rule) in another (a crash between loses
    only those records: their sources are not known, so the next run reads them again);
    runs in a thread."""
    repeats = []
    for j, h in prepared.repeats:
        report.duplicates += 1
        report.skipped.append(j.item.source)
        if _is_post(j.item):
            repeats.append(replace(j.item, content_hash=h))
    items = [replace(j.item, content_hash=h, phash=ph)
             for j, h, ph in zip(prepared.jobs, prepared.hashes, prepared.phashes, strict=True)]
    keep = list(range(len(items)))
    vectors = np.asarray(vectors)
    while items:  # one bad item must not cost its chunk: it is reported, the rest stored
        try:
            report.ids += collection.add(items, vectors[keep])
            break
        except BadItem as e:
            bad = next((k for k, it in enumerate(items) if it.source == e.source), None)
            if bad is None:
                raise
            report.failed.append((e.source, e.reason))
            del items[bad], keep[bad]
    if repeats:  # a picture posted again: another post of the stored item
        collection.add_posts(repeats)
    report.added += len(items)


def _is_post(item: NewItem) -> bool:
    return None not in (item.guild_id, item.channel_id, item.message_id, item.attachment_id)


async def _next(queue: asyncio.Queue, feeder: asyncio.Task):
    """queue.get(), but raise the feeder's error instead of waiting forever if it died."""
    if queue.empty() and feeder.done() and feeder.exception() is not None:
        raise feeder.exception()
    get = asyncio.ensure_future(queue.get())
    await asyncio.wait({get, feeder}, return_when=asyncio.FIRST_COMPLETED)
    if not get.done():
        get.cancel()
        feeder.result()  # raises its error (a feeder that ended always queued its None first)
    return get.result()


async def _hand(queue: asyncio.Queue, item, taker: asyncio.Task) -> None:
    """queue.put(item), but raise the taker's error instead of waiting forever if it died."""
    put = asyncio.ensure_future(queue.put(item))
    await asyncio.wait({put, taker}, return_when=asyncio.FIRST_COMPLETED)
    if not put.done():
        put.cancel()
        taker.result()
        raise RuntimeError("build writer stopped early")


async def build(collection: Collection, encoder: Encoder, records: list[SourceRecord | Upload],
                *, chunk: int = 64, limits: FetchLimits | None = None, public_only: bool = False,
                progress: Callable[[int], None] | None = None, lookahead: int = 2,
                priority: int = BULK, save: bool = True) -> BuildReport:
    """Add what is new or changed among `records` to `collection` (see the module's rule).

    Three stages run at once, so the model is never kept waiting: reading and decoding the
    next chunks (threads, up to `lookahead` chunks ahead), encoding one chunk (the encoder's
    model thread), and storing the previous chunk (a thread; chunks are stored in order,
    one transaction each, so a killed build still leaves whole chunks only). `save` writes
    the index file at the end (a long-lived process adding a few posts at a time leaves
    that to its collection's close).
    """
    limits = limits or FetchLimits()
    report = BuildReport()
    todo, report.skipped = pending(collection, [_job(r) for r in records])
    report.unchanged = len(report.skipped)
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    decoded: asyncio.Queue[_Prepared | None] = asyncio.Queue(maxsize=lookahead)
    encoded: asyncio.Queue[tuple[_Prepared, np.ndarray] | None] = asyncio.Queue(maxsize=1)
    claimed: set[tuple[int | None, str]] = set()  # (scope, hash) of the pictures decoded

    async def produce():
        for part in chunks:
            pairs = await _load(part, limits, public_only, report.failed)
            prepared = await asyncio.to_thread(_decode, encoder.loaded, pairs, report.failed,
                                               collection, claimed)
            handled = len(prepared.jobs) + len(prepared.repeats)
            if handled < len(part) and progress:
                progress(len(part) - handled)
            await decoded.put(prepared)
        await decoded.put(None)

    async def write():
        while (job := await encoded.get()) is not None:
            prepared, vectors = job
            await asyncio.to_thread(_store, collection, prepared, vectors, report)
            if progress:
                progress(len(prepared.jobs) + len(prepared.repeats))

    producer = asyncio.create_task(produce())
    writer = asyncio.create_task(write())
    try:
        while (prepared := await _next(decoded, producer)) is not None:
            if prepared.pixels is None:
                if prepared.repeats:  # only duplicates: their posts are still recorded
                    await _hand(encoded, (prepared, np.zeros((0, 1), np.float32)), writer)
                continue
            vectors = await encoder.encode_pixels(prepared.pixels, priority=priority)
            await _hand(encoded, (prepared, vectors), writer)
        await _hand(encoded, None, writer)
        await writer
        await producer
    finally:
        producer.cancel()
        writer.cancel()
        # a store already running in its thread finishes its transaction before we save
        await asyncio.gather(producer, writer, return_exceptions=True)
        if save:
            await asyncio.to_thread(collection.save)
    return report


async def add_vectors(collection: Collection, records: list[SourceRecord], vectors: np.ndarray,
                      chunk: int = 4096) -> BuildReport:
    """Store precomputed vectors (import-features), skipping sources already present."""
    report = BuildReport()
    stored = collection.stamps()
    keep = [i for i, r in enumerate(records) if r.source not in stored]
    report.unchanged = len(records) - len(keep)
    for s in range(0, len(keep), chunk):
        idx = keep[s:s + chunk]
        items = [NewItem(source=records[i].source, title=records[i].title, credit=records[i].credit,
                         page_url=records[i].page_url, stamp=records[i].stamp) for i in idx]
        await asyncio.to_thread(collection.add, items, vectors[idx])
        report.added += len(idx)
    await asyncio.to_thread(collection.save)
    return report
