"""bot/console.py: `python -m bot --console` as a subprocess on a small demo collection."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from botutil import noise_png
from PIL import Image

from bot.console import split_image_options
from index import EngineOptions, make_demo

ROOT = Path(__file__).resolve().parents[2]


def run_console(tmp_path: Path, demo: Path, lines: list[str], *extra: str):
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'collection = "{demo / "collection"}"\nresults_per_page = 5\n'
                   "cooldown_rate = 1\n")  # the console has one user: no cooldown applies
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("DISCORD_TOKEN", None)
    return subprocess.run(
        [sys.executable, "-m", "bot", "--console", "--config", str(cfg), "--out", "out", *extra],
        input="\n".join(lines) + "\n", capture_output=True, text=True, cwd=tmp_path, env=env,
        timeout=120)


def test_console_session(tmp_path, demo):
    (tmp_path / "noise.png").write_bytes(noise_png(seed=11))
    r = run_console(tmp_path, demo, [
        "!find red circle*1 blue square*2",
        "next",
        "▶️",
        "prev",
        "attach noise.png",
        "!find #1*0.5 red",
        "!find --image noise.png blue square",
        "/find dog*-1",
        "!find #2 red",
        "attach missing.png",
        "!help",
        "stop",
        "next",
        "hello there",
        "quit",
        "!find never reached",
    ])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "collection " in out and "60 images" in out
    assert "Results 1–5 for red circle*1 blue square*2 · ▶️ for more" in out
    assert "Results 6–10 for red circle*1 blue square*2" in out
    assert "Results 11–15 for red circle*1 blue square*2" in out
    assert out.count("Results 6–10 for red circle*1 blue square*2") == 2  # next, next, prev
    assert "attached #1: noise.png" in out
    assert "Results 1–5 for #1*0.5 red*1" in out
    assert "Results 1–5 for blue square*1 #1*1" in out
    assert "error: no term has a positive weight" in out
    assert "error: '#2' names image 2, but no image is attached" in out
    assert "error: missing.png: cannot attach" in out
    assert "/find query:<text>" in out  # the help
    assert "paging stopped" in out
    assert "error: no result to page" in out
    assert "error: unknown command 'hello there'" in out
    assert "never reached" not in out
    assert "word weights: red " in out
    # every result line: rank, score, title, [source]; then the saved picture's path
    lines = out.splitlines()
    first = lines.index("Results 1–5 for red circle*1 blue square*2 · ▶️ for more")
    for i in range(5):
        rank_line, image_line = lines[first + 1 + 2 * i], lines[first + 2 + 2 * i]
        assert rank_line.lstrip().startswith(f"{i + 1}. 0.") or rank_line.lstrip().startswith(f"{i + 1}. -")
        assert rank_line.rstrip().endswith(".png]")
        assert image_line.strip() == f"image: out/001-result-{i + 1}.jpg"
    assert lines[first + 11].startswith("word weights: red ")
    assert lines[first + 12] == "word weights picture: out/001-word-weights.png"
    saved = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert "001-result-1.jpg" in saved and "003-result-15.jpg" in saved
    assert Image.open(tmp_path / "out" / "001-result-1.jpg").format == "JPEG"
    png = Image.open(tmp_path / "out" / "001-word-weights.png")
    assert png.format == "PNG" and png.text["Rows"] == "2"
    assert "Traceback" not in r.stderr


def test_console_without_a_collection(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "bot", "--console"], input="", capture_output=True,
                       text=True, cwd=tmp_path, env=env, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().startswith(f"no collection at {tmp_path / 'collection'}")
    assert "--demo" in r.stderr


async def test_make_demo_builds_once_then_resumes(tmp_path):
    out = io.StringIO()
    engine = await make_demo(tmp_path / "demo", EngineOptions(device="cpu"), count=12, out=out)
    try:
        assert len(engine.collection) == 12
    finally:
        engine.close()
    assert "added 12, unchanged 0" in out.getvalue()
    engine = await make_demo(tmp_path / "demo", EngineOptions(device="cpu"), count=12, out=out)
    engine.close()
    assert "added 0, unchanged 12" in out.getvalue()


def test_split_image_options():
    assert split_image_options('--image a.png red --image "my cat.jpg" #1') == (
        "red #1", ["a.png", "my cat.jpg"])
    assert split_image_options("red circle") == ("red circle", [])


async def test_a_failing_command_does_not_end_the_session(settings, engine, tmp_path, monkeypatch):
    from bot.console import Console

    stdin = io.StringIO("!find red\n!find blue\n")
    stdout = io.StringIO()
    console = Console(settings, engine, tmp_path / "out", stdin=stdin, stdout=stdout)
    calls = []

    async def flaky(req):
        calls.append(req.text)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return await real(req)

    real = console.core.find
    monkeypatch.setattr(console.core, "find", flaky)
    assert await console.run() == 0
    out = stdout.getvalue()
    assert "error: something went wrong on my side" in out
    assert "Results 1–5 for blue*1" in out
