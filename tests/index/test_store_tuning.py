"""index/store/tuning.py: which index for how many items, and its search-time knob."""

from __future__ import annotations

import faiss
import numpy as np
import pytest
from storekit import DIM, MODEL, clustered, items, rand_vecs, unit

from index import store
from index.errors import StoreError
from index.store import (
    EXACT_LIMIT,
    Collection,
    NewItem,
    choose_factory,
)

# -- index types ---------------------------------------------------------------------------


def test_choose_factory():
    assert choose_factory(0) == "Flat"
    assert choose_factory(EXACT_LIMIT - 1) == "Flat"
    assert choose_factory(EXACT_LIMIT).startswith("IVF")
    assert choose_factory(1_000_000) == "IVF4000,SQ8"


@pytest.mark.parametrize(
    "n_clusters, spread",
    [(60, 0.8), (400, 1.5)],  # the second needs tune() to raise nprobe above its default
)
def test_auto_goes_approximate_with_good_recall(tmp_path, monkeypatch, n_clusters, spread):
    monkeypatch.setattr(store, "EXACT_LIMIT", 1000)
    dim, n = 64, 4000
    data = clustered(n + 50, dim, seed=12, n_clusters=n_clusters, spread=spread)
    vecs, queries = data[:n], data[n:]
    path = tmp_path / "c"
    with Collection.create(path, MODEL, dim) as c:
        ids = np.array(c.add(items(n), vecs))
        assert c.index_description == "Flat (exact)"
        c.save()  # crossing EXACT_LIMIT: rebuilt into the approximate index here
        assert store.choose_factory(n).startswith("IVF")
        assert c.index_description.startswith(store.choose_factory(n))
        assert "approximate" in c.index_description and "nprobe=" in c.index_description
        allv = c.vectors()
        exact = c.ids()[np.argsort(-(queries @ allv.T), axis=1)[:, :10]]
        found = [[i for i, _ in c.search(q, 10)] for q in queries]
        recall = np.mean([len(set(f) & set(e)) / 10 for f, e in zip(found, exact, strict=True)])
        assert recall >= 0.95
        # IVF removes in place, and searching again does not rebuild
        rebuilds = c._ix.rebuilds
        gone = ids[:100]
        c.remove(gone.tolist())
        assert not set(gone.tolist()) & {i for q in queries[:10] for i, _ in c.search(q, 50)}
        assert c._ix.rebuilds == rebuilds
    with Collection.open(path) as c:  # saved approximate index is loaded, not rebuilt
        assert c._ix.rebuilds == 0
        assert c.index_description.startswith("IVF")
        assert len(c) == n - 100


def test_auto_goes_back_to_exact_well_below_the_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "EXACT_LIMIT", 1000)
    vecs = clustered(1200, 32, seed=17)
    with Collection.create(tmp_path / "c", MODEL, 32) as c:
        ids = c.add(items(1200), vecs)
        c.search(vecs[0], 1)
        assert "approximate" in c.index_description
        c.remove(ids[:300])  # 900 left: below the limit, but not by half
        assert c.search(vecs[500], 1)[0][0] == ids[500]
        assert "approximate" in c.index_description
        c.remove(ids[300:750])  # 450 left
        assert c.search(vecs[800], 1)[0][0] == ids[800]
        assert c.index_description == "Flat (exact)"


def test_benchmark_can_override_choose_factory_and_tune(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "choose_factory", lambda n: "HNSW32,Flat")
    monkeypatch.setattr(store, "tune", lambda index, calibration=None: {})
    vecs = rand_vecs(50, seed=16)
    with Collection.create(tmp_path / "c", MODEL, DIM) as c:
        ids = c.add(items(50), vecs)
        assert c.index_description == "HNSW32,Flat (approximate)"
        assert c.search(vecs[9], 1)[0][0] == ids[9]
        rebuilds = c._ix.rebuilds
        assert [c.search(v, 1)[0][0] for v in vecs[:5]] == ids[:5]
        assert c._ix.rebuilds == rebuilds  # no rebuild per search


def test_explicit_factory_hnsw(tmp_path):
    vecs = rand_vecs(300, seed=13)
    path = tmp_path / "c"
    with Collection.create(path, MODEL, DIM, index_type="HNSW16,Flat") as c:
        assert c.manifest.index_type == "HNSW16,Flat"
        ids = c.add(items(300), vecs)
        assert c.search(vecs[42], 1)[0][0] == ids[42]
        assert c.index_description.startswith("HNSW16,Flat")
        # HNSW cannot remove ids: rebuilt lazily before the next search
        c.remove([ids[42]])
        assert ids[42] not in {i for i, _ in c.search(vecs[42], 10)}
        c.add([NewItem(source="/img/42.png")], vecs[42:43] * 2)  # re-added under a new id
        assert c.get([c.search(vecs[42], 1)[0][0]])[0].source == "/img/42.png"
    with Collection.open(path) as c:
        assert c._ix.rebuilds == 0 and len(c) == 300
        assert c.search(vecs[7], 1)[0][0] == ids[7]


