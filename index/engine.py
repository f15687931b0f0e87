"""The facade both faces use: parse, encode, rank, explain; add and remove.

The bot and the CLI call only this (plus the error types); neither touches the model,
FAISS or SQLite directly.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from .attention import UNAVAILABLE
from .codes import BULK, SEARCH, TextCode
from .errors import ClipfindError, HeatmapUnavailable, ModelMismatch, QueryError
from .floor import FloorKeeper, query_floor
from .nearcopies import Group, Ranked, group
from .query import Query, parse_query
from .ranking import STRATEGIES, WeightedVector, compose, normalise, zsum_scores
from .store import Collection, Forgotten, Item, NewItem, Post
from .store.filtered import PostFilter
from .thumbnails import ThumbnailStore

if TYPE_CHECKING:  # torch: not imported by a process that encodes through the service
    from .encoder import Encoder

log = logging.getLogger(__name__)

NEAR_DUPLICATE = 0.98  # results this close to a query image are the image itself
ZSUM_CANDIDATES = 1000  # per term, for the z-scored composition
ZSUM_SAMPLE = 4000  # stored vectors that estimate each term's spread of cosines


@dataclass
class Hit:
    rank: int  # 1-based, over the whole result list (near-copies count once)
    score: float  # cosine between the composed query and the item
    item: Item
    weak: bool = False  # under its collection's relevance floor (index/floor.py)
    copies: list[Hit] = field(default_factory=list)  # near-copies shown as this one (nearcopies.py)

    @property
    def id(self) -> int:
        return self.item.id


@dataclass
class SearchResult:
    query: Query
    hits: list[Hit]
    offset: int
    k: int
    has_more: bool
    attention: list[list[tuple[str, float]] | None]  # one entry per text term, in order
    attention_note: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    floor: float | None = None  # this query's relevance floor in this collection (None: none)

    @property
    def page(self) -> int:
        return self.offset // max(self.k, 1)


@dataclass
class AddReport:
    ids: list[int] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)  # sources already stored
    failed: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)


@dataclass
class EngineOptions:
    device: str = "auto"
    threads: int | None = None
    max_batch: int = 32
    max_wait_ms: float = 4.0
    queue_size: int = 512
    cache_size: int = 2048
    image_composition: str = "zsum"  # for queries with image terms; measured in README
    image_scale: float = 1.0  # an image term's weight is multiplied by this (modality balance)
    # long-lived processes (the bot): retrain the index (Flat -> IVF, ...) in a thread
    # instead of inside the search that noticed it; see Collection.open
    background_rebuilds: bool = False
    # encode through the encoder service at this URL (python -m index serve) instead of
    # loading the model in this process; the token is its bearer token
    encoder_url: str | None = None
    encoder_token: str | None = field(default=None, repr=False)
    relevance_floor: bool = True  # calibrate and apply the floor (index/floor.py)


class Engine:
    def __init__(self, collection: Collection, encoder: Encoder, options: EngineOptions | None = None,
                 *, owns_encoder: bool = True):
        self.collection = collection
        self.encoder = encoder
        self.owns_encoder = owns_encoder  # False when several collections share one encoder
        self.options = options or EngineOptions()
        if self.options.image_composition not in STRATEGIES:
            raise ClipfindError(f"unknown image_composition {self.options.image_composition!r}; "
                                f"use one of: {', '.join(STRATEGIES)}")
        self._sample: tuple[int, np.ndarray, np.ndarray] | None = None  # (items, rows, their mean)
        self._image_explainer = None  # made on the first explain_image (see explain_image.py)
        self.floor = FloorKeeper(collection, encoder, collection.manifest.model)
        if self.options.background_rebuilds:  # also for collections opened by the caller
            collection.background_rebuilds = True

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, *, model: str | None = None, create: bool = False,
             index_type: str = "auto", options: EngineOptions | None = None,
             store: str = "faiss", milvus_uri: str | None = None,
             milvus_token: str | None = None) -> Engine:
        """Open a collection with the model that built it (or create it, with `model`).

        store="milvus": the collection lives in the Milvus at `milvus_uri` (a server URL, or
        a Milvus Lite file; default `path`/milvus.db) under the name `path`'s last component.
        """
        options = options or EngineOptions()
        path = Path(path)
        if store == "milvus":
            collection, encoder = _open_milvus(path, model, create, index_type, options,
                                              milvus_uri, milvus_token)
        elif store != "faiss":
            raise ClipfindError(f"unknown store {store!r}: use faiss or milvus")
        elif create and not (path / "manifest.json").exists():
            encoder = make_encoder(model, options)
            try:
                collection = Collection.create(path, encoder.loaded.name, encoder.loaded.dim,
                                               index_type,
                                               background_rebuilds=options.background_rebuilds)
            except BaseException:
                encoder.close()
                raise
        else:
            wanted = _canonical(model) if model else None
            collection = Collection.open(path, wanted, background_rebuilds=options.background_rebuilds)
            try:
                encoder = make_encoder(collection.manifest.model, options, path)
            except BaseException:
                collection.close()
                raise
        engine = cls(collection, encoder, options)
        _note_unhashed(collection, path, store, milvus_uri)
        return engine

    def close(self) -> None:
        if self.owns_encoder:
            self.encoder.close()  # stops a warm-up in progress and joins the model thread
        self.collection.close()

    @property
    def model_name(self) -> str:
        return self.encoder.loaded.name

    @property
    def ready(self) -> bool:
        """The model is loaded and warmed up: searches run at full speed."""
        return self.encoder.ready

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until ready (or `timeout` seconds); True when ready."""
        return self.encoder.wait_ready(timeout)

    @functools.cached_property
    def thumbnails(self) -> ThumbnailStore:
        """Thumbnails of this collection's local images, made once, kept in its folder."""
        return ThumbnailStore(Path(self.collection.path) / "thumbnails")

    # -- queries -------------------------------------------------------------------------------
    def parse(self, text: str, n_images: int = 0) -> Query:
        return parse_query(text, n_images)

    async def term_vectors(self, query: Query, images: list) -> list[WeightedVector]:
        return (await self._encode_terms(query, images))[0]

    async def _encode_terms(self, query: Query, images: list
                            ) -> tuple[list[WeightedVector], dict[str, TextCode]]:
        """The terms' vectors, and each text's code (its word weights come with it). Queue
        room for all of them is taken at once: Busy before any work, or never."""
        texts = [t.text for t in query.text_terms]
        used = sorted({t.image for t in query.image_terms})
        with self.encoder.reserve(self.encoder.uncached(texts) + len(used)) as room:
            codes, image_vecs = await asyncio.gather(
                self.encoder.encode_text_codes(texts, SEARCH, room),
                self.encoder.encode_images([images[i] for i in used], SEARCH, room))
        by_text = dict(zip(texts, codes, strict=True))
        by_image = dict(zip(used, image_vecs, strict=True))
        return [WeightedVector(by_text[t.text].vector if t.kind == "text" else by_image[t.image],
                               t.weight, t.kind) for t in query.terms], by_text

    async def search(self, text: str | Query, images: list[Image.Image | bytes | Path] = (), *,
                     k: int = 10, offset: int = 0, explain: bool = True,
                     keep_near_duplicates: bool = False, also: list[Engine] = (),
                     collapse: bool = True) -> SearchResult:
        """Rank this collection (and those of `also`: engines sharing this one's encoder,
        e.g. a server's library plus the global collection) for one query, encoded once;
        merged results are ordered by cosine. `collapse`: near-copies are one result (its
        `copies`); a text query's results under their collection's floor are `weak`."""
        images = list(images)
        query = text if isinstance(text, Query) else parse_query(text, len(images))
        k, offset = int(k), int(offset)
        if k < 1 or offset < 0:  # a silent clamp would answer a question that was not asked
            raise QueryError(f"k must be 1 or more and offset 0 or more (got k={k}, offset={offset})")
        t0 = time.perf_counter()
        # the word weights come with the text vectors (one pass, see encoder.TextCode)
        terms, codes = await self._encode_terms(query, images)
        if self.options.image_scale != 1.0:
            terms = [replace(t, weight=t.weight * self.options.image_scale) if t.kind == "image"
                     else t for t in terms]
        t1 = time.perf_counter()
        zterms = terms if bool(query.image_terms) and self.options.image_composition == "zsum" else None
        where, also = await asyncio.to_thread(self._filtered_scope, query, list(also))
        floors = await asyncio.gather(*(e._query_floor(query, terms) for e in [self, *also]))
        groups = await asyncio.to_thread(self._rank_all, terms, zterms, offset + k + 1,
                                         keep_near_duplicates, also, floors, collapse, where)
        t2 = time.perf_counter()
        attention, note = self._explained(query, codes) if explain else ([], None)
        hits = [Hit(offset + i + 1, g.leader.score, g.leader.item, g.leader.weak,
                    [Hit(offset + i + 1, c.score, c.item, c.weak) for c in g.copies])
                for i, g in enumerate(groups[offset:offset + k])]
        return SearchResult(query, hits, offset, k, len(groups) > offset + k, attention, note,
                            {"encode": t1 - t0, "search": t2 - t1}, floors[0])

    async def _query_floor(self, query: Query, terms: list[WeightedVector]) -> float | None:
        """This collection's floor for a text query (None: no floor, or image terms)."""
        if not self.options.relevance_floor or query.image_terms:
            return None
        floor = await self.floor.current()
        if floor is None:
            return None
        if len(terms) == 1:
            return floor.value
        background = await asyncio.to_thread(self._average_picture)
        return query_floor(floor.value, terms, background)

    def _filtered_scope(self, query: Query, also: list[Engine]
                        ) -> tuple[PostFilter | None, list[Engine]]:
        """The store filter of the query's filters, and the `also` collections it can match
        in (those whose items have posts); QueryError when a filter names a channel or
        member by name (only a server can resolve it) or no collection has posts."""
        f = query.filters
        if not f:
            return None, also
        f.need_ids()
        if not self.collection.has_posts():
            raise QueryError(
                "filters (in:, from:, before:, after:, during:) need a server library, whose "
                "pictures know their channel, poster and date; this collection's do not: "
                "search without them")
        where = PostFilter(frozenset(r.id for r in f.channels), frozenset(r.id for r in f.members),
                           f.since, f.until)
        return where, [e for e in also if e.collection.has_posts()]

    def _rank_all(self, terms: list[WeightedVector], zterms, n: int, keep_near_duplicates: bool,
                  also: list[Engine], floors: list[float | None], collapse: bool,
                  where: PostFilter | None = None) -> list[Group]:
        """Compose and rank over this collection and `also`, merged by cosine and grouped
        into near-copies, until n groups (or all there are) are found (in a worker thread)."""
        q = compose(terms)
        avoid = [normalise(t.vector) for t in terms if t.kind == "image" and not keep_near_duplicates]
        depth = 2 * n if collapse else n  # read ahead: the copies of the page's pictures
        while True:
            ranked, more = [], False
            for engine, floor in zip([self, *also], floors, strict=True):
                found = engine._ranked(q, zterms, depth, avoid, where)
                more |= len(found) >= depth
                vecs = engine.collection.vectors([it.id for it, _ in found]) if collapse and found else None
                ranked += [Ranked(it, s, None if vecs is None else vecs[j], floor)
                           for j, (it, s) in enumerate(found)]
            if also:
                ranked = sorted(ranked, key=lambda r: -r.score)[:depth]
            groups = group(ranked) if collapse else [Group(r) for r in ranked]
            if len(groups) >= n or not more:
                return groups
            depth *= 2

    @staticmethod
    def _explained(query: Query, codes: dict[str, TextCode]) -> tuple[list, str | None]:
        """The word weights of each text term (None for a term without), and a note when
        the model gives none at all."""
        weights = [None if codes[t.text].words is None else list(codes[t.text].words)
                   for t in query.text_terms]
        note = UNAVAILABLE if query.text_terms and all(w is None for w in weights) else None
        return weights, note

    def _candidates(self, q: np.ndarray, zterms: list[WeightedVector] | None, want: int,
                    where: PostFilter | None = None):
        """(id, cosine with q) best first: by cosine, or by z-scored sum over each term's top."""
        scope = {} if where is None else {"where": where}  # only the items the filter allows
        if zterms is None:
            return self.collection.search(q, want, **scope)
        pool = {i for t in zterms if t.weight > 0
                for i, _ in self.collection.search(normalise(t.vector), max(want, ZSUM_CANDIDATES),
                                                   **scope)}
        ids = sorted(pool)
        if not ids:
            return []
        vecs = self.collection.vectors(ids)
        order = np.argsort(-zsum_scores(zterms, vecs, self._spread_sample()), kind="stable")[:want]
        return [(ids[j], float(vecs[j] @ q)) for j in order]

    def _spread_sample(self) -> np.ndarray:
        n = len(self.collection)
        if self._sample is None or abs(self._sample[0] - n) > 0.1 * max(n, 1):
            ids = self.collection.ids()
            pick = np.random.default_rng(0).choice(len(ids), min(len(ids), ZSUM_SAMPLE), replace=False)
            rows = self.collection.vectors(list(ids[np.sort(pick)]))
            self._sample = (n, rows, rows.mean(axis=0))
        return self._sample[1]

    def _average_picture(self) -> np.ndarray:
        """The mean of the sampled stored vectors (made with the sample, not per search)."""
        self._spread_sample()
        return self._sample[2]

    def _ranked(self, q: np.ndarray, zterms: list[WeightedVector] | None, n: int,
                avoid: list[np.ndarray], where: PostFilter | None = None) -> list[tuple[Item, float]]:
        """The best n items (those `where` allows), near-duplicates of query images left out."""
        want = n
        while True:
            found = self._candidates(q, zterms, want, where)
            ids = [i for i, _ in found]
            if avoid and ids:
                vecs = self.collection.vectors(ids)
                near = (vecs @ np.stack(avoid).T).max(axis=1) >= NEAR_DUPLICATE
                found = [f for f, bad in zip(found, near, strict=True) if not bad]
            if len(found) >= n or len(ids) < want:
                break
            want *= 2
        found = found[:n]
        items = {it.id: it for it in self.collection.get([i for i, _ in found])}
        return [(items[i], float(s)) for i, s in found if i in items]

    async def explain(self, text: str) -> list[tuple[str, float]] | None:
        """The word weights of one text (encoded, or from the text cache)."""
        words = (await self.encoder.encode_text_codes([text]))[0].words
        return None if words is None else list(words)

    async def explain_image(self, item_id: int, query: str | Query, images: list = (), *,
                            picture: bytes | Image.Image | None = None, public_only: bool = True):
        """Where in item `item_id`'s picture the model saw the query (and each text term):
        an `explain_image.ImageExplanation`. `picture`: the item's bytes, when the caller
        has them (e.g. a Discord attachment); else its file or URL is read again."""
        if getattr(self.encoder, "url", None):
            raise HeatmapUnavailable("heatmaps need the model in this process; this one encodes "
                                     f"through the encoder service at {self.encoder.url}")
        from .explain_image import ImageExplainer
        if self._image_explainer is None:
            self._image_explainer = ImageExplainer(self)
        return await self._image_explainer.explain(item_id, query, images, picture=picture,
                                                   public_only=public_only)

    # -- vectors and items ---------------------------------------------------------------------------
    async def embed_texts(self, texts: list[str]) -> np.ndarray:
        return await self.encoder.encode_texts(list(texts))

    async def embed_images(self, images: list) -> np.ndarray:
        return await self.encoder.encode_images(list(images))

    async def add_images(self, items: list[NewItem], images: list[bytes], *,
                         priority: int = BULK) -> AddReport:
        """Decode, encode and store images with their metadata, in one transaction.

        The build pipeline's path and de-duplication rule (`index.build`): a source already
        stored, or a picture already stored in the same guild (for guild-less items:
        anywhere), is reported as a duplicate, not stored twice; undecodable images are
        reported, not raised.
        """
        from .build import Upload, build
        uploads = [Upload(item, data) for item, data in zip(items, images, strict=True)]
        built = await build(self.collection, self.encoder, uploads, chunk=max(1, len(uploads)),
                            priority=priority, save=False)
        return AddReport(ids=built.ids, duplicates=built.skipped, failed=built.failed)

    def remove(self, ids: list[int]) -> int:
        return self.collection.remove(ids)

    async def rehash(self, *, fetch=None, public_only: bool = True, batch: int | None = None,
                     progress=None):
        """Make the perceptual hashes of the items stored before them (index/rehash.py): a
        `rehash.RehashReport`. `fetch`: how the caller reads the sources only it can (a
        Discord library's posts: items -> [(item, bytes or why not)])."""
        from .rehash import BATCH, rehash
        return await rehash(self.collection, fetch=fetch, public_only=public_only,
                            batch=batch or BATCH, progress=progress)

    # -- provenance: the Discord posts of the pictures (index/store/posts.py) ----------------
    # add_images records the post of each picture it stores and of each repeat it skips.
    # Blocking calls (SQLite): run them in a thread.
    def known(self, sources: list[str]) -> set[str]:
        """Those of `sources` already stored, as an item or as a post of one."""
        return self.collection.known(sources)

    def add_posts(self, posts: list[NewItem]) -> list[int | None]:
        """Record more posts of stored pictures (by source, else content hash in the guild)."""
        return self.collection.add_posts(posts)

    def posts(self, guild_id: int, **where) -> list[Post]:
        """A guild's posts (channel_id=, message_ids= or item_ids=), oldest first."""
        return self.collection.posts(guild_id, **where)

    def forget_posts(self, *, guild_id: int, **which) -> Forgotten:
        """Forget a guild's posts (channel_id=, message_ids=, attachment_ids=,
        keep_attachments=) in one transaction: a picture whose item named one is re-pointed
        at its oldest post left, one without posts left is removed with its vector."""
        return self.collection.forget_posts(guild_id=guild_id, **which)

    def read_record(self, name: str) -> str | None:
        """A small named value kept in the store beside the items (None: there is none);
        where a face keeps what any process, on any machine, must find again."""
        return self.collection.read_record(name)

    def write_record(self, name: str, value: str | None) -> None:
        """Set the record, written whole in one step (None deletes it)."""
        self.collection.write_record(name, value)


