"""How well the heatmaps point at what a query names, on a fresh shapes gallery.

    python -m index.quality --heatmaps [--model builtin:tiny-shapes] [--count 1000] [--seed 4242]

For every gallery image that holds at least three objects, each object's concept
(`red circle`) is a query. Each read-out's map is upsampled (bilinear) to the picture's
pixels and scored against the object's box (the generator knows it):

- pointing game: the map's peak pixel lies inside the box;
- energy share: the fraction of the map's (non-negative) relevance inside the box.

Baselines in the same run: a uniform random map over the patch grid (upsampled the same
way), and plain attention rollout. The maps come from `heatmap.relevance_maps`, the
function the engine runs on its model thread.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from .heatmap import METHODS, peak_point, relevance_maps
from .overlay import upsample
from .synthetic import Scene, render, scenes

TARGETS = {"pointing": 0.85, "energy_vs_random": 2.0}
SIDE = 128  # the gallery's picture size


@dataclass
class Scores:
    pointing: list[bool] = field(default_factory=list)
    argmax: list[bool] = field(default_factory=list)  # the upsampled map's hottest pixel
    energy: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, heat: np.ndarray, box: tuple[float, float, float, float]) -> None:
        fx, fy = peak_point(heat)
        self.pointing.append(bool(box[0] <= fx < box[2] and box[1] <= fy < box[3]))
        up = upsample(heat, SIDE)
        x0, y0, x1, y1 = (int(round(v * SIDE)) for v in box)
        x0, y0 = max(x0, 0), max(y0, 0)
        py, px = np.unravel_index(int(up.argmax()), up.shape)
        self.argmax.append(bool(x0 <= px < x1 and y0 <= py < y1))
        total = float(up.sum())
        self.energy.append(float(up[y0:y1, x0:x1].sum()) / total if total > 0 else 0.0)

    def summary(self) -> dict[str, float]:
        return {"pointing": float(np.mean(self.pointing)), "argmax": float(np.mean(self.argmax)),
                "energy": float(np.mean(self.energy)),
                "ms_per_map": 1000 * self.seconds / max(len(self.pointing), 1)}


def crowded(count: int, seed: int, least: int = 3) -> list[Scene]:
    return [s for s in scenes(count, seed) if len(s.objects) >= least]


def measure_heatmaps(model: str = "builtin:tiny-shapes", count: int = 1000, seed: int = 4242,
                     device: str = "cpu") -> dict[str, dict[str, float]]:
    """{read-out: {pointing, energy, ms_per_map}} for each method and the random map."""
    from .models import load_model

    loaded = load_model(model, device)
    picked = crowded(count, seed)
    if not picked:
        raise ValueError(f"no image with three objects among {count}; use a larger --count")
    results = {m: Scores() for m in METHODS}
    results["random"] = Scores()
    rng = np.random.default_rng(seed)
    concepts = sorted({c for s in picked for c in s.concepts})
    with torch.inference_mode():
        vecs = F.normalize(loaded.model.encode_text(loaded.tokenizer(concepts).to(loaded.device)).float(), dim=-1)
    by_concept = dict(zip(concepts, vecs.cpu(), strict=True))
    for scene in picked:
        pixels = loaded.preprocess(render(scene, SIDE)).unsqueeze(0)
        targets = torch.stack([by_concept[c] for c in scene.concepts])
        for method in METHODS:
            t0 = time.perf_counter()
            maps = relevance_maps(loaded, pixels, targets, method)
            results[method].seconds += time.perf_counter() - t0
            for heat, obj in zip(maps, scene.objects, strict=True):
                results[method].add(heat, obj.box)
        for obj in scene.objects:
            results["random"].add(rng.random(maps.shape[1:]).astype(np.float32), obj.box)
    return {name: s.summary() for name, s in results.items()} | {"_queries": {"n": len(picked) * 3}}


def report(figures: dict, model: str, count: int, seed: int) -> str:
    n = figures["_queries"]["n"]
    rnd = figures["random"]["energy"]
    lines = [f"model {model}, seed {seed}: {n} single-concept queries on images with 3 objects "
             f"(of {count} generated)",
             f"  {'read-out':10s} {'pointing':>9s} {'argmax':>7s} {'energy':>8s} {'x random':>9s} {'ms/map':>8s}"]
    for name in (*METHODS, "random"):
        f = figures[name]
        ms = f"{f['ms_per_map']:.1f}" if name != "random" else "-"
        lines.append(f"  {name:10s} {f['pointing']:9.3f} {f['argmax']:7.3f} {f['energy']:8.3f} "
                     f"{f['energy'] / rnd:9.2f} {ms:>8s}")
    lines.append(f"  targets: pointing >= {TARGETS['pointing']:.2f}, energy >= "
                 f"{TARGETS['energy_vs_random']:.0f}x random")
    return "\n".join(lines)


def main(model: str, count: int, seed: int) -> None:
    random.seed(seed)
    figures = measure_heatmaps(model, count, seed)
    print(report(figures, model, count, seed))
