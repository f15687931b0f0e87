"""The FAISS index of a collection: make one, keep track of what it reflects, load, save.

vectors.faiss is derived from SQLite and never the only copy of anything. Its sidecar
vectors.faiss.json says what it reflects (generation, uid, ntotal, factory, tuned search
parameters, size and sha256 of vectors.faiss); read_index_file hands FAISS the file only
when all of that matches, so a torn, garbled or swapped file is rebuilt instead.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from index.errors import StoreError

from . import tuning
from .files import atomic_write_json, sha256_file, tmp_name

VECTORS = "vectors.faiss"
VECTORS_META = "vectors.faiss.json"


def make_index(dim: int, factory: str) -> faiss.Index:
    """An empty inner-product index built from `factory` that carries our ids."""
    try:
        base = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except Exception as e:  # faiss raises RuntimeError with a C++ backtrace
        reason = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise StoreError(f"invalid FAISS index type {factory!r} for dim {dim}: {reason}") from e
    idx = faiss.downcast_index(base)
    inner = idx
    while isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2) or isinstance(inner, faiss.IndexIVF):
        return base
    return faiss.IndexIDMap2(base)


def validate_index_type(dim: int, index_type: str) -> None:
    if not isinstance(index_type, str) or not index_type.strip():
        raise StoreError(
            f"invalid FAISS index type {index_type!r}: give 'auto' or a factory string"
        )
    if index_type != "auto":
        make_index(dim, index_type)


def is_exact(index: faiss.Index) -> bool:
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2):
        idx = faiss.downcast_index(idx.index)
    return isinstance(idx, faiss.IndexFlat)


def can_remove_in_place(index: faiss.Index) -> bool:
    """Whether remove_ids keeps the id labels right (flat under IDMap2; IVF carries ids)."""
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexIDMap | faiss.IndexIDMap2):
        return isinstance(faiss.downcast_index(idx.index), faiss.IndexFlat)
    while isinstance(idx, faiss.IndexPreTransform):
        idx = faiss.downcast_index(idx.index)
    return isinstance(idx, faiss.IndexIVF)


@dataclass
class Built:
    """An index made from one SQLite snapshot (or loaded from vectors.faiss), not yet in use."""

    index: faiss.Index
    factory: str  # factory string it was built from
    params: dict[str, int]  # tuned search-time knob
    gen: int  # the snapshot's generation
    n: int  # items when it was built (trained)
    wanted: str  # the factory asked for (differs from `factory` in a fallback)
    fallback: bool  # the factory could not be trained yet: exact meanwhile
    trainable: bool  # the index type learns from the data (IVF, PQ, SQ)
    nonfinite: list[int] = field(default_factory=list)  # ids whose stored vector is not finite


@dataclass
class IndexState:
    """The in-memory index of a collection and what it reflects."""

    index: faiss.Index | None = None
    factory: str = "Flat"
    params: dict[str, int] = field(default_factory=dict)
    gen: int = -1  # SQLite generation the index reflects
    trained_n: int = 0
    trainable: bool = False
    fallback: bool = False
    wanted: str = "Flat"
    stale: bool = True  # must be rebuilt (or reloaded) before use
    dirty: bool = False  # differs from vectors.faiss on disk
    loads: int = 0  # times it was loaded or rebuilt (an epoch for background builds)
    rebuilds: int = 0  # times it was rebuilt from SQLite (tests, status)

    def use(self, built: Built, gen: int, *, from_file: bool) -> None:
        """Serve `built` as the index of generation `gen`."""
        self.index, self.factory, self.params = built.index, built.factory, dict(built.params)
        self.gen, self.trained_n, self.fallback = gen, built.n, built.fallback
        self.wanted, self.trainable = built.wanted, built.trainable
        self.stale, self.dirty = False, not from_file
        self.loads += 1
        if not from_file:
            self.rebuilds += 1

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add rows SQLite already holds; on failure the index is rebuilt before next use."""
        if self.stale or self.index is None:
            return
        try:
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), ids)
        except Exception:
            self.stale = True

    def remove(self, ids: list[int]) -> None:
        """Drop ids SQLite no longer holds (or holds with another vector)."""
        if self.stale or self.index is None:
            return
        if not can_remove_in_place(self.index):
            self.stale = True  # e.g. HNSW: rebuilt before the next search
            return
        try:
            self.index.remove_ids(np.asarray(ids, dtype=np.int64))
        except Exception:
            self.stale = True

    def describe(self) -> tuple[str, list[str]]:
        """(factory shown, notes) for Collection.index_description."""
        if self.fallback:
            return "Flat", ["exact"]
        if self.factory == "Flat" or (self.index is not None and is_exact(self.index)):
            return self.factory, ["exact"]
        knobs = ", ".join(f"{k}={v}" for k, v in sorted(self.params.items()))
        return self.factory, [f"approximate{', ' + knobs if knobs else ''}"]


def read_index_file(
    folder: Path, *, gen: int, count: int, uid: int, dim: int, factories: tuple[str, ...] | None
) -> Built | None:
    """vectors.faiss if its sidecar says it reflects exactly this state, else None.

    factories: the factories acceptable for this collection (None: any, for 'auto').
    """
    vpath, mpath = folder / VECTORS, folder / VECTORS_META
    try:
        meta = json.loads(mpath.read_text(encoding="utf-8"))
        if not (
            isinstance(meta, dict)
            and meta.get("generation") == gen
            and meta.get("uid") == uid
            and meta.get("dim") == dim
            and meta.get("ntotal") == count
            and meta.get("size") == vpath.stat().st_size
            and isinstance(meta.get("factory"), str)
            and (factories is None or meta["factory"] in factories)
        ):
            return None
        if sha256_file(vpath) != meta.get("sha256"):
            return None
        index = faiss.read_index(str(vpath))
        if index.ntotal != count or index.d != dim:
            return None
        params = {str(k): int(v) for k, v in dict(meta.get("params") or {}).items()}
        tuning.apply_params(index, params)
        return Built(
            index=index,
            factory=meta["factory"],
            params=params,
            gen=gen,
            n=int(meta.get("trained_n", count)),
            wanted=str(meta.get("wanted", meta["factory"])),
            fallback=bool(meta.get("fallback", False)),
            trainable=bool(meta.get("trainable", False)),
        )
    except (OSError, ValueError, TypeError, KeyError, RuntimeError, AttributeError):
        return None


def write_index_file(folder: Path, state: IndexState, *, uid: int, dim: int) -> None:
    """vectors.faiss then its sidecar, each via a temp file and os.replace."""
    assert state.index is not None
    vpath = folder / VECTORS
    tmp = tmp_name(vpath)
    try:
        faiss.write_index(state.index, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        digest, size = sha256_file(tmp), tmp.stat().st_size
        os.replace(tmp, vpath)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    atomic_write_json(
        folder / VECTORS_META,
        {
            "generation": state.gen,
            "uid": uid,
            "dim": dim,
            "ntotal": int(state.index.ntotal),
            "factory": state.factory,
            "params": state.params,
            "trained_n": state.trained_n,
            "trainable": state.trainable,
            "fallback": state.fallback,
            "wanted": state.wanted,
            "size": size,
            "sha256": digest,
        },
    )
    state.dirty = False
