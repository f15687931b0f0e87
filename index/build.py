"""Building a collection: load, decode, encode and store images, resumably.

Each chunk of images is committed to SQLite in one transaction with its vectors, so a
killed build resumes where it stopped: sources already stored with the same stamp are
skipped, and nothing is stored twice. Loading and decoding of the next chunks, and
storing of the previous one, overlap the model's work on the current one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .encoder import BULK, Encoder
from .errors import BadItem, ClipfindError
from .images import content_hash, open_image
from .netfetch import FetchLimits, fetch_many
from .pixels import resize_stage, to_pixels
from .sources import SourceRecord
from .store import Collection, NewItem

log = logging.getLogger(__name__)


@dataclass
class BuildReport:
    added: int = 0
    unchanged: int = 0
    duplicates: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        s = f"added {self.added}, unchanged {self.unchanged}"
        if self.duplicates:
            s += f", duplicates skipped {self.duplicates}"
        return s + f", failed {len(self.failed)}"


@dataclass
class _Prepared:
    records: list[SourceRecord]
    hashes: list[str]
    pixels: torch.Tensor | None


def pending_records(collection: Collection, records: list[SourceRecord]) -> tuple[list[SourceRecord], int]:
    """Records not yet stored with the same stamp, and how many were unchanged."""
    stamps = collection.stamps()
    todo, seen = [], set()
    for r in records:
        if r.source in seen:
            continue
        seen.add(r.source)
        if r.source in stamps and stamps[r.source] == r.stamp:
            continue
        todo.append(r)
    return todo, len(seen) - len(todo)


async def _load(records: list[SourceRecord], limits: FetchLimits, public_only: bool,
                failed: list) -> list[tuple[SourceRecord, bytes | None]]:
    """Fetch the URL records' bytes; local files are read later, by the decoding thread."""
    urls = [r.location for r in records if r.is_url]
    fetched: dict[str, bytes] = {}
    reasons: dict[str, str] = {}
    if urls:
        ok, bad = await fetch_many(urls, public_only=public_only, limits=limits)
        fetched = dict(ok)
        reasons = dict(bad)
    out: list[tuple[SourceRecord, bytes | None]] = []
    for r in records:
        if not r.is_url:
            out.append((r, None))
        elif r.location in fetched:
            out.append((r, fetched[r.location]))
        else:
            failed.append((r.source, reasons.get(r.location, "not fetched")))
    return out


def _decode(loaded, pairs: list[tuple[SourceRecord, bytes | None]], failed: list) -> _Prepared:
    """Read (files), decode and preprocess one chunk; runs in a worker thread."""
    stage = resize_stage(loaded.preprocess)
    records, hashes, images = [], [], []
    for r, data in pairs:
        if data is None:
            try:
                data = Path(r.location).read_bytes()
            except OSError as e:
                failed.append((r.source, f"cannot read: {e.strerror or e}"))
                continue
        try:
            images.append(stage(open_image(data, name=r.source)))
        except ClipfindError as e:
            failed.append((r.source, str(e)))
            continue
        records.append(r)
        hashes.append(content_hash(data))
    if not images:
        return _Prepared(records, hashes, None)
    return _Prepared(records, hashes, to_pixels(loaded.preprocess, images))


def _store(collection: Collection, prepared: _Prepared, vectors: np.ndarray,
           seen_hashes: set[str], report: BuildReport) -> None:
    """Drop duplicates and store one encoded chunk in one transaction; runs in a thread."""
    items, keep = [], []
    for i, (r, h) in enumerate(zip(prepared.records, prepared.hashes, strict=True)):
        dup = collection.find_hash(h)
        if h in seen_hashes or (dup is not None and dup.source != r.source):
            report.duplicates += 1
            continue
        items.append(NewItem(source=r.source, title=r.title, credit=r.credit,
                             page_url=r.page_url, content_hash=h, stamp=r.stamp))
        keep.append(i)
        seen_hashes.add(h)
    vectors = np.asarray(vectors)
    while items:  # one bad item must not cost its chunk: it is reported, the rest stored
        try:
            collection.add(items, vectors[keep])
            break
        except BadItem as e:
            bad = next((j for j, it in enumerate(items) if it.source == e.source), None)
            if bad is None:
                raise
            report.failed.append((e.source, e.reason))
            del items[bad], keep[bad]
    report.added += len(items)


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


async def build(collection: Collection, encoder: Encoder, records: list[SourceRecord], *,
                chunk: int = 64, limits: FetchLimits | None = None, public_only: bool = False,
                progress: Callable[[int], None] | None = None, lookahead: int = 2) -> BuildReport:
    """Add what is new or changed among `records` to `collection`.

    Three stages run at once, so the model is never kept waiting: reading and decoding the
    next chunks (threads, up to `lookahead` chunks ahead), encoding one chunk (the encoder's
    model thread), and storing the previous chunk (a thread; chunks are stored in order,
    one transaction each, so a killed build still leaves whole chunks only).
    """
    limits = limits or FetchLimits()
    report = BuildReport()
    todo, report.unchanged = pending_records(collection, records)
    chunks = [todo[i:i + chunk] for i in range(0, len(todo), chunk)]
    decoded: asyncio.Queue[_Prepared | None] = asyncio.Queue(maxsize=lookahead)
    encoded: asyncio.Queue[tuple[_Prepared, np.ndarray] | None] = asyncio.Queue(maxsize=1)
    seen_hashes: set[str] = set()

    async def produce():
        for part in chunks:
            pairs = await _load(part, limits, public_only, report.failed)
            prepared = await asyncio.to_thread(_decode, encoder.loaded, pairs, report.failed)
            if len(prepared.records) < len(part) and progress:
                progress(len(part) - len(prepared.records))
            await decoded.put(prepared)
        await decoded.put(None)

    async def write():
        while (job := await encoded.get()) is not None:
            prepared, vectors = job
            await asyncio.to_thread(_store, collection, prepared, vectors, seen_hashes, report)
            if progress:
                progress(len(prepared.records))

    producer = asyncio.create_task(produce())
    writer = asyncio.create_task(write())
    try:
        while (prepared := await _next(decoded, producer)) is not None:
            if prepared.pixels is None:
                continue
            vectors = await encoder.encode_pixels(prepared.pixels, priority=BULK)
            await _hand(encoded, (prepared, vectors), writer)
        await _hand(encoded, None, writer)
        await writer
        await producer
    finally:
        producer.cancel()
        writer.cancel()
        # a store already running in its thread finishes its transaction before we save
        await asyncio.gather(producer, writer, return_exceptions=True)
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
