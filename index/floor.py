"""The relevance floor: the cosine under which a text query's result is a weak match.

CLIP ranks every picture for every text, so a search always has a top 10, even for
something the collection does not hold. The floor is calibrated from the collection itself,
with no labels, by labelling it with the model's own vocabulary (README, "Relevance floor"):

1. A sample of the collection's vectors is scored against prompts for every concept of the
   model's calibration vocabulary (`vocabulary`).
2. Each picture is labelled with its best prompt's concept. A concept that labels at least
   PRESENT_MIN pictures is *present*; one that labels none is *absent*.
3. present: the scores of each present concept's top pictures (what its search shows first;
   at most TOP, and no more than the pictures it labels);
   absent: each absent concept's best score (what a search for it would show first). When
   fewer than ABSENT_MIN concepts are absent (the collection holds nearly all the vocabulary),
   meaningless prompts stand in for the absent side.
4. floor = halfway between the absent side's 95th percentile and the present side's 5th;
   where the two overlap (a model that cannot tell them apart), the present side's 5th
   percentile: the collection's real matches are kept.

A collection under MIN_ITEMS pictures has no floor (too few to tell); one that has grown
GROWTH times since its floor was set is calibrated again (`stale`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import string
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ClipfindError, StoreError

log = logging.getLogger(__name__)

FLOOR_VERSION = 1
MIN_ITEMS = 100  # below this, no floor: every result is an answer
GROWTH = 2.0  # recalibrate when the collection has this many times the items it had
SAMPLE = 10_000  # stored vectors a calibration scores (the collection's own, sampled)
TOP = 10  # a present concept's top pictures, as a search shows them
PRESENT_MIN = 3  # pictures a concept must label to count as present
ABSENT_MIN = 3  # absent concepts needed before they, not meaningless prompts, set the floor
ABSENT_PCT, PRESENT_PCT = 95.0, 5.0
TEMPLATES = ("{}", "a photo of a {}")
N_GIBBERISH = 32

_VOCABULARY_FILE = Path(__file__).with_name("floor_vocabulary.txt")


@dataclass(frozen=True)
class Floor:
    """A collection's calibrated floor and what it came from (stored with the collection)."""

    value: float  # the floor for a one-term text query
    items: int  # the collection's size when calibrated
    model: str
    absent: float  # the absent side's 95th percentile
    present: float  # the present side's 5th percentile
    basis: str  # "absent concepts" or "meaningless prompts"
    n_present: int  # concepts found present
    n_absent: int  # concepts found absent
    version: int = FLOOR_VERSION

    def as_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, raw: object) -> Floor | None:
        """A stored floor, or None when missing, garbled or of another version (then the
        collection is simply calibrated again)."""
        if not isinstance(raw, dict) or raw.get("version") != FLOOR_VERSION:
            return None
        try:
            f = cls(**raw)
            ok = all(np.isfinite([f.value, f.absent, f.present])) and int(f.items) >= 0
        except (TypeError, ValueError):
            return None
        return f if ok else None

    def stale(self, n_items: int, model: str) -> bool:
        """Whether a collection of `n_items` (built with `model`) needs calibrating again."""
        return model != self.model or n_items >= GROWTH * max(self.items, 1)


def needs_calibration(stored: Floor | None, n_items: int, model: str) -> bool:
    if n_items < MIN_ITEMS:
        return False
    return stored is None or stored.stale(n_items, model)


def vocabulary(model: str) -> tuple[str, ...]:
    """The concepts a model's floor is calibrated with: the bundled model knows the shapes
    gallery's colour+shape concepts and nothing else; any other model, everyday things."""
    if model.startswith("builtin:tiny-shapes"):
        from .synthetic import CONCEPTS
        return CONCEPTS
    lines = _VOCABULARY_FILE.read_text(encoding="utf-8").splitlines()
    return tuple(w.strip() for w in lines if w.strip() and not w.startswith("#"))


def gibberish(n: int = N_GIBBERISH, seed: int = 0) -> list[str]:
    """Meaningless prompts (random letter strings): the absent side of last resort."""
    rng = random.Random(seed)
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 9)))
            for _ in range(n)]


def prompts(model: str) -> tuple[list[str], list[str]]:
    """(concept prompts: each concept in each template, concept-major; meaningless prompts)."""
    return [t.format(c) for c in vocabulary(model) for t in TEMPLATES], gibberish()


def calibrate(sample: np.ndarray, concept_vecs: np.ndarray, gibberish_vecs: np.ndarray,
              n_items: int, model: str) -> Floor:
    """The floor from a sample of the collection's vectors (n, dim) and the text vectors of
    `prompts(model)` (concept-major: len(TEMPLATES) rows per concept)."""
    x = _unit(sample)
    per = len(TEMPLATES)
    c = _unit(concept_vecs)
    n_concepts = c.shape[0] // per
    scores = (c @ x.T).reshape(n_concepts, per, x.shape[0]).mean(axis=1)  # (concepts, n)
    labels = np.bincount(scores.argmax(axis=0), minlength=n_concepts)
    present = np.flatnonzero(labels >= PRESENT_MIN)
    absent = np.flatnonzero(labels == 0)
    ranked = np.sort(scores, axis=1)[:, ::-1]
    hits = (np.concatenate([ranked[c, : min(TOP, labels[c])] for c in present]) if present.size
            else ranked[:, 0])
    if absent.size >= ABSENT_MIN:
        misses, basis = scores[absent].max(axis=1), "absent concepts"
    else:
        misses, basis = (_unit(gibberish_vecs) @ x.T).max(axis=1), "meaningless prompts"
    a = float(np.percentile(misses, ABSENT_PCT))
    p = float(np.percentile(hits, PRESENT_PCT))
    value = (a + p) / 2 if a < p else p
    return Floor(round(value, 6), int(n_items), model, round(a, 6), round(p, 6), basis,
                 int(present.size), int(absent.size))


