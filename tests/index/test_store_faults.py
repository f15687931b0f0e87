"""index/store/: what users met (issue 13): odd file names, non-finite vectors, a full
disk, a read-only folder. Each must leave searches working and say what is wrong."""

from __future__ import annotations

import errno
import logging
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import faiss
import numpy as np
import pytest
from storekit import DIM, MODEL, items, rand_vecs

from index.__main__ import main as cli_main
from index.errors import BadItem, StoreError
from index.store import Collection, NewItem

REPO = Path(__file__).resolve().parents[2]
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


# -- a full disk --------------------------------------------------------------------------------


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_does_not_fail_reads(tmp_path, monkeypatch, caplog):
    path = tmp_path / "c"
    vecs = rand_vecs(20)
    with Collection.create(path, MODEL, DIM) as c:
        ids = c.add(items(20), vecs)
    (path / "vectors.faiss").unlink()  # a build that stored its rows, then hit a full disk
    monkeypatch.setattr(faiss, "write_index", _no_space)
    with caplog.at_level(logging.WARNING, logger="index.store"):
        c = Collection.open(path, MODEL)  # rebuilt in memory; cannot be saved
        assert c.search(vecs[3], 1)[0][0] == ids[3]
        c.add(items(1, prefix="/new/"), rand_vecs(1, seed=9))  # SQLite still has room
        c.close()  # does not raise: vectors.faiss is only a cache
    said = [r.getMessage() for r in caplog.records if "No space left" in r.getMessage()]
    assert len(said) == 1 and "kept in memory" in said[0]  # once, not per write
    assert not list(path.glob(".*.tmp"))
    with Collection.open(path, MODEL) as c:  # a build's explicit save still reports it
        assert len(c) == 21
        with pytest.raises(StoreError, match="No space left on device$"):
            c.save()


def test_a_search_on_a_full_disk_answers(demo_collection, tmp_path, monkeypatch, capsys, caplog):
    path = tmp_path / "c"
    shutil.copytree(demo_collection, path)
    (path / "vectors.faiss").unlink()
    monkeypatch.setattr(faiss, "write_index", _no_space)
    assert cli_main(["search", "--index", str(path), "-k", "2", "red circle"]) == 0
    assert "red circle" in capsys.readouterr().out
    assert len([r for r in caplog.records if "No space left" in r.getMessage()]) == 1


# -- a read-only folder -----------------------------------------------------------------------


def run_read_only(folder: Path, code: str) -> subprocess.CompletedProcess:
    """Run python code with `folder` read-only, as on a `:ro` mount (root: a read-only
    bind mount in a private mount namespace; others: the write bits taken away)."""
    cmd = [sys.executable, "-c", textwrap.dedent(code)]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    if os.geteuid() != 0:
        modes = {p: p.stat().st_mode for p in [folder, *folder.iterdir()]}
        for p, m in modes.items():
            p.chmod(m & ~0o222)
        try:
            return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                                  timeout=300)
        finally:
            for p, m in modes.items():
                p.chmod(m)
    if shutil.which("unshare") is None:
        pytest.skip("running as root and no unshare to make a read-only mount")
    q = shlex.quote(str(folder))
    script = (f"mount --bind {q} {q} && mount -o remount,bind,ro {q} {q} || exit 97; "
              f"exec {shlex.join(cmd)}")
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=300)
    if p.returncode == 97:
        pytest.skip(f"cannot make a read-only mount here: {p.stderr.strip()}")
    return p


def test_a_read_only_collection_can_be_searched(tmp_path):
    path = tmp_path / "c"
    vecs = rand_vecs(10)
    with Collection.create(path, MODEL, DIM) as c:
        ids = c.add(items(9) + [NewItem(source="discord:7/1/2/3", guild_id=7, channel_id=1,
                                        message_id=2, attachment_id=3)], vecs)
    db = sqlite3.connect(path / "meta.sqlite")
    db.execute("DROP TABLE posts")  # and from before the posts table, which it cannot add
    db.commit()
    db.close()
    (path / "vectors.faiss").unlink()  # stale: rebuilt in memory, not written
    p = run_read_only(path, f"""
        import os, numpy as np
        from index.errors import StoreError
        from index.store import Collection, NewItem
        with Collection.open({str(path)!r}) as c:
            q = np.array({vecs[4].tolist()!r}, dtype=np.float32)
            print(c.search(q, 1)[0][0], len(c), len(c.posts(7)))
            try:
                c.add([NewItem(source="/x.png")], q[None, :])
            except StoreError as e:
                print(e)
        print(sorted(os.listdir({str(path)!r})))
    """)
    assert p.returncode == 0, p.stderr
    found, refused, files = p.stdout.splitlines()
    assert found == f"{ids[4]} 10 1"
    assert refused.endswith("is read-only here (its folder cannot be written): search it, "
                            "or copy it somewhere writable to change it")
    assert files == "['manifest.json', 'meta.sqlite', 'vectors.faiss.json']"


def test_the_cli_searches_a_read_only_collection(demo_collection, tmp_path):
    path = tmp_path / "c"
    shutil.copytree(demo_collection, path)
    p = run_read_only(path, f"""
        import sys
        from index.__main__ import main
        sys.exit(main(["search", "--index", {str(path)!r}, "-k", "3", "red circle"]))
    """)
    assert p.returncode == 0, p.stderr
    assert len([line for line in p.stdout.splitlines() if ".png" in line]) == 3
