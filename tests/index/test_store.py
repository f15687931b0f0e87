"""index/store/: a collection on disk (SQLite truth, FAISS derived)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from storekit import DIM, MODEL, items, rand_vecs, unit

from index.errors import ModelMismatch, StoreError
from index.store import (
    FORMAT_VERSION,
    Collection,
    Item,
    Manifest,
    NewItem,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def coll(tmp_path, store):
    """A new collection of each kind (FAISS+SQLite, Milvus Lite): both pass these tests."""
    c = store.create(tmp_path / "c", MODEL, DIM)
    yield c
    c.close()


# -- create / open / manifest ---------------------------------------------------------------


def test_create_open_round_trip_and_manifest(tmp_path):
    path = tmp_path / "c"
    vecs = rand_vecs(5)
    with Collection.create(path, MODEL, DIM) as c:
        assert c.path == path
        assert c.manifest == Manifest(
            model=MODEL, dim=DIM, index_type="auto", format_version=FORMAT_VERSION
        )
        ids = c.add(items(5), vecs)
        assert len(c) == 5
    assert {p.name for p in path.iterdir()} >= {"manifest.json", "meta.sqlite", "vectors.faiss"}
    assert json.loads((path / "manifest.json").read_text()) == {
        "format_version": 1,
        "model": MODEL,
        "dim": DIM,
        "index_type": "auto",
    }
    with Collection.open(path, MODEL) as c:
        assert len(c) == 5
        assert c._ix.rebuilds == 0  # vectors.faiss was current: loaded, not rebuilt
        assert [i.source for i in c.get(ids)] == [f"/img/{i}.png" for i in range(5)]
        assert c.search(vecs[2], 1)[0][0] == ids[2]
        assert c.index_description == "Flat (exact)"
    with Collection.open(str(path)) as c:  # model optional, str path fine
        assert c.manifest.model == MODEL


def test_create_on_existing_collection_opens_it(tmp_path):
    path = tmp_path / "c"
    with Collection.create(path, MODEL, DIM) as c:
        c.add(items(3), rand_vecs(3))
    with Collection.create(path, MODEL, DIM) as c:
        assert len(c) == 3
    with pytest.raises(ModelMismatch):
        Collection.create(path, "ViT-B-32", DIM)
    with pytest.raises(StoreError, match="16-d"):
        Collection.create(path, MODEL, 32)


def test_open_non_collection(tmp_path):
    (tmp_path / "photos").mkdir()
    with pytest.raises(StoreError) as e:
        Collection.open(tmp_path / "photos")
    msg = str(e.value)
    assert msg == (
        f"{tmp_path / 'photos'} is not a clipfind collection (no manifest.json); "
        f"build one with: python -m index build --index {tmp_path / 'photos'} SOURCE"
    )
    with pytest.raises(StoreError, match="not a clipfind collection"):
        Collection.open(tmp_path / "does-not-exist")


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[1, 2]",
        b"\xff\xfe\x00garbage",
        json.dumps({"format_version": 1, "model": MODEL}),  # no dim
        json.dumps({"format_version": "1", "model": MODEL, "dim": 16, "index_type": "auto"}),
        json.dumps({"format_version": 1, "model": MODEL, "dim": -3, "index_type": "auto"}),
    ],
)
def test_garbled_manifest(tmp_path, content):
    path = tmp_path / "c"
    Collection.create(path, MODEL, DIM).close()
    mp = path / "manifest.json"
    mp.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(StoreError, match="manifest.json"):
        Collection.open(path, MODEL)


def test_newer_format_version_refused(tmp_path):
    path = tmp_path / "c"
    Collection.create(path, MODEL, DIM).close()
    m = json.loads((path / "manifest.json").read_text())
    m["format_version"] = FORMAT_VERSION + 1
    (path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(StoreError, match="newer"):
        Collection.open(path)


def test_model_mismatch_names_both_models(tmp_path):
    path = tmp_path / "c"
    Collection.create(path, MODEL, DIM).close()
    with pytest.raises(ModelMismatch) as e:
        Collection.open(path, "ViT-B-32")
    msg = str(e.value)
    assert isinstance(e.value, StoreError)
    assert msg.startswith(
        f"collection {path} was built with model {MODEL}; open it with --model {MODEL} "
        "or build a new collection"
    )
    assert "ViT-B-32" in msg and "\n" not in msg


def test_missing_or_garbage_sqlite(tmp_path):
    path = tmp_path / "c"
    Collection.create(path, MODEL, DIM).close()
    (path / "meta.sqlite").write_bytes(b"this is not sqlite" * 100)
    for suffix in ("-wal", "-shm"):
        (path / f"meta.sqlite{suffix}").unlink(missing_ok=True)
    with pytest.raises(StoreError, match="meta.sqlite"):
        Collection.open(path)
    (path / "meta.sqlite").unlink()
    with pytest.raises(StoreError, match="meta.sqlite"):
        Collection.open(path)


# -- add / get / search ----------------------------------------------------------------------


def test_add_get_search_scores_are_cosines(coll):
    vecs = rand_vecs(50, seed=1)
    raw = vecs * np.arange(1, 51, dtype=np.float32)[:, None]  # un-normalised, normalised by add
    batch = [
        NewItem(
            source=f"/img/{i}.png",
            title=f"t{i}",
            credit="me",
            page_url=f"https://x/{i}",
            guild_id=7,
            channel_id=8,
            message_id=9 + i,
            attachment_id=100 + i,
            author_id=5,
            posted_at=1.5 * i,
            content_hash=f"h{i}",
            stamp=f"{i}:10",
        )
        for i in range(50)
    ]
    ids = coll.add(batch, raw.astype(np.float64))
    assert len(ids) == 50 and len(set(ids)) == 50 and len(coll) == 50
    got = coll.get([ids[3], 999_999, ids[0]])
    assert [g.id for g in got] == [ids[3], ids[0]]
    assert isinstance(got[0], Item) and isinstance(got[0], NewItem)
    g = got[0]
    assert (g.source, g.title, g.credit, g.page_url) == ("/img/3.png", "t3", "me", "https://x/3")
    assert (g.guild_id, g.channel_id, g.message_id, g.attachment_id, g.author_id) == (
        7,
        8,
        12,
        103,
        5,
    )
    assert g.posted_at == pytest.approx(4.5) and g.content_hash == "h3" and g.stamp == "3:10"
    assert abs(g.added_at - time.time()) < 60

    q = unit(vecs[17] + 0.05 * rand_vecs(1, seed=9)[0])
    hits = coll.search(q, 10)
    assert hits[0][0] == ids[17]
    assert len(hits) == 10
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True)
    for item_id, score in hits:
        assert score == pytest.approx(float(vecs[ids.index(item_id)] @ q), abs=1e-2)
    stored = coll.vectors([ids[17]])[0]
    assert np.linalg.norm(stored) == pytest.approx(1.0, abs=1e-2)

    assert coll.by_source("/img/4.png").id == ids[4]
    assert coll.by_source("/nope") is None
    assert coll.search(q, 0) == [] and coll.search(q, -3) == []
    assert len(coll.search(q, 500)) == 50


def test_empty_collection_search(coll):
    assert coll.search(rand_vecs(1)[0], 5) == []
    assert len(coll) == 0
    assert coll.ids().dtype == np.int64 and coll.ids().shape == (0,)
    assert coll.vectors().shape == (0, DIM)
    assert coll.add([], np.zeros((0, DIM))) == []


def test_offset_paging_gives_disjoint_consecutive_pages(coll):
    vecs = rand_vecs(40, seed=2)
    coll.add(items(40), vecs)
    q = rand_vecs(1, seed=3)[0]
    full = coll.search(q, 40)
    pages = [coll.search(q, 7, offset=o) for o in range(0, 40, 7)]
    flat = [h for p in pages for h in p]
    assert [i for i, _ in flat] == [i for i, _ in full]
    seen: set[int] = set()
    for p in pages:
        assert not seen & {i for i, _ in p}
        seen |= {i for i, _ in p}
    assert len(pages[-1]) == 40 - 35
    assert coll.search(q, 5, offset=40) == []


def test_replace_by_same_source_keeps_id(coll):
    vecs = rand_vecs(6, seed=4)
    ids = coll.add(items(5), vecs[:5])
    new = NewItem(source="/img/2.png", title="renamed", stamp="new", guild_id=3)
    again = coll.add([new, NewItem(source="/img/new.png")], np.stack([vecs[5], vecs[0]]))
    assert again[0] == ids[2] and again[1] not in ids
    assert len(coll) == 6
    item = coll.get([ids[2]])[0]
    assert (item.title, item.stamp, item.guild_id) == ("renamed", "new", 3)
    assert coll.search(vecs[5], 1)[0][0] == ids[2]  # new vector searched
    assert np.allclose(coll.vectors([ids[2]])[0], vecs[5], atol=1e-2)
    assert ids[2] not in [i for i, _ in coll.search(vecs[2], 6)[:1]]
    # same source twice in one batch: one row, last one wins
    twice = coll.add(
        [NewItem(source="/img/dup.png", title="a"), NewItem(source="/img/dup.png", title="b")],
        vecs[:2],
    )
    assert twice[0] == twice[1] and len(coll) == 7
    assert coll.get([twice[0]])[0].title == "b"
    assert np.allclose(coll.vectors([twice[0]])[0], vecs[1], atol=1e-2)
    assert len(coll.search(vecs[0], 100)) == 7  # index holds each id once


def test_remove(coll):
    vecs = rand_vecs(10, seed=5)
    ids = coll.add(items(10), vecs)
    assert coll.remove([ids[1], ids[4], 123456]) == 2
    assert coll.remove([]) == 0
    assert len(coll) == 8
    assert coll.get([ids[1], ids[4]]) == []
    hits = {i for i, _ in coll.search(vecs[1], 10)}
    assert ids[1] not in hits and ids[4] not in hits and len(hits) == 8
    # ids are never reused by another item
    new = coll.add([NewItem(source="/img/late.png")], vecs[:1])
    assert new[0] not in ids


def test_remove_where(coll):
    vecs = rand_vecs(12, seed=6)
    batch = [
        NewItem(source=f"discord:{g}/{ch}/{m}/1", guild_id=g, channel_id=ch, message_id=m)
        for g, ch, m in [
            (1, 10, 100), (1, 10, 101), (1, 10, 102), (1, 11, 103), (1, 11, 104), (1, 12, 105),
            (2, 10, 106), (2, 20, 107), (2, 20, 108), (3, 30, 109), (3, 30, 110), (3, 31, 111),
        ]
    ]  # fmt: skip
    ids = coll.add(batch, vecs)
    assert coll.remove_where(guild_id=1, channel_id=10, message_ids=[101, 102, 999]) == sorted(
        [ids[1], ids[2]]
    )
    assert coll.remove_where(guild_id=1, message_ids=[]) == []
    assert coll.remove_where(guild_id=1, message_ids=[104, 107]) == [ids[4]]  # 107 is guild 2's
    assert coll.remove_where(guild_id=2, channel_id=20) == sorted([ids[7], ids[8]])
    assert coll.remove_where(guild_id=3) == sorted([ids[9], ids[10], ids[11]])
    assert coll.remove_where(guild_id=4) == []
    left = sorted(ids[i] for i in (0, 3, 5, 6))
    assert list(coll.ids()) == left
    assert sorted(i.id for i in coll.get(ids)) == left
    assert {i for i, _ in coll.search(vecs[2], 20)} == set(left)


def test_vectors_order_and_ids(coll):
    vecs = rand_vecs(8, seed=7)
    ids = coll.add(items(8), vecs)
    assert coll.ids().dtype == np.int64
    assert list(coll.ids()) == sorted(ids)
    allv = coll.vectors()
    assert allv.dtype == np.float32 and allv.shape == (8, DIM)
    assert np.allclose(allv, vecs[np.argsort(ids)], atol=2e-3)  # in id order
    order = [ids[5], ids[0], ids[7], ids[0]]
    assert np.allclose(coll.vectors(order), vecs[[5, 0, 7, 0]], atol=2e-3)
    with pytest.raises(StoreError, match="no item"):
        coll.vectors([ids[0], 999_999])


def test_stamps(coll):
    coll.add(
        [
            NewItem(source="/a.png", stamp="1:2"),
            NewItem(source="/b.png"),
            NewItem(source="/c.png", stamp="x"),
        ],
        rand_vecs(3),
    )
    assert coll.stamps() == {"/a.png": "1:2", "/b.png": "", "/c.png": "x"}
    coll.add([NewItem(source="/b.png", stamp="9:9")], rand_vecs(1))
    assert coll.stamps()["/b.png"] == "9:9"


def test_find_hash_per_guild(coll):
    ids = coll.add(
        [
            NewItem(source="/local.png", content_hash="aaa"),
            NewItem(source="discord:1/1/1/1", content_hash="aaa", guild_id=1),
            NewItem(source="discord:2/1/2/1", content_hash="bbb", guild_id=2),
            NewItem(source="discord:1/1/3/1", content_hash="bbb", guild_id=1),
        ],
        rand_vecs(4),
    )
    assert coll.find_hash("aaa").id == ids[0]
    assert coll.find_hash("aaa", guild_id=1).id == ids[1]
    assert coll.find_hash("aaa", guild_id=2) is None
    assert coll.find_hash("bbb", guild_id=2).id == ids[2]
    assert coll.find_hash("bbb", guild_id=1).id == ids[3]
    assert coll.find_hash("ccc") is None
    assert coll.find_hash("") is None


def test_bad_vectors_are_refused_and_nothing_is_added(coll):
    coll.add(items(2), rand_vecs(2))
    with pytest.raises(StoreError, match=r"shape \(3, 16\)"):
        coll.add(items(3, prefix="/x/"), rand_vecs(3, dim=8))
    with pytest.raises(StoreError, match="shape"):
        coll.add(items(3, prefix="/x/"), rand_vecs(2))
    with pytest.raises(StoreError, match="shape"):
        coll.add(items(1, prefix="/x/"), rand_vecs(1)[0])
    bad = rand_vecs(2)
    bad[1, 3] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        coll.add(items(2, prefix="/x/"), bad)
    with pytest.raises(StoreError, match="zero length"):
        coll.add(items(2, prefix="/x/"), np.zeros((2, DIM)))
    with pytest.raises(StoreError, match="query"):
        coll.search(np.ones(DIM + 1, dtype=np.float32), 3)
    assert len(coll) == 2


def test_add_batch_is_one_transaction(coll):
    """A row that SQLite refuses mid-batch rolls back the whole batch."""
    coll.add(items(2), rand_vecs(2))
    batch = items(5, prefix="/y/")
    batch[3].guild_id = 2**70  # too large for an SQLite integer
    with pytest.raises(StoreError):
        coll.add(batch, rand_vecs(5, seed=3))
    assert len(coll) == 2
    assert coll.by_source("/y/0.png") is None
    assert len(coll.search(rand_vecs(1)[0], 10)) == 2


def test_closed_collection_refuses(tmp_path, store):
    c = store.create(tmp_path / "c", MODEL, DIM)
    c.close()
    c.close()  # idempotent
    with pytest.raises(StoreError, match="closed"):
        len(c)
    with pytest.raises(StoreError, match="closed"):
        c.search(rand_vecs(1)[0], 1)


def test_threads_add_and_search(coll):
    vecs = rand_vecs(400, seed=11)
    errors: list[BaseException] = []

    def writer(t: int) -> None:
        try:
            for b in range(5):
                lo = t * 100 + b * 20
                coll.add(items(20, prefix=f"/t{t}/{b}/"), vecs[lo : lo + 20])
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    def reader() -> None:
        try:
            for i in range(60):
                coll.search(vecs[i], 5)
        except BaseException as e:  # pragma: no cover
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(t,)) for t in range(4)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len(coll) == 400
    assert len(coll.search(vecs[0], 1000)) == 400


# -- vectors.faiss is derived: missing, garbage, stale -> rebuilt -----------------------------


def _build(path: Path, n: int = 30, seed: int = 8) -> tuple[list[int], np.ndarray]:
    vecs = rand_vecs(n, seed=seed)
    with Collection.create(path, MODEL, DIM) as c:
        ids = c.add(items(n), vecs)
    return ids, vecs


def test_faiss_file_deleted_is_rebuilt(tmp_path):
    path = tmp_path / "c"
    ids, vecs = _build(path)
    with Collection.open(path) as c:
        before = [c.search(v, 5) for v in vecs[:5]]
    (path / "vectors.faiss").unlink()
    with Collection.open(path) as c:
        assert c._ix.rebuilds == 1
        assert [c.search(v, 5) for v in vecs[:5]] == before
    assert (path / "vectors.faiss").exists()  # written again
    with Collection.open(path) as c:
        assert c._ix.rebuilds == 0


@pytest.mark.parametrize("same_size", [False, True])
def test_faiss_file_garbage_is_rebuilt(tmp_path, same_size):
    path = tmp_path / "c"
    ids, vecs = _build(path)
    with Collection.open(path) as c:
        before = [c.search(v, 5) for v in vecs[:5]]
    vpath = path / "vectors.faiss"
    size = vpath.stat().st_size if same_size else 1234
    vpath.write_bytes(np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes())
    with Collection.open(path) as c:
        assert c._ix.rebuilds == 1
        assert [c.search(v, 5) for v in vecs[:5]] == before
    (path / "vectors.faiss.json").write_text("{garbage")
    with Collection.open(path) as c:
        assert c._ix.rebuilds == 1
        assert c.search(vecs[3], 1)[0][0] == ids[3]


def test_stale_generation_from_second_instance(tmp_path):
    path = tmp_path / "c"
    ids, vecs = _build(path, n=10)
    extra = rand_vecs(1, seed=99)
    with Collection.open(path) as a, Collection.open(path) as b:
        [new_id] = b.add([NewItem(source="/extra.png")], extra)
        b.remove([ids[0]])
        # a's in-memory index is stale: noticed by the generation, before the search
        assert a.search(extra[0], 1)[0][0] == new_id
        assert ids[0] not in {i for i, _ in a.search(vecs[0], 20)}
        # b writes again, then a writes without searching in between: a's index must
        # still come to cover b's change, not just its own
        [new2] = b.add([NewItem(source="/extra2.png")], rand_vecs(1, seed=98))
        b.save()
        [new3] = a.add([NewItem(source="/extra3.png")], rand_vecs(1, seed=97))
        hits = {i for i, _ in a.search(vecs[0], 100)}
        assert {new_id, new2, new3} <= hits and ids[0] not in hits and len(hits) == 12
    with Collection.open(path) as c:
        assert c._ix.rebuilds == 0  # a saved at close, reflecting everything
        assert len(c.search(vecs[0], 100)) == 12


def test_faiss_file_of_another_collection_is_not_trusted(tmp_path):
    """A valid FAISS file of the same size but other content (the sha256 in the sidecar)."""
    ids, vecs = _build(tmp_path / "a", seed=1)
    _build(tmp_path / "b", seed=2)
    (tmp_path / "b" / "vectors.faiss").replace(tmp_path / "a" / "vectors.faiss")
    with Collection.open(tmp_path / "a") as c:
        assert c._ix.rebuilds == 1
        assert [c.search(v, 1)[0][0] for v in vecs] == ids


def test_stale_generation_from_direct_sqlite_edit(tmp_path):
    path = tmp_path / "c"
    ids, vecs = _build(path, n=10)
    target = rand_vecs(1, seed=77)[0]
    db = sqlite3.connect(path / "meta.sqlite")
    with db:  # give item 5 another vector and bump the generation: same row count
        db.execute(
            "UPDATE items SET vector = ? WHERE id = ?", (target.astype("<f2").tobytes(), ids[5])
        )
        db.execute("UPDATE state SET value = value + 1 WHERE key = 'generation'")
    db.close()
    with Collection.open(path) as c:
        assert c._ix.rebuilds == 1
        assert c.search(target, 1)[0] == (ids[5], pytest.approx(1.0, abs=1e-2))


def test_row_count_mismatch_is_rebuilt(tmp_path):
    """A row inserted behind our back without bumping the generation: ntotal differs."""
    path = tmp_path / "c"
    ids, vecs = _build(path, n=10)
    target = rand_vecs(1, seed=66)[0]
    db = sqlite3.connect(path / "meta.sqlite")
    with db:
        db.execute(
            "INSERT INTO items (source, added_at, vector) VALUES ('/sneaky.png', 0, ?)",
            (target.astype("<f2").tobytes(),),
        )
    db.close()
    with Collection.open(path) as c:
        assert c._ix.rebuilds == 1
        assert c.get([c.search(target, 1)[0][0]])[0].source == "/sneaky.png"


# -- a killed build --------------------------------------------------------------------------

_CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from index.store import Collection, NewItem
    path, batch, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    c = Collection.create(path, "builtin:tiny-shapes", dim)
    b = 0
    while True:
        v = np.random.default_rng(b).standard_normal((batch, dim))
        c.add([NewItem(source=f"/b{b}/{i}.png", stamp=str(b)) for i in range(batch)], v)
        print(b, flush=True)
        b += 1
    """
)