def query_floor(floor: float, terms: list, background: np.ndarray | None = None) -> float:
    """The floor of a text query's composed vector: what it gives a picture that matches the
    query's heaviest positive term (of equally heavy ones, any) at `floor` and every other
    term as the collection's average picture does (`background`: the mean stored vector; None counts as 0). A picture
    holding two asked-for things scores lower on each than a picture of one, so asking every
    positive term to reach `floor` made the best matches of a two-term query read as weak.
    A one-term query: `floor`."""
    total = sum((t.weight * t.vector / np.linalg.norm(t.vector) for t in terms),
                start=np.zeros_like(terms[0].vector, dtype=np.float64))
    norm = float(np.linalg.norm(total))
    heaviest = max((t.weight for t in terms), default=0.0)
    if norm < 1e-9 or heaviest <= 0:
        return floor
    average = [0.0 if background is None else float(_unit(t.vector) @ background) for t in terms]
    base = sum(t.weight * a for t, a in zip(terms, average, strict=True))
    # the main term: the heaviest; between equally heavy ones, whichever gives the lower floor
    return min(base + t.weight * (floor - a) for t, a in zip(terms, average, strict=True)
               if t.weight == heaviest) / norm


def from_record(text: str | None) -> Floor | None:
    """A floor from its stored JSON text (None when missing or unusable)."""
    if not text:
        return None
    try:
        return Floor.from_json(json.loads(text))
    except ValueError:
        log.warning("a stored relevance floor is garbled; the collection is calibrated again")
        return None


def floor_of(collection) -> Floor | None:
    """The floor stored with a collection (either store), None if it has none."""
    return from_record(collection.read_record(FloorKeeper.RECORD))


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32)
    if v.ndim == 1:
        return v / max(float(np.linalg.norm(v)), 1e-12)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


class FloorKeeper:
    """One collection's floor, as searches need it: read from the collection's record,
    calibrated (and stored) when missing or stale, looked at again every RECHECK_S seconds
    (another process may have calibrated, the collection may have grown). While a
    calibration runs, other searches go on with the floor there was (or none)."""

    RECHECK_S = 30.0
    RECORD = "floor"

    def __init__(self, collection, encoder, model: str):
        self.collection, self.encoder, self.model = collection, encoder, model
        self._floor: Floor | None = None
        self._checked: float | None = None
        self._busy = threading.Lock()
        self._prompt_vecs: tuple[np.ndarray, np.ndarray] | None = None
        self._write_warned = False

    async def current(self) -> Floor | None:
        if self._checked is not None and time.monotonic() - self._checked < self.RECHECK_S:
            return self._floor
        if not self._busy.acquire(blocking=False):
            return self._floor
        try:
            stored, n = await asyncio.to_thread(self._read)
            floor = stored if n >= MIN_ITEMS else None
            if needs_calibration(stored, n, self.model):
                floor = await self._calibrate(n)
            self._floor, self._checked = floor, time.monotonic()
        except ClipfindError as e:  # busy encoder, store away: no floor this time
            log.warning("relevance floor not checked: %s", e)
        finally:
            self._busy.release()
        return self._floor

    async def recalibrate(self) -> Floor | None:
        """Calibrate now (None for a collection under MIN_ITEMS), store and use it."""
        n = await asyncio.to_thread(len, self.collection)
        floor = await self._calibrate(n) if n >= MIN_ITEMS else None
        self._floor, self._checked = floor, time.monotonic()
        return floor

    def _read(self) -> tuple[Floor | None, int]:
        return from_record(self.collection.read_record(self.RECORD)), len(self.collection)

    async def _calibrate(self, n: int) -> Floor:
        if self._prompt_vecs is None:
            concepts, nonsense = prompts(self.model)
            vecs = await self.encoder.encode_texts(concepts + nonsense)
            self._prompt_vecs = (vecs[: len(concepts)], vecs[len(concepts):])
        sample = await asyncio.to_thread(self._sample)
        floor = calibrate(sample, *self._prompt_vecs, n, self.model)
        try:
            await asyncio.to_thread(self.collection.write_record, self.RECORD,
                                    json.dumps(floor.as_json()))
        except StoreError as e:  # a read-only collection: kept in memory
            if not self._write_warned:
                self._write_warned = True
                log.warning("relevance floor kept in memory only: %s", e)
        log.info("relevance floor %.3f for %d items (%s; present %.3f, absent %.3f)",
                 floor.value, n, floor.basis, floor.present, floor.absent)
        return floor

    def _sample(self) -> np.ndarray:
        ids = self.collection.ids()
        if len(ids) > SAMPLE:
            pick = np.random.default_rng(0).choice(len(ids), SAMPLE, replace=False)
            ids = ids[np.sort(pick)]
        return self.collection.vectors(list(ids))
