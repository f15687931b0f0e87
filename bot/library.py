"""The server image library: the images members post in chosen channels, per server.

Each server (guild) has its own collection, a namespace of `index.namespaces.Namespaces`
under `library_root/<guild id>/`, so no search, page or message in one server can reach
another server's items. In the collection's store, the record "library" (one JSON value,
written whole: `Engine.write_record`) holds the server's channels and, for each, how far the
history has been read, so a bot shard on any machine carries on where another stopped:

    {"version": 1, "channels": {"<channel id>": {"last": <message id>, "done": bool,
      "scanned": n, "indexed": n, "until": <message id>, "status": [channel, message],
      "paused": "why" | null}}}

A library from before this kept it in `library.json` beside the collection; it moves into
the store when the library is first opened (`load_channels`), the file renamed, kept.

The collection's own database knows every post of every stored picture (the engine's
provenance: `Engine.known`, `Engine.forget_posts`): the collection stores a picture once
per server (by content hash) and its item names one post of it; the others are recorded
beside it. So a picture stays while any post of it remains, and an edit that removes an
attachment finds the picture it held. A library from before this kept its posts in
`posts.sqlite`; they move into the collection when it is first opened (`migrate_posts`).

`last` is the newest message such that every message up to it has been handled (its
images stored, or found not to be images). It only moves after the images of the messages
before it are committed, so a killed backfill resumes there: nothing lost; what was
committed after the last save is found again by its source (or content hash) and not
stored twice (sources the collection knows, as items or posts, are not read again).

- Backfill reads a channel oldest to newest in chunks of a few images, each one
  `Engine.add_images(priority=BULK)` call: one short forward pass, so a search (priority
  SEARCH) waits at most for the pass in flight. Progress is shown by editing one message.
- Live: `on_message` indexes new image attachments of library channels at once; on start
  every channel catches up from its `last` (messages posted while the bot was away).
- Only images: by content type (or file name when there is none), by size
  (`library_max_bytes`, `max_image_pixels` from the attachment's metadata) and by decoding
  (ImageError from the engine). Bots' messages and spoilers are skipped. The same picture is
  stored once per server (the engine dedupes by content hash within the guild, and records
  its other posts).
- Deletions: a deleted message (one or in bulk), an edit that removes attachments, a
  deleted or removed channel forget their posts; a picture with no post left loses its item
  and vector, one that another post still holds is re-pointed at that post, in one
  transaction of the collection (`GuildLibrary.forget`). The bot leaving the server drops everything. A guild's writes
  and removals are serialised by one lock, so a removal never races a commit in flight. A
  result whose message or attachment turns out to be gone when it is shown (deleted or
  edited while the bot was away) is removed then.
- Results show the picture through a fresh attachment URL (CDN URLs expire): the message
  is fetched again, with a small cache; plus who posted it, when, and a jump link.
- Pictures stored before the engine made perceptual hashes (what tells near-copies apart,
  `Engine.rehash`) get theirs once the bot is connected: each one's post is fetched again
  for a fresh attachment URL and the picture downloaded, in the background, once per
  library and process start; a post deleted since is left to the deletion handling.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import discord

from index import (
    BULK,
    IMAGE_EXTENSIONS,
    Engine,
    Namespaces,
    NewItem,
    content_hash,
)
from index.errors import Busy, ClipfindError, StoreError

from .config import Settings
from .core import SearchScope

log = logging.getLogger(__name__)

STATE_RECORD = "library"  # the store record holding a server's channels and progress
STATE_FILE = "library.json"  # where libraries from before the record kept it
POSTS_FILE = "posts.sqlite"  # where libraries from before the engine's provenance kept posts
CHUNK_IMAGES = 8  # images per add_images call at most: one short BULK pass
PASS_BUDGET_S = 0.1  # ... and fewer when the model is slow: a search waits for one such pass
CHUNK_MESSAGES = 100  # messages per chunk at most (one history page)
DOWNLOADS = 4  # attachment downloads at once, per library
DELETED_MEMORY = 5000  # recently deleted message ids remembered per server
EMPTY = "this server's library is empty so far"


class ChunkSizer:
    """How many pictures go into one BULK call: at most CHUNK_IMAGES, and about as many as
    the model encodes in PASS_BUDGET_S (measured), so the pass a search may have to wait
    for stays short whatever the model and device (ViT-B-32 on a CPU: one picture)."""

    def __init__(self) -> None:
        self.per_image: float | None = None  # seconds per picture, smoothed

    def size(self) -> int:
        if self.per_image is None:
            return 1  # measure first
        return max(1, min(CHUNK_IMAGES, int(PASS_BUDGET_S / max(self.per_image, 1e-6))))

    def record(self, n: int, seconds: float) -> None:
        if n > 0:
            x = seconds / n
            self.per_image = x if self.per_image is None else 0.7 * self.per_image + 0.3 * x


@dataclass
class ChannelState:
    last: int = 0  # every message up to this id is handled
    done: bool = False  # the history was read up to the present at least once
    scanned: int = 0  # messages read by the backfill
    indexed: int = 0  # images stored by the backfill
    until: int = 0  # the newest message when the current backfill started (for the %)
    status: list[int] | None = None  # [channel id, message id] of the progress message
    paused: str | None = None  # why the backfill stopped (missing permissions)

    def progress(self, channel_id: int) -> float | None:
        """Fraction of the channel's life read so far (by snowflake time), if known."""
        if self.done:
            return 1.0
        if not self.until or self.until <= channel_id:
            return None
        start, end = channel_id >> 22, self.until >> 22
        return max(0.0, min(1.0, ((self.last >> 22) - start) / max(1, end - start))) if self.last else 0.0


