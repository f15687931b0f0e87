"""Which path each recent (filter, query) took, so that its page turns take it again.

A filtered search can walk the shared IVF lists or the filter's own copies (filterplan.py);
the two rank slightly differently, so page 2 from one and page 1 from the other could
repeat or skip an item. Every page of a query must come from one path. A page turn asks
the collection again (the engine re-encodes the query, and a text encoded beside others
in a batch can differ from its lone encoding in the last bits), so a query is recognised
by its vector within a tolerance, not by its bytes.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

import faiss
import numpy as np

FILTERS = 32  # filters remembered (the least recently asked forgotten first)
QUERIES = 32  # queries remembered per filter
SAME = 1e-6  # squared distance, relative to the query's squared norm: the same query


class Routes:
    """(filter, query vector) -> a path (any value), for the last few of each."""

    def __init__(self, filters: int = FILTERS, queries: int = QUERIES):
        self.filters, self.queries = filters, queries
        self._seen: OrderedDict[Hashable, tuple[list[np.ndarray], list[object]]] = OrderedDict()

    def get(self, where: Hashable, q: np.ndarray) -> object | None:
        """The path remembered for this query (or one within SAME of it), else None."""
        seen = self._seen.get(where)
        if seen is None:
            return None
        self._seen.move_to_end(where)
        vectors, paths = seen
        x = np.ascontiguousarray(q, dtype=np.float32)
        rows = np.ascontiguousarray(np.stack(vectors), dtype=np.float32)
        far = np.empty(len(rows), dtype=np.float32)
        faiss.fvec_L2sqr_ny(faiss.swig_ptr(far), faiss.swig_ptr(x), faiss.swig_ptr(rows),
                            rows.shape[1], rows.shape[0])
        best = int(np.argmin(far))
        if far[best] <= SAME * max(float(x @ x), 1e-30):
            return paths[best]
        return None

    def put(self, where: Hashable, q: np.ndarray, path: object) -> None:
        vectors, paths = self._seen.setdefault(where, ([], []))
        self._seen.move_to_end(where)
        vectors.append(np.array(q, dtype=np.float32))
        paths.append(path)
        if len(vectors) > self.queries:
            del vectors[0], paths[0]
        while len(self._seen) > self.filters:
            self._seen.popitem(last=False)
