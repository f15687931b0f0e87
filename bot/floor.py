"""A page of results against the relevance floor: answers first, weak matches on request.

The engine marks each result under its collection's floor as weak (index/floor.py). A page
shows answers only and stops where the weak matches begin; ▶️ then goes on into them, on
pages headed as weak matches. A first page with no answer at all is one line, "no good
match for ...", whose ▶️ shows the weak matches.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .reply import MORE, WEAK_MORE


@dataclass
class Page:
    result: Any  # the engine's SearchResult, holding only the results this page shows
    weak: bool  # the page shows weak matches
    at_floor: bool  # the page stopped at the floor: weak matches follow
    none_good: bool  # a first page with no answer over the floor


def page(result: Any, weak: bool) -> Page:
    """What of `result` (a page asked for at its offset) to show: answers up to the first
    weak match, or (`weak`: the member asked for them) everything."""
    hits = list(result.hits)
    cut = len(hits) if weak else next((i for i, h in enumerate(hits) if h.weak), len(hits))
    if hits and cut == 0:
        if result.offset == 0:
            return Page(result, False, True, True)
        weak, cut = True, len(hits)  # the previous page ended exactly at the floor
    at_floor = cut < len(hits)
    shown = replace(result, hits=hits[:cut], has_more=result.has_more or at_floor)
    return Page(shown, weak, at_floor, False)


def head(shown_query: str, p: Page) -> str:
    """The first line of a page."""
    r = p.result
    first, last = r.hits[0].rank, r.hits[-1].rank
    if p.weak:
        text = f"**Weak matches {first}–{last}** for `{shown_query}` (under the relevance floor)"
    else:
        text = f"**Results {first}–{last}** for `{shown_query}`"
    if p.at_floor:
        return f"{text} · the rest are weak matches{WEAK_MORE}"
    return text + (MORE if r.has_more else " · last page")


def no_good_match(shown_query: str, result: Any) -> str:
    best = result.hits[0].score
    return (f"no good match for `{shown_query}`: the best score, {best:.3f}, is under this "
            f"collection's relevance floor ({result.floor:.3f}){WEAK_MORE}")