def migrate_posts(path: Path, guild_id: int, engine: Engine) -> int:
    """Move the posts of a library from before the engine's provenance (`posts.sqlite`)
    into its collection, then retire the file (renamed, kept). Idempotent: a run killed
    before the rename records the same posts again. How many posts were read."""
    old = path / POSTS_FILE
    if not old.exists():
        return 0
    cols = ("source", "title", "page_url", "channel_id", "message_id", "attachment_id",
            "author_id", "posted_at", "content_hash")
    try:
        db = sqlite3.connect(old)  # not read-only: a killed writer's WAL is replayed
        try:
            rows = db.execute(f"SELECT {', '.join(cols)} FROM posts").fetchall()
        finally:
            db.close()
    except sqlite3.Error as e:
        raise StoreError(f"cannot read {old} to move its posts into the collection: {e}; "
                         "move the file away to start the posts afresh") from e
    posts = [NewItem(**dict(zip(cols, r, strict=True)), guild_id=guild_id) for r in rows]
    for i in range(0, len(posts), 500):
        engine.add_posts(posts[i:i + 500])
    old.replace(old.with_name(POSTS_FILE + ".migrated"))
    for extra in ("-wal", "-shm"):
        with contextlib.suppress(OSError):
            (path / (POSTS_FILE + extra)).unlink()
    return len(posts)


@dataclass
class GuildLibrary:
    guild_id: int
    engine: Engine
    path: Path
    channels: dict[int, ChannelState] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: dict[int, asyncio.Task] = field(default_factory=dict)  # channel -> backfill
    deleted: deque = field(default_factory=lambda: deque(maxlen=DELETED_MEMORY))
    deleted_set: set = field(default_factory=set)
    live_inflight: dict[int, set] = field(default_factory=dict)  # channel -> message ids
    gone: bool = False
    saved_at: float = 0.0

    def forget(self, channel_id: int, message_ids: list[int] | None = None,
               keep: set[int] | None = None) -> int:
        """Forget the posts of a channel, or of some of its messages, or (with `keep`, the
        attachment ids a message still has after an edit) those edited away. Their pictures
        leave the library, except those another post still holds: such a picture's item is
        re-pointed at the oldest post left (same item, same vector), in the same transaction.
        Returns how many pictures left. In a thread, with `lock` held."""
        return len(self.engine.forget_posts(guild_id=self.guild_id, channel_id=channel_id,
                                            message_ids=message_ids,
                                            keep_attachments=keep).removed)

    def forget_deleted(self, ids) -> None:
        for i in ids:
            if len(self.deleted) == self.deleted.maxlen:
                self.deleted_set.discard(self.deleted[0])
            self.deleted.append(i)
            self.deleted_set.add(i)

    def state_json(self) -> str:
        obj = {"version": 1, "channels": {str(c): asdict(s) for c, s in self.channels.items()}}
        return json.dumps(obj, sort_keys=True, separators=(",", ":"))

    def save_state(self) -> None:
        """Write the channels and their progress to the store (blocking: in a thread)."""
        self.engine.write_record(STATE_RECORD, self.state_json())


