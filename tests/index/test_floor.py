"""The relevance floor (index/floor.py) and near-copies (index/nearcopies.py)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from pictures import encoded

from index import floor as floormod
from index.floor import Floor, FloorKeeper, calibrate, from_record
from index.nearcopies import Ranked, group
from index.quality import lacking_gallery
from index.store import NewItem
from index.synthetic import render

# -- calibration on made-up scores: where the floor lands ----------------------------------


def _setup(present_score: float, absent_score: float, n_concepts=8, n_absent=4, per=30, dim=32):
    """Unit concept directions; pictures of the present concepts scoring `present_score`
    with their own prompt; the absent concepts' prompts reach `absent_score` at best."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0][:, : n_concepts + 1].T
    rows = []
    for c in range(n_concepts - n_absent):
        noise = basis[n_concepts]
        for _ in range(per):
            rows.append(present_score * basis[c] + np.sqrt(1 - present_score**2) * noise)
    for c in range(n_concepts - n_absent, n_concepts):  # one picture close to each absent one
        rows.append(absent_score * basis[c] + np.sqrt(1 - absent_score**2) * basis[0])
    concepts = np.repeat(basis[:n_concepts], len(floormod.TEMPLATES), axis=0)
    return np.array(rows), concepts, basis[n_concepts:]


def test_the_floor_lies_between_absent_and_present_concepts():
    sample, concepts, nonsense = _setup(0.7, 0.4)
    f = calibrate(sample, concepts, nonsense, 1000, "m")
    assert f.basis == "absent concepts" and f.n_absent == 4 and f.n_present >= 4
    assert 0.4 < f.value < 0.7
    assert f.value == pytest.approx((f.absent + f.present) / 2)


def test_where_absent_and_present_overlap_the_present_matches_are_kept():
    sample, concepts, nonsense = _setup(0.5, 0.62)
    f = calibrate(sample, concepts, nonsense, 1000, "m")
    assert f.absent > f.present and f.value == f.present


def test_without_absent_concepts_meaningless_prompts_stand_in():
    sample, concepts, nonsense = _setup(0.7, 0.4, n_absent=0)
    f = calibrate(sample, concepts, nonsense, 1000, "m")
    assert f.basis == "meaningless prompts" and f.n_absent == 0


def test_a_stored_floor_survives_json_and_garbage_means_none():
    f = Floor(0.5, 200, "m", 0.4, 0.6, "absent concepts", 10, 5)
    assert from_record(json.dumps(f.as_json())) == f
    for bad in ["{", "[]", json.dumps({**f.as_json(), "version": 99}),
                json.dumps({**f.as_json(), "value": "x"}), None, ""]:
        assert from_record(bad) is None
    assert not f.stale(399, "m") and f.stale(400, "m") and f.stale(200, "other")


# -- near-copies -------------------------------------------------------------------------


def test_groups_by_hash_and_cosine_and_do_not_change_with_depth():
    rng = np.random.default_rng(1)
    a, b, c = rng.standard_normal((3, 16))
    close = a + 0.01 * rng.standard_normal(16)  # a re-encoded copy of a

    def r(name, v, score, h=""):
        return Ranked(SimpleNamespace(name=name, content_hash=h), score, v)

    ranked = [r("a", a, 0.9, "ha"), r("b", b, 0.8), r("a2", close, 0.79), r("c", c, 0.7, "hc"),
              r("a3", -a, 0.6, "ha")]  # same bytes elsewhere: grouped by its hash alone
    groups = group(ranked)
    assert [g.leader.item.name for g in groups] == ["a", "b", "c"]
    assert [x.item.name for x in groups[0].copies] == ["a2", "a3"]
    for depth in range(1, len(ranked)):  # a shallower read: the same leaders, in order
        assert [g.leader.item.name for g in group(ranked[:depth])] == \
            [g.leader.item.name for g in groups][: len(group(ranked[:depth]))]


# -- the floor kept with the collection, in both stores -----------------------------------


def _engine(store, path, encoder, create: bool = True):
    from index.engine import Engine
    coll = (store.create(path, "builtin:tiny-shapes", encoder.dim) if create
            else store.open(path))
    return Engine(coll, encoder, owns_encoder=False)


async def _add(engine, scenes, start: int):
    items = [NewItem(source=f"/lacking/{start + i}.png") for i in range(len(scenes))]
    report = await engine.add_images(items, [encoded(render(s)) for s in scenes])
    assert len(report.ids) == len(scenes)


