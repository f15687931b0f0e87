"""Shared fixtures: the bundled model and a real architecture with random weights.

Both are loaded once per session; they are read-only, so tests may share them.
"""

from __future__ import annotations

import pytest
from twostores import LiteServer, Stores

from index.models import load_model


@pytest.fixture(scope="session")
def tiny():
    return load_model("builtin:tiny-shapes", device="cpu")


@pytest.fixture(scope="session")
def vitb32():
    """ViT-B-32 with random weights: the real architecture, no download."""
    return load_model("ViT-B-32:random", device="cpu")


@pytest.fixture(scope="session")
def service_encoder(tiny):
    """The encoder behind the encoder-service tests (servicekit.served): the bundled model,
    one thread (half the warm-up), a queue of 64 inputs."""
    from index.encoder import Encoder
    enc = Encoder(tiny, max_batch=32, queue_size=64, threads=1)
    assert enc.wait_ready(120)
    yield enc
    enc.close()


@pytest.fixture(scope="session")
def demo_gallery(tmp_path_factory):
    """120 shapes images with captions.csv (seed 5)."""
    from index.synthetic import write_gallery
    folder = tmp_path_factory.mktemp("gallery")
    write_gallery(folder, 120, seed=5)
    return folder


@pytest.fixture(scope="session")
def demo_collection(demo_gallery, tmp_path_factory):
    """The gallery built into a collection with the bundled model (read-only for tests)."""
    import asyncio

    from index.build import build
    from index.engine import Engine
    from index.sources import scan_folder
    path = tmp_path_factory.mktemp("collection") / "c"
    engine = Engine.open(path, model="builtin:tiny-shapes", create=True)
    try:
        asyncio.run(build(engine.collection, engine.encoder, scan_folder(demo_gallery)))
    finally:
        engine.close()
    return path


# -- the two stores: the collection, engine and bot tests run against both -----------------


@pytest.fixture(scope="session")
def milvus_uri(tmp_path_factory) -> str:
    """One Milvus Lite file for the whole session (its server starts once, in this process);
    each test's collections get names of their own."""
    return str(tmp_path_factory.mktemp("milvus") / "lite.db")


@pytest.fixture(params=["faiss", "milvus"])
def store(request, milvus_uri) -> Stores:
    return Stores(request.param, milvus_uri)


@pytest.fixture(scope="session")
def demo_milvus_collection(demo_gallery, milvus_uri, tmp_path_factory):
    """demo_collection's gallery built into the session's Milvus Lite (read-only for tests);
    open it with Stores('milvus', milvus_uri).engine(path)."""
    import asyncio

    from index.build import build
    from index.sources import scan_folder
    path = tmp_path_factory.mktemp("collection") / "demo"
    engine = Stores("milvus", milvus_uri).engine(path, model="builtin:tiny-shapes", create=True)
    try:
        asyncio.run(build(engine.collection, engine.encoder, scan_folder(demo_gallery)))
    finally:
        engine.close()
    return path


@pytest.fixture
def demo_of(request):
    """The demo collection's path for a store kind (built on first use)."""
    def path(store: Stores):
        return request.getfixturevalue(
            "demo_collection" if store.kind == "faiss" else "demo_milvus_collection")
    return path


@pytest.fixture
def lite_server(tmp_path):
    """A `milvus-lite server` on 127.0.0.1 (a stand-in for a Milvus cluster); tests may stop
    and start it again (same data folder, same port)."""
    server = LiteServer(tmp_path / "milvus-data")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def milvus_server(tmp_path):
    """A `milvus-lite server` on a free loopback port (a store several processes share);
    its URI, and the server stopped by its pid at the end."""
    server = LiteServer(tmp_path / "milvus-data")
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()
