"""Reaction paging: ◀️ ▶️ ⏹️ under a result message.

`Pages` is the state machine (no Discord in it): which message shows which result, who may
turn it, when its controls expire, and which reaction removals the bot caused itself.
`Paginator` is the Discord side: it adds the controls, listens to raw reaction events (so
messages that left the cache still page), edits the same message on a turn (embeds and
attachments replaced), removes other members' control reactions when it has Manage
Messages (and works without: the Forbidden is logged), and takes the controls off after
the timeout or ⏹️.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import render
from .core import Core, PagingState
from .reply import Reply

log = logging.getLogger(__name__)

PREV, NEXT, STOP = "◀️", "▶️", "⏹️"
WHY = "🔍"  # the heatmap of the page's results in turn (bot/why.py)
CONTROLS = (PREV, NEXT, STOP, WHY)
MAX_SESSIONS = 500  # result messages that page at once; the oldest stops first


def _norm(emoji: str) -> str:
    return emoji.replace("\ufe0f", "")


_BY_NORM = {_norm(e): e for e in CONTROLS}


def paging_missing(permissions) -> list[str]:
    """The permissions the paging controls need that `permissions` (discord.Permissions, None
    when unknown) lacks."""
    if permissions is None:
        return []
    return [name for name, ok in (("Add Reactions", permissions.add_reactions),
                                  ("Read Message History", permissions.read_message_history))
            if not ok]


class Action(enum.Enum):
    IGNORE = "ignore"
    REMOVE = "remove"  # someone else's control reaction: take it off if allowed
    PREV = "prev"
    NEXT = "next"
    STOP = "stop"
    WHY = "why"


_ACTIONS = {PREV: Action.PREV, NEXT: Action.NEXT, STOP: Action.STOP, WHY: Action.WHY}


@dataclass
class Session:
    message_id: int
    channel_id: int
    author_id: int
    state: PagingState
    reply: Reply  # what the message shows now
    deadline: float
    can_manage: bool = True  # until a removal was refused
    why_next: int = 0  # which result of the page 🔍 explains next
    view: dict = field(default_factory=dict)  # how the message renders (render.to_discord options)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)


class Pages:
    """The paging sessions, keyed by result message id."""

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic):
        self.timeout_s = timeout_s
        self.clock = clock
        self.sessions: dict[int, Session] = {}
        self._own_removals: set[tuple[int, int, str]] = set()

    def add(self, message_id: int, channel_id: int, reply: Reply, view: dict | None = None) -> Session:
        state: PagingState = reply.state
        s = Session(message_id, channel_id, state.author_id, state, reply,
                    self.clock() + self.timeout_s, view=dict(view or {}))
        self.sessions[message_id] = s
        return s

    def oldest_beyond(self, limit: int) -> list[Session]:
        """The sessions to stop so that at most `limit` remain (oldest deadline first)."""
        extra = len(self.sessions) - limit
        if extra <= 0:
            return []
        return sorted(self.sessions.values(), key=lambda s: s.deadline)[:extra]

    def get(self, message_id: int) -> Session | None:
        return self.sessions.get(message_id)

    def drop(self, message_id: int) -> Session | None:
        self._own_removals = {k for k in self._own_removals if k[0] != message_id}
        return self.sessions.pop(message_id, None)

    def touch(self, s: Session) -> None:
        s.deadline = self.clock() + self.timeout_s

    def expired(self) -> list[Session]:
        now = self.clock()
        return [s for s in self.sessions.values() if s.deadline <= now]

    def expect_removal(self, message_id: int, user_id: int, emoji: str) -> None:
        """The bot is about to remove this reaction; its removal event is no press."""
        self._own_removals.add((message_id, user_id, _norm(emoji)))

    def decide(self, message_id: int, user_id: int, emoji: str, *, added: bool,
               bot_id: int | None) -> Action:
        """What a reaction event means.

        Added by the asker: a press. Removed by the asker: a press too (without Manage
        Messages the bot cannot take the asker's reaction off, so toggling must work),
        unless the bot removed it itself. Anyone else's control reaction: REMOVE when
        added, else nothing.
        """
        if user_id == bot_id:
            return Action.IGNORE
        s = self.sessions.get(message_id)
        key = _norm(emoji)
        if s is None or key not in _BY_NORM:
            return Action.IGNORE
        if user_id != s.author_id:
            return Action.REMOVE if added else Action.IGNORE
        if not added:
            own = (message_id, user_id, key)
            if own in self._own_removals:
                self._own_removals.discard(own)
                return Action.IGNORE
        return _ACTIONS[_BY_NORM[key]]


class Paginator:
    """Discord glue for `Pages`."""

    def __init__(self, bot, core: Core, timeout_s: float):
        self.bot = bot
        self.core = core
        self.pages = Pages(timeout_s)
        self._tasks: set[asyncio.Task] = set()
        self.why: Callable | None = None  # async (session, user_id): the 🔍 control (cogs/why.py)

    def _message(self, channel_id: int, message_id: int):
        return self.bot.get_partial_messageable(channel_id).get_partial_message(message_id)

    async def attach(self, message, reply: Reply, view: dict | None = None) -> None:
        """Put the controls under a freshly sent result message (rendered with `view`, the
        options of render.to_discord, on every turn)."""
        import discord

        session = self.pages.add(message.id, message.channel.id, reply, view)
        for old in self.pages.oldest_beyond(MAX_SESSIONS):
            await self._stop(old)
        try:
            for emoji in CONTROLS:
                await message.add_reaction(emoji)
        except discord.Forbidden:
            log.warning("no paging controls in channel %s: missing Add Reactions or Read "
                        "Message History permission", message.channel.id)
            # a page must not point at controls it does not have
            self.pages.drop(session.message_id)
            guild = getattr(message, "guild", None)
            perms = (message.channel.permissions_for(guild.me)
                     if guild is not None and guild.me is not None else None)
            view = {**session.view, "instead_of_more": render.no_controls(paging_missing(perms))}
            try:
                await message.edit(content=render.to_discord(reply, **view)["content"])
            except discord.HTTPException as e:
                log.debug("could not take the paging hint off: %s", e)
            return
        except discord.HTTPException as e:
            log.warning("could not add paging controls: %s", e)
        task = asyncio.create_task(self._expire(session.message_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _expire(self, message_id: int) -> None:
        while (s := self.pages.get(message_id)) is not None:
            left = s.deadline - self.pages.clock()
            if left <= 0:
                await self._stop(s)
                return
            await asyncio.sleep(left)

    async def on_reaction(self, payload, *, added: bool) -> None:
        import discord

        bot_id = self.bot.user.id if self.bot.user else None
        action = self.pages.decide(payload.message_id, payload.user_id, str(payload.emoji),
                                   added=added, bot_id=bot_id)
        if action is Action.IGNORE:
            return
        s = self.pages.get(payload.message_id)
        if s is None:
            return
        if action is Action.REMOVE:
            await self._remove(s, payload.user_id, str(payload.emoji))
            return
        if action is Action.WHY:  # not under the lock: a heatmap must not hold up page turns
            self.pages.touch(s)
            if added and s.can_manage:
                await self._remove(s, payload.user_id, str(payload.emoji))
            if self.why is not None:
                await self.why(s, payload.user_id)
            return
        async with s.lock:
            if self.pages.get(s.message_id) is not s:
                return  # stopped meanwhile
            if action is Action.STOP:
                await self._stop(s)
                return
            self.pages.touch(s)
            if added and s.can_manage:
                await self._remove(s, payload.user_id, str(payload.emoji))
            try:
                await self._turn(s, -1 if action is Action.PREV else 1)
            except discord.HTTPException as e:
                log.warning("page turn in channel %s failed: %s", s.channel_id, e)

    async def _remove(self, s: Session, user_id: int, emoji: str) -> None:
        import discord

        if not s.can_manage:
            return
        self.pages.expect_removal(s.message_id, user_id, emoji)
        try:
            await self._message(s.channel_id, s.message_id).remove_reaction(
                emoji, discord.Object(user_id))
        except discord.Forbidden:
            s.can_manage = False
            self.pages._own_removals.discard((s.message_id, user_id, _norm(emoji)))
            log.info("cannot remove reactions in channel %s (no Manage Messages); "
                     "paging works without it", s.channel_id)
        except discord.HTTPException as e:
            log.debug("removing a reaction failed: %s", e)

    async def _turn(self, s: Session, delta: int) -> None:
        reply = await self.core.turn(s.state, delta)
        msg = self._message(s.channel_id, s.message_id)
        if reply.is_page:
            kw = render.to_discord(reply, **s.view)
            await msg.edit(content=kw["content"], embeds=kw["embeds"], attachments=kw["files"])
            s.state, s.reply = reply.state, reply
            s.why_next = 0
        else:  # a notice: keep the page, say why it did not turn
            base = render.to_discord(s.reply, **s.view)["content"] or ""
            await msg.edit(content=render._clip_lines(f"{base}\n*{reply.text}*", render.MAX_CONTENT))

    async def _stop(self, s: Session) -> None:
        """Forget the session and take the bot's controls off (members' reactions stay)."""
        import discord

        self.pages.drop(s.message_id)
        msg = self._message(s.channel_id, s.message_id)
        for emoji in CONTROLS:
            try:
                await msg.remove_reaction(emoji, self.bot.user)
            except discord.HTTPException as e:
                log.debug("removing the paging controls failed: %s", e)
                return

    async def close(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        self._tasks.clear()
        self.pages.sessions.clear()
