"""manifest.json: which model built a collection, its vector size and index type."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from index.errors import StoreError

from .files import atomic_write_json

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Manifest:
    model: str
    dim: int
    index_type: str
    format_version: int


def not_a_collection(path: Path) -> StoreError:
    return StoreError(
        f"{path} is not a clipfind collection (no manifest.json); "
        f"build one with: python -m index build --index {path} SOURCE"
    )


def write_manifest(path: Path, model: str, dim: int, index_type: str) -> None:
    atomic_write_json(
        path / MANIFEST,
        {"format_version": FORMAT_VERSION, "model": model, "dim": dim, "index_type": index_type},
    )


def read_manifest(path: Path) -> Manifest:
    """The manifest of the collection at `path`; every flaw is a StoreError naming the file."""
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise not_a_collection(path)
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise StoreError(
            f"{mpath} is unreadable or garbled ({e}); restore it or build a new collection"
        ) from e
    if not isinstance(raw, dict):
        raise StoreError(
            f"{mpath} is garbled (not a JSON object); restore it or build a new collection"
        )
    version = raw.get("format_version")
    model, dim, index_type = raw.get("model"), raw.get("dim"), raw.get("index_type")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise StoreError(
            f"{mpath} is garbled (format_version {version!r}); restore it or build a new collection"
        )
    if version > FORMAT_VERSION:
        raise StoreError(
            f"collection {path} has format version {version}, newer than this clipfind reads "
            f"({FORMAT_VERSION}); upgrade clipfind"
        )
    if not isinstance(model, str) or not model:
        raise StoreError(
            f"{mpath} is garbled (model {model!r}); restore it or build a new collection"
        )
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise StoreError(f"{mpath} is garbled (dim {dim!r}); restore it or build a new collection")
    if not isinstance(index_type, str) or not index_type:
        raise StoreError(
            f"{mpath} is garbled (index_type {index_type!r}); restore it or build a new collection"
        )
    return Manifest(model=model, dim=dim, index_type=index_type, format_version=version)