def parse_channels(text: str, where: str) -> dict[int, ChannelState]:
    try:
        obj = json.loads(text)
        names = set(ChannelState.__dataclass_fields__)
        return {int(c): ChannelState(**{k: v for k, v in s.items() if k in names})
                for c, s in obj.get("channels", {}).items()}
    except (ValueError, TypeError, AttributeError) as e:
        log.error("library state %s is unreadable (%s): its channels catch up from the start",
                  where, e)
        return {}


def load_channels(engine: Engine, path: Path) -> dict[int, ChannelState]:
    """A server's channels and progress, from its store record; a `library.json` left by an
    older version beside the collection moves in first (then renamed, kept). Blocking."""
    text = engine.read_record(STATE_RECORD)
    old = path / STATE_FILE
    if text is None and old.exists():
        try:
            text = old.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            log.error("cannot read %s (%s): its channels catch up from the start", old, e)
            return {}
        channels = parse_channels(text, str(old))
        engine.write_record(STATE_RECORD, GuildLibrary(0, engine, path, channels).state_json())
        old.replace(old.with_name(STATE_FILE + ".migrated"))
        log.info("library state %s moved into the store", old)
        return channels
    return {} if text is None else parse_channels(text, f"record {STATE_RECORD}")


def is_indexable(att: discord.Attachment, settings: Settings) -> str | None:
    """None when the attachment should be indexed; else why not (for the log)."""
    ctype = (att.content_type or "").split(";", 1)[0].strip().lower()
    if ctype:
        if not ctype.startswith("image/"):
            return f"not an image ({ctype})"
    elif Path(att.filename).suffix.lower() not in IMAGE_EXTENSIONS:
        return "not an image file"
    if att.is_spoiler():
        return "a spoiler"
    if att.size is not None and att.size > settings.library_max_bytes:
        return f"too large ({att.size} bytes)"
    if att.width and att.height and att.width * att.height > settings.max_image_pixels:
        return f"too many pixels ({att.width}x{att.height})"
    return None


def source_of(message: discord.Message, att: discord.Attachment) -> str:
    return f"discord:{message.guild.id}/{message.channel.id}/{message.id}/{att.id}"


def _when(ts: float | None) -> str:
    return f" on <t:{int(ts)}:f>" if ts else ""


