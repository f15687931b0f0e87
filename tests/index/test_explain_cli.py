"""`python -m index explain` as an operator runs it (in-process: `main`): its files, its output,
its exit code."""

import asyncio
import io
import json
import shutil

from PIL import Image

from index.__main__ import main
from index.build import build
from index.engine import Engine
from index.sources import scan_folder


def test_explain_writes_the_overlay_and_the_grid(tmp_path, demo_collection, capsys):
    out = tmp_path / "heat.png"
    code = main(["explain", "--index", str(demo_collection), "--id", "3", "red circle*1",
                 "blue square*2", "--out", str(out), "--json"])
    p = capsys.readouterr()
    assert code == 0, p.err
    grid = json.loads(p.out)
    assert grid["id"] == 3 and grid["query"] == "red circle*1 blue square*2"
    assert grid["grid"] == [8, 8] and grid["method"] == "legrad"
    assert [m["label"] for m in grid["maps"]] == ["query", "red circle*1", "blue square*2"]
    assert all(len(m["relevance"]) == 8 and max(map(max, m["relevance"])) == 1 for m in grid["maps"])
    im = Image.open(io.BytesIO(out.read_bytes()))
    assert im.format == "PNG" and im.text["Panels"] == "3"
    assert "wrote" in p.err


def run_main(capsys, *args):
    """The CLI in-process (cheaper than a subprocess): exit code and stderr's error lines."""
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    return code, [ln for ln in err.splitlines() if ln.startswith("error:")]


def test_explain_bad_input_is_one_line(tmp_path, demo_collection, demo_gallery, capsys):
    out = tmp_path / "x.png"
    for args, says in [
        (["--id", 99999, "red circle", "--out", out], "result 99999 no longer exists"),
        (["--id", 1, "--image", demo_gallery / "shape_001.png", "#1", "--json"], "no text term"),
        (["--id", 1, "red circle"], "give --out heat.png and/or --json"),
        (["--id", 1, "red circle", "--out", tmp_path / "x.jpg"], "is a PNG"),
    ]:
        code, lines = run_main(capsys, "explain", "--index", demo_collection, *args)
        assert code == 2 and len(lines) == 1 and says in lines[0], lines
    assert not out.exists()


async def test_explain_a_deleted_picture_says_so(tmp_path, demo_gallery, capsys):
    gallery = tmp_path / "g"
    gallery.mkdir()
    for name in ("shape_000.png", "shape_001.png"):
        shutil.copy(demo_gallery / name, gallery / name)
    engine = Engine.open(tmp_path / "c", model="builtin:tiny-shapes", create=True)
    try:
        await build(engine.collection, engine.encoder, scan_folder(gallery))
        gone = next(it.id for it in engine.collection.get(list(engine.collection.ids()))
                    if it.source.endswith("shape_000.png"))
    finally:
        engine.close()
    (gallery / "shape_000.png").unlink()
    code, lines = await asyncio.to_thread(run_main, capsys, "explain", "--index", tmp_path / "c",
                                          "--id", gone, "red", "--out", tmp_path / "x.png")
    assert code == 2 and len(lines) == 1
    assert "deleted" in lines[0] and "shape_000.png" in lines[0]
    assert not (tmp_path / "x.png").exists()
