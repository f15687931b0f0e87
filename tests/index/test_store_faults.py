"""index/store/: what users met (issue 13): odd file names, non-finite vectors, a full
disk, a read-only folder. Each must leave searches working and say what is wrong."""

from __future__ import annotations

import logging
import os
import sqlite3

import numpy as np
import pytest
from storekit import DIM, MODEL, items, rand_vecs

from index.__main__ import main as cli_main
from index.errors import BadItem
from index.store import Collection, NewItem

ODD = os.fsdecode(b"/photos/caf\xe9 \xff.png")  # a Latin-1 name, as Python hands it over


# -- a file name that is not UTF-8 -----------------------------------------------------------


def test_a_source_that_is_not_utf8_is_kept_exactly(tmp_path):
    path = tmp_path / "c"
    with Collection.create(path, MODEL, DIM) as c:
        [i] = c.add([NewItem(source=ODD, title="caf\udce9", stamp="1:2")], rand_vecs(1))
        assert c.add([NewItem(source="/photos/cafe.png")], rand_vecs(1, seed=2)) == [i + 1]
    with Collection.open(path, MODEL) as c:
        it = c.by_source(ODD)
        assert it is not None and it.id == i and os.fsencode(it.source) == os.fsencode(ODD)
        assert it.title == "caf\ufffd"  # display text: shown, not kept byte for byte
        assert c.stamps() == {ODD: "1:2", "/photos/cafe.png": ""}
        assert c.get([i])[0].source == ODD and c.known([ODD, "/x"]) == {ODD}
        assert c.add([NewItem(source=ODD)], rand_vecs(1, seed=3)) == [i]  # same item again
        assert len(c) == 2


# -- non-finite vectors -----------------------------------------------------------------------


def test_a_non_finite_vector_is_refused_naming_its_item(tmp_path):
    with Collection.create(tmp_path / "c", MODEL, DIM) as c:
        bad = rand_vecs(3)
        bad[1, 2] = np.inf
        with pytest.raises(BadItem, match=r"^/img/1\.png: its vector contains NaN") as e:
            c.add(items(3), bad)
        assert e.value.source == "/img/1.png" and len(c) == 0


def _poison(path, item_id: int) -> None:
    """A NaN written into a stored vector behind the store's back (an older clipfind, a bug)."""
    db = sqlite3.connect(path / "meta.sqlite")
    blob = bytearray(db.execute("SELECT vector FROM items WHERE id = ?", (item_id,)).fetchone()[0])
    blob[0:2] = np.array([np.nan], dtype="<f2").tobytes()
    db.execute("UPDATE items SET vector = ? WHERE id = ?", (bytes(blob), item_id))
    db.commit()
    db.close()


def test_rebuild_reports_stored_non_finite_vectors_and_how_to_repair(tmp_path, caplog):
    path = tmp_path / "c"
    vecs = rand_vecs(6)
    with Collection.create(path, MODEL, DIM) as c:
        ids = c.add(items(6), vecs)
    _poison(path, ids[3])
    (path / "vectors.faiss").unlink()
    with caplog.at_level(logging.WARNING, logger="index.store"):
        with Collection.open(path, MODEL) as c:
            hits = c.search(vecs[0], 10)
    [note] = [r.getMessage() for r in caplog.records if "NaN" in r.getMessage()]
    assert f"ids {ids[3]}" in note and f"python -m index remove --index {path}" in note
    assert len(hits) == 6 and (ids[3], 0.0) in hits  # it does not vanish: it scores 0


def test_export_leaves_non_finite_vectors_out_and_says_so(tmp_path, capsys):
    path, out = tmp_path / "c", tmp_path / "out"
    with Collection.create(path, MODEL, DIM) as c:
        ids = c.add(items(5), rand_vecs(5))
    _poison(path, ids[1])
    assert cli_main(["export", "--index", str(path), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert f"ids {ids[1]}" in err and "left out of this export" in err and "remove" in err
    exported = np.load(out / "vectors.npy")
    assert exported.shape == (4, DIM) and np.isfinite(exported).all()
    assert len((out / "items.jsonl").read_text().splitlines()) == 4
