"""Perceptual hashes made for items stored before them (index/rehash.py, python -m index
rehash): what a user sees is the near-copy grouping of their search results."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import replace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from pictures import encoded
from PIL import Image
from test_cli import cli

from index.build import build
from index.phash import phash, valid
from index.rehash import rehash
from index.sources import read_url_list, scan_folder
from index.synthetic import Scene, Shape, render

MODEL = "builtin:tiny-shapes"


def _pic(colour: str, shape: str, cx: float, cy: float) -> Image.Image:
    return render(Scene((Shape(colour, shape, cx, cy, 0.2),), (20, 20, 30)))


# two distinct pictures the bundled model puts at cosine 0.993 (the cosine rule merged
# them), and a resized JPEG copy of the first (a real near-copy)
ONE, TWO = _pic("blue", "square", 0.3, 0.3), _pic("blue", "square", 0.7, 0.65)


def _gallery(folder):
    folder.mkdir()
    (folder / "one.png").write_bytes(encoded(ONE))
    (folder / "two.png").write_bytes(encoded(TWO))
    (folder / "one-copy.jpg").write_bytes(encoded(ONE, 0.8, 75))
    return folder


def _engine(coll, encoder):
    from index.engine import Engine
    return Engine(coll, encoder, owns_encoder=False)


def _forget_hashes(coll) -> None:
    """Make the collection's items look as stored before the hash (same ids, vectors)."""
    ids = [int(i) for i in coll.ids()]
    items = coll.get(ids)
    coll.add([replace(it, phash=None) for it in items], coll.vectors(ids))


async def _shown(engine) -> set[frozenset[str]]:
    """The results of a search, each as the file names it shows (itself and its copies)."""
    hits = (await engine.search("blue square", k=3, explain=False)).hits
    return {frozenset(x.item.source.rsplit("/", 1)[-1] for x in [h, *h.copies]) for h in hits}


async def test_rehash_shows_apart_what_the_cosine_merged_and_keeps_copies_together(
        store, tmp_path, encoder):
    engine = _engine(store.create(tmp_path / "c", MODEL, encoder.dim), encoder)
    try:
        await build(engine.collection, engine.encoder, scan_folder(_gallery(tmp_path / "g")))
        _forget_hashes(engine.collection)
        assert await _shown(engine) == {frozenset({"one.png", "one-copy.jpg", "two.png"})}

        report = await rehash(engine.collection)
        assert (report.missing, report.hashed, report.unreachable) == (3, 3, [])
        assert report.summary() == "hashed 3, unreachable 0 sources kept without a hash"
        assert await _shown(engine) == {frozenset({"one.png", "one-copy.jpg"}),
                                        frozenset({"two.png"})}
        assert engine.collection.by_source(str(tmp_path / "g" / "two.png")).phash == phash(TWO)

        again = await rehash(engine.collection)
        assert (again.missing, again.hashed) == (0, 0)
    finally:
        engine.close()


async def test_a_stopped_rehash_keeps_its_batches_and_the_next_run_finishes(tmp_path, encoder):
    from index.store import Collection
    engine = _engine(Collection.create(tmp_path / "c", MODEL, encoder.dim), encoder)
    try:
        await build(engine.collection, engine.encoder, scan_folder(_gallery(tmp_path / "g")))
        _forget_hashes(engine.collection)

        def stop(k):
            raise RuntimeError("stopped")

        with pytest.raises(RuntimeError, match="stopped"):
            await rehash(engine.collection, batch=2, progress=stop)
        kept = [it.phash for it in engine.collection.get([1, 2, 3])]
        assert [valid(h) for h in kept] == [True, True, False]  # the first batch is kept
        report = await rehash(engine.collection, batch=2)
        assert (report.missing, report.hashed) == (1, 1)
        assert [it.phash for it in engine.collection.get([1, 2])] == kept[:2]  # not redone
    finally:
        engine.close()


WEB = {1: _pic("red", "circle", 0.4, 0.5), 2: _pic("green", "triangle", 0.6, 0.4)}


@pytest.fixture
async def web_pictures():
    async def picture(request):
        return web.Response(body=encoded(WEB[int(request.match_info["n"])]),
                            content_type="image/png")

    app = web.Application()
    app.router.add_get("/p/{n}.png", picture)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield f"http://127.0.0.1:{server.port}", server
    await server.close()


