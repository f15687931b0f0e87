"""A collection (namespace) of images and their vectors: SQLite is the truth, FAISS derived.

Rooms (read in this order):

    base.py        VectorStore: the interface the engine uses, whatever the store
    collection.py  Collection: the embedded store, coordinating the rooms below
    milvus.py      MilvusStore: the same interface kept in a Milvus (imported on demand)
    items.py       the item table (meta.sqlite): schema, rows <-> Item/NewItem
    posts.py       provenance: every Discord post of every stored picture (meta.sqlite)
    records.py     small named values beside the items (a face's state, e.g. a library's)
    filtered.py    search filters over the posts (channel, author, time): the allowed items
    faissindex.py  the FAISS index: make, load (verified), save (atomic), in-memory state
    tuning.py      the policy: which index for how many items, and its search-time knob
    rebuild.py     building an index from SQLite, in the caller's thread or in the background
    manifest.py    manifest.json: model, dim, index type
    files.py       atomic writes and leftovers of killed writers

The tuning policy's names (EXACT_LIMIT, choose_factory, tune, ...) are looked up in
`tuning` at call time; assigning one here (a benchmark or test replacing the policy,
e.g. monkeypatch.setattr(index.store, "EXACT_LIMIT", 1000)) assigns it there too.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from . import tuning
from .base import VectorStore
from .collection import Collection
from .faissindex import VECTORS, VECTORS_META
from .faissindex import is_exact as _is_exact
from .faissindex import make_index as _make_index
from .items import META, Item, NewItem, nonfinite_note
from .manifest import FORMAT_VERSION, MANIFEST, Manifest
from .posts import Forgotten, Post
from .tuning import CALIB_QUERIES as _CALIB_QUERIES
from .tuning import (
    EXACT_LIMIT,
    TARGET_RECALL,
    TUNE_MARGIN,
    calibration_queries,
    choose_factory,
    training_size,
    tune,
)
from .tuning import knob as _knob
from .tuning import recall_at_10 as _recall_at_10
from .tuning import unwrap as _unwrap

__all__ = [
    "EXACT_LIMIT",
    "FORMAT_VERSION",
    "MANIFEST",
    "META",
    "TARGET_RECALL",
    "TUNE_MARGIN",
    "VECTORS",
    "VECTORS_META",
    "Collection",
    "Forgotten",
    "Item",
    "Manifest",
    "NewItem",
    "Post",
    "VectorStore",
    "calibration_queries",
    "choose_factory",
    "nonfinite_note",
    "training_size",
    "tune",
]

# name here -> name in tuning, for the names a benchmark or test may replace
_POLICY = {
    "EXACT_LIMIT": "EXACT_LIMIT",
    "TARGET_RECALL": "TARGET_RECALL",
    "TUNE_MARGIN": "TUNE_MARGIN",
    "_CALIB_QUERIES": "CALIB_QUERIES",
    "choose_factory": "choose_factory",
    "tune": "tune",
    "training_size": "training_size",
    "calibration_queries": "calibration_queries",
}


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _POLICY:
            setattr(tuning, _POLICY[name], value)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
# read by tests and bench/search.py, which build indexes as the store does
_ = (_CALIB_QUERIES, _is_exact, _knob, _make_index, _recall_at_10, _unwrap)
