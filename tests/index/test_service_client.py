"""The engine on the encoder service (RemoteEncoder): the same vectors, words and results
as in process; what it refuses at start (model, token, address) and how it fails while
running (busy, service gone), each in one line."""

import asyncio
import io
import socket
import time

import numpy as np
import pytest
import torch
from PIL import Image
from servicekit import TOKEN, hold_model_thread, served

from index.engine import Engine, EngineOptions
from index.errors import (
    Busy,
    EncoderTokenError,
    EncoderUnavailable,
    HeatmapUnavailable,
    ModelMismatch,
)
from index.service.client import RemoteEncoder
from index.store import Collection, NewItem
from index.synthetic import Scene, Shape, render

TEXTS = ["red circle", "a small blue square on grey", "green triangle*", "yellow star at night"]


def remote(url, token=TOKEN) -> EngineOptions:
    return EngineOptions(encoder_url=url, encoder_token=token)


def png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), color).save(buf, format="PNG")
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_the_remote_engine_answers_as_the_in_process_one(service_encoder, tiny,
                                                                demo_collection, tmp_path):
    async with served(service_encoder) as (_, url):
        engine = await asyncio.to_thread(Engine.open, demo_collection, options=remote(url))
        local = Engine(Collection.open(demo_collection), service_encoder, owns_encoder=False)
        try:
            assert engine.model_name == "builtin:tiny-shapes"
            got = await engine.embed_texts(TEXTS)
            with torch.inference_mode():
                ref = tiny.model.encode_text(tiny.tokenizer(TEXTS), normalize=True).numpy()
            assert np.abs(got - ref).max() <= 1e-5
            pictures = sorted(p for p in (demo_collection.parent.parent).rglob("*.png"))[:3]
            pictures = [p.read_bytes() for p in pictures] + [png((10, 200, 30))]
            assert np.abs(await engine.embed_images(pictures)
                          - await local.embed_images(pictures)).max() <= 1e-5
            for query in ("red circle", "blue square*2 red*-1"):
                there, here = await engine.search(query, k=8), await local.search(query, k=8)
                assert [h.id for h in there.hits] == [h.id for h in here.hits]
                assert np.allclose([h.score for h in there.hits], [h.score for h in here.hits],
                                   atol=1e-5)
                assert there.attention == here.attention and there.attention[0]
            with pytest.raises(HeatmapUnavailable, match="encoder service"):
                await engine.explain_image(there.hits[0].id, "red circle")
        finally:
            local.collection.close()
            await asyncio.to_thread(engine.close)

        # adding pictures: the build pipeline sends their bytes, checked here first
        made = await asyncio.to_thread(Engine.open, tmp_path / "new", create=True,
                                       options=remote(url))
        try:
            shape = io.BytesIO()
            render(Scene((Shape("red", "circle", 0.4, 0.5, 0.2),), (10, 10, 10))).save(shape, "PNG")
            report = await made.add_images(
                [NewItem(source="a.png"), NewItem(source="b.png"), NewItem(source="c.png")],
                [png((200, 0, 0)), b"junk", shape.getvalue()])
            assert len(report.ids) == 2 and report.failed[0][0] == "b.png"
            stored = made.collection.vectors(report.ids[:1])
            expected = await service_encoder.encode_images([png((200, 0, 0))])
            assert np.abs(stored - expected).max() <= 1e-3  # stored as float16
            # the perceptual hash is made here too (a flat colour has none)
            assert [bool(it.phash) for it in made.collection.get(report.ids)] == [False, True]
            assert made.collection.manifest.model == "builtin:tiny-shapes"
        finally:
            await asyncio.to_thread(made.close)


async def test_a_collection_of_another_model_is_refused_naming_both(service_encoder, tmp_path):
    Collection.create(tmp_path / "other", "ViT-B-32:random", 512).close()
    async with served(service_encoder) as (_, url):
        with pytest.raises(ModelMismatch) as e:
            await asyncio.to_thread(Engine.open, tmp_path / "other", options=remote(url))
    line = str(e.value)
    assert "builtin:tiny-shapes" in line and "ViT-B-32:random" in line and "\n" not in line


async def test_a_refused_token_or_no_service_stops_the_start(service_encoder):
    async with served(service_encoder) as (_, url):
        for token in ("wrong", None):
            with pytest.raises(EncoderTokenError, match="encoder_token"):
                await asyncio.to_thread(RemoteEncoder.connect, url, token)
    nowhere = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(EncoderUnavailable, match=nowhere.replace(".", r"\.")):
        await asyncio.to_thread(RemoteEncoder.connect, nowhere, TOKEN)


async def test_busy_and_a_vanished_service_are_one_line_each(service_encoder):
    async with served(service_encoder) as (_, url):
        client = await asyncio.to_thread(RemoteEncoder.connect, url, TOKEN)
        task, started, release = hold_model_thread(service_encoder)
        try:
            await asyncio.to_thread(started.wait, 10)
            fill = asyncio.ensure_future(service_encoder.encode_texts(
                [f"filler {i}" for i in range(64)]))
            await asyncio.sleep(0.05)
            with pytest.raises(Busy):  # the service's 503
                await client.encode_texts(["one too many"])
        finally:
            release.set()
        await task
        await fill
        assert (await client.encode_texts(["now there is room"])).shape == (1, service_encoder.dim)
    t0 = time.monotonic()  # the service is gone: refused at once, not after a timeout
    with pytest.raises(EncoderUnavailable) as e:
        await client.encode_texts(["after the service stopped"])
    assert time.monotonic() - t0 < 2
    assert str(e.value) == "the search service is unreachable, try again shortly"
    await asyncio.to_thread(client.close)
