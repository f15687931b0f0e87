"""A page of results as cards and pictures, and as a Discord message.

- `make_cards`: search hits -> `Card`s. Results that are local files get a resized JPEG
  thumbnail to upload (the whole page stays under `PAGE_BUDGET` bytes and at most 10 files);
  results that live at a URL keep the URL; results from Discord link to their message.
- `attention_text` / `attention_png`: which words of each text term the model attended to,
  as a short text line (for clients with images off) and as a picture: one line per term,
  the term's weight, then each word on a background whose intensity shows its weight, with
  the percentage under it.
- `to_discord`: a `Reply` -> the keyword arguments of `send`/`edit` (content, embeds, files).
"""

from __future__ import annotations

import functools
import io
import logging
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit

from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from index import open_image, thumbnail_jpeg
from index.errors import ClipfindError

from .reply import MORE, WEAK_MORE, Card, FileOut, Reply

log = logging.getLogger(__name__)

MAX_EMBEDS = 10  # Discord: embeds per message
MAX_FILES = 10  # Discord: files per message
THUMBNAIL_CACHE = 512  # result thumbnails kept (~50 kB each), keyed by file, mtime and size
UPLOAD_LIMIT = 10 * 1024 * 1024  # Discord: an unboosted server's upload limit
PAGE_BUDGET = 8 * 1024 * 1024  # what a page may upload, with room to spare
MAX_CONTENT = 2000  # Discord: characters of message content
EMBED_COLOUR = 0x5865F2

# ------------------------------------------------------------------------------- result cards


def _is_url(s: str) -> bool:
    return s.startswith(("http://", "https://"))


def _host(url: str) -> str:
    try:
        return urlsplit(url).hostname or url
    except ValueError:
        return url


def _unsplash_image(page_url: str) -> str | None:
    """The image behind an Unsplash photo page (the collection stores the page, not the file)."""
    parts = urlsplit(page_url)
    segs = [s for s in parts.path.split("/") if s]
    if parts.hostname in ("unsplash.com", "www.unsplash.com") and len(segs) == 2 and segs[0] == "photos":
        return f"https://unsplash.com/photos/{segs[1]}/download?w=640"
    return None


def _discord_link(source: str) -> str | None:
    """'discord:<guild>/<channel>/<message>/<attachment>' -> the message's jump URL."""
    parts = source.removeprefix("discord:").split("/")
    if len(parts) >= 3 and all(p.isdigit() for p in parts[:3]):
        return f"https://discord.com/channels/{parts[0]}/{parts[1]}/{parts[2]}"
    return None


# Bidi controls (U+202E turns the rest of a line around), and every other invisible format
# or control character, are dropped from what the bot shows: a member's query, a file name, a
# caption must not reorder or hide the text around it. Joiners stay (emoji, Indic, Persian).
_KEEP_INVISIBLE = {"\u200c", "\u200d", "\n"}


def clean(text: str) -> str:
    """`text` without bidi controls and other invisible format/control characters."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(c for c in text if c in _KEEP_INVISIBLE
                   or unicodedata.category(c) not in ("Cf", "Cc", "Zl", "Zp"))


def _clip(s: str, n: int) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"


def _thumbnail(path: Path, side: int, quality: int, store=None) -> bytes | None:
    """A result's JPEG thumbnail, cached by the file's identity: decoding and re-encoding a
    photo is most of a page's rendering, and results repeat (page turns, popular queries).
    `store`: the collection's `index.thumbnails.ThumbnailStore` (made once, kept on disk)."""
    if store is not None:
        return store.get(path, side, quality)
    try:
        st = path.stat()
    except OSError:  # open_image says what is wrong, in one line
        return _make_thumbnail(str(path), side, quality)
    return _cached_thumbnail(str(path), st.st_mtime_ns, st.st_size, side, quality)


@functools.lru_cache(maxsize=THUMBNAIL_CACHE)
def _cached_thumbnail(path: str, mtime_ns: int, size: int, side: int, quality: int) -> bytes | None:
    return _make_thumbnail(path, side, quality)


def _make_thumbnail(path: str, side: int, quality: int) -> bytes | None:
    try:
        return thumbnail_jpeg(open_image(Path(path), draft=side), max_side=side, quality=quality)
    except ClipfindError as e:
        log.warning("no thumbnail for a result: %s", e)
        return None


def _local_file(source: str) -> bool:
    return bool(source) and not _is_url(source) and not source.startswith("discord:")


def prefetch_thumbnails(hits: Sequence, store, thumbnail_size: int = 512) -> int:
    """Make (once, into `store`) the thumbnails a page of `hits` will show, so that turning
    to it only reads them; returns how many local results it has. Call it in a thread."""
    paths = [Path(h.item.source) for h in list(hits)[:MAX_FILES] if _local_file(h.item.source or "")]
    for p in paths:
        store.get(p, thumbnail_size, 85)
    return len(paths)