def collection_exists(path: str | Path, *, store: str = "faiss", milvus_uri: str | None = None,
                      milvus_token: str | None = None) -> bool:
    """Whether the collection `path` names is there (in the folder, or in the Milvus).

    A Milvus that cannot be reached raises StoreUnavailable naming the URI.
    """
    path = Path(path)
    if store != "milvus":
        return (path / "manifest.json").exists()
    from .store.milvus import MilvusStore, collection_name
    return MilvusStore.exists(_lite_default(path, milvus_uri), collection_name(path),
                              token=milvus_token)


def open_store(path: str | Path, model: str | None = None, *, store: str = "faiss",
               milvus_uri: str | None = None, milvus_token: str | None = None,
               create_dim: int | None = None, index_type: str = "auto",
               background_rebuilds: bool = False):
    """The collection `path` names, in the embedded store (its folder) or in Milvus (named by
    the last component of `path`; `milvus_uri` None: a Milvus Lite file in the folder).

    create_dim given: created (as `model`, create_dim-d) when missing. Else opened; `model`,
    when given, must be the one that built it.
    """
    path = Path(path)
    if store == "milvus":
        from .store.milvus import MilvusStore, collection_name
        uri, name = _lite_default(path, milvus_uri), collection_name(path)
        if create_dim is not None:
            return MilvusStore.create(uri, name, model, create_dim, index_type, token=milvus_token)
        return MilvusStore.open(uri, name, model, token=milvus_token)
    if store != "faiss":
        raise ClipfindError(f"unknown store {store!r}: use faiss or milvus")
    if create_dim is not None:
        return Collection.create(path, model, create_dim, index_type,
                                 background_rebuilds=background_rebuilds)
    return Collection.open(path, model, background_rebuilds=background_rebuilds)


