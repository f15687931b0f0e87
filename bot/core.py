"""The bot's command logic, written once for every transport (Discord, the console).

A transport hands `Core.find` the text after the command word, the message's attachments,
the images of the message it replies to, and the author; it gets back a `Reply`: a page
of results (with a `PagingState` to turn it) or one line that says what to do.

Order of the checks (cheap and local first, so a bad query costs nothing):
attachment types and sizes (from their metadata, nothing downloaded) -> the query grammar ->
the engine is ready -> the user's cooldown -> downloads (attachments, image URLs in the
text, public addresses only) -> decoding (size and bomb checks) -> the search. The cooldown
is charged only for searches that run: a use taken for input refused later is given back.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import aiohttp
from PIL import Image

from index import (
    FILTER_USAGE,
    IMAGE_EXTENSIONS,
    USAGE,
    FetchLimits,
    Query,
    fetch_bytes,
    make_session,
    open_image,
    parse_query,
)
from index.errors import Busy, ClipfindError, FetchError, ImageError, QueryError

from . import floor, render
from .config import Settings
from .reply import Reply

log = logging.getLogger(__name__)

NOT_READY = "still starting up, try again in a few seconds"
BUSY = "busy, try again in a moment"
KEEP_SIDE = 1024  # query images are kept at most this large
PREFETCH_DELAY_S = 1.0  # the next page's thumbnails are made this long after a reply

# http(s) URLs in the query text; Discord's <url> form (no preview) too.
_URL_RE = re.compile(r"<?(https?://[^\s<>]+)>?", re.IGNORECASE)
_URL_WEIGHT_RE = re.compile(r"(.*?)(\*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+))$")


@dataclass
class Attachment:
    """An image handed in with a command; `read` is only called once every check passed."""

    filename: str
    size: int | None
    content_type: str | None
    read: Callable[[], Awaitable[bytes]]


class Directory(Protocol):
    """The asking server's channels and members as the transport knows them: what turns
    `in:#memes` / `from:@sam` into ids (bot.cogs.search.GuildDirectory on Discord)."""

    def has_channel(self, channel_id: int) -> bool: ...

    async def channel_named(self, name: str) -> int | None: ...

    async def member_named(self, name: str) -> int | None: ...


@dataclass
class FindRequest:
    text: str  # what follows the command word
    author_id: int
    attachments: Sequence[Attachment] = ()  # the message's own: a non-image is an error
    replied: Sequence[Attachment] = ()  # the replied-to message's: non-images are skipped
    guild_id: int | None = None  # the server asked in: its library, when it has one
    directory: Directory | None = None  # that server's channels and members (filters)


@dataclass
class SearchScope:
    """What one search sees: a collection (plus others merged in, `also`), and how its
    result cards are finished (a server library's: fresh image URLs, who posted, when)."""

    engine: Any
    also: list = field(default_factory=list)
    decorate: Callable[[list, list], Awaitable[list]] | None = None  # (cards, hits) -> cards
    empty: str = "the collection is empty"


@dataclass
class PagingState:
    """What it takes to show another page of a result."""

    author_id: int
    text: str  # the query text without its image URLs
    images: list[Image.Image] = field(repr=False)
    offset: int
    k: int
    has_more: bool
    query: str  # canonical form, for display
    shown: int = 0  # results on the page on show
    guild_id: int | None = None  # the scope of the search (see Core.scope)
    hits: tuple = ()  # the page on show: (rank, item id, source, image URL or None) per result
    parsed: Query | None = None  # `text` parsed once, when the search was asked for
    weak: bool = False  # the page shows matches under the relevance floor (asked for with ▶️)
    at_floor: bool = False  # the page stopped at the floor: the next page shows weak matches
    prev: PagingState | None = field(default=None, repr=False)  # the page ◀️ goes back to

    def parsed_query(self) -> Query:
        return self.parsed if self.parsed is not None else parse_query(self.text, len(self.images))

    @property
    def last_rank(self) -> int:
        return self.offset + self.shown


def split_urls(text: str, first: int = 1) -> tuple[str, list[str]]:
    """The text with each http(s) URL replaced by an image reference, and the URLs in order.

    The i-th URL becomes `#(first + i)`, so a weight after it (`https://x/y.png*0.5`) weighs
    that image. Trailing punctuation of an unbracketed URL is dropped.
    """
    urls: list[str] = []

    def sub(m: re.Match) -> str:
        url, tail = m.group(1), ""
        if not (m.group(0).startswith("<") and m.group(0).endswith(">")):
            w = _URL_WEIGHT_RE.match(url)
            if w:
                url, tail = w.group(1), w.group(2)
            url = url.rstrip(".,;:!?)]}'\"")
        urls.append(url)
        return f" #{first + len(urls) - 1}{tail} "

    return " ".join(_URL_RE.sub(sub, text).split()), urls


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _content_problem(a: Attachment) -> str | None:
    ctype = (a.content_type or "").split(";", 1)[0].strip().lower()
    ext = Path(a.filename).suffix.lower()
    if ctype:
        if not ctype.startswith("image/"):
            return (f"{a.filename}: not an image ({ctype}); "
                    "attach a JPEG, PNG, WebP or GIF picture")
        return None
    if ext in IMAGE_EXTENSIONS:
        return None
    return f"{a.filename}: not an image file; attach a JPEG, PNG, WebP or GIF picture"


def _decode(data: bytes, name: str, max_pixels: int) -> Image.Image:
    """Decode safely, then shrink: the model sees a few hundred pixels at most, and a page's
    images are kept (for page turns) until its controls expire."""
    img = open_image(data, name=name, max_pixels=max_pixels)
    img.thumbnail((KEEP_SIDE, KEEP_SIDE), Image.Resampling.BICUBIC)
    return img


def _is_image(a: Attachment) -> bool:
    return _content_problem(a) is None


class Cooldown:
    """At most `rate` uses per `per` seconds per user (a sliding window); rate 0 = off."""

    def __init__(self, rate: int, per: float, clock: Callable[[], float] = time.monotonic):
        self.rate, self.per, self.clock = rate, per, clock
        self._uses: dict[int, deque[float]] = {}

    def hit(self, user_id: int) -> float | None:
        """Record a use; None when allowed, else the seconds to wait (the use is not recorded)."""
        if self.rate <= 0:
            return None
        now = self.clock()
        if len(self._uses) > 10_000:
            self._sweep(now)
        uses = self._uses.setdefault(user_id, deque())
        while uses and uses[0] <= now - self.per:
            uses.popleft()
        if len(uses) >= self.rate:
            return uses[0] + self.per - now
        uses.append(now)
        return None

    def refund(self, user_id: int) -> None:
        """Give back the latest use: the search it was taken for did not run."""
        uses = self._uses.get(user_id)
        if uses:
            uses.pop()

    def _sweep(self, now: float) -> None:
        for uid in [u for u, q in self._uses.items() if not q or q[-1] <= now - self.per]:
            del self._uses[uid]


def help_text(prefix: str = "!") -> str:
    p = prefix
    return "\n".join([
        "**clipfind** searches the image collection with words, pictures, or both.",
        f"`{p}find red circle` · one phrase",
        f"`{p}find red circle*1 blue square*2` · weighted terms (*W from -10 to 10, not 0)",
        f"`{p}find horse + stripes - brown` · `+` adds a term, `-` pushes one away (`dog*-1` too)",
        f'`{p}find "quoted, phrase"*2 #1*0.5 cars` · quotes keep a phrase; `#N` is the N-th image',
        f"`{p}find cars` + an attached photo · images come from attachments, the message you "
        "reply to, and image URLs in the text; images no `#N` names join with weight 1",
        f"`{p}find red circle in:#memes from:@sam after:2025-01-31` · only pictures of this "
        "server's library posted there, by them, then: `in:`/`from:` (several match any), "
        "`before:`/`after:` a day, `during:` a year, month or day (UTC)",
        "`/find query:<text> image:<attachment>` · the same as a slash command",
        "Pages: ◀️ ▶️ turn, ⏹️ stops (only the member who asked). The word weights under a "
        "result show which words of each phrase the model attended to.",
        "Results under the collection's relevance floor are weak matches: a text query with "
        "none over it is answered \"no good match\", and ▶️ shows the weak ones. Reposts of "
        "one picture are one result (+N near-copies).",
        f"`{p}why N` replying to a result page (or 🔍 under it, `/why N`) · a heatmap of where "
        "in result #N the model saw each term",
        "Grammar — " + USAGE,
        "Filters — " + FILTER_USAGE,
    ])


class Core:
    """The transport-independent command logic; owns the URL session and the cooldowns."""

    def __init__(self, settings: Settings, engine=None, *, cooldown: bool = True,
                 clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.engine = engine
        self.load_error: str | None = None
        self.cooldown = Cooldown(settings.cooldown_rate if cooldown else 0,
                                 settings.cooldown_per_s, clock)
        self.limits = FetchLimits(max_bytes=settings.url_max_bytes,
                                  timeout_s=settings.url_timeout_s, retries=1, max_redirects=3)
        self._session: aiohttp.ClientSession | None = None
        self._prefetching: set[asyncio.Task] = set()  # next pages' thumbnails being made
        self.prefetch_delay_s = PREFETCH_DELAY_S
        # the server libraries (bot.library.Library): `scope(guild_id)` -> SearchScope | None
        self.library = None

    # -- state ------------------------------------------------------------------------------
    def scope(self, guild_id: int | None) -> SearchScope:
        """A server with a library searches it (only it: see Library.scope); else the
        global collection."""
        if guild_id is not None and self.library is not None:
            found = self.library.scope(guild_id)
            if found is not None:
                return found
        return SearchScope(self.engine)

    def unavailable(self) -> str | None:
        """Why searches cannot run now (None when they can)."""
        if self.load_error is not None:
            return f"the search engine could not start ({self.load_error}); tell the bot's operator"
        if self.engine is None or not self.engine.ready:
            return NOT_READY
        return None

    async def close(self) -> None:
        for task in list(self._prefetching):
            task.cancel()
        await asyncio.gather(*self._prefetching, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = make_session(True, self.limits)
        return self._session

    # -- commands -----------------------------------------------------------------------------
    def help(self, prefix: str | None = None) -> Reply:
        return Reply(help_text(prefix or self.settings.prefix))

    async def find(self, req: FindRequest, *,
                   before_work: Callable[[], Awaitable[Any]] | None = None) -> Reply:
        """`before_work` is awaited once the cheap checks passed, before the downloads and the
        search (a slash command defers there: its refusals stay private, see bot.app)."""
        try:
            return await self._find(req, before_work)
        except ClipfindError as e:
            return error(str(e))

    async def turn(self, state: PagingState, delta: int) -> Reply:
        """The next (delta=+1) or previous (-1) page; a notice when there is none.

        A notice is a Reply with `state` None and `error` False: the transport keeps the page
        on show and tells the member."""
        if delta < 0 and state.prev is None:
            return Reply("this is the first page")
        if delta > 0 and not state.has_more:
            return Reply(f"no more results: #{state.last_rank} was the last match")
        # pages are runs of results (a page may stop at the floor): forward from where this
        # one stopped, back to the page shown before
        new = state.prev if delta < 0 else replace(
            state, offset=state.offset + state.shown, weak=state.weak or state.at_floor,
            at_floor=False, prev=state)
        try:
            if (why := self.unavailable()) is not None:
                return Reply(why)
            return await self._page(new, notice_if_empty=True)
        except Busy:
            return Reply(BUSY)
        except ClipfindError as e:
            return Reply(str(e))

    # -- the work -------------------------------------------------------------------------------
    async def _find(self, req: FindRequest, before_work=None) -> Reply:
        s = self.settings
        sources: list[Attachment | str] = []
        for a in req.attachments:
            if (problem := _content_problem(a)) is not None:
                return error(problem)
            sources.append(a)
        sources.extend(a for a in req.replied if _is_image(a))
        for a in sources:
            if a.size is not None and a.size > s.max_attachment_bytes:
                return error(f"{a.filename}: too large ({_mib(a.size)}, limit "
                             f"{_mib(s.max_attachment_bytes)}); attach a smaller image")
        text, urls = split_urls(req.text, first=len(sources) + 1)
        sources.extend(urls)
        query = parse_query(text, len(sources))  # QueryError: one line with the usage
        query = await resolve_filters(query, req)
        if (why := self.unavailable()) is not None:
            return error(why)
        # taken before the downloads (a member held back costs no download), given back when
        # the search does not run: refused images, busy
        wait = self.cooldown.hit(req.author_id)
        if wait is not None:
            return error(f"slow down: you can search again in {math.ceil(wait)} s")
        try:
            if before_work is not None:
                await before_work()
            images = await self._load_images(sources)
            state = PagingState(req.author_id, text, images, 0, s.results_per_page, False,
                                query.describe(), guild_id=req.guild_id, parsed=query)
            return await self._page(state)
        except Busy:
            self.cooldown.refund(req.author_id)
            return error(BUSY)
        except ClipfindError:
            self.cooldown.refund(req.author_id)
            raise

    async def _load_images(self, sources: list[Attachment | str]) -> list[Image.Image]:
        if not sources:
            return []
        results = await asyncio.gather(*(self._load_one(src) for src in sources),
                                       return_exceptions=True)
        for r in results:  # the first problem, in the order the images were given
            if isinstance(r, BaseException):
                raise r
        return list(results)

    async def _load_one(self, src: Attachment | str) -> Image.Image:
        s = self.settings
        if isinstance(src, str):
            data = await fetch_bytes(self._http(), src, self.limits)
            name = render._clip(src, 80)
        else:
            name = src.filename
            try:
                data = await src.read()
            except ClipfindError:
                raise
            except Exception as e:  # a transport's download failing (HTTP 404, reset)
                log.warning("could not download attachment %s: %r", src.filename, e)
                raise FetchError(f"{name}: could not download the attachment; post it again") from e
            if len(data) > s.max_attachment_bytes:
                raise ImageError(f"{name}: too large ({_mib(len(data))}, limit "
                                 f"{_mib(s.max_attachment_bytes)}); attach a smaller image")
        return await asyncio.to_thread(_decode, data, name, s.max_image_pixels)

    async def _page(self, state: PagingState, *, notice_if_empty: bool = False) -> Reply:
        s = self.settings
        scope = self.scope(state.guild_id)
        result = await scope.engine.search(state.parsed_query(), state.images, k=state.k,
                                           offset=state.offset, also=scope.also)
        shown_query = state.query.replace("`", "ˋ")
        if not result.hits:
            if notice_if_empty and state.offset > 0:
                return Reply(f"no more results: #{state.offset} was the last match")
            why = ""
            if all(len(e.collection) == 0 for e in [scope.engine, *scope.also]):
                why = f" ({scope.empty})"
            elif state.images:
                why = " (images almost identical to a query image are left out)"
            return Reply(f"no results for `{shown_query}`{why}")
        page = floor.page(result, state.weak)
        if page.none_good:
            return Reply(floor.no_good_match(shown_query, result),
                         state=replace(state, has_more=True, shown=0, at_floor=True, hits=()))
        result = page.result
        store = getattr(scope.engine, "thumbnails", None)
        rows = render.attention_rows(result)
        att_text = render.attention_text(rows, result.attention_note)
        picture = bool(rows) and not result.attention_note

        def draw():  # the page's image work (reading thumbnails, the picture): one hand-off
            cards = render.make_cards(result.hits, thumbnail_size=s.thumbnail_size, thumbnails=store)
            return cards, (render.attention_png(rows) if picture else None)

        cards, data = await asyncio.to_thread(draw)
        if result.has_more and store is not None and not state.images:  # (image vectors are not cached)
            self._prefetch_next_page(scope, state, store)
        if scope.decorate is not None:
            cards = await scope.decorate(cards, result.hits)
        png = None
        n_files = sum(1 for c in cards if c.file is not None)
        if data is not None and n_files < render.MAX_FILES:
            png = render.FileOut("word-weights.png", data, "word weights: " + att_text)
        head = floor.head(shown_query, page)
        new_state = replace(state, has_more=result.has_more, shown=len(result.hits),
                            weak=page.weak, at_floor=page.at_floor,
                            hits=tuple((h.rank, h.id, h.item.source, c.image_url)
                                       for h, c in zip(result.hits, cards, strict=False)))
        return Reply(head, cards, att_text, png, state=new_state)

    def _prefetch_next_page(self, scope: SearchScope, state: PagingState, store) -> None:
        """Make the next page's thumbnails in the background, so ▶️ only reads them; after
        `prefetch_delay_s`, so a burst of searches is answered first."""
        async def run() -> None:
            try:
                await asyncio.sleep(self.prefetch_delay_s)
                nxt = await scope.engine.search(state.parsed_query(), state.images, k=state.k,
                                                offset=state.offset + state.k, also=scope.also,
                                                explain=False)
                await asyncio.to_thread(render.prefetch_thumbnails, nxt.hits, store,
                                        self.settings.thumbnail_size)
            except Exception as e:  # Busy, a vanished file: the page turn makes them itself
                log.debug("next page's thumbnails not prefetched: %r", e)

        task = asyncio.create_task(run())
        self._prefetching.add(task)
        task.add_done_callback(self._prefetching.discard)


def _refuse(problem: str) -> QueryError:
    return QueryError(f"{problem} — {FILTER_USAGE}")


async def resolve_filters(query: Query, req: FindRequest) -> Query:
    """The query with its filters' channels and members as ids of the asking server.

    A channel id must be one of this server's (another server's, or none, is refused in
    the same words, naming nothing); a member id is taken as it is (a member who left still
    has posts here); names are looked up in this server only."""
    f = query.filters
    if not f:
        return query
    d = req.directory
    if req.guild_id is None or d is None:
        if f.names:
            raise _refuse(f"{f.names[0]}: channel and member names are known only in a "
                          "server; search from one of its channels")
        return query
    channels = []
    for ref in f.channels:
        if ref.id is not None:
            if not d.has_channel(ref.id):
                raise _refuse("a channel given to in: is not one of this server's; filters "
                              "search only this server's library: type # and pick a channel")
            channels.append(ref.id)
        elif (cid := await d.channel_named(ref.name)) is not None:
            channels.append(cid)
        else:
            raise _refuse(f"in:#{render._clip(ref.name, 40)}: this server has no such channel; "
                          "type # and pick one from the list")
    members = []
    for ref in f.members:
        if ref.id is not None:
            members.append(ref.id)
        elif (mid := await d.member_named(ref.name)) is not None:
            members.append(mid)
        else:
            raise _refuse(f"from:@{render._clip(ref.name, 40)}: no member of this server has "
                          "that name; type @ and pick one from the list")
    return replace(query, filters=f.resolved(tuple(channels), tuple(members)))


def error(text: str) -> Reply:
    """A one-line answer to a request that cannot be served."""
    return Reply(" ".join(text.split()), error=True)