def make_cards(hits: Sequence, *, thumbnail_size: int = 512, budget: int = PAGE_BUDGET,
               max_files: int = MAX_FILES, thumbnails=None) -> list[Card]:
    """Cards for a page of hits (engine `Hit`s). Reads (and, when not cached, resizes) local
    files: call it in a thread. Thumbnails shrink until the page fits `budget`; past
    `max_files` a local result is shown without its picture. `thumbnails`: the store that
    keeps them (index.thumbnails), else an in-process cache."""
    hits = list(hits)[:MAX_EMBEDS]
    local: dict[int, Path] = {}
    cards: list[Card] = []
    for i, hit in enumerate(hits):
        item = hit.item
        source = item.source or ""
        title = _clip(item.title or "", 200)
        kw: dict = {"rank": hit.rank, "score": float(hit.score), "credit": _clip(item.credit or "", 200)}
        page = item.page_url or None
        if _is_url(source):
            image = source if source != item.page_url else _unsplash_image(source)
            cards.append(Card(title=title or _host(source), link=page or source, image_url=image,
                              source=_host(page or source), **kw))
        elif source.startswith("discord:"):
            cards.append(Card(title=title or "image posted on Discord", link=_discord_link(source),
                              source="Discord", **kw))
        else:
            name = Path(source).name
            cards.append(Card(title=title or Path(source).stem, link=page, source=name, **kw))
            if len(local) < max_files:
                local[i] = Path(source)
    side, quality = thumbnail_size, 85
    thumbs: dict[int, bytes | None] = {}
    while local:
        thumbs = {i: _thumbnail(p, side, quality, thumbnails) for i, p in local.items()}
        total = sum(len(t) for t in thumbs.values() if t)
        if total <= budget or side <= 64:
            break
        side, quality = max(64, side // 2), 75
    used = 0
    for i, data in thumbs.items():
        if data is None or used + len(data) > budget:
            continue
        used += len(data)
        c = cards[i]
        cards[i] = replace(c, image_url=None, file=FileOut(
            f"result-{c.rank}.jpg", data, f"result {c.rank}: {c.title}"[:1000]))
    return [replace(c, copies=tuple(_copy_link(x.item) for x in getattr(h, "copies", ())))
            for c, h in zip(cards, hits, strict=True)]


def _copy_link(item) -> str:
    """Where a near-copy of a result is: its message, page or URL (else its file name)."""
    source = item.source or ""
    if source.startswith("discord:"):
        return _discord_link(source) or "a Discord post"
    return item.page_url or (source if _is_url(source) else Path(source).name)


def copies_text(card: Card, *, markdown: bool = True) -> str:
    """'+2 near-copies: [1](link) [2](link)' ('' without copies)."""
    n = len(card.copies)
    if not n:
        return ""
    links = [f"[{i}]({x})" if markdown and _is_url(x) else x
             for i, x in enumerate(card.copies[:10], 1)]
    more = " …" if n > 10 else ""
    return f"+{n} near-cop{'y' if n == 1 else 'ies'}: " + " ".join(links) + more


# ------------------------------------------------------------------------------- attention


@dataclass(frozen=True)
class AttentionRow:
    label: str  # the term as typed, e.g. 'red circle'
    weight: float  # the term's weight in the query
    words: tuple[tuple[str, float], ...] | None  # None: no weights for this term


def attention_rows(result) -> list[AttentionRow]:
    """One row per text term of an engine `SearchResult`, in query order."""
    terms = list(result.query.text_terms)
    weights = list(result.attention or [])
    rows = []
    for i, term in enumerate(terms):
        words = weights[i] if i < len(weights) else None
        rows.append(AttentionRow(term.text, term.weight,
                                 None if words is None else tuple((w, float(p)) for w, p in words)))
    return rows


def _fmt_weight(w: float) -> str:
    return f"{w:g}"


def _pct(p: float) -> str:
    return f"{round(p * 100)}%"


def attention_text(rows: Sequence[AttentionRow], note: str | None = None) -> str:
    """'red 41% · circle 37% · a 22%', one part per term ('×2' after terms not weighted 1)."""
    if not rows:
        return ""
    if note:
        return f"word weights: {note}"
    parts = []
    for r in rows:
        words = (" · ".join(f"{w} {_pct(p)}" for w, p in r.words) if r.words
                 else f"{r.label} (no word weights)")
        tag = "" if r.weight == 1 else f" (×{_fmt_weight(r.weight)})"
        parts.append(words + tag)
    return "word weights: " + " | ".join(parts)


_FONT_CANDIDATES = ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                    "Arial.ttf", "LiberationSans-Regular.ttf")
_fonts: dict[int, ImageFont.ImageFont] = {}


