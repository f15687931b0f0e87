"""clipfind's search engine: its public API, the one door the faces use.

The bot (`bot/`) and the command line (`index/__main__.py`) import only this package and
`index.errors`; an import-linter contract in pyproject.toml (checked by
tests/test_architecture.py) keeps it so. What a face needs and this list lacks is added
here, not reached around.

Names are loaded on first use (module `__getattr__`), so `import index.errors` or
`from index import parse_query` does not pull in torch; `from index import Engine` does.
"""

from __future__ import annotations

import os
from importlib import import_module

# OpenMP threads (torch's, FAISS's) sleep when they wait at a barrier instead of spinning.
# The runtime reads this once, when the library loads, hence here: every face imports this
# package before an engine module loads torch. The engine keeps no thread waiting on
# another where that costs (lone passes on one thread, batches split in parts, see
# encoder.py), so spinning buys little, and on two cores a spinning worker takes the CPU the
# event loop, image decoding or a neighbour's process needs (bench/RESULTS.md, "OpenMP
# wait policy"). A wait policy or spin count set in the environment is left as it is.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"

# public name -> the engine module that defines it ("module:name" where the names differ)
_EXPORTS: dict[str, str] = {
    # the engine and what it answers
    "Engine": "engine",
    "EngineOptions": "engine",
    "SearchResult": "engine",
    "Hit": "engine",
    "AddReport": "engine",
    "Namespaces": "namespaces",  # many collections on one encoder (the server libraries)
    "BULK": "codes",  # the priority of background work (a search goes first)
    "SEARCH": "codes",
    # the encoder as a service (python -m index serve) and its client
    "serve_encoder": "service.run:serve",
    "RemoteEncoder": "service.client",
    "ENCODER_TOKEN_ENV": "service.protocol:TOKEN_ENV",  # where the token is read by default
    # the query grammar
    "Query": "query",
    "Term": "query",
    "parse_query": "query",
    "USAGE": "query",
    "Filters": "filters",  # in:/from:/before:/after:/during: of a query (Query.filters)
    "FILTER_USAGE": "filters",
    # items and collections
    "NewItem": "store",  # what to store about an image being added
    "Item": "store",
    "Collection": "store",
    "collection_exists": "engine",  # in its folder, or in its Milvus (store="milvus")
    "open_store": "engine",  # a collection without a model: the embedded store or Milvus

    "Post": "store",  # a Discord post of a stored picture (provenance)
    "Forgotten": "store",  # what forgetting posts changed
    "atomic_write_bytes": "store.files",  # crash-safe small files (the library's state)
    "nonfinite_note": "store",  # the repair advice for stored non-finite vectors
    # building: sources, the ingestion pipeline, the demo
    "SourceRecord": "sources",
    "classify_source": "sources",
    "scan_folder": "sources",
    "read_url_list": "sources",
    "read_unsplash_tsv": "sources",
    "read_features": "sources",
    "build_collection": "build:build",  # `index.build` is also the module's name
    "add_vectors": "build",
    "BuildReport": "build",
    "rehash_collection": "rehash:rehash",  # perceptual hashes of items stored before them
    "RehashReport": "rehash",
    "unhashed_count": "rehash",  # how many items lack one (None: the store cannot keep them)
    "make_demo": "demo",
    "migrate_collection": "migrate:migrate",  # folder <-> Milvus, resumable (python -m index migrate)
    "MigrateEndpoint": "migrate:Endpoint",
    "milvus_name": "migrate",
    "DEMO_COUNT": "synthetic",
    "MIN_FLOOR_ITEMS": "floor:MIN_ITEMS",  # a collection this small has no relevance floor
    "FLOOR_GROWTH": "floor:GROWTH",  # the floor is calibrated again at this many times the items
    "floor_of": "floor",  # the relevance floor stored with a collection (index/floor.py)
    # models
    "DEFAULT_MODEL": "modelspec",
    "parse_spec": "modelspec",
    # images and fetching them safely (public addresses only, size and time limits)
    "IMAGE_EXTENSIONS": "images",
    "open_image": "images",
    "content_hash": "images",
    "thumbnail_jpeg": "images",
    "FetchLimits": "netfetch",
    "fetch_bytes": "netfetch",
    "make_session": "netfetch",
    # why this result: relevance heatmaps
    "ImageExplanation": "explain_image",  # what Engine.explain_image answers
    "overlay_png": "overlay",  # an ImageExplanation as the overlay picture
    "parse_for_heatmap": "explain_image",  # a query checked for a heatmap (needs a text term)
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    where = _EXPORTS.get(name)
    if where is None:
        raise AttributeError(f"module 'index' has no attribute {name!r}")
    module, _, attr = where.partition(":")
    value = getattr(import_module(f"{__name__}.{module}"), attr or name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
