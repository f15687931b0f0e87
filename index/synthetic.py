"""The synthetic shapes gallery: coloured circles, squares and triangles on dark backgrounds.

It serves three jobs: the demo collection, test data with known ground truth, and the
training data of the bundled `builtin:tiny-shapes` model. Everything is deterministic
for a given seed.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (50, 90, 230),
    "yellow": (235, 215, 40),
    "purple": (150, 60, 200),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
DEMO_COUNT, DEMO_SEED = 300, 0  # the demo collection's gallery (index.demo)
CONCEPTS = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)

_TEMPLATES_ONE = (
    "{}",
    "a {}",
    "a picture of a {}",
    "a photo of a {}",
    "an image with a {}",
    "a {} on a dark background",
    "there is a {}",
)
_JOINERS = (" and a ", ", a ", " next to a ", " with a ")
SQUARE_SIDE = 0.88  # a square's half side, in units of its r
TRIANGLE_BASE = 0.8  # a triangle's base below its centre, in units of its r


@dataclass(frozen=True)
class Shape:
    colour: str
    shape: str
    cx: float  # centre, in [0, 1] of the image size
    cy: float
    r: float  # half the extent, in [0, 1] of the image size

    @property
    def concept(self) -> str:
        return f"{self.colour} {self.shape}"

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) of the drawn shape, in [0, 1] of the image size."""
        if self.shape == "square":
            s = self.r * SQUARE_SIDE
            return (self.cx - s, self.cy - s, self.cx + s, self.cy + s)
        if self.shape == "triangle":
            return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r * TRIANGLE_BASE)
        return (self.cx - self.r, self.cy - self.r, self.cx + self.r, self.cy + self.r)


@dataclass(frozen=True)
class Scene:
    objects: tuple[Shape, ...]
    background: tuple[int, int, int]

    @property
    def concepts(self) -> list[str]:
        return [o.concept for o in self.objects]

    def contains(self, concept: str) -> bool:
        return concept in self.concepts


def random_scene(rng: random.Random) -> Scene:
    """1-3 distinct colour/shape objects at random sizes and positions, barely overlapping."""
    n = rng.choice((1, 1, 2, 2, 3))
    concepts = rng.sample(CONCEPTS, n)
    placed: list[Shape] = []
    for concept in concepts:
        colour, shape = concept.split()
        for _ in range(50):
            r = rng.uniform(0.10, 0.22) if n > 1 else rng.uniform(0.12, 0.30)
            cx, cy = rng.uniform(r, 1 - r), rng.uniform(r, 1 - r)
            if all((cx - o.cx) ** 2 + (cy - o.cy) ** 2 > (0.9 * (r + o.r)) ** 2 for o in placed):
                break
        placed.append(Shape(colour, shape, cx, cy, r))
    bg = tuple(rng.randint(0, 60) for _ in range(3))
    return Scene(tuple(placed), bg)  # type: ignore[arg-type]


def render(scene: Scene, size: int = 128) -> Image.Image:
    img = Image.new("RGB", (size, size), scene.background)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        x, y, r = o.cx * size, o.cy * size, o.r * size
        fill = COLOURS[o.colour]
        if o.shape == "circle":
            draw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        elif o.shape == "square":
            s = r * SQUARE_SIDE
            draw.rectangle((x - s, y - s, x + s, y + s), fill=fill)
        else:
            base = y + r * TRIANGLE_BASE
            draw.polygon(((x, y - r), (x - r, base), (x + r, base)), fill=fill)
    return img


def caption(concepts: list[str], rng: random.Random) -> str:
    """One caption naming the given concepts, in a randomly chosen phrasing."""
    concepts = list(concepts)
    rng.shuffle(concepts)
    template = rng.choice(_TEMPLATES_ONE)
    if len(concepts) == 1:
        return template.format(concepts[0])
    joined = concepts[0]
    for c in concepts[1:]:
        joined += rng.choice(_JOINERS) + c
    return template.format(joined)


def partial_caption(scene: Scene, rng: random.Random) -> str:
    """A caption naming a random non-empty subset of the objects, as real alt-texts do."""
    k = rng.randint(1, len(scene.objects))
    return caption(rng.sample(scene.concepts, k), rng)


def scenes(count: int, seed: int) -> Iterator[Scene]:
    rng = random.Random(seed)
    for _ in range(count):
        yield random_scene(rng)


def write_gallery(out: Path, count: int, seed: int, size: int = 128) -> Path:
    """Write `count` PNG images and `captions.csv` (file, caption, objects) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed + 1)
    rows = []
    width = len(str(max(count - 1, 1)))
    for i, scene in enumerate(scenes(count, seed)):
        name = f"shape_{i:0{width}d}.png"
        render(scene, size).save(out / name)
        rows.append((name, caption(scene.concepts, rng), ";".join(scene.concepts)))
    path = out / "captions.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(("file", "caption", "objects"))
        w.writerows(rows)
    return path


def read_gallery(folder: Path) -> list[tuple[str, list[str]]]:
    """(file name, concepts) for each row of a gallery's captions.csv."""
    with open(folder / "captions.csv", newline="") as f:
        return [(row["file"], row["objects"].split(";")) for row in csv.DictReader(f)]
