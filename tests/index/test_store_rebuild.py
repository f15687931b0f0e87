"""index/store/rebuild.py: policy rebuilds in the background."""

from __future__ import annotations

import json
import sqlite3
import threading

import faiss
import numpy as np
from storekit import MODEL, clustered, items, rand_vecs

from index import store
from index.store import (
    Collection,
    NewItem,
    choose_factory,
)

# -- background rebuilds -------------------------------------------------------------------


class Gate:
    """Holds store.tune (the last step of every build) until released; can make it fail."""

    def __init__(self, monkeypatch, fail: bool = False):
        self.entered, self.release, self.fail = threading.Event(), threading.Event(), fail
        real = store.tune

        def tune(index, calibration=None):
            self.entered.set()
            assert self.release.wait(10), "test never released the gate"
            if self.fail:
                raise RuntimeError("training blew up")
            return real(index, calibration)

        monkeypatch.setattr(store, "tune", tune)


def _all_ids(c: Collection) -> list[int]:
    """Every id in c's index, as often as it is there (IVF probed exhaustively)."""
    index, n = c._ix.index, int(c._ix.index.ntotal)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.nprobe = ivf.nlist
    _, labels = index.search(np.zeros((1, index.d), dtype=np.float32), n)
    return sorted(int(i) for i in labels[0] if i >= 0)


def test_background_rebuild_serves_searches_and_keeps_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "EXACT_LIMIT", 1000)
    gate = Gate(monkeypatch)
    vecs = clustered(1400, 32, seed=30)
    new60 = rand_vecs(1, 32, seed=31)
    path = tmp_path / "c"
    with Collection.create(path, MODEL, 32, background_rebuilds=True) as c:
        ids = c.add(items(1200), vecs[:1200])
        assert c.search(vecs[5], 1)[0][0] == ids[5]  # starts the build, answers at once
        assert gate.entered.wait(10)  # the build is now stuck in training
        assert c.rebuilding
        target = choose_factory(1200)
        assert c.index_description == f"Flat (exact; {target} being built in the background)"
        # meanwhile searches are exact and do not wait; writes go on; no second build starts
        assert [c.search(v, 1)[0][0] for v in vecs[:20]] == ids[:20]
        more = c.add(items(200, prefix="/more/"), vecs[1200:])
        c.remove(ids[:50])
        c.add([NewItem(source="/img/60.png")], new60)  # id 60 gets another vector
        assert c.search(vecs[1250], 1)[0][0] == more[50]
        assert c._ix.rebuilds == 1 and c.rebuilding
        gate.release.set()
        assert c.wait_for_rebuild(10)
        assert not c.rebuilding and c._ix.rebuilds == 2
        assert c.index_description.startswith(f"{target} (approximate, nprobe=")
        # nothing lost, nothing twice, nothing removed left, the new vector of 60 only
        assert _all_ids(c) == sorted(ids[50:] + more) == c.ids().tolist()
        assert c.search(new60[0], 1)[0][0] == ids[60]
        assert ids[60] not in [i for i, _ in c.search(vecs[60], 5)]
    with Collection.open(path) as c:  # the swapped-in index was saved by close
        assert c._ix.rebuilds == 0 and c.index_description.startswith(target)
        assert len(c) == 1350


def test_default_rebuilds_synchronously(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "EXACT_LIMIT", 1000)
    with Collection.create(tmp_path / "c", MODEL, 32) as c:
        c.add(items(1200), clustered(1200, 32, seed=32))
        c.save()
        assert not c.rebuilding and "approximate" in c.index_description


def test_close_during_background_rebuild_abandons_it(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(store, "EXACT_LIMIT", 1000)
    gate = Gate(monkeypatch)
    vecs = clustered(1200, 32, seed=33)
    path = tmp_path / "c"
    c = Collection.create(path, MODEL, 32, background_rebuilds=True)
    ids = c.add(items(1200), vecs)
    c.search(vecs[0], 1)
    assert gate.entered.wait(10)
    thread = c._bg.thread
    c.close()  # does not wait for training: saves the valid exact index
    sidecar = json.loads((path / "vectors.faiss.json").read_text())
    assert sidecar["factory"] == "Flat" and sidecar["ntotal"] == 1200
    gate.release.set()
    thread.join(10)
    assert not thread.is_alive()
    assert not list(path.glob(".*.tmp"))
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    assert json.loads((path / "vectors.faiss.json").read_text()) == sidecar  # untouched
    with Collection.open(path, background_rebuilds=True) as c:
        assert c._ix.rebuilds == 0  # the saved index loaded; the policy rebuild goes on again
        assert c.search(vecs[7], 1)[0][0] == ids[7]
        assert c.wait_for_rebuild(10)
        assert "approximate" in c.index_description and _all_ids(c) == ids


def test_failed_background_rebuild_keeps_the_index_and_retries_later(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(store, "EXACT_LIMIT", 1000)
    gate = Gate(monkeypatch, fail=True)
    gate.release.set()
    vecs = clustered(1200, 32, seed=34)
    with Collection.create(tmp_path / "c", MODEL, 32, background_rebuilds=True) as c:
        ids = c.add(items(1200), vecs)
        c.search(vecs[0], 1)
        assert c.wait_for_rebuild(10)
        assert "background rebuild" in caplog.text and "training blew up" in caplog.text
        assert c.index_description == "Flat (exact)"
        assert c.search(vecs[3], 1)[0][0] == ids[3]
        assert not c.rebuilding  # backing off: the search did not start another
        gate.fail = False
        c._bg.not_before = 0.0  # the back-off is over
        c.search(vecs[0], 1)
        assert c.wait_for_rebuild(10)
        assert "approximate" in c.index_description and _all_ids(c) == ids


def test_background_rebuild_dropped_when_another_process_wrote(tmp_path, monkeypatch):
    monkeypatch.setattr(store, "EXACT_LIMIT", 1000)
    gate = Gate(monkeypatch)
    vecs = clustered(1200, 32, seed=35)
    path = tmp_path / "c"
    with Collection.create(path, MODEL, 32, background_rebuilds=True) as c:
        ids = c.add(items(1200), vecs)
        c.search(vecs[0], 1)
        assert gate.entered.wait(10)
        db = sqlite3.connect(path / "meta.sqlite")
        with db:  # another process removes an item after the build's snapshot
            db.execute("DELETE FROM items WHERE id = ?", (ids[0],))
            db.execute("UPDATE state SET value = value + 1 WHERE key = 'generation'")
        db.close()
        gate.release.set()
        assert c.wait_for_rebuild(10)
        assert c._ix.rebuilds == 1  # its snapshot is out of date: dropped
        assert ids[0] not in [i for i, _ in c.search(vecs[0], 5)]  # stale: rebuilt at once
        assert c._ix.rebuilds == 2 and _all_ids(c) == ids[1:]
