"""The layering of DESIGN.md, as import-linter contracts (pyproject.toml [tool.importlinter]):
bot/ and the CLI import only the `index` facade and `index.errors`; index/ never imports
bot or discord. Also: the facade exports what it lists, and stays cheap to import."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    code = "import sys; from importlinter.cli import lint_imports_command; " \
           "sys.argv[0] = 'lint-imports'; lint_imports_command()"
    return subprocess.run([sys.executable, "-c", code, "--no-cache", "--no-logo"], cwd=root,
                          capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})


def test_the_import_contracts_are_kept():
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "3 kept, 0 broken" in r.stdout


@pytest.fixture
def checkout_copy(tmp_path) -> Path:
    """The two packages' Python files and pyproject.toml, in a scratch folder."""
    for pkg in ("index", "bot"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg,
                        ignore=lambda d, names: [n for n in names if not (
                            n.endswith(".py") or (Path(d) / n).is_dir() and n != "__pycache__")])
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_contracts_catch_violations(checkout_copy):
    root = checkout_copy
    assert lint_imports(root).returncode == 0  # the copy itself is clean
    (root / "bot" / "sneaky.py").write_text("from index.store import Collection\n")
    (root / "index" / "chatty.py").write_text("import discord\nfrom bot import config\n")
    with open(root / "index" / "__main__.py", "a") as f:
        f.write("\n\ndef _reach():\n    from .engine import Engine\n    return Engine\n")
    r = lint_imports(root)
    assert r.returncode == 1, r.stdout
    assert "0 kept, 3 broken" in r.stdout
    assert "bot.sneaky -> index.store" in r.stdout
    assert "index.chatty -> discord" in r.stdout and "index.chatty -> bot" in r.stdout
    assert "index.__main__ -> index.engine" in r.stdout


def test_the_facade_exports_every_name_it_lists():
    import index

    for name in index.__all__:
        assert getattr(index, name) is not None, name
    with pytest.raises(AttributeError):
        index.not_a_name  # noqa: B018
    # a function named like its module is exported under another name
    assert callable(index.build_collection)


def test_errors_and_the_grammar_do_not_pull_in_torch():
    code = ("import sys, index.errors; from index import parse_query, USAGE, open_image; "
            "import bot.core; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"},
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("face, env, expect", [
    ("bot.app", {}, "PASSIVE"), ("index.__main__", {}, "PASSIVE"),
    ("index.__main__", {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),
    ("bot.app", {"GOMP_SPINCOUNT": "300000"}, None)])
def test_torch_loads_with_openmp_workers_that_sleep_unless_the_environment_says(face, env, expect):
    """The OpenMP runtime reads its wait policy once, when torch loads: once either face (the
    bot, the command line) is imported, the facade has set it, and a policy or spin count
    the user set is kept."""
    code = ("import os, sys\n"
            "class Spy:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch':  # what torch would load with; then not loaded\n"
            "            print(os.environ.get('OMP_WAIT_POLICY'))\n"
            "            raise ModuleNotFoundError(name)\n"
            "sys.meta_path.insert(0, Spy())\n"
            "import {face}\n"
            "try:\n"
            "    import torch\n"
            "except ModuleNotFoundError:\n"
            "    pass\n")
    out = subprocess.run([sys.executable, "-c", code.format(face=face)], capture_output=True,
                         text=True, cwd=ROOT, timeout=120,
                         env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", **env})
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == str(expect), out.stdout
