"""The bot when its Milvus goes away and comes back: one line to the member, no crash, and
service again without anyone doing anything (a `milvus-lite server` stopped by its pid and
started again on the same data folder and port)."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from twostores import wait_until_back

from bot import __main__ as bot_main
from bot.core import Core, FindRequest
from index.build import build
from index.engine import Engine
from index.errors import StoreUnavailable
from index.modelspec import DEFAULT_MODEL
from index.sources import scan_folder

DOWN = StoreUnavailable().args[0]


async def find(core: Core, text: str):
    return await core.find(FindRequest(text, 1, [], []))


async def test_searches_answer_one_line_while_milvus_is_down_and_recover(
        settings, demo, lite_server, tmp_path):
    engine = await asyncio.to_thread(
        Engine.open, tmp_path / "faulty", model=DEFAULT_MODEL, create=True, store="milvus",
        milvus_uri=lite_server.uri)
    try:
        report = await build(engine.collection, engine.encoder,
                             scan_folder(demo / "gallery")[:12])
        assert report.added == 12
        core = Core(replace(settings, results_per_page=5), engine)
        first = await find(core, "red circle")
        assert first.is_page and len(first.cards) == 5

        lite_server.stop()
        down = await find(core, "blue square")
        assert down.error and down.text == DOWN and not down.cards
        turned = await core.turn(first.state, 1)  # a page turn: the same line, no page
        assert not turned.is_page and turned.text == DOWN

        lite_server.start()

        def search_again():
            reply = asyncio.run_coroutine_threadsafe(find(core, "red circle"), loop).result()
            if reply.error:
                raise StoreUnavailable(reply.text)
            return reply

        loop = asyncio.get_running_loop()
        back = await asyncio.to_thread(wait_until_back, search_again)
        assert back.is_page and [c.title for c in back.cards] == [c.title for c in first.cards]
        assert (await core.turn(back.state, 1)).is_page
    finally:
        await asyncio.to_thread(engine.close)


def test_the_bot_stops_at_start_naming_an_unreachable_milvus(tmp_path, capsys, monkeypatch):
    from twostores import free_port
    uri = f"http://127.0.0.1:{free_port()}"
    (tmp_path / "config.toml").write_text(
        f'store = "milvus"\nmilvus_uri = "{uri}"\nmilvus_token_env = "TEST_MILVUS_TOKEN"\n')
    monkeypatch.setenv("DISCORD_TOKEN", "discord-token-x")
    monkeypatch.setenv("TEST_MILVUS_TOKEN", "milvus-s3cret")
    assert bot_main.main(["--config", str(tmp_path / "config.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"clipfind: cannot reach Milvus at {uri}") and "\n" not in err
    assert "milvus-s3cret" not in err
    # the console too
    assert bot_main.main(["--console", "--config", str(tmp_path / "config.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot reach Milvus at {uri}" in err and "\n" not in err
