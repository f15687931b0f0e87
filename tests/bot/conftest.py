"""Shared fixtures of the bot's tests: a small demo collection and one engine on it.

The collection (60 shapes, the bundled model) is built once per session; the engine is
opened once and shared (its encoder thread serves every test's event loop). Tests must
not write to either.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bot.config import Settings
from index.build import build
from index.engine import Engine
from index.models import DEFAULT_MODEL
from index.sources import scan_folder
from index.synthetic import write_gallery

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