def _note_unhashed(collection, path: Path, store: str, milvus_uri: str | None) -> None:
    """One log line when items lack a perceptual hash, and the command that makes them; a
    note only: what it cannot find out is not worth failing an open for."""
    from .rehash import unhashed_note
    fix = f"python -m index rehash --index {path}"
    if store == "milvus":
        from .store.milvus import redact
        fix += " --store milvus" + (f" --milvus-uri {redact(milvus_uri)}" if milvus_uri else "")
    try:
        note = unhashed_note(collection, fix)
    except ClipfindError as e:
        log.debug("cannot count the items without a perceptual hash: %s", e)
        return
    if note:
        log.warning("%s", note)


def _lite_default(path: Path, uri: str | None) -> str:
    return str(uri) if uri else str(path / "milvus.db")


def _open_milvus(path: Path, model: str | None, create: bool, index_type: str,
                 options: EngineOptions, uri: str | None, token: str | None):
    """(MilvusStore, encoder) for the collection `path` names in the Milvus at `uri`."""
    kw = {"store": "milvus", "milvus_uri": uri, "milvus_token": token}
    if create and not collection_exists(path, **kw):
        encoder = make_encoder(model, options)
        try:
            return open_store(path, encoder.loaded.name, create_dim=encoder.loaded.dim,
                              index_type=index_type, **kw), encoder
        except BaseException:
            encoder.close()
            raise
    wanted = _canonical(model) if model else None
    collection = open_store(path, wanted, **kw)
    try:
        return collection, make_encoder(collection.manifest.model, options, path)
    except BaseException:
        collection.close()
        raise


