"""python -m bot: exit status and one-line errors before anything connects."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(text, encoding="utf-8")
    return p


def run_main(args, tmp_path, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != "DISCORD_TOKEN"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_main_exits_2_with_one_line(tmp_path):
    env = {"PYTHONPATH": str(ROOT)}
    bad = write(tmp_path, "results_per_page = 99\n")
    r = run_main(["--config", str(bad)], tmp_path, env)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "results_per_page" in lines[0] and "between 1 and 10" in lines[0]

    good = write(tmp_path, "")
    r = run_main(["--config", str(good)], tmp_path, env)
    assert r.returncode == 2
    assert r.stderr.strip() == "clipfind: no token: set DISCORD_TOKEN or token in config"

    r = run_main(["--config", str(good)], tmp_path, {**env, "DISCORD_TOKEN": "secret.token.x"})
    assert r.returncode == 2
    assert "no collection at" in r.stderr and "secret.token.x" not in r.stderr + r.stdout