async def test_urls_are_fetched_safely_and_what_cannot_be_read_is_kept_one_line_each(
        tmp_path, encoder, web_pictures):
    from index.store import Collection
    base, _ = web_pictures
    (tmp_path / "urls.txt").write_text(f"{base}/p/1.png\n{base}/p/2.png\n")
    folder = _gallery(tmp_path / "g")
    (folder / "flat.png").write_bytes(encoded(Image.new("RGB", (64, 64), (200, 10, 10))))
    records = read_url_list(tmp_path / "urls.txt")[0] + scan_folder(folder)
    engine = _engine(Collection.create(tmp_path / "c", MODEL, encoder.dim), encoder)
    try:
        await build(engine.collection, engine.encoder, records)
        _forget_hashes(engine.collection)
        (folder / "one.png").unlink()  # gone since
        (folder / "two.png").write_bytes(encoded(ONE))  # another picture under its name

        # a member-facing caller's rule: loopback is not a public address
        refused = await rehash(engine.collection, public_only=True)
        assert refused.hashed == 1 and refused.flat == 1  # one-copy.jpg; flat.png has none
        why = dict(refused.unreachable)
        assert len(why) == 4 and all("\n" not in w for w in why.values())
        assert "not a public address" in why[f"{base}/p/1.png"] or "loopback" in why[f"{base}/p/1.png"]
        assert "cannot read" in why[str(folder / "one.png")]
        assert "its bytes changed" in why[str(folder / "two.png")]
        assert refused.summary() == ("hashed 1, 1 flat (one colour: no hash to make), "
                                     "unreachable 4 sources kept without a hash")

        report = await rehash(engine.collection, public_only=False)  # the operator's own
        assert (report.missing, report.hashed, len(report.unreachable)) == (4, 2, 2)
        assert engine.collection.by_source(f"{base}/p/2.png").phash == phash(WEB[2])
    finally:
        engine.close()


async def test_imported_vectors_are_not_listed_and_discord_posts_are_left_to_the_bot(
        tmp_path, encoder):
    import numpy as np

    from index.store import Collection, NewItem
    coll = Collection.create(tmp_path / "c", MODEL, encoder.dim)
    try:
        vecs = np.eye(encoder.dim)[:2]
        coll.add([NewItem(source="https://unsplash.com/photos/x"),  # import-features: no bytes
                  NewItem(source="discord:1/2/3/4", guild_id=1, channel_id=2, message_id=3,
                          attachment_id=4, content_hash="ab" * 32)], vecs)
        report = await rehash(coll)
        assert (report.missing, report.hashed, report.elsewhere) == (1, 0, 1)
        assert "1 Discord library items left" in report.summary()
    finally:
        coll.close()


# -- the command line --------------------------------------------------------------------


def _old_collection(tmp_path, store_args=()) -> str:
    """A collection built by the CLI, its hashes then forgotten (as before they existed)."""
    index = tmp_path / "c"
    cli("build", "--index", index, "--model", MODEL, *store_args, _gallery(tmp_path / "g"))
    db = index / "meta.sqlite"
    if db.exists():
        conn = sqlite3.connect(db)
        conn.execute("UPDATE items SET phash = NULL")
        conn.commit()
        conn.close()
    return str(index)


def test_the_cli_rehashes_once_and_the_open_says_what_is_missing(tmp_path):
    index = _old_collection(tmp_path)
    searched = cli("search", "--index", index, "-k", "3", "blue square")
    notes = [line for line in searched.stderr.splitlines() if "perceptual hash" in line]
    assert len(notes) == 1 and "3 items" in notes[0]
    assert f"python -m index rehash --index {index}" in notes[0]
    assert searched.stdout.count("+ near-copy") == 2  # all three as one result

    assert (f"perceptual hashes: 3 items without one (stored before them): "
            f"python -m index rehash --index {index}") in cli("info", "--index", index).stdout

    first = cli("rehash", "--index", index)
    assert first.stdout.strip() == f"{index}: hashed 3, unreachable 0 sources kept without a hash"
    again = cli("rehash", "--index", index)
    assert "hashed 0," in again.stdout
    assert ("perceptual hashes: every item read from a picture has one"
            in cli("info", "--index", index).stdout)  # (the searches: the tests above)