async def test_the_floor_is_stored_and_recalibrated_when_the_collection_doubles(
        store, tmp_path, monkeypatch, encoder):
    monkeypatch.setattr(FloorKeeper, "RECHECK_S", 0.0)
    monkeypatch.setattr(floormod, "MIN_ITEMS", 40)  # small collections keep the test fast
    scenes, lack = lacking_gallery(80, 11)
    path = tmp_path / "c"
    engine = _engine(store, path, encoder)
    try:
        await _add(engine, scenes[:20], 0)
        small = await engine.search(lack[0], k=5, explain=False)
        assert small.floor is None and not any(h.weak for h in small.hits)  # too few to tell
        await _add(engine, scenes[20:40], 20)
        absent = await engine.search(lack[0], k=5, explain=False)
        assert absent.floor is not None and all(h.weak for h in absent.hits)
        stored = from_record(engine.collection.read_record("floor"))
        assert stored.items == 40 and stored.value == pytest.approx(absent.floor)
        await _add(engine, scenes[40:79], 40)  # 79 < 2 x 40: the same floor
        await engine.search(lack[0], k=5, explain=False)
        assert from_record(engine.collection.read_record("floor")).items == 40
        await _add(engine, scenes[79:80], 79)  # 80 = 2 x 40: calibrated again
        await engine.search(lack[0], k=5, explain=False)
        latest = from_record(engine.collection.read_record("floor"))
        assert latest.items == 80
    finally:
        engine.close()
    # another process opening the collection reads the floor; it does not calibrate again
    calibrations = []
    monkeypatch.setattr(floormod, "calibrate", lambda *a: calibrations.append(a))
    again = _engine(store, path, encoder, create=False)
    try:
        present = next(c for c in floormod.vocabulary("builtin:tiny-shapes") if c not in lack)
        result = await again.search(present, k=5, explain=False)
        assert result.floor == pytest.approx(latest.value) and not calibrations
        assert not result.hits[0].weak
    finally:
        again.close()


async def test_a_two_term_query_answers_with_pictures_that_have_its_main_term(
        demo_collection, tmp_path):
    """The README's first query on the demo collection: its best pictures are answers. (The
    floor asked every positive term to reach it, which a picture of both shapes never does:
    the whole page read 'no good match'.)"""
    import shutil

    from index.engine import Engine
    shutil.copytree(demo_collection, tmp_path / "c")  # the search writes the floor record
    engine = Engine.open(tmp_path / "c")
    try:
        both = await engine.search("red circle*1 blue square*2", k=5, explain=False)
        assert both.floor is not None and not both.hits[0].weak, both.hits
        alone = await engine.search("blue square", k=5, explain=False)
        assert both.floor < alone.floor  # the floor of its composed vector, not the term's
    finally:
        engine.close()


def test_the_main_term_at_the_floor_the_others_at_the_average():
    f = 0.6
    x, y = np.eye(4)[0], np.eye(4)[1]
    terms = [SimpleNamespace(weight=1.0, vector=x), SimpleNamespace(weight=2.0, vector=y)]
    background = 0.1 * x + 0.2 * y
    # the heaviest term (y) at f, x at the average picture's 0.1; the composed norm is sqrt(5)
    assert floormod.query_floor(f, terms, background) == pytest.approx((2 * f + 0.1) / 5 ** 0.5)
    same = [SimpleNamespace(weight=1.0, vector=x), SimpleNamespace(weight=1.0, vector=y)]
    # equally heavy: the main term that gives the lower floor
    assert floormod.query_floor(f, same, background) == pytest.approx(min(f + 0.2, f + 0.1) / 2 ** 0.5)


def test_milvus_views_keep_their_own_floor_records(milvus_uri, tmp_path):
    from twostores import Stores
    store = Stores("milvus", milvus_uri).create(tmp_path / "shared", "builtin:tiny-shapes", 16)
    try:
        one, two = store.view(1), store.view(2)
        one.write_record("floor", '{"a": 1}')
        assert one.read_record("floor") == '{"a": 1}'
        assert two.read_record("floor") is None and store.read_record("floor") is None
    finally:
        store.close()


# -- near-copies through the engine: pages of distinct pictures -----------------------------


async def test_reposts_collapse_into_one_result_and_never_come_back_on_a_later_page(
        store, tmp_path, encoder):
    scenes, _ = lacking_gallery(30, 3)
    engine = _engine(store, tmp_path / "reposts", encoder)
    try:
        items, data = [], []
        for i, s in enumerate(scenes):  # each picture three times: as drawn, re-encoded twice
            img = render(s)
            for j, blob in enumerate([encoded(img), encoded(img, 0.8, 75), encoded(img, 1.25, 90)]):
                items.append(NewItem(source=f"/reposts/{i}-{j}.png", content_hash=f"h{i}-{j}"))
                data.append(blob)
        await engine.add_images(items, data)
        seen: list[str] = []
        offset, more = 0, True
        while more:
            page = await engine.search("blue", k=5, offset=offset, explain=False)
            originals = [h.item.source.split("-")[0] for h in page.hits]
            assert len(set(originals)) == len(originals)  # a page of distinct pictures
            for h in page.hits:
                seen += [h.item.source] + [c.item.source for c in h.copies]
            offset, more = offset + 5, page.has_more
        assert sorted(seen) == sorted(it.source for it in items)  # each once, none twice
        first = await engine.search("blue", k=5, explain=False)
        assert any(h.copies for h in first.hits)
        assert len((await engine.search("blue", k=5, explain=False, collapse=False)).hits) == 5
    finally:
        engine.close()


