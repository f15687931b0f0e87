"""Engine.explain_image: where in a stored picture the model saw a query, and every way
it can be asked for the impossible (one line each, nothing else disturbed)."""

import asyncio
import io
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from index.build import build
from index.encoder import Encoder
from index.engine import Engine
from index.errors import Busy, HeatmapUnavailable, ItemGone, QueryError
from index.models import LoadedModel
from index.modelspec import ModelSpec
from index.overlay import overlay_png
from index.sources import scan_folder
from index.store import Collection, NewItem
from index.synthetic import scenes, write_gallery
from index.texttower import text_parts


@pytest.fixture
async def engine(tmp_path):
    """A small collection of its own (tests delete its files)."""
    write_gallery(tmp_path / "g", 30, seed=21)
    e = Engine.open(tmp_path / "c", model="builtin:tiny-shapes", create=True)
    await build(e.collection, e.encoder, scan_folder(tmp_path / "g"))
    yield e
    e.close()


def scene_of(item, count=30, seed=21):
    return list(scenes(count, seed))[int(Path(item.source).stem.split("_")[1])]


def peak(heat):
    r, c = np.unravel_index(int(heat.argmax()), heat.shape)
    return (c + 0.5) / heat.shape[1], (r + 0.5) / heat.shape[0]


async def test_each_term_has_its_map_and_points_at_its_shape(engine):
    """On every gallery picture of two or more shapes, each term's map peaks nearest to
    the shape it names (checked for two shapes per picture)."""
    several = [(i, s) for i, s in enumerate(scenes(30, 21)) if len(s.objects) >= 2]
    by_source = {Path(it.source).name: it for it in engine.collection.get(list(engine.collection.ids()))}
    checked = 0
    for index, scene in several:
        a, b = scene.concepts[:2]
        item = by_source[f"shape_{index:02d}.png"]
        x = await engine.explain_image(item.id, f"{a}*1 {b}*2")
        assert x.heatmaps.labels == ["query", f"{a}*1", f"{b}*2"]
        assert x.heatmaps.maps.shape == (3, 8, 8) and x.heatmaps.method == "legrad"
        assert np.allclose(x.heatmaps.maps.max(axis=(1, 2)), 1)
        for term, label in ((a, 1), (b, 2)):
            px, py = peak(x.heatmaps.maps[label])
            near = min(scene.objects, key=lambda o: (o.cx - px) ** 2 + (o.cy - py) ** 2)
            checked += near.concept == term
    assert checked >= 0.8 * 2 * len(several) and len(several) >= 8
    png = overlay_png(x)
    im = Image.open(io.BytesIO(png))
    assert im.text["Panels"] == "3" and im.width > 3 * 256


async def test_a_lone_term_is_the_query_and_a_repeat_comes_from_the_cache(engine):
    item_id = engine.collection.ids()[0]
    first = await engine.explain_image(item_id, "green triangle")
    assert first.heatmaps.labels == ["query", "green triangle*1"]
    assert np.array_equal(first.heatmaps.maps[0], first.heatmaps.maps[1])
    again = await engine.explain_image(item_id, "green triangle")
    assert again.cached and np.array_equal(again.heatmaps.maps, first.heatmaps.maps)
    assert Image.open(io.BytesIO(overlay_png(first))).text["Panels"] == "1"


async def test_an_image_term_joins_the_query_map_only(engine, tmp_path):
    item_id = engine.collection.ids()[1]
    picture = (tmp_path / "g" / "shape_03.png").read_bytes()
    x = await engine.explain_image(item_id, "#1*0.5 red circle", [picture])
    assert x.heatmaps.labels == ["query", "red circle*1"]
    assert not np.array_equal(x.heatmaps.maps[0], x.heatmaps.maps[1])


async def test_a_query_without_words_is_refused(engine):
    item_id = engine.collection.ids()[0]
    with pytest.raises(QueryError, match="no text term") as e:
        await engine.explain_image(item_id, "#1", [Path(engine.collection.get([item_id])[0].source)])
    assert "\n" not in str(e.value)


async def test_a_removed_result_says_so(engine):
    item_id = engine.collection.ids()[0]
    await engine.explain_image(item_id, "red circle")
    engine.remove([item_id])
    with pytest.raises(ItemGone, match=f"result {item_id} no longer exists"):
        await engine.explain_image(item_id, "red circle")  # the cache does not hide it