def _canonical(spec: str) -> str:
    from .modelspec import parse_spec
    return parse_spec(spec).canonical


def make_encoder(model: str | None, options: EngineOptions, collection: Path | None = None):
    """The encoder `options` ask for: the model loaded in this process (`model`, default
    DEFAULT_MODEL), or the encoder service at `options.encoder_url`, which must run `model`
    when one is given (`collection`: the collection that asks, named in the refusal)."""
    if options.encoder_url:
        from .service.client import RemoteEncoder
        encoder = RemoteEncoder.connect(options.encoder_url, options.encoder_token,
                                        cache_size=options.cache_size)
        runs = encoder.loaded.name
        # a collection's manifest holds the canonical spec; a spec typed by the user may not be
        if model and model != runs and (collection is not None or _canonical(model) != runs):
            encoder.close()
            wants = f"collection {collection} was built with" if collection else "asked for"
            raise ModelMismatch(f"the encoder service at {options.encoder_url} runs {runs}, but "
                                f"{wants} {model}; start the service with --model {model}")
        return encoder
    from .encoder import Encoder
    from .models import load_model
    from .modelspec import DEFAULT_MODEL
    loaded = load_model(model or DEFAULT_MODEL, options.device)
    return Encoder(loaded, max_batch=options.max_batch, max_wait_ms=options.max_wait_ms,
                   queue_size=options.queue_size, cache_size=options.cache_size,
                   threads=options.threads)