# -- the CLI: weak results hidden, one line about them, --weak, --json ----------------------


@pytest.fixture(scope="module")
def lacking(tmp_path_factory, encoder):
    """A folder collection of 100 pictures without 6 concepts, picture 0 also twice re-encoded."""
    import asyncio

    from twostores import Stores
    scenes, lack = lacking_gallery(100, 8)
    path = tmp_path_factory.mktemp("lacking") / "c"
    engine = _engine(Stores("faiss", ""), path, encoder)
    items = [NewItem(source=f"/lacking/{i}.png") for i in range(100)]
    data = [encoded(render(s)) for s in scenes]
    items += [NewItem(source="/lacking/0-b.png"), NewItem(source="/lacking/0-c.png")]
    data += [encoded(render(scenes[0]), 0.8, 75), encoded(render(scenes[0]), 1.25, 90)]
    asyncio.run(engine.add_images(items, data))

    async def weak_first(concept):  # (the floor's quality is measured by index.quality)
        return (await engine.search(concept, k=1, explain=False)).hits[0].weak
    absent = next(c for c in lack if asyncio.run(weak_first(c)))
    engine.close()
    return path, absent, scenes[0].concepts[0]


def _cli(monkeypatch, capsys, encoder, path, *args) -> tuple[int, str]:
    from twostores import Stores

    import index.__main__ as cli
    monkeypatch.setattr(cli, "_open_engine", lambda a, create=False: _engine(
        Stores("faiss", ""), path, encoder, create=False))
    code = cli.main(["search", "--index", str(path), *map(str, args)])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out


def test_cli_hides_weak_results_in_one_line_and_shows_them_with_weak(
        lacking, monkeypatch, capsys, encoder):
    path, absent, _ = lacking
    code, out = _cli(monkeypatch, capsys, encoder, path, "-k", 3, absent)
    lines = out.splitlines()
    assert code == 0 and lines[-1].startswith(f"no good match for {absent}*1: the best score")
    assert "--weak shows the 3 weak matches" in lines[-1]
    assert not any("/lacking/" in ln for ln in lines)
    code, out = _cli(monkeypatch, capsys, encoder, path, "-k", 3, "--weak", absent)
    assert code == 0 and sum(ln.endswith("(weak)") for ln in out.splitlines()) == 3
    assert "no good match" not in out


def test_cli_weak_with_nothing_weak_says_so_in_one_line(lacking, monkeypatch, capsys, encoder):
    path, _, present = lacking
    code, out = _cli(monkeypatch, capsys, encoder, path, "-k", 1, "--weak", present)
    assert code == 0 and "(weak)" not in out
    assert out.splitlines()[-1].startswith("--weak: nothing to add, no result here is under the floor")
    images = tmp = path.parent / "q.png"
    tmp.write_bytes(encoded(render(lacking_gallery(1, 99)[0][0])))
    code, out = _cli(monkeypatch, capsys, encoder, path, "-k", 1, "--weak", "--image", images, "#1")
    assert out.splitlines()[-1] == "--weak: nothing to add, queries with images have no relevance floor"


def test_cli_json_marks_weak_results_and_lists_near_copies(lacking, monkeypatch, capsys, encoder):
    path, absent, present = lacking
    _, out = _cli(monkeypatch, capsys, encoder, path, "-k", 100, "--json", present)
    got = json.loads(out)
    assert got["floor"] > 0 and all(r["weak"] is False or r["score"] < got["floor"]
                                    for r in got["results"])
    # picture 0 and its two re-encodes (perceptual hashes a few bits apart): one result
    # listing the other two; the 99 other pictures are results of their own
    zero = {"/lacking/0.png", "/lacking/0-b.png", "/lacking/0-c.png"}
    copied = [r for r in got["results"] if r["copies"]]
    assert [{r["source"], *(c["source"] for c in r["copies"])} for r in copied] == [zero]
    assert len(got["results"]) == 100
    _, out = _cli(monkeypatch, capsys, encoder, path, "-k", 2, "--json", absent)
    assert [r["weak"] for r in json.loads(out)["results"]] == [True, True]