def test_rehash_bad_inputs_are_one_line_each(tmp_path, monkeypatch):
    for store in ([], ["--store", "milvus", "--milvus-uri", tmp_path / "lite.db"]):
        missing = cli("rehash", "--index", tmp_path / "nowhere", *store, check=False)
        assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
        assert "nowhere" in missing.stderr

    index = _old_collection(tmp_path)
    (tmp_path / "g" / "two.png").unlink()
    gone = cli("rehash", "--index", index)
    failed = [line for line in gone.stderr.splitlines() if line.startswith("failed")]
    assert len(failed) == 1 and "two.png" in failed[0]
    assert "hashed 2, unreachable 1 sources kept without a hash" in gone.stdout

    bad = cli("rehash", "--index", index, "--batch", "0", check=False)
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: --batch 0")

    from index.store import items as items_mod
    monkeypatch.setattr(items_mod, "writable", lambda db: False)  # a `:ro` mount
    ro = cli("rehash", "--index", index, check=False)
    assert ro.returncode == 2 and len(ro.stderr.strip().splitlines()) == 1
    assert "read-only here" in ro.stderr and "copy it somewhere writable" in ro.stderr


def test_a_milvus_collection_that_cannot_keep_hashes_is_told_how_to_move(
        tmp_path, monkeypatch, caplog):
    from pymilvus.orm.schema import CollectionSchema

    from index.store.milvus import MilvusStore
    add_field = CollectionSchema.add_field
    monkeypatch.setattr(CollectionSchema, "add_field", lambda self, name, *a, **kw: (
        self if name == "phash" else add_field(self, name, *a, **kw)))
    uri = str(tmp_path / "lite.db")
    MilvusStore.create(uri, "old", MODEL, 32).close()
    monkeypatch.undo()
    p = cli("rehash", "--index", tmp_path / "old", "--store", "milvus", "--milvus-uri", uri,
            check=False)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1
    assert "cannot keep perceptual hashes" in p.stderr
    assert f"python -m index migrate --from {uri} --name old --to NEW_FOLDER" in p.stderr


def test_the_engine_open_note_is_one_line_until_rehash_has_tried_them_all(tmp_path, caplog):
    from index.engine import Engine
    index = _old_collection(tmp_path)
    with caplog.at_level(logging.WARNING, logger="index.engine"):
        Engine.open(index).close()
    assert [r.getMessage().split(";")[0] for r in caplog.records] == [
        f"3 items of collection {index} have no perceptual hash (stored before it existed), "
        "so near-copies among them are told by the vectors alone"]
    (tmp_path / "g" / "two.png").unlink()
    assert "unreachable 1 sources" in cli("rehash", "--index", index).stdout
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="index.engine"):
        Engine.open(index).close()
    assert caplog.records == []  # the one left was tried: the rehash said so, once


def test_a_hash_never_brings_back_an_item_removed_meanwhile(store, tmp_path):
    import numpy as np

    from index.store import NewItem
    coll = store.create(tmp_path / "r", "m", 4)
    try:
        ids = coll.add([NewItem(source=f"/r/{i}.png", content_hash=f"{i}" * 64) for i in range(2)],
                       np.eye(4)[:2])
        assert coll.unhashed_ids() == sorted(ids)
        if store.kind == "milvus":  # removed between reading the rows and writing them
            read = coll._rows_by_id

            def read_then_removed(*a, **kw):
                rows = read(*a, **kw)
                if "phash" in a[1]:
                    coll.remove([ids[0]])
                return rows

            coll._rows_by_id = read_then_removed
        else:
            coll.remove([ids[0]])  # (a member deleted their post while the hashes were made)
        assert coll.set_phashes({ids[0]: "a" * 64, ids[1]: "b" * 64}) == 1
        if store.kind == "milvus":
            del coll._rows_by_id
        assert len(coll) == 1 and coll.get(ids) == coll.get([ids[1]])
        assert coll.get([ids[1]])[0].phash == "b" * 64
    finally:
        coll.close()


def test_a_milvus_that_refuses_the_write_is_an_error_not_a_silent_skip(
        milvus_uri, tmp_path, monkeypatch):
    import numpy as np

    from index.errors import StoreError
    from index.store import NewItem
    from index.store.milvus import MilvusStore
    coll = MilvusStore.create(milvus_uri, "refuses", "m", 4)
    try:
        ids = coll.add([NewItem(source="/w/0.png", content_hash="0" * 64)], np.eye(4)[:1])

        def refuse(*a, **kw):  # (a server without partial updates)
            raise RuntimeError("partial update is not supported")

        monkeypatch.setattr(coll._client, "upsert", refuse)
        with pytest.raises(StoreError, match="partial update is not supported"):
            coll.set_phashes({ids[0]: "c" * 64})
    finally:
        monkeypatch.undo()
        coll.close()
