"""The CLI as a user runs it: its exit code, its output, never a traceback.

Most calls run `python -m index`'s main() in this process (a subprocess per call spent
seconds importing torch, most of this file's time); what needs a process of its own (a
kill -9, how the interpreter exits) still runs as a subprocess."""

import io
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from contextlib import redirect_stderr, redirect_stdout

import numpy as np
import pytest

from index.__main__ import main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    """Offline as ENV makes a subprocess: huggingface_hub reads the variable when it is
    imported, so a copy imported earlier in this process is told directly (otherwise a
    download is tried, and waits for its time-outs on a machine without a network)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = sys.modules.get("huggingface_hub.constants")
    if hub is not None:
        monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)


def cli(*args, check=True):
    """main(args) as `python -m index ARGS` would run it: exit code, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    log = logging.StreamHandler(err)  # what main's logging.basicConfig gives a real process
    logging.getLogger().addHandler(log)
    try:
        with redirect_stdout(out), redirect_stderr(err):
            code = main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        code = e.code if isinstance(e.code, int) else 2
    finally:
        logging.getLogger().removeHandler(log)
    p = subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())
    assert "Traceback" not in p.stderr, p.stderr
    if check:
        assert p.returncode == 0, p.stderr
    return p


def cli_process(*args):
    """`python -m index ARGS` in a process of its own."""
    p = subprocess.run([sys.executable, "-m", "index", *map(str, args)], capture_output=True,
                       text=True, env=ENV, timeout=240)
    assert "Traceback" not in p.stderr and p.returncode == 0, p.stderr
    return p


def fails(*args):
    p = cli(*args, check=False)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, p.stderr
    return lines[0]


def test_demo_is_deterministic_and_searchable(tmp_path):
    """`demo` makes the same demo collection as `python -m bot --console --demo`."""
    out = cli_process("demo", tmp_path / "a", "--count", 12, "--seed", 3)  # one real process
    assert "added 12, unchanged 0" in out.stdout
    cli("demo", tmp_path / "b", "--count", 12, "--seed", 3)
    header = (tmp_path / "a" / "gallery" / "captions.csv").read_text().splitlines()[0]
    assert header == "file,caption,objects"
    for name in ["captions.csv", "shape_00.png", "shape_11.png"]:
        assert (tmp_path / "a" / "gallery" / name).read_bytes() == \
            (tmp_path / "b" / "gallery" / name).read_bytes()
    again = cli("demo", tmp_path / "a", "--count", 12, "--seed", 3)
    assert "added 0, unchanged 12" in again.stdout
    found = cli("search", "--index", tmp_path / "a" / "collection", "-k", 1, "red")
    assert "1  " in found.stdout and "shape_" in found.stdout


def test_build_is_incremental_and_reports_bad_files(tmp_path, demo_gallery):
    src = tmp_path / "imgs"
    shutil.copytree(demo_gallery, src)
    for f in sorted(src.glob("*.png"))[20:]:
        f.unlink()
    (src / "notes.png").write_text("not really a png")
    (src / "cut.png").write_bytes((src / "shape_000.png").read_bytes()[:100])
    out = cli("build", "--index", tmp_path / "c", src)
    assert "added 20" in out.stdout and "failed 2" in out.stdout
    assert "notes.png" in out.stderr and "cut.png" in out.stderr
    again = cli("build", "--index", tmp_path / "c", src)
    assert "added 0, unchanged 20" in again.stdout
    os.utime(src / "shape_003.png", ns=(1, 1))
    third = cli("build", "--index", tmp_path / "c", src)
    assert "added 1, unchanged 19" in third.stdout and "20 items" in third.stdout


def test_search_json_and_text(demo_collection, demo_gallery):
    out = cli("search", "--index", demo_collection, "--json", "-k", 3,
              "--image", demo_gallery / "shape_001.png", "#1*0.5 red circle")
    data = json.loads(out.stdout)
    assert data["terms"] == [{"kind": "image", "image": 1, "weight": 0.5},
                             {"kind": "text", "text": "red circle", "weight": 1.0}]
    assert [r["rank"] for r in data["results"]] == [1, 2, 3]
    assert set(data["results"][0]) == {"rank", "id", "score", "source", "title", "weak", "copies"}
    assert [a["word"] for a in data["attention"][0]] == ["red", "circle"]
    text = cli("search", "--index", demo_collection, "-k", 2, "red", "circle")
    assert "query: red circle*1" in text.stdout and "   1  " in text.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["search", "--index", "{c}", "dog*-1"], "positive"),
        (["search", "--index", "{c}", "cat*abc"], "usage"),
        (["search", "--index", "{c}", "#2 cat"], "image"),
        (["search", "--index", "{c}", "--image", "/nope.png", "cat"], "/nope.png"),
        (["search", "--index", "{c}", "--model", "ViT-B-32:random", "cat"], "was built with model"),
        (["search", "--index", "{tmp}", "cat"], "not a clipfind collection"),
        (["build", "--index", "{tmp}/x", "{tmp}/missing"], "missing"),
        (["build", "--index", "{tmp}/x", "--model", "Nope-Net:x", "{g}"], "unknown model"),
        (["embed", "--index", "{c}"], "nothing to embed"),
        (["search", "--index", "{c}", "--in", "5", "--after", "2025-01-31", "red"],
         "need a server library"),
        (["import-features", "--index", "{tmp}/f", "--features", "{tmp}/none.npy", "--ids", "{tmp}/none.csv"], "none.npy"),
    ],
)
def test_user_errors_are_one_line(args, fragment, demo_collection, demo_gallery, tmp_path):
    args = [a.format(c=demo_collection, tmp=tmp_path, g=demo_gallery) for a in args]
    assert fragment in fails(*args)