def _font(size: int):
    if size not in _fonts:
        font = None
        for name in _FONT_CANDIDATES:
            try:
                font = ImageFont.truetype(name, size)
                break
            except OSError:
                continue
        _fonts[size] = font or ImageFont.load_default(size=size)
    return _fonts[size]


BG = (43, 45, 49)  # Discord's dark theme
FG = (242, 243, 245)
DIM = (181, 186, 193)
POSITIVE = (250, 166, 26)
NEGATIVE = (88, 101, 242)
PAD, GAP, BOX_PAD = 12, 6, 8
WORD_SIZE, PCT_SIZE, LABEL_W = 20, 14, 64
MAX_WIDTH = 1200


@functools.lru_cache(maxsize=4096)
def _glyphs(text: str, size: int) -> tuple[Image.Image, int, int]:
    """`text` rendered once as a mask, with its offset from the point it is drawn at: words
    and percentages repeat across replies, so each is laid out once."""
    left, top, right, bottom = _font(size).getbbox(text)
    mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
    ImageDraw.Draw(mask).text((-left, -top), text, font=_font(size), fill=255)
    return mask, left, top


def _text_w(text: str, size: int) -> int:
    mask, _, _ = _glyphs(text, size)
    return mask.width if text else 0


def _draw_text(img: Image.Image, xy: tuple[int, int], text: str, size: int, fill) -> None:
    """ImageDraw.text from the cached mask (same pixels, no layout)."""
    if not text:
        return
    mask, left, top = _glyphs(text, size)
    img.paste(fill, (xy[0] + left, xy[1] + top), mask)


def attention_png(rows: Sequence[AttentionRow]) -> bytes:
    """The attention picture: one line per text term (long terms wrap)."""
    box_h = BOX_PAD + WORD_SIZE + 4 + PCT_SIZE + BOX_PAD
    # lay out: a list of lines, each [(x, word, pct, intensity, colour)]
    lines: list[tuple[str, list[tuple[int, int, str, str, float]]]] = []
    row_lines: list[int] = []
    width = 0
    label_w = max([LABEL_W] + [_text_w(f"×{_fmt_weight(r.weight)}", WORD_SIZE) + 2 * GAP
                               for r in rows])
    for r in rows:
        colour = POSITIVE if r.weight > 0 else NEGATIVE
        items = (list(r.words) if r.words else [(f"{r.label} — no word weights", -1.0)])
        top = max((p for _, p in items), default=0.0)
        x = PAD + label_w
        cur: list = []
        first = True
        n = 0
        for word, p in items:
            pct = _pct(p) if p >= 0 else ""
            w = max(_text_w(word, WORD_SIZE), _text_w(pct, PCT_SIZE)) + 2 * BOX_PAD
            if cur and x + w > MAX_WIDTH - PAD:
                lines.append((f"×{_fmt_weight(r.weight)}" if first else "", cur))
                first, cur, x = False, [], PAD + label_w
                n += 1
            intensity = (p / top) if top > 0 and p >= 0 else 0.0
            cur.append((x, w, word, pct, intensity, colour))
            x += w + GAP
            width = max(width, x - GAP + PAD)
        lines.append((f"×{_fmt_weight(r.weight)}" if first else "", cur))
        row_lines.append(n + 1)
    height = PAD * 2 + len(lines) * box_h + max(0, len(lines) - 1) * GAP
    img = Image.new("RGB", (max(width, 200), max(height, box_h + 2 * PAD)), BG)
    draw = ImageDraw.Draw(img)
    y = PAD
    for label, cur in lines:
        if label:
            _draw_text(img, (PAD, y + BOX_PAD), label, WORD_SIZE, DIM)
        for x, w, word, pct, intensity, colour in cur:
            fill = tuple(round(b + (c - b) * (0.15 + 0.85 * intensity)) for b, c in zip(BG, colour, strict=True))
            draw.rounded_rectangle((x, y, x + w, y + box_h), radius=6, fill=fill)
            dark = 0.299 * fill[0] + 0.587 * fill[1] + 0.114 * fill[2] > 120  # luma
            _draw_text(img, (x + BOX_PAD, y + BOX_PAD), word, WORD_SIZE, (20, 20, 20) if dark else FG)
            if pct:
                _draw_text(img, (x + BOX_PAD, y + BOX_PAD + WORD_SIZE + 4), pct, PCT_SIZE,
                           (50, 50, 50) if dark else DIM)
        y += box_h + GAP
    info = PngInfo()
    info.add_text("Title", "clipfind word weights")
    info.add_text("Description", attention_text(rows))
    info.add_text("Rows", str(len(rows)))
    info.add_text("Lines", ",".join(str(n) for n in row_lines))
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=1, pnginfo=info)  # (optimize: most of the time)
    return out.getvalue()


