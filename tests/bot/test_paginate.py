"""bot/paginate.py: the paging state machine (who may turn, what a reaction means, expiry)."""

from __future__ import annotations

import pytest

from bot.core import PagingState
from bot.paginate import CONTROLS, NEXT, PREV, STOP, Action, Pages
from bot.reply import Reply

BOT, ALICE, BOB = 99, 1, 2
MSG, CHAN = 1000, 50


def page_reply(author: int = ALICE) -> Reply:
    return Reply("page", state=PagingState(author, "red", [], 0, 5, True, "red*1", 5))


@pytest.fixture
def pages():
    now = [0.0]
    p = Pages(60, clock=lambda: now[0])
    p.now = now  # type: ignore[attr-defined]
    p.add(MSG, CHAN, page_reply())
    return p


def test_the_asker_turns_pages(pages):
    assert pages.decide(MSG, ALICE, NEXT, added=True, bot_id=BOT) is Action.NEXT
    assert pages.decide(MSG, ALICE, PREV, added=True, bot_id=BOT) is Action.PREV
    assert pages.decide(MSG, ALICE, STOP, added=True, bot_id=BOT) is Action.STOP


def test_emoji_without_variation_selector(pages):
    assert pages.decide(MSG, ALICE, "▶", added=True, bot_id=BOT) is Action.NEXT
    assert pages.decide(MSG, ALICE, "◀", added=True, bot_id=BOT) is Action.PREV


def test_others_reactions_are_removed_not_obeyed(pages):
    for emoji in CONTROLS:
        assert pages.decide(MSG, BOB, emoji, added=True, bot_id=BOT) is Action.REMOVE
        assert pages.decide(MSG, BOB, emoji, added=False, bot_id=BOT) is Action.IGNORE


def test_ignored_events(pages):
    assert pages.decide(MSG, BOT, NEXT, added=True, bot_id=BOT) is Action.IGNORE  # its own
    assert pages.decide(MSG, ALICE, "👍", added=True, bot_id=BOT) is Action.IGNORE
    assert pages.decide(MSG, BOB, "👍", added=True, bot_id=BOT) is Action.IGNORE  # not a control
    assert pages.decide(MSG + 1, ALICE, NEXT, added=True, bot_id=BOT) is Action.IGNORE


def test_removal_by_the_asker_is_a_press_unless_the_bot_removed_it(pages):
    # without Manage Messages the asker toggles: un-reacting is a press too
    assert pages.decide(MSG, ALICE, NEXT, added=False, bot_id=BOT) is Action.NEXT
    # the bot took the asker's reaction off: that removal event is no press (once)
    pages.expect_removal(MSG, ALICE, NEXT)
    assert pages.decide(MSG, ALICE, "▶", added=False, bot_id=BOT) is Action.IGNORE
    assert pages.decide(MSG, ALICE, NEXT, added=False, bot_id=BOT) is Action.NEXT


def test_expiry_and_touch(pages):
    s = pages.get(MSG)
    assert s.author_id == ALICE and s.channel_id == CHAN
    assert pages.expired() == []
    pages.now[0] = 50
    pages.touch(s)  # a turn restarts the clock
    pages.now[0] = 100
    assert pages.expired() == []
    pages.now[0] = 111
    assert pages.expired() == [s]
    pages.expect_removal(MSG, ALICE, NEXT)
    assert pages.drop(MSG) is s
    assert pages.get(MSG) is None and pages._own_removals == set()
    assert pages.decide(MSG, ALICE, NEXT, added=True, bot_id=BOT) is Action.IGNORE


def test_sessions_are_per_message():
    p = Pages(60)
    p.add(1, CHAN, page_reply(ALICE))
    p.add(2, CHAN, page_reply(BOB))
    assert p.decide(1, ALICE, NEXT, added=True, bot_id=BOT) is Action.NEXT
    assert p.decide(2, ALICE, NEXT, added=True, bot_id=BOT) is Action.REMOVE
    assert p.decide(2, BOB, NEXT, added=True, bot_id=BOT) is Action.NEXT


def test_oldest_sessions_go_first_beyond_the_limit():
    now = [0.0]
    p = Pages(60, clock=lambda: now[0])
    for i in range(5):
        now[0] = i
        p.add(i, CHAN, page_reply())
    p.touch(p.get(0))  # recently turned: it stays
    assert [s.message_id for s in p.oldest_beyond(3)] == [1, 2]
    assert p.oldest_beyond(5) == []
