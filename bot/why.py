"""`!why N`, `/why N` and the 🔍 control: where in result #N the model saw the query.

Transport-independent, like `core`: given the paging state of the result page on show, it
answers with the result's heatmap (the engine's `explain_image`, drawn by the facade's
`overlay_png`) or one line saying why not. Only the member who searched may ask; the
engine draws one heatmap at a time below searches and says busy rather than queueing.
"""

from __future__ import annotations

import asyncio
import logging

from index.errors import Busy, ClipfindError, FetchError

from .core import BUSY, Core, PagingState, error
from .reply import FileOut, Reply

log = logging.getLogger(__name__)

NOT_YOURS = "only the member who searched can ask why on these results; search yourself with {p}find"
USAGE = "reply to a result message with {p}why N, N the # of a result on it"


def parse_rank(text: str, prefix: str = "!") -> int:
    """The N of `why N` (`#3` and `3` alike); ClipfindError with the usage otherwise."""
    word = text.strip().removeprefix("#")
    if not word.isdigit():
        shown = f"{text.strip()[:20]!r}" if text.strip() else "nothing"
        raise ClipfindError(f"which result? got {shown}; {USAGE.format(p=prefix)}")
    return int(word)


async def why(core: Core, state: PagingState | None, rank: int, author_id: int) -> Reply:
    """The heatmap of result #rank of the page `state` shows, for `author_id`."""
    p = core.settings.prefix
    try:
        if state is None:
            return error(f"no results to explain here; search first with {p}find, then "
                         + USAGE.format(p=p))
        if author_id != state.author_id:
            return error(NOT_YOURS.format(p=p))
        shown = {r: (item_id, source, url) for r, item_id, source, url in state.hits}
        if rank not in shown:
            if not shown:
                return error("that page shows no results to explain")
            lo, hi = min(shown), max(shown)
            return error(f"#{rank} is not on this page: it shows #{lo}–#{hi}; {USAGE.format(p=p)}")
        if (why_not := core.unavailable()) is not None:
            return error(why_not)
        item_id, source, url = shown[rank]
        engine = await _engine_of(core, state, item_id, source)
        if engine is None:
            return error(f"result #{rank} no longer exists (it was removed); search again")
        picture = None
        if source.startswith("discord:"):
            if not url:
                return error(f"the picture of result #{rank} is gone from Discord (deleted since)")
            picture = await _download(core, url, rank)
        x = await engine.explain_image(item_id, state.text, state.images, picture=picture)
        from index import overlay_png  # here: torch, which a process using the encoder
        png = await asyncio.to_thread(overlay_png, x)  # service loads only for a heatmap
    except Busy:
        return error(BUSY)
    except ClipfindError as e:
        return error(str(e))
    shown_query = x.query.replace("`", "ˋ")
    return Reply(f"**Why #{rank}** for `{shown_query}`: brighter = where the model saw it "
                 f"(first panel the whole query, then each term)",
                 picture=FileOut(f"why-{rank}.png", png, f"heatmap of result {rank} for {x.query}"[:1000]))


async def _engine_of(core: Core, state: PagingState, item_id: int, source: str):
    """The engine of the scope the search ran in whose item `item_id` is still `source`."""
    scope = core.scope(state.guild_id)
    for engine in [scope.engine, *scope.also]:
        found = await asyncio.to_thread(engine.collection.get, [item_id])
        if found and found[0].source == source:
            return engine
    return None


async def _download(core: Core, url: str, rank: int):
    """The picture at `url`, fetched and decoded as the core fetches query images."""
    try:
        return await core._load_one(url)
    except FetchError as e:
        raise ClipfindError(f"the picture of result #{rank} cannot be fetched any more ({e})") from e
