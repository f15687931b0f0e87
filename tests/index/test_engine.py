import numpy as np
import pytest
from PIL import Image

from index.engine import Engine
from index.errors import ClipfindError, ModelMismatch, QueryError
from index.ranking import WeightedVector, compose


@pytest.fixture
def engine(store, demo_of):
    """The demo collection in each store (FAISS+SQLite, Milvus Lite): the same answers."""
    e = store.engine(demo_of(store))
    yield e
    e.close()


async def test_scores_are_the_cosine_with_the_composed_query(engine):
    result = await engine.search("red circle*1 blue square*2", k=10)
    assert [h.rank for h in result.hits] == list(range(1, 11))
    scores = [h.score for h in result.hits]
    assert scores == sorted(scores, reverse=True)
    t = await engine.embed_texts(["red circle", "blue square"])
    q = compose([WeightedVector(t[0], 1, "text"), WeightedVector(t[1], 2, "text")])
    stored = engine.collection.vectors([h.id for h in result.hits])
    assert np.allclose(stored @ q, scores, atol=2e-3)
    everything = engine.collection.vectors() @ q
    assert scores[0] == pytest.approx(everything.max(), abs=2e-3)


async def test_pages_are_disjoint_and_the_last_page_says_so(engine):
    n = len(engine.collection)
    seen = []
    offset = 0
    while True:
        r = await engine.search("green triangle", k=25, offset=offset, explain=False)
        # a result and the near-copies shown as it (index/nearcopies.py)
        seen += [h.id for h in r.hits] + [c.id for h in r.hits for c in h.copies]
        if not r.has_more:
            break
        offset += 25
    assert len(seen) == len(set(seen)) == n
    beyond = await engine.search("green triangle", k=25, offset=n + 5)
    assert beyond.hits == [] and not beyond.has_more


async def test_query_image_itself_is_left_out_unless_asked(engine, demo_gallery):
    picture = (demo_gallery / "shape_007.png").read_bytes()
    result = await engine.search("#1", [picture], k=5)
    assert all(not h.item.source.endswith("shape_007.png") for h in result.hits)
    kept = await engine.search("#1", [picture], k=5, keep_near_duplicates=True)
    assert kept.hits[0].item.source.endswith("shape_007.png")
    assert kept.hits[0].score > 0.99


async def test_unreferenced_attachment_joins_the_text(engine):
    img = Image.new("RGB", (64, 64), (200, 30, 30))
    result = await engine.search("blue square", [img], k=3)
    assert [t.kind for t in result.query.terms] == ["text", "image"]
    assert result.attention[0] and [w for w, _ in result.attention[0]] == ["blue", "square"]


async def test_bad_query_is_a_query_error(engine):
    with pytest.raises(QueryError, match="usage"):
        await engine.search("dog*-1")


def test_opening_with_another_model_is_refused(store, demo_of):
    with pytest.raises(ModelMismatch, match="builtin:tiny-shapes") as e:
        store.engine(demo_of(store), model="ViT-B-32:random")
    assert "ViT-B-32" in str(e.value) and "\n" not in str(e.value)


def test_unknown_store_is_refused(tmp_path):
    with pytest.raises(ClipfindError, match="unknown store 'redis'"):
        Engine.open(tmp_path / "c", store="redis")


async def test_real_architecture_goes_through_the_same_path(tmp_path, demo_gallery):
    """ViT-B-32 with random weights: same encoder, preprocessing and store."""
    from index.build import build
    from index.engine import EngineOptions
    from index.sources import scan_folder
    # one torch thread: its warm-up times half the ways (the path under test is the same)
    engine = Engine.open(tmp_path / "vit", model="ViT-B-32:random", create=True,
                         options=EngineOptions(threads=1))
    try:
        records = scan_folder(demo_gallery)[:6]
        report = await build(engine.collection, engine.encoder, records)
        assert report.added == 6 and engine.collection.manifest.dim == 512
        result = await engine.search("a photo of a cat", k=3)
        assert len(result.hits) == 3
        assert result.attention[0] and len(result.attention[0]) == 5
    finally:
        engine.close()
