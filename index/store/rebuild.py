"""Building a collection's index from SQLite, in the caller's thread or in the background.

A rebuild the index-type policy asks for (Flat -> IVF at EXACT_LIMIT, retraining after
growth) can run in a thread on its own SQLite snapshot while searches and adds keep using
the current, valid index; the collection then swaps it in with its writes since then
re-applied (Collection._swap_in).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

from . import tuning
from .faissindex import Built, is_exact, make_index
from .items import ROW_CHUNK, ItemTable

RETRY_FIRST = 60.0  # seconds before a failed background rebuild is tried again (doubling)
RETRY_MAX = 3600.0

log = logging.getLogger("index.store")


def build_index(
    table: ItemTable, index_type: str, cancel: threading.Event | None = None
) -> Built | None:
    """Build an index from one read snapshot of `table`; None if `cancel` was set.

    index_type: a FAISS factory string, or 'auto' (tuning.choose_factory decides). An
    index that cannot be trained yet (too few items) falls back to exact. Approximate
    indexes are tuned on calibration queries whose exact answers are computed while the
    vectors stream in. Stored vectors that are not finite (refused on the way in since,
    but a collection may predate that or be edited) enter as zeros and are listed in
    Built.nonfinite.
    """
    rng = np.random.default_rng(0)
    dim = table.dim
    nonfinite: list[int] = []
    with table.snapshot() as conn:
        gen = table.state("generation")
        ids = np.fromiter(
            (r[0] for r in conn.execute("SELECT id FROM items ORDER BY id")), dtype=np.int64
        )
        n = len(ids)
        factory = tuning.choose_factory(n) if index_type == "auto" else index_type
        index = make_index(dim, factory)
        wanted, fallback = factory, False
        trainable = not index.is_trained
        if trainable:
            try:
                if n == 0:
                    raise RuntimeError("no items to train on")
                m = tuning.training_size(index, n)
                sample = _finite(table.vectors(np.sort(rng.choice(ids, size=m, replace=False))))
                index.train(sample)
                del sample
            except Exception:  # too few items for this factory: exact until there are more
                wanted, factory, fallback, trainable = factory, "Flat", True, False
                index = make_index(dim, "Flat")
        calib = None
        if not is_exact(index) and n > 1:
            m = min(tuning.CALIB_QUERIES, len(ids) // 3)
            picked = rng.choice(ids, size=3 * m, replace=False)
            calib = (
                tuning.calibration_queries(_finite(table.vectors(picked)), picked) if m else None
            )
        best_s = best_i = None
        if calib is not None:
            best_s = np.full((len(calib[0]), 0), -np.inf, dtype=np.float32)
            best_i = np.zeros((len(calib[0]), 0), dtype=np.int64)
        cur = conn.execute("SELECT id, vector FROM items ORDER BY id")
        while rows := cur.fetchmany(ROW_CHUNK):
            chunk_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            chunk = table.decode([r[1] for r in rows])
            bad = ~np.isfinite(chunk).all(axis=1)
            if bad.any():  # stored before they were refused: findable by nothing, harmless
                chunk[bad] = 0.0
                nonfinite.extend(int(i) for i in chunk_ids[bad])
            index.add_with_ids(chunk, chunk_ids)
            if calib is not None:
                scores = calib[0] @ chunk.T
                scores[calib[1][:, None] == chunk_ids[None, :]] = -np.inf  # not itself
                best_s, best_i = tuning.top10_merge(best_s, best_i, scores, chunk_ids)
    if cancel is not None and cancel.is_set():
        return None
    calibration = None
    if calib is not None:
        truth = np.where(np.isfinite(best_s), best_i, -1)
        calibration = (calib[0], calib[1], truth, calib[2])
    params = tuning.tune(index, calibration) if not is_exact(index) else {}
    return Built(index, factory, dict(params), gen, n, wanted, fallback, trainable, nonfinite)


def _finite(vectors: np.ndarray) -> np.ndarray:
    """Vectors with non-finite rows zeroed (they must not train or calibrate an index)."""
    bad = ~np.isfinite(vectors).all(axis=1)
    if bad.any():
        vectors[bad] = 0.0
    return vectors


class BackgroundRebuild:
    """At most one policy rebuild in a thread at a time, backing off after failures.

    The owner's lock is taken to hand the result over; writes the owner makes meanwhile
    are collected in `touched` (note_written) so that they can be re-applied.
    """

    def __init__(self, path: Path, lock: threading.RLock):
        self.path, self._lock = path, lock
        self.thread: threading.Thread | None = None  # the rebuild in progress
        self.cancel = threading.Event()  # set: its result is not wanted (closing)
        self.target = ""  # the factory it builds (for index_description)
        self.touched: set[int] | None = None  # ids the owner wrote since it began
        self.failures = 0
        self.not_before = 0.0  # time.monotonic() before which none is started
        self.closing = False

    @property
    def running(self) -> bool:
        return self.thread is not None

    def note_written(self, ids: Iterable[int]) -> None:
        if self.touched is not None:
            self.touched.update(ids)

    def start(
        self,
        target: str,
        build: Callable[[threading.Event], Built | None],
        finish: Callable[[Built, set[int]], None],
        keeping: Callable[[], str],
    ) -> None:
        """Run build(cancel) in a thread, then finish(built, touched) under the lock.

        Nothing happens if one runs, the owner closes, or a failure's back-off lasts.
        `keeping` names the index kept when it fails (for the log). Lock held.
        """
        if self.thread is not None or self.closing or time.monotonic() < self.not_before:
            return
        self.target = target
        self.touched = set()
        self.cancel = cancel = threading.Event()
        self.thread = threading.Thread(
            target=self._run,
            args=(build, finish, keeping, cancel),
            name=f"clipfind-rebuild:{self.path.name}",
            daemon=True,
        )
        self.thread.start()

    def _run(
        self,
        build: Callable[[threading.Event], Built | None],
        finish: Callable[[Built, set[int]], None],
        keeping: Callable[[], str],
        cancel: threading.Event,
    ) -> None:
        """Thread body. Never raises: a failure is logged, the current index stays, and the
        next attempt waits RETRY_FIRST seconds, doubling per failure up to RETRY_MAX."""
        built: Built | None = None
        error: Exception | None = None
        try:
            built = build(cancel)
        except Exception as e:
            error = e
        with self._lock:
            touched, self.touched, self.thread = self.touched, None, None
            if cancel.is_set():
                return  # closed meanwhile: nobody wants the result
            if error is None and built is not None:
                try:
                    finish(built, touched or set())
                except Exception as e:
                    error = e
            if error is None:
                self.failures = 0
                return
            self.failures += 1
            delay = min(RETRY_MAX, RETRY_FIRST * 2 ** (self.failures - 1))
            self.not_before = time.monotonic() + delay
            log.error(
                "background rebuild of %s failed; keeping the %s index, retrying in %.0f s",
                self.path,
                keeping(),
                delay,
                exc_info=error,
            )

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the rebuild in progress, if any; False if still running."""
        thread = self.thread
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def stop(self) -> None:
        """No more rebuilds; the one in progress is abandoned (its result dropped)."""
        self.closing = True
        self.cancel.set()