# ------------------------------------------------------------------------------- Discord


def _embed(card: Card):
    import discord

    title = f"#{card.rank} · {card.title}" if card.title else f"#{card.rank}"
    embed = discord.Embed(title=_clip(clean(title), 256), url=card.link or None, colour=EMBED_COLOUR)
    desc = [card.credit] if card.credit else []
    if card.source:
        desc.append(f"source: {card.source}")
    if card.copies:
        desc.append(copies_text(card))
    if desc:
        embed.description = _clip(clean("\n".join(desc)), 1000)
    embed.set_footer(text=f"score {card.score:.3f}")
    if card.file is not None:
        embed.set_image(url=f"attachment://{card.file.name}")
    elif card.image_url:
        embed.set_image(url=card.image_url)
    return embed


def no_controls(missing: Sequence[str]) -> str:
    """What a page with more results says instead of pointing at controls it does not have."""
    if not missing:
        return " · more results exist (the paging controls could not be added here)"
    need = " and ".join(missing)
    return f" · more results exist (I need the {need} permission{'s' if len(missing) > 1 else ''} here to turn pages)"


def _head(reply: Reply, instead_of_more: str | None) -> str:
    if instead_of_more is None:
        return reply.text
    return reply.text.replace(MORE, instead_of_more).replace(WEAK_MORE, instead_of_more)


def content_of(reply: Reply, *, instead_of_more: str | None = None) -> str:
    """The message text; `instead_of_more`: the message has no paging controls, this replaces
    the pointer at them."""
    text = _head(reply, instead_of_more)
    if reply.attention_text:
        text = f"{text}\n{reply.attention_text}" if text else reply.attention_text
    return _clip_lines(clean(text), MAX_CONTENT)


def text_page(reply: Reply, missing: Sequence[str], *, instead_of_more: str | None = None) -> str:
    """A page of results as text alone (rank, score, title, credit, link), for a channel
    where the bot may not embed or upload; says which permission it lacks."""
    head = _head(reply, instead_of_more)
    need = " and ".join(missing)
    note = (f"(I need the {need} permission{'s' if len(missing) > 1 else ''} here to show "
            "the pictures)" if missing else "(the pictures could not be shown here)")
    lines = []
    for c in reply.cards:
        parts = [f"**#{c.rank}** {c.score:.3f}", _clip(c.title, 100)]
        if c.credit:
            parts.append(_clip(c.credit, 100))
        if c.link:
            parts.append(f"<{c.link}>")
        if c.copies:
            parts.append(f"+{len(c.copies)} near-cop{'y' if len(c.copies) == 1 else 'ies'}")
        lines.append(" · ".join(parts))
    tail = [reply.attention_text] if reply.attention_text else []
    text = "\n".join([head, *lines, *tail, note])
    if len(text) > MAX_CONTENT:  # drop results from the end rather than cut the note
        while lines and len(text) > MAX_CONTENT:
            lines.pop()
            text = "\n".join([head, *lines, "…", *tail, note])
    return _clip_lines(clean(text), MAX_CONTENT)


def _clip_lines(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def missing_permissions(reply: Reply, permissions) -> list[str]:
    """The permissions a page of results needs that `permissions` (discord.Permissions, or
    None when unknown) lacks: Embed Links for the cards, Attach Files for uploads."""
    if permissions is None or not reply.cards:
        return []
    missing = [] if permissions.embed_links else ["Embed Links"]
    if reply.files and not permissions.attach_files:
        missing.append("Attach Files")
    return missing


def to_discord(reply: Reply, *, missing: Sequence[str] = (), instead_of_more: str | None = None,
               text_only: bool = False) -> dict:
    """`content`, `embeds` and `files` for Messageable.send / Message.edit (`attachments`).

    `missing` permissions (or `text_only`): the results as text, no embeds, no files.
    `instead_of_more`: the message has no paging controls (see content_of)."""
    import discord

    if (missing or text_only) and reply.cards:
        return {"content": text_page(reply, missing, instead_of_more=instead_of_more),
                "embeds": [], "files": []}
    embeds = [_embed(c) for c in reply.cards[:MAX_EMBEDS]]
    files = [discord.File(io.BytesIO(f.data), filename=f.name,
                          description=clean(f.description) or None)
             for f in reply.files[:MAX_FILES]]
    return {"content": content_of(reply, instead_of_more=instead_of_more) or None, "embeds": embeds,
            "files": files}
