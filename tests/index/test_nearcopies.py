"""Near-copies recognised by perceptual hash (index/phash.py, index/nearcopies.py), kept
in both stores, and the cosine where a collection has no hashes."""

from __future__ import annotations

import sqlite3
from types import SimpleNamespace

import numpy as np
import pytest
from pictures import encoded
from PIL import Image

from index.images import open_image
from index.nearcopies import COPY_BITS, Ranked, group
from index.phash import hamming, phash, valid
from index.store import NewItem
from index.synthetic import Scene, Shape, render


def _pic(colour: str, shape: str, cx: float, cy: float, r: float = 0.2) -> Image.Image:
    return render(Scene((Shape(colour, shape, cx, cy, r),), (20, 20, 30)))


def _vecs(cosine: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors at exactly this cosine."""
    a, b = np.linalg.qr(np.random.default_rng(seed).standard_normal((32, 2)))[0].T
    return a, cosine * a + np.sqrt(1 - cosine**2) * b


def _ranked(name: str, vector, ph, score: float) -> Ranked:
    return Ranked(SimpleNamespace(name=name, content_hash="", phash=ph), score, vector)


# -- the rule ---------------------------------------------------------------------------


def test_a_reencoded_copy_is_grouped_even_where_its_cosine_is_under_098():
    img = _pic("red", "circle", 0.4, 0.6)
    copy = open_image(encoded(img, 0.8, 75))  # resized, JPEG q75: other bytes, same picture
    assert hamming(phash(img), phash(copy)) <= COPY_BITS
    a, b = _vecs(0.85)  # as far as the bundled model moved such a copy (bench/RESULTS.md)
    groups = group([_ranked("original", a, phash(img), 0.9), _ranked("copy", b, phash(copy), 0.8)])
    assert [g.leader.item.name for g in groups] == ["original"]
    assert [c.item.name for c in groups[0].copies] == ["copy"]


def test_distinct_pictures_at_cosine_over_098_stay_apart_when_their_hashes_differ():
    one, two = _pic("blue", "square", 0.3, 0.3), _pic("blue", "square", 0.7, 0.65)
    assert hamming(phash(one), phash(two)) > COPY_BITS
    a, b = _vecs(0.995)  # where the bundled model puts distinct single-shape pictures
    groups = group([_ranked("one", a, phash(one), 0.9), _ranked("two", b, phash(two), 0.8)])
    assert [g.leader.item.name for g in groups] == ["one", "two"]


def test_a_red_and_a_blue_shape_of_one_brightness_are_different_pictures():
    red, blue = _pic("red", "circle", 0.5, 0.5), _pic("blue", "circle", 0.5, 0.5)
    assert hamming(phash(red), phash(blue)) > COPY_BITS  # the chroma tells them apart


def test_without_a_hash_on_either_side_the_cosine_decides():
    img = _pic("green", "triangle", 0.5, 0.4)
    near, far = _vecs(0.99), _vecs(0.9, seed=1)
    for hashes in [(None, None), (phash(img), None), (None, phash(img))]:
        groups = group([_ranked("a", near[0], hashes[0], 0.9), _ranked("b", near[1], hashes[1], 0.8)])
        assert len(groups) == 1, hashes
        groups = group([_ranked("a", far[0], hashes[0], 0.9), _ranked("b", far[1], hashes[1], 0.8)])
        assert len(groups) == 2, hashes


def test_a_flat_picture_has_no_hash_and_a_hash_is_hex_of_256_bits():
    assert phash(Image.new("RGB", (50, 40), (200, 10, 10))) is None
    h = phash(_pic("yellow", "square", 0.5, 0.5))
    assert valid(h) and len(h) == 64 and not valid("xyz") and not valid(None)


# -- kept with the items, in both stores, by every ingestion path --------------------------


def _engine(coll, encoder):
    from index.engine import Engine
    return Engine(coll, encoder, owns_encoder=False)


async def test_every_ingestion_path_keeps_the_hash_and_reposts_are_one_result(
        store, tmp_path, encoder):
    from index.build import build
    from index.sources import scan_folder
    folder = tmp_path / "folder"
    folder.mkdir()
    _pic("white", "circle", 0.3, 0.7).save(folder / "a.png")
    engine = _engine(store.create(tmp_path / "c", "builtin:tiny-shapes", encoder.dim), encoder)
    try:
        built = await build(engine.collection, engine.encoder, scan_folder(folder))
        img = _pic("purple", "square", 0.6, 0.4)
        added = await engine.add_images(
            [NewItem(source="/p/0.png"), NewItem(source="/p/0-b.jpg")],
            [encoded(img), encoded(img, 0.8, 75)])
        items = engine.collection.get(built.ids + added.ids)
        assert len(items) == 3 and all(valid(it.phash) for it in items)
        assert items[1].phash == phash(img)
        hits = (await engine.search("purple square", k=3, explain=False)).hits
        shown = {h.item.source: [c.item.source for c in h.copies] for h in hits}
        assert shown.get("/p/0.png") == ["/p/0-b.jpg"] or shown.get("/p/0-b.jpg") == ["/p/0.png"]
    finally:
        engine.close()


def test_a_bad_hash_is_refused_in_one_line(store, tmp_path):
    from index.errors import StoreError
    coll = store.create(tmp_path / "bad", "m", 4)
    try:
        with pytest.raises(StoreError, match="phash 'xyz' is not a perceptual hash"):
            coll.add([NewItem(source="/x.png", phash="xyz")], np.eye(4)[:1])
    finally:
        coll.close()


# -- collections from before the hash --------------------------------------------------------


def _without_phash_column(path) -> None:
    """Make a collection's meta.sqlite look as before the column."""
    conn = sqlite3.connect(path / "meta.sqlite")
    conn.execute("DROP INDEX items_unhashed")  # (newer than the column too)
    conn.execute("ALTER TABLE items DROP COLUMN phash")
    conn.commit()
    conn.close()


async def test_an_old_meta_sqlite_gets_the_column_and_its_old_items_group_by_cosine(
        tmp_path, encoder):
    from index.store import Collection
    from index.store.items import ItemTable, connect_readonly
    img = _pic("yellow", "triangle", 0.5, 0.5)
    path = tmp_path / "old"
    engine = _engine(Collection.create(path, "builtin:tiny-shapes", encoder.dim), encoder)
    await engine.add_images([NewItem(source="/o/0.png"), NewItem(source="/o/0-b.png")],
                            [encoded(img), encoded(img, 1.25, 90)])
    engine.close()
    _without_phash_column(path)

    ro = ItemTable(connect_readonly(path / "meta.sqlite"), path / "meta.sqlite", encoder.dim,
                   readonly=True)  # a read-only old file: read as without hashes
    ro.check_schema()
    assert [it.phash for it in ro.get([1, 2])] == [None, None]
    ro.close()

    engine = _engine(Collection.open(path), encoder)
    try:
        assert [it.phash for it in engine.collection.get([1, 2])] == [None, None]
        await engine.add_images([NewItem(source="/o/1.png")],
                                [encoded(_pic("red", "square", 0.2, 0.2))])
        assert valid(engine.collection.by_source("/o/1.png").phash)
        hits = (await engine.search("yellow triangle", k=2, explain=False)).hits
        assert len(hits[0].copies) == 1  # no hashes: grouped by their cosine, as before
    finally:
        engine.close()


async def test_an_old_milvus_collection_without_the_field_keeps_working(
        milvus_uri, tmp_path, encoder, monkeypatch):
    from pymilvus.orm.schema import CollectionSchema

    from index.store.milvus import MilvusStore
    add_field = CollectionSchema.add_field

    def before_phash(self, field_name, *args, **kw):  # the schema of an older clipfind
        return self if field_name == "phash" else add_field(self, field_name, *args, **kw)

    monkeypatch.setattr(CollectionSchema, "add_field", before_phash)
    MilvusStore.create(milvus_uri, "before_phash", "builtin:tiny-shapes", encoder.dim).close()
    monkeypatch.undo()

    coll = MilvusStore.open(milvus_uri, "before_phash")
    engine = _engine(coll, encoder)
    try:
        # Milvus Lite cannot add a field: the collection goes on without hashes
        img = _pic("green", "circle", 0.45, 0.55)
        added = await engine.add_images([NewItem(source="/m/0.png"), NewItem(source="/m/0-b.jpg")],
                                        [encoded(img), encoded(img, 1.25, 90)])
        assert len(added.ids) == 2
        assert [it.phash for it in coll.get(added.ids)] == [None, None]
        hits = (await engine.search("green circle", k=2, explain=False)).hits
        assert len(hits[0].copies) == 1  # grouped by their cosine
        assert coll.view(7).get(added.ids) == []  # (a guild's view: still its own items only)
    finally:
        engine.close()
