"""python -m index migrate: a collection moved folder -> Milvus -> folder, resumably."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from index.errors import StoreError
from index.migrate import Endpoint, migrate
from index.store import Collection, NewItem
from index.store.milvus import MilvusStore

DIM = 16
MODEL = "builtin:tiny-shapes"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def make_folder(path: Path, n: int, seed: int = 0) -> np.ndarray:
    """A folder collection of n items with every kind of metadata; returns their vectors."""
    vecs = unit(np.random.default_rng(seed).standard_normal((n, DIM)))
    items = [
        NewItem(
            source=f"discord:7/8/{i}/{i}" if i % 3 == 0 else f"/photos/é {i}.jpg",
            title=f"title {i} ✓", credit="someone" if i % 2 else "", page_url=f"https://x/{i}",
            guild_id=7 if i % 3 == 0 else None, channel_id=8 if i % 3 == 0 else None,
            message_id=i + 1 if i % 3 == 0 else None, attachment_id=i + 1 if i % 3 == 0 else None,
            author_id=99 if i % 3 == 0 else None, posted_at=1.7e9 + i if i % 3 == 0 else None,
            content_hash=f"h{i}", stamp=f"mtime_ns:{i}",
            phash=f"{i:064x}" if i % 2 else None,  # (a collection from before the hash: None)
        )
        for i in range(n)
    ]
    with Collection.create(path, MODEL, DIM) as c:
        for s in range(0, n, 500):
            c.add(items[s:s + 500], vecs[s:s + 500])
        c.write_record("floor", f'{{"value": 0.6, "items": {n}}}')  # the relevance floor
        c.write_record("library", '{"channels": {"8": "done ✓"}}')
        # the same pictures posted again elsewhere: more posts of the same items
        c.add_posts([NewItem(source=f"discord:7/9/{10**6 + i}/{i}", guild_id=7, channel_id=9,
                             message_id=10**6 + i, attachment_id=i + 1, content_hash=f"h{i}")
                     for i in range(0, min(n, 60), 3)])
    return vecs


def provenance(store) -> set[tuple[str, str]]:
    """(post, the source of the item it points at) for every post of guild 7."""
    posts = store.posts(7)
    owners = {it.id: it.source for it in store.get(sorted({p.item_id for p in posts}))}
    return {(p.source, owners[p.item_id]) for p in posts}


def by_source(store) -> dict[str, tuple]:
    """source -> (metadata without id/added_at, vector) of every item."""
    ids = [int(i) for i in store.ids()]
    out = {}
    for it, v in zip(store.get(ids), store.vectors(ids), strict=True):
        meta = tuple(getattr(it, f) for f in ("title", "credit", "page_url", "guild_id", "channel_id",
                                              "message_id", "attachment_id", "author_id",
                                              "posted_at", "content_hash", "stamp", "phash"))
        out[it.source] = (meta, v)
    return out


def same_content(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for src, (meta, vec) in a.items():
        assert b[src][0] == meta, src
        assert np.max(np.abs(b[src][1] - vec)) < 2e-3, src


def test_folder_to_milvus_and_back_keeps_every_item(tmp_path):
    make_folder(tmp_path / "photos", 1200)
    uri = str(tmp_path / "m.db")
    there = migrate(Endpoint(str(tmp_path / "photos"), "photos"), Endpoint(uri, "photos"), chunk=250)
    assert (there.total, there.copied, there.already, there.destination_items) == (1200, 1200, 0, 1200)
    assert there.checked == 100 and there.max_difference < 2e-3
    assert there.posts == 400 + 20  # each guild item's own post + 20 posted again
    assert (there.records, there.records_written) == (2, 2)
    back = migrate(Endpoint(uri, "photos"), Endpoint(str(tmp_path / "back"), "photos"), chunk=300)
    assert (back.copied, back.destination_items) == (1200, 1200)
    with Collection.open(tmp_path / "photos") as orig, MilvusStore.open(uri, "photos") as mil, \
            Collection.open(tmp_path / "back") as ret:
        want = by_source(orig)
        same_content(want, by_source(mil))
        same_content(want, by_source(ret))
        q = orig.vectors([int(orig.ids()[5])])[0]
        names = [[s.get([i])[0].source for i, _ in s.search(q, 10)] for s in (orig, mil, ret)]
        assert names[0] == names[1] == names[2]  # the same results from every copy
        assert ret.manifest.model == mil.manifest.model == MODEL
        want = provenance(orig)
        assert len(want) == 420 and provenance(mil) == want and provenance(ret) == want
        for name in ("floor", "library"):  # the records came along both ways
            assert ret.read_record(name) == mil.read_record(name) == orig.read_record(name)
        assert ret.read_record("floor") == '{"value": 0.6, "items": 1200}'
        assert ret.all_records() == orig.all_records() and len(orig.all_records()) == 2


def test_second_run_adds_nothing_and_a_lost_item_comes_back(tmp_path):
    make_folder(tmp_path / "photos", 600)
    src, dst = Endpoint(str(tmp_path / "photos")), Endpoint(str(tmp_path / "copy"))
    first = migrate(src, dst)
    again = migrate(src, dst)
    assert (first.copied, again.copied, again.already, again.destination_items) == (600, 0, 600, 600)
    assert (first.records_written, again.records_written, again.records) == (2, 0, 2)
    with Collection.open(tmp_path / "copy") as c:
        victim = c.get([int(c.ids()[10])])[0]
        c.remove([victim.id])
        c.write_record("floor", None)  # a record lost too
    third = migrate(src, dst)
    assert (third.copied, third.destination_items, third.records_written) == (1, 600, 1)
    with Collection.open(tmp_path / "copy") as c:
        assert c.by_source(victim.source) is not None
        assert c.read_record("floor") == '{"value": 0.6, "items": 600}'


def test_verification_catches_a_destination_that_differs(tmp_path):
    vecs = make_folder(tmp_path / "photos", 50)
    dst = tmp_path / "copy"
    with Collection.create(dst, MODEL, DIM) as c:  # a stale copy of one item, other vector
        c.add([NewItem(source="/photos/é 1.jpg", title="title 1 ✓", credit="someone",
                       page_url="https://x/1", content_hash="h1", stamp="mtime_ns:1",
                       phash=f"{1:064x}")],
              -vecs[1:2])
    with pytest.raises(StoreError, match="differs"):
        migrate(Endpoint(str(tmp_path / "photos")), Endpoint(str(dst)), sample=50)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    """The CLI in this process (a subprocess start costs seconds): exit code, stdout, stderr."""
    from index.__main__ import main
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def lite(tmp_path):
    """A Milvus Lite file; its in-process server (if this process started one) stops after."""
    from milvus_lite import server_manager_instance
    uri = str(tmp_path / "m.db")
    yield uri
    server_manager_instance.release_server(uri)


@pytest.mark.parametrize("direction", ["to_milvus", "to_folder"])
def test_migrate_killed_with_sigkill_resumes_nothing_lost_nothing_twice(tmp_path, lite, capsys,
                                                                          direction):
    from milvus_lite import server_manager_instance
    n = 3000
    make_folder(tmp_path / "photos", n)
    if direction == "to_milvus":
        src, dst = tmp_path / "photos", lite
    else:
        migrate(Endpoint(str(tmp_path / "photos"), "photos"), Endpoint(lite, "photos"))
        server_manager_instance.release_server(lite)  # let the killed process open it
        src, dst = lite, tmp_path / "photos2"
    args = ["migrate", "--from", src, "--to", dst, "--name", "photos", "--chunk", "50"]
    proc = subprocess.Popen([sys.executable, "-m", "index", *map(str, args)], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = 0
    deadline = time.time() + 120
    while time.time() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        if line.startswith("migrate: "):
            seen += 1
            if seen == 4:  # 200 of 3000 copied (or more: it runs on while we read)
                break
    assert seen == 4 and proc.poll() is None, "the migration ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    proc.stdout.close()
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    summary = out.strip().splitlines()[-1]
    copied = int(summary.split(": ")[1].split(" copied")[0])
    assert 0 < copied < n  # it went on from where it stopped
    assert f"{n} items in the destination" in summary
    with Collection.open(tmp_path / "photos") as orig:
        want = by_source(orig)
    if direction == "to_milvus":
        with MilvusStore.open(lite, "photos") as out:
            assert len(out) == n
            got = by_source(out)
    else:
        with Collection.open(tmp_path / "photos2") as out:
            assert len(out) == n
            got = by_source(out)
    same_content(want, got)


@pytest.mark.parametrize("args, fragment", [
    (["--from", "{tmp}/nothing", "--to", "{tmp}/m.db"], "not a clipfind collection"),
    (["--from", "{tmp}/photos", "--to", "{tmp}/photos"], "source and destination are the same"),
    (["--from", "{tmp}/photos", "--to", "{tmp}/m.db", "--chunk", "0"], "--chunk must be at least 1"),
    (["--from", "{tmp}/a.db", "--to", "{tmp}/b.db"], "give the collection name with --name"),
    (["--from", "{tmp}/photos", "--to", "{tmp}/other"], "was built with model"),
    (["--from", "http://127.0.0.1:9/", "--to", "{tmp}/back", "--name", "x"], "cannot reach Milvus"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, fragment):
    make_folder(tmp_path / "photos", 5)
    with Collection.create(tmp_path / "other", "ViT-B-32:openai", DIM):
        pass
    code, _, err = run_cli(capsys, "migrate", *[a.format(tmp=tmp_path) for a in args])
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error:") and fragment in lines[0], err


def test_into_an_old_milvus_collection_without_the_hash_field(tmp_path, monkeypatch):
    """A Milvus Lite collection made before the perceptual-hash field cannot get it: the
    items go in without their hashes, and the verification does not count that as lost."""
    from pymilvus.orm.schema import CollectionSchema
    make_folder(tmp_path / "photos", 40)
    uri = str(tmp_path / "m.db")
    add_field = CollectionSchema.add_field
    monkeypatch.setattr(CollectionSchema, "add_field", lambda self, name, *a, **kw:
                        self if name == "phash" else add_field(self, name, *a, **kw))
    MilvusStore.create(uri, "photos", MODEL, DIM).close()
    monkeypatch.undo()
    there = migrate(Endpoint(str(tmp_path / "photos")), Endpoint(uri, "photos"), sample=40)
    assert (there.copied, there.checked, there.records) == (40, 40, 2)
    with MilvusStore.open(uri, "photos") as mil:
        assert not mil.keeps_phash
        assert {it.phash for it in mil.get([int(i) for i in mil.ids()])} == {None}
