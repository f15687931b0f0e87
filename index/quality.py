"""The bundled model's quality on a fresh shapes gallery: the four figures in the README.

    python -m index.quality [--model builtin:tiny-shapes] [--count 1000] [--seed 4242]
    python -m index.quality --heatmaps      (the heatmaps instead: see heatmap_quality.py)
    python -m index.quality --floor         (the relevance floor instead: see measure_floor)

Builds the gallery into a collection with the real build path and runs each query through
`Engine.search` with the real grammar. Each query scores the hits in its top 10 divided by
what the gallery makes achievable, min(10, number of images that satisfy it); a figure is
the mean over its queries.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .synthetic import CONCEPTS, Scene, Shape, render, scenes, write_gallery

TARGETS = {"single": 0.90, "joint": 0.85, "weighted": 0.90, "image+text": 0.60}
FLOOR_TARGETS = {"absent": 0.90, "present": 0.95}
LACKING = 6  # concepts the floor's gallery is built without


@dataclass
class EvalQuery:
    family: str
    text: str  # in the query grammar; #1 is `picture`
    picture: Scene | None
    satisfied: np.ndarray  # bool per gallery image


def query_picture(concept: str, seed: int) -> Scene:
    """A picture of one object, as a member would attach it."""
    rng = random.Random(seed)
    colour, shape = concept.split()
    r = rng.uniform(0.15, 0.28)
    return Scene((Shape(colour, shape, rng.uniform(r, 1 - r), rng.uniform(r, 1 - r), r),),
                 tuple(rng.randint(0, 60) for _ in range(3)))  # type: ignore[arg-type]


def pairs(n: int = 40, seed: int = 7) -> list[tuple[str, str]]:
    return random.Random(seed).sample(list(itertools.permutations(CONCEPTS, 2)), n)


def eval_queries(gallery: list[Scene], n_pairs: int = 40) -> list[EvalQuery]:
    has = {c: np.array([s.contains(c) for s in gallery]) for c in CONCEPTS}
    out = [EvalQuery("single", c, None, has[c]) for c in CONCEPTS]
    for i, (a, b) in enumerate(pairs(n_pairs)):
        out.append(EvalQuery("joint", f"{a}*1 {b}*1", None, has[a] & has[b]))
        out.append(EvalQuery("weighted", f"{a}*1 {b}*2", None, has[b]))
        out.append(EvalQuery("image+text", f"#1 {b}", query_picture(a, 1000 + i), has[a] & has[b]))
    return out


def score(order: np.ndarray, satisfied: np.ndarray, k: int = 10) -> float | None:
    achievable = min(k, int(satisfied.sum()))
    if achievable == 0:
        return None
    return float(satisfied[np.asarray(order[:k], dtype=int)].sum()) / achievable


def summarise(scored: list[tuple[str, float | None]]) -> dict[str, float]:
    families: dict[str, list[float]] = {f: [] for f in TARGETS}
    for family, s in scored:
        if s is not None:
            families[family].append(s)
    return {f: float(np.mean(v)) for f, v in families.items() if v}


async def measure(model: str, count: int, seed: int, workdir: Path,
                  composition: str | None = None, image_scale: float | None = None) -> dict[str, float]:
    from .build import build
    from .engine import Engine, EngineOptions
    from .sources import scan_folder

    folder = workdir / "gallery"
    write_gallery(folder, count, seed)
    gallery = list(scenes(count, seed))
    options = EngineOptions()
    if composition:
        options.image_composition = composition
    if image_scale is not None:
        options.image_scale = image_scale
    engine = Engine.open(workdir / "collection", model=model, create=True, options=options)
    try:
        await build(engine.collection, engine.encoder, scan_folder(folder))
        scored = []
        for q in eval_queries(gallery):
            images = [render(q.picture)] if q.picture else []
            result = await engine.search(q.text, images, k=10, explain=False)
            order = [int(Path(h.item.source).stem.split("_")[1]) for h in result.hits]
            scored.append((q.family, score(np.array(order), q.satisfied)))
        return summarise(scored)
    finally:
        engine.close()


def lacking_gallery(count: int, seed: int, n_lack: int = LACKING) -> tuple[list[Scene], list[str]]:
    """`count` scenes of the seed's stream that show none of `n_lack` concepts (drawn from
    the seed), and those concepts."""
    lack = random.Random(seed).sample(CONCEPTS, n_lack)
    kept = [s for s in scenes(count * 4, seed) if not any(s.contains(c) for c in lack)]
    return kept[:count], lack


def floor_queries() -> list[tuple[str, str]]:
    """(concept, query text): every concept in every phrasing the model was trained on."""
    from .synthetic import _TEMPLATES_ONE
    return [(c, t.format(c)) for c in CONCEPTS for t in _TEMPLATES_ONE]


async def measure_floor(model: str, count: int, seed: int, workdir: Path,
                        collapse: bool = False) -> dict[str, float]:
    """The floor on a gallery built to lack some concepts, each concept asked in each
    phrasing. absent: the share of queries for a missing concept answered "no good match"
    (their best result is under the floor); present: the share of a present concept's
    right results in its top 10 that stay over the floor (all queries pooled).
    collapse: near-copies grouped as the bot shows them (the bundled model sees most
    pictures of one shape as near-copies, so the top 10 groups reach much deeper)."""
    from .build import build
    from .engine import Engine
    from .sources import scan_folder

    gallery, lack = lacking_gallery(count, seed)
    folder = workdir / "lacking"
    folder.mkdir(parents=True, exist_ok=True)
    width = len(str(len(gallery)))
    for i, scene in enumerate(gallery):
        render(scene).save(folder / f"shape_{i:0{width}d}.png")
    engine = Engine.open(workdir / "floor-collection", model=model, create=True)
    try:
        await build(engine.collection, engine.encoder, scan_folder(folder))
        floor = await engine.floor.recalibrate()
        answered_none, absent, kept, right = 0, 0, 0, 0
        for concept, text in floor_queries():
            result = await engine.search(text, k=10, explain=False, collapse=collapse)
            if concept in lack:
                absent += 1
                answered_none += all(h.weak for h in result.hits)
                continue
            for h in result.hits:
                if gallery[int(Path(h.item.source).stem.split("_")[1])].contains(concept):
                    right += 1
                    kept += not h.weak
        return {"absent": answered_none / max(absent, 1), "present": kept / max(right, 1),
                "floor": floor.value if floor else float("nan"), "absent queries": absent,
                "right results": right, "lacking": ", ".join(lack),
                **await _calibration_sources(engine, lack)}
    finally:
        engine.close()


def reposted(img, j: int) -> bytes:
    """The j-th posting of a picture: as drawn (PNG), then re-encoded (resized, JPEG)."""
    import io
    scale, quality = [(1.0, None), (0.8, 75), (1.25, 90)][j]
    if scale != 1.0:
        img = img.resize((round(img.width * scale), round(img.height * scale)))
    buf = io.BytesIO()
    img.save(buf, "JPEG" if quality else "PNG", **({"quality": quality} if quality else {}))
    return buf.getvalue()


async def measure_copies(model: str, count: int, seed: int, workdir: Path, k: int = 5,
                         pages: int = 3) -> dict[str, float]:
    """A library where every picture is posted three times (re-encoded): for each concept,
    colour and shape query, its first `pages` pages of `k`: the share of pages that show k
    distinct pictures, and of queries where no picture shows on two of its pages."""
    from .engine import Engine
    from .store import NewItem
    from .synthetic import COLOURS, SHAPES

    gallery = list(scenes(count, seed))
    engine = Engine.open(workdir / "reposts", model=model, create=True)
    try:
        for i0 in range(0, count, 100):
            chunk = range(i0, min(count, i0 + 100))
            items = [NewItem(source=f"/reposts/{i}-{j}.png") for i in chunk for j in range(3)]
            data = [reposted(render(gallery[i]), j) for i in chunk for j in range(3)]
            await engine.add_images(items, data)
        distinct = total = clean = 0
        queries = [*CONCEPTS, *COLOURS, *SHAPES]
        for text in queries:
            shown: list[str] = []
            for page in range(pages):
                result = await engine.search(text, k=k, offset=page * k, explain=False)
                pictures = [h.item.source.split("-")[0] for h in result.hits]
                total += 1
                distinct += len(set(pictures)) == len(pictures) == k
                shown += pictures
            clean += len(set(shown)) == len(shown)
        return {"pages": distinct / total, "queries": clean / len(queries),
                "n_pages": total, "n_queries": len(queries)}
    finally:
        engine.close()


UNRELATED = ("a dog", "a cat", "a car", "a horse", "a bowl of soup", "a beach at sunset",
             "tokyo tower at night", "a person smiling")


async def _calibration_sources(engine, lack: list[str]) -> dict[str, str]:
    """What each candidate calibration source would see (README: why the floor is
    calibrated as it is): the pictures' nearest-neighbour cosines, unrelated prompts'
    best scores, the absent concepts' best scores and the present concepts' top 10."""
    x = engine.collection.vectors()
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    g = x @ x.T
    np.fill_diagonal(g, -1.0)

    async def best(texts, top=1):
        t = await engine.embed_texts(list(texts))
        s = np.sort((t / np.linalg.norm(t, axis=1, keepdims=True)) @ x.T, axis=1)[:, -top:]
        return f"{s.min():.3f}-{s.max():.3f}"

    present = [c for c in CONCEPTS if c not in lack]
    return {"nearest neighbour": f"median {np.median(g.max(axis=1)):.3f}",
            "unrelated best": await best(UNRELATED), "absent best": await best(lack),
            "present top 10": await best(present, 10)}


def main(argv: list[str] | None = None) -> None:
    import argparse
    import asyncio
    import tempfile

    p = argparse.ArgumentParser(description="Measure a model's quality on a fresh shapes gallery.")
    p.add_argument("--model", default="builtin:tiny-shapes")
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--seed", type=int, default=4242, help="a seed the model never saw in training")
    p.add_argument("--composition", default=None, help="image-term composition (default: engine's)")
    p.add_argument("--image-scale", type=float, default=None, help="image-term weight factor")
    p.add_argument("--heatmaps", action="store_true",
                   help="measure the heatmaps instead (pointing game, energy share)")
    p.add_argument("--floor", action="store_true",
                   help=f"measure the relevance floor instead, on a gallery without {LACKING} concepts")
    p.add_argument("--collapse", action="store_true",
                   help="with --floor: near-copies grouped (as the bot pages them)")
    a = p.parse_args(argv)
    if a.floor:
        with tempfile.TemporaryDirectory() as tmp:
            got = asyncio.run(measure_floor(a.model, a.count, a.seed, Path(tmp), a.collapse))
        print(f"model {a.model}, {a.count} images without {got['lacking']}, seed {a.seed}, "
              f"floor {got['floor']:.3f}, near-copies {'grouped' if a.collapse else 'apart'}")
        print(f"  absent   {got['absent']:.3f}  answered 'no good match' "
              f"({got['absent queries']} queries; target >= {FLOOR_TARGETS['absent']:.2f})")
        print(f"  present  {got['present']:.3f}  of right top-10 results kept "
              f"({got['right results']} results; target >= {FLOOR_TARGETS['present']:.2f})")
        print(f"  calibration sources: picture-to-nearest-picture cosine {got['nearest neighbour']}; "
              f"best score of unrelated prompts {got['unrelated best']}, of the absent concepts "
              f"{got['absent best']}; present concepts' top 10 {got['present top 10']}")
        with tempfile.TemporaryDirectory() as tmp:
            cp = asyncio.run(measure_copies(a.model, 300, a.seed, Path(tmp)))
        print(f"every picture posted 3 times (300 pictures, 900 items): {cp['pages']:.3f} of "
              f"{cp['n_pages']} pages of 5 show 5 distinct pictures (target 1.00); "
              f"{cp['queries']:.3f} of {cp['n_queries']} queries show no picture twice over 3 pages")
        return
    if a.heatmaps:
        from .heatmap_quality import main as heatmaps
        heatmaps(a.model, a.count, a.seed)
        return
    with tempfile.TemporaryDirectory() as tmp:
        figures = asyncio.run(measure(a.model, a.count, a.seed, Path(tmp), a.composition, a.image_scale))
    print(f"model {a.model}, {a.count} images, seed {a.seed}, "
          f"composition {a.composition or 'default'}, image scale {a.image_scale or 'default'}")
    for name, value in figures.items():
        print(f"  {name:11s} {value:.3f}  (target >= {TARGETS[name]:.2f})")


if __name__ == "__main__":
    main()
