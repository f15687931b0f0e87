"""bot/why.py on a collection of its own: the bad inputs a member can meet, one line each."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from bot.core import BUSY, Attachment, Core, FindRequest
from bot.why import parse_rank, why
from index.build import build
from index.engine import Engine
from index.errors import ClipfindError
from index.sources import scan_folder


@pytest.fixture
async def core(demo, settings, tmp_path):
    gallery = tmp_path / "g"
    gallery.mkdir()
    for f in sorted((demo / "gallery").glob("*.png"))[:12]:
        shutil.copy(f, gallery / f.name)
    engine = Engine.open(tmp_path / "c", model="builtin:tiny-shapes", create=True)
    await build(engine.collection, engine.encoder, scan_folder(gallery))
    c = Core(settings, engine, cooldown=False)
    yield c
    await c.close()
    engine.close()


async def page(core, text="red circle", attachments=()):
    reply = await core.find(FindRequest(text, 1, list(attachments)))
    assert reply.is_page, reply.text
    return reply.state


def one_line(reply, says):
    assert reply.error and says in reply.text and "\n" not in reply.text, reply.text
    assert reply.picture is None


async def test_a_result_removed_since_says_so(core):
    state = await page(core)
    _, item_id, _, _ = state.hits[0]
    core.engine.remove([item_id])
    one_line(await why(core, state, 1, 1), "no longer exists")
    assert (await why(core, state, 2, 1)).picture is not None  # the others still work


async def test_a_picture_deleted_since_says_so(core):
    state = await page(core)
    Path(state.hits[2][2]).unlink()
    one_line(await why(core, state, 3, 1), "deleted")


async def test_a_query_of_pictures_only_has_nothing_to_explain(core, demo):
    data = (demo / "gallery" / "shape_30.png").read_bytes()

    async def read():
        return data
    state = await page(core, "", [Attachment("a.png", len(data), "image/png", read)])
    one_line(await why(core, state, 1, 1), "no text term")


async def test_busy_while_another_heatmap_is_drawn(core):
    state = await page(core)
    a, b = await asyncio.gather(why(core, state, 1, 1), why(core, state, 2, 1))
    assert [r.error for r in (a, b)].count(True) == 1
    one_line(a if a.error else b, BUSY)


async def test_rank_parsing():
    assert parse_rank("#3") == 3 and parse_rank(" 12 ") == 12
    for bad in ("", "x", "-1", "1.5"):
        with pytest.raises(ClipfindError, match="which result"):
            parse_rank(bad)


async def test_console_why(engine, settings, tmp_path):
    import io

    from bot.console import Console

    lines = ["!why 1", "!find red circle*1 blue square*2", "!why 2", "!why 6", "next", "!why 6",
             "/why #7", "!why", "quit"]
    out = io.StringIO()
    console = Console(settings, engine, tmp_path / "out", stdin=io.StringIO("\n".join(lines) + "\n"),
                      stdout=out)
    assert await console.run() == 0
    text = out.getvalue()
    assert "error: no results to explain here; search first with !find" in text
    assert "Why #2 for red circle*1 blue square*2" in text
    assert "error: #6 is not on this page: it shows #1–#5" in text
    assert "Why #6 for" in text and "Why #7 for" in text
    assert "error: which result? got nothing" in text
    assert (tmp_path / "out" / "002-why-2.png").is_file()
    assert "picture: " + str(tmp_path / "out" / "002-why-2.png") in text
