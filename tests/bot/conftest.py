"""Shared fixtures of the bot's tests: a small demo collection and one engine on it.

The collection (60 shapes, the bundled model) is built once per session; the engine is
opened once and shared (its encoder thread serves every test's event loop). Tests must
not write to either.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

# tests/ is on sys.path (pytest's rootdir insertion), so `import bot` could find tests/bot as
# a namespace package before the real one when the repository root is not on the path too
# (running `.venv/bin/pytest` rather than `python -m pytest`). Make sure it is the package.
ROOT = Path(__file__).resolve().parents[2]
if sys.path[:1] != [str(ROOT)]:
    sys.path.insert(0, str(ROOT))
for _name in [m for m in sys.modules if m == "bot" or m.startswith("bot.")]:
    if getattr(sys.modules[_name], "__file__", None) is None:
        del sys.modules[_name]

import pytest  # noqa: E402

from bot.config import Settings  # noqa: E402
from index.build import build  # noqa: E402
from index.engine import Engine  # noqa: E402
from index.modelspec import DEFAULT_MODEL  # noqa: E402
from index.sources import scan_folder  # noqa: E402
from index.synthetic import write_gallery  # noqa: E402

DEMO_COUNT = 60


@pytest.fixture(scope="session")
def demo(tmp_path_factory) -> Path:
    """A folder with gallery/ (60 images, captions.csv) and collection/ (built)."""
    root = tmp_path_factory.mktemp("demo")
    write_gallery(root / "gallery", DEMO_COUNT, 7)
    engine = Engine.open(root / "collection", model=DEFAULT_MODEL, create=True)
    try:
        report = asyncio.run(build(engine.collection, engine.encoder, scan_folder(root / "gallery")))
        assert report.added == DEMO_COUNT, report.summary()
    finally:
        engine.close()
    return root


@pytest.fixture(scope="session")
def engine(demo):
    e = Engine.open(demo / "collection")
    assert e.encoder.wait_ready(60)
    yield e
    e.close()


@pytest.fixture
def settings(demo) -> Settings:
    return Settings(collection=demo / "collection", results_per_page=5, sync_commands=False,
                    cooldown_rate=0)


@pytest.fixture(scope="session")
def milvus_engine(demo, milvus_uri):
    """The demo gallery built into the session's Milvus Lite, opened once (read-only)."""
    from twostores import Stores

    path = Stores("milvus", milvus_uri).at(demo / "milvus_collection")
    e = Engine.open(path, model=DEFAULT_MODEL, create=True, store="milvus", milvus_uri=milvus_uri)
    try:
        report = asyncio.run(build(e.collection, e.encoder, scan_folder(demo / "gallery")))
        assert report.added == DEMO_COUNT, report.summary()
        assert e.encoder.wait_ready(60)
    except BaseException:
        e.close()
        raise
    yield e
    e.close()


@pytest.fixture(params=["faiss", "milvus"])
def any_engine(request):
    """The demo engine over each store (the bot must not notice which)."""
    return request.getfixturevalue("engine" if request.param == "faiss" else "milvus_engine")
