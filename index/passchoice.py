"""How a pass of one sort runs (thread count, and which of equal towers or walks), kept to
the fastest under the host's present load.

The ways a pass can run (`arms`: e.g. (threads, packed) for a text, (threads, tower) for
an image batch) give the same vectors within 1e-5, checked at warm-up; which is fastest
depends on the host and its load. On a busy host a multi-threaded pass waits at every
parallel region for its second thread to get a core, and a walk of many small operators
suffers more than one of a few large ones (bench/RESULTS.md: "the thread count under
load"). A choice made once, from timings taken in a busy moment, would hold for the
process's whole life, so:

- warm-up times every arm in interleaved rounds and keeps each arm's least time (a burst
  of load then hits every arm alike, and the least time is the one it spared);
- at run time the chosen arm's passes keep its average current, and now and then a pass
  runs on another arm: its fresh time replaces that arm's old average, and the fastest
  average is used. A try that loses doubles the interval to the next (up to
  `max_explore` passes), so a host that stays busy pays for few slow tries; one that
  wins resets it;
- an arm too costly to time at warm-up may start from an estimate (`guessed`), which its
  first real pass replaces.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Iterable


class PassChoice:
    """The arm to run the next pass of one sort on, from the seconds (per input) each took."""

    def __init__(self, seconds: dict[Hashable, float], explore: int = 25, keep: float = 0.8,
                 max_explore: int = 800, guessed: Iterable[Hashable] = ()):
        self.avg = dict(seconds)
        # arms whose seconds are an estimate, not a time: their first pass replaces it
        self.guessed = set(guessed) & set(self.avg)
        self.explore, self.keep, self.max_explore = explore, keep, max_explore
        self.interval = explore
        self._until = explore  # passes until the next try
        self._turn = 0  # which of the other arms the next try takes
        self._trying: Hashable | None = None

    @property
    def best(self) -> Hashable:
        return min(self.avg, key=self.avg.__getitem__)

    def pick(self) -> Hashable:
        best = self.best
        others = [a for a in self.avg if a != best]
        self._until -= 1
        if others and self._until <= 0:
            self._trying = others[self._turn % len(others)]
            self._turn += 1
            return self._trying
        return best

    def record(self, arm: Hashable, seconds: float) -> None:
        if arm not in self.avg:
            return
        if arm == self._trying:  # its average is old: the fresh pass replaces it
            self.avg[arm] = seconds
            won = self.best == arm
            self.interval = self.explore if won else min(2 * self.interval, self.max_explore)
            self._until, self._trying = self.interval, None
        elif arm in self.guessed:
            self.avg[arm] = seconds
        else:
            self.avg[arm] = self.keep * self.avg[arm] + (1 - self.keep) * seconds
        self.guessed.discard(arm)


def time_arms(arms: Iterable[Hashable], run: Callable[[Hashable], object], rounds: int = 5,
              stop: Callable[[], None] | None = None,
              switch: Callable[[Hashable], bool] | None = None) -> dict[Hashable, float]:
    """Each arm's least time over `rounds` interleaved rounds of `run(arm)`.

    `switch(arm)` makes the settings `arm` needs that outlive a pass (the thread count) and
    says whether it changed any: the pass after a change is not timed (it pays for the
    change, e.g. waking a thread team; passes in service do not, as the choice persists),
    and every other round walks the arms backwards, so such changes are few. Each arm also
    gets one untimed pass first (it allocates). `stop` is called between passes (it raises
    to end a warm-up early)."""
    arms = list(arms)
    best = dict.fromkeys(arms, float("inf"))

    def once(arm: Hashable, timed: bool) -> None:
        if stop:
            stop()
        if switch is not None and switch(arm):
            run(arm)
        if not timed:
            run(arm)
            return
        t0 = time.perf_counter()
        run(arm)
        best[arm] = min(best[arm], time.perf_counter() - t0)

    for arm in arms:
        once(arm, timed=False)
    for r in range(rounds):
        for arm in arms if r % 2 == 0 else reversed(arms):
            once(arm, timed=True)
    return best