def test_export_rows_match_embed_and_items(demo_collection, demo_gallery, tmp_path):
    cli("export", "--index", demo_collection, "--out", tmp_path / "x")
    vectors = np.load(tmp_path / "x" / "vectors.npy")
    items = [json.loads(ln) for ln in (tmp_path / "x" / "items.jsonl").read_text().splitlines()]
    assert vectors.dtype == np.float32 and vectors.shape == (120, 128) and len(items) == 120
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    row = next(i for i, it in enumerate(items) if it["source"].endswith("shape_004.png"))
    out = cli("embed", "--index", demo_collection, "--image", demo_gallery / "shape_004.png", "red circle")
    lines = out.stdout.splitlines()
    assert len(lines) == 2
    image_vec = np.array(json.loads(lines[0]))
    assert np.abs(image_vec - vectors[row]).max() < 2e-3  # stored as float16


def test_import_features(tmp_path):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 512)).astype(np.float16)
    np.save(tmp_path / "features.npy", feats)
    (tmp_path / "photo_ids.csv").write_text("photo_id\n" + "\n".join(f"id{i}" for i in range(50)) + "\n")
    out = cli("import-features", "--index", tmp_path / "c", "--features", tmp_path / "features.npy",
              "--ids", tmp_path / "photo_ids.csv")
    assert "added 50" in out.stdout
    info = cli("info", "--index", tmp_path / "c").stdout
    assert "ViT-B-32:openai" in info and "items: 50" in info
    again = cli("import-features", "--index", tmp_path / "c", "--features", tmp_path / "features.npy",
                "--ids", tmp_path / "photo_ids.csv")
    assert "added 0, unchanged 50" in again.stdout
    cli("export", "--index", tmp_path / "c", "--out", tmp_path / "x")
    items = [json.loads(ln) for ln in (tmp_path / "x" / "items.jsonl").read_text().splitlines()]
    assert items[7]["source"] == "https://unsplash.com/photos/id7"
    v = np.load(tmp_path / "x" / "vectors.npy")
    expected = feats[7].astype(np.float32) / np.linalg.norm(feats[7].astype(np.float32))
    assert np.abs(v[7] - expected).max() < 2e-3
    # searching needs the model that made the features: offline, a clear line, not a traceback
    assert "ViT-B-32:openai" in fails("search", "--index", tmp_path / "c", "cat")


def test_killed_build_resumes_with_nothing_lost_and_nothing_twice(tmp_path):
    from index.synthetic import write_gallery
    write_gallery(tmp_path / "g", 400, seed=9)
    cmd = [sys.executable, "-m", "index", "build", "--index", str(tmp_path / "c"), "--batch", "16",
           str(tmp_path / "g")]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = tmp_path / "c" / "meta.sqlite"
    deadline = time.time() + 180
    count = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db, timeout=1) as con:
                    count = con.execute("select count(*) from items").fetchone()[0]
            except sqlite3.Error:
                count = 0
            if count >= 48:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with sqlite3.connect(db) as con:
        stored = con.execute("select count(*) from items").fetchone()[0]
    assert 0 < stored < 400 and stored % 16 == 0  # whole batches only
    out = cli("build", "--index", tmp_path / "c", "--batch", "16", tmp_path / "g")
    assert f"added {400 - stored}, unchanged {stored}" in out.stdout
    with sqlite3.connect(db) as con:
        total, distinct = con.execute("select count(*), count(distinct source) from items").fetchone()
    assert total == distinct == 400