class Library:
    """Every server's library; the cog (bot/cogs/library.py) is its Discord face."""

    def __init__(self, bot, settings: Settings, spaces: Namespaces, global_engine: Engine | None):
        self.bot = bot
        self.settings = settings
        self.spaces = spaces
        self.global_engine = global_engine
        self.guilds: dict[int, GuildLibrary] = {}
        self.closed = False
        self.progress_every_s = 3.0  # status message edits at most this often
        self.url_ttl_s = 600.0  # fresh attachment URLs are reused this long
        self.save_every_s = 5.0  # live progress is persisted at most this often
        self._urls: dict[tuple[int, int], tuple[float, dict | None]] = {}
        self._downloads = asyncio.Semaphore(DOWNLOADS)
        self._live: set[asyncio.Task] = set()
        self._rehash: dict[int, asyncio.Task] = {}  # guild -> its pictures' hashes being made
        self._rehash_turn = asyncio.Semaphore(1)  # one library at a time (threads, fetches)
        self.sizer = ChunkSizer()

    # -- life cycle ---------------------------------------------------------------------------
    async def open(self) -> None:
        """Open the libraries on disk (the collections and their state files)."""
        for key in await asyncio.to_thread(self.spaces.keys):
            if not key.isdigit() or not self.mine(int(key)):
                continue
            try:
                await self._open_guild(int(key), create=False)
            except ClipfindError as e:
                log.error("library of server %s cannot be opened: %s", key, e)

    def mine(self, guild_id: int) -> bool:
        """Whether this process runs the shard of that server: only then does it open (and
        write) its library; another shard process owns the others'."""
        count, ids = getattr(self.bot, "shard_count", None), getattr(self.bot, "shard_ids", None)
        if not count or count <= 1 or ids is None:
            return True
        return (guild_id >> 22) % count in ids

    async def _open_guild(self, guild_id: int, create: bool) -> GuildLibrary | None:
        g = self.guilds.get(guild_id)
        if g is not None:
            return g
        engine = await asyncio.to_thread(self.spaces.get, str(guild_id), create)
        if engine is None:
            return None
        path = self.spaces.root / str(guild_id)
        moved = await asyncio.to_thread(migrate_posts, path, guild_id, engine)
        if moved:
            log.info("library of server %s: %d posts moved from %s into its collection",
                     guild_id, moved, POSTS_FILE)
        channels = await asyncio.to_thread(load_channels, engine, path)
        g = self.guilds.get(guild_id)  # opened meanwhile
        if g is not None:
            return g
        g = self.guilds[guild_id] = GuildLibrary(guild_id, engine, path, channels)
        return g

    async def resume(self) -> None:
        """After connecting: every channel catches up from where it stopped."""
        for g in list(self.guilds.values()):
            guild = self.bot.get_guild(g.guild_id)
            if guild is None or guild.unavailable:
                continue  # not (yet) seen: keep its library, do nothing
            for cid in list(g.channels):
                channel = guild.get_channel(cid)
                if channel is None:
                    log.info("library channel %s of server %s is gone: forgetting it", cid, g.guild_id)
                    await self.remove_channel(g.guild_id, cid)
                elif not g.channels[cid].paused:
                    self._start_backfill(g, channel)
            if g.guild_id not in self._rehash:
                self._rehash[g.guild_id] = asyncio.create_task(
                    self._rehash_guild(g), name=f"clipfind-rehash-{g.guild_id}")

    async def close(self) -> None:
        self.closed = True
        tasks = [t for g in self.guilds.values() for t in g.tasks.values()] + list(self._live)
        tasks += list(self._rehash.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for g in self.guilds.values():
            if not g.gone:
                try:
                    await asyncio.to_thread(g.save_state)
                except ClipfindError as e:
                    log.warning("library of server %s: progress not saved at close: %s",
                                g.guild_id, e)
        await asyncio.to_thread(self.spaces.close)

    # -- searching ------------------------------------------------------------------------------
    def scope(self, guild_id: int) -> SearchScope | None:
        """A server with a library searches it (plus the global collection if configured)."""
        g = self.guilds.get(guild_id)
        if g is None or g.gone:
            return None
        also = [self.global_engine] if (self.settings.library_include_global
                                        and self.global_engine is not None) else []

        async def decorate(cards, hits):
            return await self.decorate(guild_id, cards, hits)

        return SearchScope(g.engine, also, decorate, EMPTY)

    async def decorate(self, guild_id: int, cards: list, hits: list) -> list:
        """Library results: a fresh URL of the picture, who posted it, when, a jump link."""
        jobs = {}
        for hit in hits:
            it = hit.item
            if it.source.startswith("discord:") and it.channel_id and it.message_id:
                jobs[(it.channel_id, it.message_id)] = None
        found = await asyncio.gather(*(self._fresh(c, m) for c, m in jobs))
        fresh = dict(zip(jobs, found, strict=True))
        out, gone = [], []
        for card, hit in zip(cards, hits, strict=False):
            it = hit.item
            if not it.source.startswith("discord:"):
                out.append(card)
                continue
            if it.guild_id != guild_id:  # cannot happen: one collection per server
                log.error("item %s of server %s in the library of %s", it.id, it.guild_id, guild_id)
                continue
            info = fresh.get((it.channel_id, it.message_id), {})
            if info is None or ("urls" in info and it.attachment_id not in info["urls"]):
                gone.append((it, info))  # the message, or the picture on it, is gone
                out.append(replace(card, title="(deleted since)", image_url=None, link=None,
                                   credit="this post was deleted", file=None))
                continue
            name = info.get("author")
            who = f"{name} (<@{it.author_id}>)" if name else f"<@{it.author_id}>"
            credit = f"posted by {who}{_when(it.posted_at)} in <#{it.channel_id}>"
            out.append(replace(card, image_url=info.get("urls", {}).get(it.attachment_id),
                               credit=credit, source="Discord"))
        for it, info in gone:
            if info is None:
                await self.remove_messages(guild_id, it.channel_id, [it.message_id])
            else:
                await self.remove_attachments(guild_id, it.channel_id, it.message_id,
                                              set(info["urls"]))
        return out

    async def _fresh(self, channel_id: int, message_id: int) -> dict | None:
        """{'urls': {attachment id: url}, 'author': name}; None when the message is gone;
        {} when it cannot be read now."""
        key = (channel_id, message_id)
        now = time.monotonic()
        hit = self._urls.get(key)
        if hit is not None and now - hit[0] < self.url_ttl_s:
            return hit[1]
        channel = self.bot.get_channel(channel_id) or self.bot.get_partial_messageable(channel_id)
        try:
            msg = await channel.fetch_message(message_id)
        except discord.NotFound:
            info = None
        except discord.HTTPException as e:
            log.info("cannot fetch library message %s/%s: %s", channel_id, message_id, e)
            return {}
        else:
            info = {"urls": {a.id: a.url for a in msg.attachments},
                    "author": getattr(msg.author, "display_name", None)}
        if len(self._urls) > 5000:
            self._urls = {k: v for k, v in self._urls.items() if now - v[0] < self.url_ttl_s}
        self._urls[key] = (now, info)
        return info

    # -- channels ---------------------------------------------------------------------------------
    def channel_state(self, guild_id: int, channel_id: int) -> ChannelState | None:
        g = self.guilds.get(guild_id)
        return None if g is None else g.channels.get(channel_id)

    async def add_channel(self, channel, status: tuple[int, int] | None) -> ChannelState:
        """Start indexing a channel (its history, then live posts)."""
        g = await self._open_guild(channel.guild.id, create=True)
        async with g.lock:
            st = g.channels.get(channel.id)
            if st is None:
                st = g.channels[channel.id] = ChannelState()
            st.status = list(status) if status else None
            st.paused = None
            await self._save(g)
        self._start_backfill(g, channel)
        return st

    async def remove_channel(self, guild_id: int, channel_id: int) -> int | None:
        """Stop and forget a channel's images; how many went (None: it was not in the library).
        The library of a server without channels goes altogether."""
        g = self.guilds.get(guild_id)
        if g is None:
            return None
        async with g.lock:
            st = g.channels.pop(channel_id, None)
            task = g.tasks.pop(channel_id, None)
            if task is not None and task is not asyncio.current_task():
                task.cancel()  # stops at its next await; its commits check the state (lock)
            n = await asyncio.to_thread(g.forget, channel_id)
            self._urls = {k: v for k, v in self._urls.items() if k[0] != channel_id}
            if not g.channels:
                await self._drop_locked(g)
            else:
                await self._save(g)
        if st is None and not n:
            return None
        return n

    async def remove_messages(self, guild_id: int, channel_id: int, message_ids) -> int:
        g = self.guilds.get(guild_id)
        if g is None or g.gone:
            return 0
        message_ids = [int(m) for m in message_ids]
        g.forget_deleted(message_ids)
        for m in message_ids:
            self._urls.pop((channel_id, m), None)
        async with g.lock:
            if g.gone:
                return 0
            n = await asyncio.to_thread(g.forget, channel_id, message_ids)
        if n:
            log.info("library of server %s: %d images of deleted messages removed", guild_id, n)
        return n

    async def remove_attachments(self, guild_id: int, channel_id: int, message_id: int,
                                 keep: set[int]) -> int:
        """A message was edited: the pictures of the attachments not in `keep` (its
        attachment ids now) leave, unless another post holds them. How many left."""
        g = self.guilds.get(guild_id)
        if g is None or g.gone:
            return 0
        self._urls.pop((channel_id, message_id), None)
        async with g.lock:
            if g.gone:
                return 0
            n = await asyncio.to_thread(g.forget, channel_id, [message_id], set(keep))
        if n:
            log.info("library of server %s: %d images edited out of a message removed", guild_id, n)
        return n

    async def drop_guild(self, guild_id: int) -> bool:
        """The bot left the server: its library (items, vectors, state) goes."""
        g = self.guilds.get(guild_id)
        if g is None:
            return await asyncio.to_thread(self.spaces.drop, str(guild_id))
        async with g.lock:
            await self._drop_locked(g)
        return True

    async def _drop_locked(self, g: GuildLibrary) -> None:
        g.gone = True
        for t in g.tasks.values():
            if t is not asyncio.current_task():
                t.cancel()
        g.tasks.clear()
        rehash = self._rehash.pop(g.guild_id, None)
        if rehash is not None:
            rehash.cancel()
        self.guilds.pop(g.guild_id, None)
        await asyncio.to_thread(self.spaces.drop, str(g.guild_id))
        log.info("library of server %s dropped", g.guild_id)

    async def counts(self, guild_id: int) -> dict[int, int]:
        """Images stored per channel."""
        g = self.guilds.get(guild_id)
        if g is None:
            return {}
        sources = await asyncio.to_thread(g.engine.collection.stamps)
        out: dict[int, int] = {}
        for s in sources:
            parts = s.removeprefix("discord:").split("/")
            if len(parts) == 4 and parts[1].isdigit():
                out[int(parts[1])] = out.get(int(parts[1]), 0) + 1
        return out

    async def _save(self, g: GuildLibrary) -> None:
        if g.gone:
            return
        g.saved_at = time.monotonic()
        await asyncio.to_thread(g.save_state)

    # -- indexing -----------------------------------------------------------------------------------
    async def _index(self, g: GuildLibrary, channel_id: int, messages: list[discord.Message],
                     st: ChannelState | None) -> tuple[int, bool]:
        """Store the images of `messages` (one chunk). Returns (images stored, still wanted):
        False when the channel left the library meanwhile (nothing is stored then)."""
        wanted: list[tuple[discord.Message, discord.Attachment]] = []
        for m in messages:
            if m.author.bot or m.guild is None:
                continue
            for a in m.attachments:
                why = is_indexable(a, self.settings)
                if why is None:
                    wanted.append((m, a))
                else:
                    log.debug("not indexed: %s (%s)", a.filename, why)
        known = await asyncio.to_thread(g.engine.known, [source_of(m, a) for m, a in wanted])
        wanted = [(m, a) for m, a in wanted if source_of(m, a) not in known]
        datas = await asyncio.gather(*(self._download(a) for _, a in wanted))
        items, blobs = [], []
        for (m, a), data in zip(wanted, datas, strict=True):
            if data is None:
                continue
            items.append(NewItem(
                source=source_of(m, a), title=a.filename, page_url=m.jump_url,
                guild_id=m.guild.id, channel_id=channel_id, message_id=m.id, attachment_id=a.id,
                author_id=m.author.id, posted_at=m.created_at.timestamp(),
                content_hash=await asyncio.to_thread(content_hash, data)))
            blobs.append(data)
        stored, i = 0, 0
        while i == 0 or i < len(items):
            n = self.sizer.size()
            part, part_blobs = items[i:i + n], blobs[i:i + n]
            i += max(n, 1)
            async with g.lock:
                if g.gone or channel_id not in g.channels or (
                        st is not None and g.channels[channel_id] is not st):
                    return stored, False
                keep = [j for j, it in enumerate(part) if it.message_id not in g.deleted_set]
                if not keep:
                    continue
                # the engine records the posts of the pictures stored and of the repeats
                report = await self._add(g, [part[j] for j in keep], [part_blobs[j] for j in keep])
            stored += len(report.ids)
            for source, why in report.failed:
                log.info("not indexed: %s: %s", source, why)
        return stored, True

    async def _add(self, g: GuildLibrary, items, blobs):
        while True:
            try:
                t0 = time.perf_counter()
                report = await g.engine.add_images(items, blobs, priority=BULK)
                self.sizer.record(len(items), time.perf_counter() - t0)
                return report
            except Busy:
                await asyncio.sleep(0.5)  # searches fill the queue: they go first

    async def _download(self, att: discord.Attachment) -> bytes | None:
        async with self._downloads:
            try:
                data = await att.read()
            except discord.HTTPException as e:
                log.info("cannot download %s: %s", att.filename, e)
                return None
        if len(data) > self.settings.library_max_bytes:
            return None
        return data

    async def _rehash_guild(self, g: GuildLibrary) -> None:
        """The perceptual hashes of the pictures stored before them (see the module)."""
        try:
            async with self._rehash_turn:
                report = await g.engine.rehash(fetch=self._posted_bytes)
        except asyncio.CancelledError:
            raise
        except ClipfindError as e:
            log.warning("library of server %s: perceptual hashes not made: %s", g.guild_id, e)
            return
        if report.missing:
            log.info("library of server %s: %s", g.guild_id, report.summary())

    async def _posted_bytes(self, items) -> list[tuple[object, bytes | str]]:
        """Each library item with its picture's bytes, or why they cannot be had: its
        message fetched again (one fetch per message) for fresh attachment URLs."""
        by_message: dict[tuple[int, int], list] = {}
        for it in items:
            by_message.setdefault((it.channel_id, it.message_id), []).append(it)

        async def one(channel_id: int, message_id: int, its: list) -> list:
            channel = (self.bot.get_channel(channel_id)
                       or self.bot.get_partial_messageable(channel_id))
            try:
                msg = await channel.fetch_message(message_id)
            except discord.NotFound:
                return [(it, "its post was deleted") for it in its]
            except discord.HTTPException as e:
                return [(it, f"its post cannot be fetched now ({e.status})") for it in its]
            attachments = {a.id: a for a in msg.attachments}
            out = []
            for it in its:
                a = attachments.get(it.attachment_id)
                data = None if a is None else await self._download(a)
                out.append((it, data if data is not None else
                            "its picture is gone from its post or cannot be downloaded"))
            return out

        found = await asyncio.gather(*(one(c, m, its) for (c, m), its in by_message.items()))
        return [pair for part in found for pair in part]

    # -- live ---------------------------------------------------------------------------------
    async def on_message(self, message: discord.Message) -> None:
        if self.closed or message.guild is None or message.author.bot:
            return
        g = self.guilds.get(message.guild.id)
        if g is None or g.gone:
            return
        st = g.channels.get(message.channel.id)
        if st is None:
            return
        cid = message.channel.id
        if message.attachments:
            inflight = g.live_inflight.setdefault(cid, set())
            inflight.add(message.id)
            task = asyncio.current_task()
            if task is not None:
                self._live.add(task)
            try:
                await self._index(g, cid, [message], st)
            finally:
                inflight.discard(message.id)
                if task is not None:
                    self._live.discard(task)
        # move `last` when nothing older is still on its way and no backfill runs
        running = cid in g.tasks and not g.tasks[cid].done()
        inflight = g.live_inflight.get(cid, set())
        if st.done and not running and not any(i < message.id for i in inflight) \
                and g.channels.get(cid) is st and message.id > st.last:
            st.last = message.id
            if time.monotonic() - g.saved_at > self.save_every_s:
                await self._save(g)

    # -- backfill ---------------------------------------------------------------------------------
    def _start_backfill(self, g: GuildLibrary, channel) -> None:
        old = g.tasks.get(channel.id)
        if old is not None and not old.done():
            return
        task = asyncio.create_task(self._backfill(g, channel), name=f"clipfind-backfill-{channel.id}")
        g.tasks[channel.id] = task

    async def _backfill(self, g: GuildLibrary, channel) -> None:
        st = g.channels.get(channel.id)
        if st is None:
            return
        try:
            await self._backfill_body(g, channel, st)
        except asyncio.CancelledError:
            raise
        except discord.Forbidden as e:
            st.paused = "I need View Channel and Read Message History there"
            log.warning("backfill of channel %s paused: %s", channel.id, e)
            await self._report(st, channel, final=True)
        except discord.NotFound:
            log.info("channel %s is gone: forgetting it", channel.id)
            await self.remove_channel(g.guild_id, channel.id)
        except Exception:
            log.exception("backfill of channel %s failed; it resumes at the next start", channel.id)
            st.paused = "an error stopped it (see the bot's log); `library add` again resumes it"
            await self._report(st, channel, final=True)
        finally:
            if g.tasks.get(channel.id) is asyncio.current_task():
                g.tasks.pop(channel.id, None)

    async def _backfill_body(self, g: GuildLibrary, channel, st: ChannelState) -> None:
        newest = [m async for m in channel.history(limit=1)]
        st.until = newest[0].id if newest else st.last
        st.done = False if newest and newest[0].id > st.last else st.done
        last_report = 0.0
        batch: list[discord.Message] = []
        n_images = 0

        async def flush() -> bool:
            nonlocal batch, n_images, last_report
            if not batch:
                return True
            stored, wanted = await self._index(g, channel.id, batch, st)
            if not wanted:
                return False
            async with g.lock:
                if g.gone or g.channels.get(channel.id) is not st:
                    return False
                st.last = max(st.last, batch[-1].id)
                st.scanned += len(batch)
                st.indexed += stored
                await self._save(g)
            batch, n_images = [], 0
            if time.monotonic() - last_report >= self.progress_every_s:
                last_report = time.monotonic()
                await self._report(st, channel)
            return True

        after = discord.Object(st.last) if st.last else None
        async for m in channel.history(limit=None, after=after, oldest_first=True):
            if self.closed:
                return
            batch.append(m)
            n_images += len(m.attachments)
            if n_images >= CHUNK_IMAGES or len(batch) >= CHUNK_MESSAGES:
                if not await flush():
                    return
        if not await flush():
            return
        async with g.lock:
            if g.gone or g.channels.get(channel.id) is not st:
                return
            was_done, st.done, st.paused = st.done, True, None
            await self._save(g)
        if not was_done or st.status:
            await self._report(st, channel, final=True)
            async with g.lock:  # the finished progress message is not edited again
                if not g.gone and g.channels.get(channel.id) is st:
                    await self._save(g)

    async def _report(self, st: ChannelState, channel, *, final: bool = False) -> None:
        """Edit the progress message (when there is one)."""
        if not st.status:
            return
        text = progress_text(st, channel)
        try:
            where = self.bot.get_partial_messageable(st.status[0])
            await where.get_partial_message(st.status[1]).edit(content=text)
        except discord.HTTPException as e:
            log.info("cannot update the library progress message: %s", e)
            st.status = None  # deleted, or no longer ours to edit
        if final and st.done:
            st.status = None


def progress_text(st: ChannelState, channel) -> str:
    name = f"<#{channel.id}>"
    if st.paused:
        return (f"📚 {name}: indexing paused at {st.scanned:,} messages read, "
                f"{st.indexed:,} images: {st.paused}")
    if st.done:
        return (f"📚 {name}: done, {st.scanned:,} messages read, {st.indexed:,} images indexed; "
                "new images are indexed as they are posted")
    pct = st.progress(channel.id)
    share = f" ({pct:.0%})" if pct is not None else ""
    return f"📚 {name}: indexing the history{share}: {st.scanned:,} messages read, {st.indexed:,} images"
