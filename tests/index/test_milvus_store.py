"""index/store/milvus.py: what only the Milvus store has (the shared tests are test_store.py).

Milvus Lite runs in this process from one file per session (conftest `milvus_uri`); the
fault tests run a `milvus-lite server` on 127.0.0.1 in a subprocess and stop it by its pid.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from pymilvus import DataType, MilvusClient
from twostores import free_port, wait_until_back

from index.errors import ModelMismatch, StoreError, StoreUnavailable
from index.store import NewItem
from index.store import milvus as milvus_store
from index.store.milvus import UNREACHABLE, MilvusStore, collection_name, item_id, redact

DIM = 16
MODEL = "builtin:tiny-shapes"


def unit(x):
    x = np.asarray(x, dtype=np.float32)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def rand_vecs(n, dim=DIM, seed=0):
    return unit(np.random.default_rng(seed).standard_normal((n, dim)))


def name_of(request) -> str:
    return collection_name(request.node.name)[:40] + f"_{abs(hash(request.node.nodeid)) % 10**8}"


@pytest.fixture
def name(request):
    return name_of(request)


def post(guild: int, channel: int, message: int, **kw) -> NewItem:
    return NewItem(source=f"discord:{guild}/{channel}/{message}/1", guild_id=guild,
                   channel_id=channel, message_id=message, **kw)


# -- manifest -----------------------------------------------------------------------------------


def test_manifest_lives_in_milvus_and_reopens(milvus_uri, name):
    vecs = rand_vecs(5)
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as s:
        ids = s.add([NewItem(source=f"/img/{i}.png") for i in range(5)], vecs)
        assert (s.manifest.model, s.manifest.dim, s.manifest.index_type) == (MODEL, DIM, "auto")
        assert s.index_description.startswith("Milvus HNSW (approximate, ef=")
    with MilvusStore.open(milvus_uri, name) as s:  # nothing local: all of it comes from Milvus
        assert s.manifest.model == MODEL and len(s) == 5
        assert s.search(vecs[3], 1)[0][0] == ids[3]
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as s:  # create on existing: opens it
        assert len(s) == 5


def test_other_model_or_dimension_refused_in_one_line(milvus_uri, name):
    MilvusStore.create(milvus_uri, name, MODEL, DIM).close()
    with pytest.raises(ModelMismatch) as e:
        MilvusStore.open(milvus_uri, name, "ViT-B-32")
    msg = str(e.value)
    assert MODEL in msg and "ViT-B-32" in msg and name in msg and "\n" not in msg
    with pytest.raises(StoreError) as e:
        MilvusStore.create(milvus_uri, name, MODEL, 512)
    msg = str(e.value)
    assert "16-d" in msg and "512-d" in msg and "\n" not in msg
    with pytest.raises(ModelMismatch) as e:
        MilvusStore.create(milvus_uri, name, "ViT-B-32", 512)
    assert MODEL in str(e.value) and "ViT-B-32" in str(e.value)


def test_a_collection_that_is_not_clipfinds_is_refused(milvus_uri, name):
    client = MilvusClient(milvus_uri)
    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("pk", DataType.INT64, is_primary=True)
    schema.add_field("v", DataType.FLOAT_VECTOR, dim=4)
    client.create_collection(name, schema=schema)
    with pytest.raises(StoreError, match="not a clipfind collection"):
        MilvusStore.open(milvus_uri, name)
    with pytest.raises(StoreError, match="not a clipfind collection"):
        MilvusStore.create(milvus_uri, name, MODEL, DIM)


def test_bad_names_uris_and_index_types(milvus_uri, tmp_path):
    with pytest.raises(StoreError, match="no collection nothing_here"):
        MilvusStore.open(milvus_uri, "nothing_here")
    with pytest.raises(StoreError, match="bad Milvus collection name"):
        MilvusStore.create(milvus_uri, "9 lives!", MODEL, DIM)
    with pytest.raises(StoreError, match="invalid Milvus index type 'IVF1024,SQ8'"):
        MilvusStore.create(milvus_uri, "bad_index", MODEL, DIM, "IVF1024,SQ8")
    with pytest.raises(StoreError, match=r"must end in \.db"):
        MilvusStore.create(str(tmp_path / "lite.sqlite"), "x", MODEL, DIM)
    with MilvusStore.create(milvus_uri, "flat_ok", MODEL, DIM, "flat") as s:
        assert s.index_description == "Milvus FLAT (exact)"
    assert collection_name(Path("/data/my-photos")) == "my_photos"
    assert collection_name("2024") == "c_2024"


# -- one server never sees another's items -------------------------------------------------------


def test_guild_views_never_see_each_other(milvus_uri, name):
    vecs = rand_vecs(7, seed=3)
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as everything:
        one, two = everything.view(1), everything.view(2)
        a = one.add([post(1, 10, 100, content_hash="same"), post(1, 10, 101)], vecs[:2])
        b = two.add([post(2, 20, 200, content_hash="same"), post(2, 20, 201)], vecs[2:4])
        # an item without a guild joins the view's guild; another guild's item is refused
        c = one.add([NewItem(source="discord:1/10/102/1")], vecs[4:5])
        assert one.get(c)[0].guild_id == 1
        with pytest.raises(StoreError, match="guild 2"):
            one.add([post(2, 20, 202)], vecs[5:6])
        assert len(one) == 3 and len(two) == 2 and len(everything) == 5
        assert two.get(a) == [] and [i.id for i in one.get(a + b)] == a
        assert {i for i, _ in two.search(vecs[0], 10)} == set(b)  # vecs[0] is one's item
        assert two.find_hash("same").id == b[0] and one.find_hash("same").id == a[0]
        assert one.find_hash("same", guild_id=2) is None
        assert two.by_source("discord:1/10/100/1") is None
        assert set(two.stamps()) == {"discord:2/20/200/1", "discord:2/20/201/1"}
        assert sorted(two.ids()) == sorted(b) and two.vectors().shape == (2, DIM)
        with pytest.raises(StoreError, match="no item"):
            two.vectors([a[0]])
        # deletes through one view never reach the other's items
        assert two.remove(a) == 0 and len(one) == 3
        assert two.remove_where(guild_id=1) == [] and len(one) == 3
        assert one.remove_where(guild_id=1, channel_id=10, message_ids=[101]) == [a[1]]
        assert len(one) == 2 and len(two) == 2
        # the same source in two guilds' views is two items
        x1 = one.add([NewItem(source="/shared.png")], vecs[5:6])
        x2 = two.add([NewItem(source="/shared.png")], vecs[6:7])
        assert x1 != x2 and one.get(x1)[0].guild_id == 1 and two.get(x2)[0].guild_id == 2
        one.close()  # a view's close leaves the store open
        assert len(everything) == 6


def test_search_never_returns_deleted_items(milvus_uri, name):
    vecs = rand_vecs(30, seed=4)
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as s:
        ids = s.add([NewItem(source=f"/d/{i}") for i in range(30)], vecs)
        assert s.remove(ids[:10]) == 10
        for q in vecs[:10]:
            assert not {i for i, _ in s.search(q, 30)} & set(ids[:10])
        assert len(s.search(vecs[0], 30)) == 20


# -- ids ---------------------------------------------------------------------------------------


def test_ids_hash_the_source_and_a_clash_takes_the_next_candidate(milvus_uri, name, monkeypatch):
    assert item_id("/a.png") == item_id("/a.png") != item_id("/b.png")
    assert 0 < item_id("/a.png") < 2**63 and item_id("/a.png", 1) != item_id("/a.png")
    # every source's first candidate is the same id: the clash must be seen, not overwritten
    monkeypatch.setattr(milvus_store, "item_id", lambda source, salt=0: 1000 + salt)
    vecs = rand_vecs(4, seed=5)
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as s:
        first = s.add([NewItem(source="/a.png", title="a")], vecs[:1])
        rest = s.add([NewItem(source="/b.png", title="b"), NewItem(source="/c.png", title="c")],
                     vecs[1:3])
        assert first == [1000] and sorted(rest) == [1001, 1002]
        assert [i.title for i in s.get([1000, 1001, 1002])] == ["a", "b", "c"]
        again = s.add([NewItem(source="/b.png", title="b2")], vecs[3:4])
        assert again == [rest[0]] and len(s) == 3 and s.get(again)[0].title == "b2"


def test_two_writers_adding_at_once_neither_collide_nor_duplicate(milvus_uri, name):
    """Two stores (two connections) add overlapping batches concurrently."""
    vecs = rand_vecs(120, seed=6)
    MilvusStore.create(milvus_uri, name, MODEL, DIM).close()
    stores = [MilvusStore.open(milvus_uri, name, MODEL) for _ in range(2)]
    got: list[list[int]] = [[], []]

    def writer(w: int) -> None:
        for b in range(4):  # writer 0: sources 0..79, writer 1: 40..119 (40..79 overlap)
            lo = 40 * w + 20 * b
            got[w] += stores[w].add([NewItem(source=f"/w/{i}") for i in range(lo, lo + 20)],
                                    vecs[lo:lo + 20])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert len(stores[0]) == 120 == len(set(got[0]) | set(got[1]))
        assert got[0][40:] == got[1][:40]  # the same sources got the same ids
        assert len(stores[1].search(vecs[0], 500)) == 120
    finally:
        for s in stores:
            s.close()


def test_bad_items_are_refused_and_nothing_is_added(milvus_uri, name):
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as s:
        batch = [NewItem(source=f"/x/{i}") for i in range(3)]
        batch[2].channel_id = 2**70
        with pytest.raises(StoreError, match="64 bits"):
            s.add(batch, rand_vecs(3))
        with pytest.raises(StoreError, match="not a number"):
            s.add([NewItem(source="/y", guild_id="abc")], rand_vecs(1))
        with pytest.raises(StoreError, match="longer than"):
            s.add([NewItem(source="/z", title="x" * 70_000)], rand_vecs(1))
        assert len(s) == 0


# -- faults ------------------------------------------------------------------------------------


def test_unreachable_at_start_is_one_line_naming_the_uri():
    uri = f"http://127.0.0.1:{free_port()}"
    for opener in (lambda: MilvusStore.open(uri, "c"),
                   lambda: MilvusStore.create(uri, "c", MODEL, DIM)):
        with pytest.raises(StoreUnavailable) as e:
            opener()
        msg = str(e.value)
        assert msg.startswith(f"cannot reach Milvus at {uri}") and "\n" not in msg
        assert "milvus_uri" in msg
    secret = f"http://alice:s3cret@127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable) as e:
        MilvusStore.open(secret, "c", token="tok3n")
    assert "s3cret" not in str(e.value) and "tok3n" not in str(e.value)
    assert redact(secret).startswith("http://127.0.0.1:")


def test_store_down_then_back_recovers_by_itself(lite_server):
    vecs = rand_vecs(20, seed=7)
    s = MilvusStore.create(lite_server.uri, "faults", MODEL, DIM)
    try:
        ids = s.add([NewItem(source=f"/f/{i}") for i in range(20)], vecs)
        assert s.search(vecs[4], 1)[0][0] == ids[4]
        lite_server.stop()
        for call in (lambda: s.search(vecs[4], 1), lambda: len(s), lambda: s.get(ids[:2]),
                     lambda: s.add([NewItem(source="/f/late")], vecs[:1])):
            t0 = time.monotonic()
            with pytest.raises(StoreUnavailable) as e:
                call()
            assert str(e.value) == UNREACHABLE and time.monotonic() - t0 < 10
        lite_server.start()  # same data folder, same port: the same store object carries on
        assert wait_until_back(lambda: s.search(vecs[4], 1))[0][0] == ids[4]
        assert len(s) == 20
    finally:
        s.close()



@pytest.mark.parametrize("maker", ["_create_collection", "_create_records_collection"])
def test_a_collection_another_process_creates_meanwhile_is_joined(milvus_uri, name, maker,
                                                                  monkeypatch):
    """Two bot shards make the shared library collection (or a companion) at the same
    moment: the one that loses the race opens what the other made instead of failing."""
    real = getattr(milvus_store, maker)

    def beaten(client, *args):
        real(client, *args)  # the other process made it first...
        raise RuntimeError("collection already exists")  # ...so ours is refused

    monkeypatch.setattr(milvus_store, maker, beaten)
    with MilvusStore.create(milvus_uri, name, MODEL, DIM) as store:
        store.view(5).write_record("library", '{"x": 1}')
        assert store.view(5).read_record("library") == '{"x": 1}'
        assert store.view(6).read_record("library") is None  # another guild's: not seen
