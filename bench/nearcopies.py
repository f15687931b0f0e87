"""How far apart copies and distinct pictures are: perceptual-hash bits and model cosine.

    python bench/nearcopies.py [--seeds 4242 777 1234] [--count 300] [--photos 100]

Chooses the Hamming threshold of index/nearcopies.py (copies resized, re-encoded, lightly
cropped against distinct pictures) and shows why the cosine rule alone fails with the
bundled model. Galleries: the shapes gallery of each seed (128-px PNGs, as
index.quality's reposted library) and photo-like pictures (bench.encoder.make_folder
photo=True: 640×480 shapes with pixel noise, JPEG q85). For each picture: its copies'
distances from it, and its nearest distinct picture's distance (and the distances of the
distinct pairs the bundled model puts at cosine >= 0.98). Prints a table per gallery
(bench/RESULTS.md, "Near-copies by perceptual hash").
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from index.images import open_image  # noqa: E402
from index.nearcopies import COPY_COSINE  # noqa: E402
from index.phash import hamming, phash  # noqa: E402


def _jpeg(img: Image.Image, quality: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return open_image(buf.getvalue())


def _scaled(img: Image.Image, s: float) -> Image.Image:
    return img.resize((max(1, round(img.width * s)), max(1, round(img.height * s))))


def _crop(img: Image.Image, share: float) -> Image.Image:
    dx, dy = round(img.width * share), round(img.height * share)
    return img.crop((dx, dy, img.width - dx, img.height - dy))


COPIES = {
    "0.8× JPEG q75": lambda im: _jpeg(_scaled(im, 0.8), 75),
    "1.25× JPEG q90": lambda im: _jpeg(_scaled(im, 1.25), 90),
    "0.5× JPEG q60": lambda im: _jpeg(_scaled(im, 0.5), 60),
    "WebP q70": lambda im: _webp(im),
    "crop 3% a side": lambda im: _jpeg(_crop(im, 0.03), 85),
    "crop 5% a side": lambda im: _jpeg(_crop(im, 0.05), 85),
    "crop 10% a side": lambda im: _jpeg(_crop(im, 0.10), 85),
}


def _webp(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "WEBP", quality=70)
    return open_image(buf.getvalue())


def galleries(seeds: list[int], count: int, photos: int, tmp: Path,
              extra: list[Path] | None = None) -> dict[str, list[Image.Image]]:
    from bench.encoder import make_folder
    from index.synthetic import render, scenes
    out = {f"shapes seed {s}": [render(sc) for sc in scenes(count, s)] for s in seeds}
    if photos:
        make_folder(tmp / "photos", photos, photo=True, seed=5)
        out["photo-like"] = [open_image(p) for p in sorted((tmp / "photos").iterdir())]
    if extra:  # (the same file twice is one picture)
        unique = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in extra}
        out[f"given files ({len(unique)} distinct)"] = [open_image(p) for p in unique.values()]
    return out


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


async def measure(pictures: list[Image.Image], encoder) -> dict[str, list]:
    hashes = [phash(im) or "0" * 64 for im in pictures]
    v = _unit(await encoder.encode_images(pictures)) if encoder else None
    rows: dict[str, list] = {}
    for name, make in COPIES.items():
        copies = [make(im) for im in pictures]
        d = [hamming(h, phash(c) or "0" * 64) for h, c in zip(hashes, copies, strict=True)]
        cos = None
        if v is not None:
            cos = np.sum(v * _unit(await encoder.encode_images(copies)), axis=1)
        rows[name] = [np.array(d), cos]
    dist = np.array([[hamming(a, b) for b in hashes] for a in hashes])
    np.fill_diagonal(dist, 999)
    rows["nearest distinct picture"] = [dist.min(axis=1), None]
    if v is not None:
        g = v @ v.T
        np.fill_diagonal(g, -1)
        close = np.triu(g >= COPY_COSINE, 1)
        rows["nearest distinct picture"][1] = g.max(axis=1)
        rows[f"distinct pairs at cosine ≥ {COPY_COSINE}"] = [dist[close], g[close]]
    return rows


def _q(a: np.ndarray | None) -> str:
    if a is None or not len(a):
        return "-"
    fmt = "{:.0f}" if a.dtype.kind in "iu" else "{:.3f}"
    qs = np.percentile(a, [0, 1, 5, 50, 95, 99, 100])
    return " / ".join(fmt.format(q) for q in qs)


async def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="*", default=[4242, 777, 1234])
    p.add_argument("--count", type=int, default=300)
    p.add_argument("--photos", type=int, default=100)
    p.add_argument("--no-model", action="store_true", help="hash distances only")
    p.add_argument("--files", type=Path, nargs="*", default=[],
                   help="more pictures to measure as a gallery of their own (distinct files)")
    a = p.parse_args(argv)
    encoder = None
    if not a.no_model:
        from index.encoder import Encoder
        from index.models import load_model
        encoder = Encoder(load_model("builtin:tiny-shapes", device="cpu"))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for gname, pictures in galleries(a.seeds, a.count, a.photos, Path(tmp), a.files).items():
                rows = await measure(pictures, encoder)
                print(f"\n{gname} ({len(pictures)} pictures): min / 1% / 5% / median / 95% / 99% / max")
                print("| pair | Hamming bits | cosine (bundled model) | pairs |")
                print("|---|---|---|---|")
                for name, (d, cos) in rows.items():
                    print(f"| {name} | {_q(d)} | {_q(cos)} | {len(d)} |")
    finally:
        if encoder is not None:
            encoder.close()


if __name__ == "__main__":
    asyncio.run(main())
