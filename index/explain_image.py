"""`Engine.explain_image`: the relevance maps of one stored item for one query.

Fetches the item's picture again (a local file, or a URL through the public-only fetcher),
encodes the query's terms, and runs `heatmap.relevance_maps` on the encoder's model thread
at `heatmap.EXPLAIN` priority, below searches. One explanation runs at a time per encoder:
a second one asked meanwhile gets `Busy` at once rather than waiting in line, so heatmaps
never pile up in front of searches. Results are cached by (item, query, attached images).
"""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .errors import (
    Busy,
    ClipfindError,
    FetchError,
    HeatmapUnavailable,
    ImageError,
    ItemGone,
    QueryError,
)
from .heatmap import DEFAULT_METHOD, EXPLAIN, HeatmapCache, Heatmaps, relevance_stages, require_vit
from .images import open_image
from .query import USAGE, Query, parse_query
from .ranking import WeightedVector, compose, normalise

BUSY = "busy drawing another heatmap, try again in a moment"
NO_TEXT = ("a heatmap shows where the model saw the query's words, and this query has no "
           "text term; add one, e.g. red circle")

# one explanation at a time per encoder (several engines may share one)
_RUNNING: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class ImageExplanation:
    item_id: int
    query: str  # canonical form
    heatmaps: Heatmaps
    picture: Image.Image = field(repr=False)  # what the model saw: the centre crop it encodes
    cached: bool = False


def parse_for_heatmap(query: str | Query, n_images: int) -> Query:
    q = query if isinstance(query, Query) else parse_query(query, n_images)
    if not q.text_terms:
        raise QueryError(f"{NO_TEXT} — {USAGE}")
    return q


def model_crop(picture: Image.Image, side: int) -> Image.Image:
    """The square the model sees of a picture (open_clip resizes the short side, then
    crops the centre), at `side` pixels."""
    w, h = picture.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return picture.crop((left, top, left + s, top + s)).resize((side, side), Image.Resampling.BICUBIC)


async def read_source(source: str, *, public_only: bool = True, limits=None) -> bytes:
    """The bytes behind an item's source; ItemGone (one line) when they cannot be had."""
    from .netfetch import FetchLimits, fetch_bytes, make_session

    if source.startswith(("http://", "https://")):
        limits = limits or FetchLimits(max_bytes=20 * 2**20, timeout_s=15.0, retries=1)
        session = make_session(public_only, limits)
        try:
            return await fetch_bytes(session, source, limits)
        except FetchError as e:
            raise ItemGone(f"the picture of this result cannot be fetched any more ({e})") from e
        finally:
            await session.close()
    if source.startswith("discord:"):
        raise ItemGone("the picture of this result lives on Discord; ask for its heatmap "
                       "from the bot, which can fetch it")
    path = Path(source)
    try:
        return await asyncio.to_thread(path.read_bytes)
    except FileNotFoundError as e:
        raise ItemGone(f"the picture of this result is gone ({source} was deleted or moved); "
                       "rebuild the collection to drop it") from e
    except OSError as e:
        raise ItemGone(f"the picture of this result cannot be read any more "
                       f"({source}: {e.strerror or type(e).__name__})") from e


class ImageExplainer:
    """The engine's heatmap side (one per Engine; shares the engine's encoder)."""

    def __init__(self, engine, method: str = DEFAULT_METHOD, cache_size: int = 64):
        self.engine = engine
        self.method = method
        self.cache = HeatmapCache(cache_size)

    async def explain(self, item_id: int, query: str | Query, images: list = (), *,
                      picture: bytes | Image.Image | None = None,
                      public_only: bool = True) -> ImageExplanation:
        engine = self.engine
        encoder = engine.encoder
        images = list(images)
        q = parse_for_heatmap(query, len(images))
        if getattr(encoder, "loaded", None) is None:  # e.g. a remote encoder service
            raise HeatmapUnavailable("heatmaps are not available here: they need the model in "
                                     "this process, and the encoder runs elsewhere")
        require_vit(encoder.loaded)  # HeatmapUnavailable before any work
        found = await asyncio.to_thread(engine.collection.get, [int(item_id)])
        if not found:
            self.cache.drop_item(int(item_id))
            raise ItemGone(f"result {item_id} no longer exists (it was removed from the "
                           "collection); search again")
        item = found[0]
        key = (item.id, q.describe(), tuple(_digest(im) for im in images), self.method, item.content_hash)
        hit = self.cache.get(key)
        if hit is not None:
            return ImageExplanation(item.id, q.describe(), hit[0], hit[1], cached=True)
        lock = _RUNNING.setdefault(encoder, asyncio.Lock())
        if lock.locked():
            raise Busy(BUSY)
        async with lock:
            if picture is None:
                picture = await read_source(item.source, public_only=public_only)
            try:
                shown = picture if isinstance(picture, Image.Image) else await asyncio.to_thread(
                    open_image, picture, name=item.title or Path(item.source).name or item.source)
            except ImageError as e:
                raise ItemGone(f"the picture of this result cannot be read any more ({e})") from e
            shown = shown.convert("RGB")
            pixels = await encoder.preprocess([shown])
            labels, targets = await self._targets(q, images)
            stages = relevance_stages(encoder.loaded, pixels, torch.from_numpy(targets), self.method,
                                      threads=getattr(encoder, "lone_threads", {}).get("image"))
            for stage in stages:  # one call each: a search waits for one stage at most
                maps = await encoder.call(stage, priority=EXPLAIN)
        if len(labels) > len(maps):  # one text term alone: the query is that term
            maps = np.concatenate([maps, maps])
        side = max(pixels.shape[-2:])
        heat = Heatmaps(labels, maps, self.method, encoder.loaded.name)
        crop = model_crop(shown, max(side, 256))
        self.cache.put(key, (heat, crop))
        return ImageExplanation(item.id, q.describe(), heat, crop)

    async def _targets(self, q: Query, images: list) -> tuple[list[str], np.ndarray]:
        """(labels, target vectors): the composed query first, then each text term."""
        encoder, options = self.engine.encoder, self.engine.options
        texts = [t.text for t in q.text_terms]
        text_vecs = await encoder.encode_texts(texts, EXPLAIN)
        by_text = dict(zip(texts, text_vecs, strict=True))
        used = sorted({t.image for t in q.image_terms})
        by_image = {}
        if used:
            vecs = await encoder.encode_images([images[i] for i in used], EXPLAIN)
            by_image = dict(zip(used, vecs, strict=True))
        terms = []
        for t in q.terms:
            if t.kind == "text":
                terms.append(WeightedVector(by_text[t.text], t.weight, "text"))
            else:
                terms.append(WeightedVector(by_image[t.image], t.weight * options.image_scale, "image"))
        labels = ["query"] + [t.label() for t in q.text_terms]
        joint = compose(terms)
        if len(q.terms) == 1:
            return labels, joint[None]
        return labels, np.stack([joint] + [normalise(by_text[t]) for t in texts]).astype(np.float32)


def _digest(im) -> str:
    if isinstance(im, Image.Image):
        return hashlib.sha1(im.tobytes()).hexdigest()
    if isinstance(im, Path):
        return str(im)
    if isinstance(im, bytes | bytearray):
        return hashlib.sha1(im).hexdigest()
    raise ClipfindError(f"an attached image must be a picture, bytes or a path, not {type(im).__name__}")