def test_killed_mid_build_keeps_whole_batches(tmp_path):
    path, batch = tmp_path / "c", 100
    proc = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(path), str(batch), str(DIM)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        done = 0
        while done < 5:
            line = proc.stdout.readline()
            assert line, "child died before adding 5 batches"
            done = int(line) + 1
            assert time.monotonic() < deadline
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL

    with Collection.open(path, MODEL) as c:
        assert c._ix.rebuilds == 1  # the child never saved: vectors.faiss was stale
        n = len(c)
        assert n >= 5 * batch and n % batch == 0
        batches = n // batch
        assert sorted({int(s) for s in c.stamps().values()}) == list(range(batches))
        assert len(c.search(rand_vecs(1)[0], n + 10)) == n  # FAISS covers exactly the rows
        v0 = unit(np.random.default_rng(2).standard_normal((batch, DIM)))
        assert c.get([c.search(v0[7], 1)[0][0]])[0].source == "/b2/7.png"
        # resume: re-adding the same sources does not duplicate
        for b in range(batches + 1):
            v = np.random.default_rng(b).standard_normal((batch, DIM))
            c.add([NewItem(source=f"/b{b}/{i}.png", stamp=str(b)) for i in range(batch)], v)
        assert len(c) == n + batch
        assert len(c.search(v0[0], 10 * n)) == n + batch