def test_milvus_store_from_the_cli(tmp_path, demo_gallery):
    """build, search, info and remove with --store milvus (a Milvus Lite file); a Milvus that
    cannot be reached is one line naming its URI, exit 2."""
    src = tmp_path / "imgs"
    src.mkdir()
    for f in sorted(demo_gallery.glob("*.png"))[:12]:
        shutil.copy(f, src / f.name)
    lite = tmp_path / "m" / "lite.db"
    store = ["--store", "milvus", "--milvus-uri", lite]
    out = cli("build", "--index", tmp_path / "photos", *store, src)
    assert "added 12" in out.stdout and "12 items" in out.stdout
    assert not (tmp_path / "photos" / "manifest.json").exists()  # nothing in a local folder
    hits = json.loads(cli("search", "--index", "photos", *store, "--json", "red circle").stdout)
    assert len(hits["results"]) == 10
    gone = hits["results"][0]["id"]
    assert "removed 1 of 1" in cli("remove", "--index", "photos", *store, gone).stdout
    info = cli("info", "--index", "photos", *store).stdout
    assert "items: 11" in info and "Milvus HNSW" in info
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = fails("search", "--index", "photos", "--store", "milvus", "--milvus-uri",
                 f"http://127.0.0.1:{port}", "red")
    assert f"cannot reach Milvus at http://127.0.0.1:{port}" in line
    assert "not a clipfind" not in line

def test_refused_searches_exit_at_once_with_one_line(demo_collection, tmp_path):
    """Malformed queries and impossible pages are refused before the model loads: exit 2,
    one line, never an abort at exit (a model thread still warming up when the process
    ended made it SIGABRT now and then), never a silently clamped page."""
    from index.store import Collection
    # a collection whose model cannot load offline: a refusal must not get that far
    Collection.create(tmp_path / "far", "ViT-B-32:openai", 512, "auto").close()
    runs = [(demo_collection, [], "🙂 *inf #999999999999999999999999999999999999999999", "usage"),
            (demo_collection, [], "#2 cat", "usage"),
            (tmp_path / "far", [], "cat*abc", "usage"),
            (demo_collection, ["-k", "-1"], "red", "-k -1"),
            (demo_collection, ["-k", "0"], "red", "-k 0"),
            (tmp_path / "far", ["--offset", "-3"], "red", "--offset -3"),
            (tmp_path / "far", ["--before", "2025-13-45"], "red", "not a real date"),
            (tmp_path / "far", ["--after", "2025-06-01", "--before", "2025-05-01"], "red",
             "leaves no time"),
            (tmp_path / "far", [], "red in:#memes", "by name")]
    procs = [subprocess.Popen([sys.executable, "-m", "index", "search", "--index", str(c), *opts,
                               "--", q], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for c, opts, q, _ in runs]
    for p, (_, _, _, fragment) in zip(procs, runs, strict=True):
        out, err = p.communicate(timeout=240)
        assert p.returncode == 2, err  # -6: aborted
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and fragment in err, err
        assert not out


def test_help_and_a_refused_query_do_not_load_torch(tmp_path):
    """A typo answers at once: the help and a refused query import neither torch nor the
    model code (importing torch alone takes a second or more on this kind of machine)."""
    for args in (["--help"], ["search", "--index", str(tmp_path / "none"), "--", "#2 cat"]):
        p = subprocess.run([sys.executable, "-X", "importtime", "-m", "index", *args],
                           capture_output=True, text=True, env=ENV, timeout=120)
        imported = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines()
                    if line.startswith("import time:")}
        assert "index" in imported and not {"torch", "index.models"} & imported, args


def test_build_names_a_fifo_it_skips(tmp_path, demo_gallery):
    src = tmp_path / "imgs"
    src.mkdir()
    shutil.copy(demo_gallery / "shape_000.png", src)
    os.mkfifo(src / "pipe.png")
    out = cli("build", "--index", tmp_path / "c", src)
    assert "added 1" in out.stdout
    assert "pipe.png" in out.stderr and "not a regular file" in out.stderr


def test_search_shows_credit_and_page(tmp_path, demo_gallery):
    import asyncio

    from index.engine import Engine
    from index.store import NewItem
    engine = Engine.open(tmp_path / "c", model="builtin:tiny-shapes", create=True)
    try:
        items = [NewItem(source=f"https://images.unsplash.com/photo-{i}?w=1080", title=f"photo {i}",
                         credit=f"Photo by Ann Lee{i} (@ann{i}) on Unsplash",
                         page_url=f"https://unsplash.com/photos/p{i}") for i in range(2)]
        items.append(NewItem(source=str(demo_gallery / "shape_002.png")))
        data = [(demo_gallery / f"shape_00{i}.png").read_bytes() for i in range(3)]
        asyncio.run(engine.add_images(items, data))
    finally:
        engine.close()
    rows = json.loads(cli("search", "--index", tmp_path / "c", "--json", "-k", 3, "red").stdout)["results"]
    by_source = {r["source"]: r for r in rows}
    r0 = by_source["https://images.unsplash.com/photo-0?w=1080"]
    assert r0["credit"] == "Photo by Ann Lee0 (@ann0) on Unsplash"
    assert r0["page"] == "https://unsplash.com/photos/p0"
    assert "credit" not in by_source[str(demo_gallery / "shape_002.png")]  # only when known
    text = cli("search", "--index", tmp_path / "c", "-k", 3, "red").stdout
    for i in range(2):
        assert f"Photo by Ann Lee{i} (@ann{i}) on Unsplash" in text
        assert f"https://unsplash.com/photos/p{i}" in text