async def test_a_deleted_file_says_so_and_the_rest_still_works(engine):
    a, b = engine.collection.get(list(engine.collection.ids()[:2]))
    Path(a.source).unlink()
    with pytest.raises(ItemGone, match="deleted") as e:
        await engine.explain_image(a.id, "red circle")
    assert a.source in str(e.value) and "\n" not in str(e.value)
    assert (await engine.explain_image(b.id, "red circle")).heatmaps.maps.shape == (2, 8, 8)
    assert len((await engine.search("red circle", k=5)).hits) == 5


async def test_a_dead_url_says_so(engine):
    async def gone(request):
        return web.Response(status=404, text="nope")
    app = web.Application()
    app.router.add_get("/{name}", gone)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        url = str(server.make_url("/photo.png"))
        vec = engine.collection.vectors([engine.collection.ids()[0]])
        (item_id,) = engine.collection.add([NewItem(source=url)], vec)
        with pytest.raises(ItemGone, match="cannot be fetched any more.*404"):
            await engine.explain_image(item_id, "red circle", public_only=False)
        # a member's request never reaches a private address, not even the collection's own
        with pytest.raises(ItemGone, match="cannot be fetched any more"):
            await engine.explain_image(item_id, "red circle")
    finally:
        await server.close()


async def test_a_second_heatmap_meanwhile_is_busy_not_queued(engine):
    ids = list(engine.collection.ids()[:2])
    got = await asyncio.gather(*(engine.explain_image(i, "blue square") for i in ids),
                               return_exceptions=True)
    assert sum(isinstance(g, Busy) for g in got) == 1
    assert sum(not isinstance(g, BaseException) for g in got) == 1
    assert "busy" in str(next(g for g in got if isinstance(g, Busy)))


async def test_a_resnet_model_says_not_available(tmp_path):
    torch.manual_seed(0)
    model = open_clip.CLIP(embed_dim=16, vision_cfg=dict(layers=(1, 1, 1, 1), width=8, image_size=32),
                           text_cfg=dict(context_length=77, vocab_size=49408, width=16, heads=2,
                                         layers=1)).eval()
    loaded = LoadedModel(ModelSpec("test:tiny-resnet", "RN50"), model,
                         open_clip.image_transform(32, is_train=False), open_clip.get_tokenizer("RN50"),
                         torch.device("cpu"), torch.float32, 16, text_parts(model))
    collection = Collection.create(tmp_path / "c", loaded.name, 16, "auto")
    engine = Engine(collection, Encoder(loaded))
    try:
        write_gallery(tmp_path / "g", 3, seed=1)
        await build(engine.collection, engine.encoder, scan_folder(tmp_path / "g"))
        item_id = engine.collection.ids()[0]
        with pytest.raises(HeatmapUnavailable, match="not available for this model"):
            await engine.explain_image(item_id, "red circle")
        # searches still work (near-copies apart: a random model's vectors are all alike)
        assert len((await engine.search("red circle", k=2, collapse=False)).hits) == 2
    finally:
        engine.close()


async def test_a_search_waits_for_one_heatmap_step_at_most(engine, monkeypatch):
    """The model thread's work in order: a search asked while a heatmap is drawn is served
    before the heatmap's next step."""
    import index.explain_image as explain_image

    order: list[str] = []
    forward = engine.encoder._forward
    monkeypatch.setattr(engine.encoder, "_forward",
                        lambda kind, inputs, *way, **how: (order.append(kind),
                                                           forward(kind, inputs, *way, **how))[1])
    stages = explain_image.relevance_stages

    def logged(*args, **kw):
        return [(lambda s=s: (order.append("heat"), s())[1]) for s in stages(*args, **kw)]
    monkeypatch.setattr(explain_image, "relevance_stages", logged)
    item_id = engine.collection.ids()[0]
    heat = asyncio.create_task(engine.explain_image(item_id, "purple circle"))
    while "heat" not in order:
        await asyncio.sleep(0.001)
    asked = len(order)
    await engine.search("yellow triangle number 7", k=3, explain=False)
    served = order.index("text", asked)
    assert order[asked:served].count("heat") <= 1, order
    assert (await heat).heatmaps.maps.shape == (2, 8, 8)
    assert order.count("heat") == 1 + 4 + 1  # embeddings, one step per block, the maps