def test_explicit_factory_that_needs_more_items_to_train(tmp_path):
    with Collection.create(tmp_path / "c", MODEL, DIM, index_type="IVF64,Flat") as c:
        vecs = rand_vecs(20, seed=14)
        ids = c.add(items(20), vecs)
        assert c.search(vecs[3], 1)[0][0] == ids[3]  # exact meanwhile
        assert "IVF64,Flat" in c.index_description
        more = rand_vecs(3000, seed=15)
        c.add(items(3000, prefix="/more/"), more)
        c.save()
        assert c.index_description.startswith("IVF64,Flat (approximate")


def test_invalid_factory_string(tmp_path):
    with pytest.raises(StoreError, match="Bogus12"):
        Collection.create(tmp_path / "c", MODEL, DIM, index_type="Bogus12")
    assert not (tmp_path / "c" / "manifest.json").exists()
    with pytest.raises(StoreError, match="PQ5"):  # 16 is not a multiple of 5
        Collection.create(tmp_path / "d", MODEL, DIM, index_type="PQ5")


def _ivf(vecs: np.ndarray, nlist: int) -> faiss.Index:
    index = store._make_index(vecs.shape[1], f"IVF{nlist},SQ8")
    index.train(vecs)
    index.add_with_ids(vecs, np.arange(len(vecs), dtype=np.int64))
    return index


def _truth(vecs: np.ndarray, queries: np.ndarray, self_ids: np.ndarray) -> np.ndarray:
    scores = queries @ vecs.T
    scores[self_ids[:, None] == np.arange(len(vecs))[None, :]] = -np.inf
    return np.argsort(-scores, axis=1)[:, :10]


def test_calibration_queries_are_items_blends_and_off_cone():
    shared = unit(np.random.default_rng(19).standard_normal(32))  # CLIP-like: one narrow cone
    vecs = unit(shared + clustered(300, 32, seed=20))
    ids = np.arange(1000, 1300, dtype=np.int64)
    q, self_ids, groups = store.calibration_queries(vecs[:150], ids[:150])
    assert q.shape == (150, 32) and q.dtype == np.float32
    assert np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    assert groups.tolist() == [0] * 50 + [1] * 50 + [2] * 50
    assert self_ids[:50].tolist() == ids[:50].tolist()  # an item is not its own hit
    assert (self_ids[50:100] == -1).all()  # blends have no own item
    assert self_ids[100:].tolist() == ids[100:150].tolist()
    assert np.allclose(q[:50], vecs[:50])
    # off-cone queries lost the shared component: less alike than the items they came from
    mean_cos = lambda x: float((x @ x.T)[np.triu_indices(len(x), 1)].mean())  # noqa: E731
    assert mean_cos(vecs[100:150]) > 0.4
    assert abs(mean_cos(q[100:])) < 0.1


def test_tune_picks_the_smallest_knob_that_reaches_the_target():
    vecs = clustered(6000, 32, seed=21, n_clusters=300, spread=1.2)
    index = _ivf(vecs, 256)
    picked = np.random.default_rng(3).choice(len(vecs), 150, replace=False)
    q, self_ids, groups = store.calibration_queries(vecs[picked], picked.astype(np.int64))
    truth = _truth(vecs, q, self_ids)
    params = store.tune(index, (q, self_ids, truth, groups))
    nprobe = params["nprobe"]
    ivf = faiss.extract_index_ivf(index)
    assert ivf.nprobe == nprobe and nprobe & (nprobe - 1) == 0  # a power of two, applied

    def worst(npr):
        ivf.nprobe = npr
        return min(store._recall_at_10(index, q[groups == g], self_ids[groups == g],
                                       truth[groups == g]) for g in range(3))

    assert worst(nprobe) >= store.TARGET_RECALL
    if nprobe > 4:  # half as many probes would not have been enough
        assert worst(nprobe // 2) < store.TARGET_RECALL + store.TUNE_MARGIN
    # without calibration: the conservative default
    assert store.tune(index) == {"nprobe": 16}


def test_tune_serves_the_hardest_kind_of_query():
    vecs = clustered(6000, 32, seed=22, n_clusters=100, spread=0.6)
    index = _ivf(vecs, 256)
    picked = np.random.default_rng(4).choice(len(vecs), 150, replace=False)
    q, self_ids, groups = store.calibration_queries(vecs[picked], picked.astype(np.int64))
    truth = _truth(vecs, q, self_ids)
    easy = store.tune(index, (q[:50], self_ids[:50], truth[:50]))["nprobe"]
    # a group of random directions (far from every item) needs more probes than items do
    hard = np.random.default_rng(5).standard_normal((50, 32)).astype(np.float32)
    hard /= np.linalg.norm(hard, axis=1, keepdims=True)
    qs = np.concatenate([q[:50], hard])
    ids = np.concatenate([self_ids[:50], np.full(50, -1)])
    both = store.tune(index, (qs, ids, _truth(vecs, qs, ids), np.repeat([0, 1], 50)))["nprobe"]
    assert both > easy, (easy, both)


