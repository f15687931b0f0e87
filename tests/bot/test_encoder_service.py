"""The bot on the encoder service (encoder_url): its settings, the start-up check, and a
service that goes away and comes back while the bot runs."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import pytest
from servicekit import TOKEN, served

from bot import __main__ as bot_main
from bot import config
from bot.config import ConfigError, from_mapping
from bot.core import Core, FindRequest
from bot.runtime import Runtime, engine_options

ROOT = Path(__file__).resolve().parents[2]
UNREACHABLE = "the search service is unreachable, try again shortly"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_encoder_settings_read_the_token_from_the_named_variable():
    s = from_mapping({"encoder_url": "http://127.0.0.1:8765", "encoder_token_env": "MY_TOKEN"},
                     env={"MY_TOKEN": "sekrit-42"})
    assert s.encoder_token == "sekrit-42" and "sekrit-42" not in repr(s)
    assert "sekrit-42" not in s.redact("calling with sekrit-42")
    opts = engine_options(s)
    assert opts.encoder_url == "http://127.0.0.1:8765" and opts.encoder_token == "sekrit-42"
    assert "sekrit-42" not in repr(opts)
    assert engine_options(from_mapping({}, env={})).encoder_url is None  # default: the model here
    for data, words in (({"encoder_token": "x"}, "encoder_token_env"),
                        ({"encoder_url": "127.0.0.1:8765"}, "http://HOST:PORT")):
        with pytest.raises(ConfigError, match=words):
            from_mapping(data, env={})


async def test_a_refused_token_stops_the_bot_at_start_with_one_line(service_encoder, demo,
                                                                    tmp_path, monkeypatch, capsys):
    async with served(service_encoder) as (_, url):
        config = tmp_path / "config.toml"
        config.write_text(f'collection = "{demo / "collection"}"\nencoder_url = "{url}"\n')
        monkeypatch.setenv("DISCORD_TOKEN", "discord.token.x")
        monkeypatch.setenv("CLIPFIND_ENCODER_TOKEN", "not-the-token")
        assert await asyncio.to_thread(bot_main.main, ["--config", str(config)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "encoder_token" in lines[0] and "401" in lines[0], lines


async def test_a_service_running_another_model_stops_the_bot_at_start_naming_both(
        service_encoder, tmp_path, monkeypatch, capsys):
    from index import open_store
    open_store(tmp_path / "vit", "ViT-B-32:random", create_dim=512).close()  # no model loaded
    async with served(service_encoder) as (_, url):
        config = tmp_path / "config.toml"
        config.write_text(f'collection = "{tmp_path / "vit"}"\nencoder_url = "{url}"\n')
        monkeypatch.setenv("DISCORD_TOKEN", "discord.token.x")
        monkeypatch.setenv("CLIPFIND_ENCODER_TOKEN", TOKEN)
        assert await asyncio.to_thread(bot_main.main, ["--config", str(config)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "ViT-B-32:random" in lines[0], lines
        assert service_encoder.loaded.name in lines[0], lines


def _start_service(port: int) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CLIPFIND_ENCODER_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "index", "serve", "--port", str(port),
                             "--threads", "1"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    _wait_ready(port, proc)
    return proc


def _wait_ready(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        assert proc.poll() is None, "the encoder service exited"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if b'"ready": true' in r.read():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError("the encoder service did not get ready")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.slow  # an encoder service process (torch, the bundled model, its warm-up)
async def test_the_bot_serves_through_an_outage_of_the_service_and_recovers(settings,
                                                                           service_encoder):
    """The service process is killed by its pid; the bot answers the unreachable line at
    once, and serves again by itself once a service is back at the same address (here one
    in this process: what the bot sees is the same, and a second process would double the
    test's time)."""
    port = free_port()
    service = await asyncio.to_thread(_start_service, port)
    runtime = Runtime(replace(settings, encoder_url=f"http://127.0.0.1:{port}",
                              encoder_token=TOKEN))
    try:
        assert await runtime.wait(), runtime.load_error
        core = Core(runtime.settings, runtime.engine)

        async def find(text):
            return await core.find(FindRequest(text, 1))

        assert not (await find("red circle")).error
        os.kill(service.pid, signal.SIGKILL)  # a crash, not a clean stop
        await asyncio.to_thread(service.wait)
        t0 = time.monotonic()
        down = await find("blue square")
        assert down.error and down.text == UNREACHABLE
        assert time.monotonic() - t0 < 2
        assert not (await find("red circle")).error  # what the bot has cached still serves

        async with served(service_encoder, port=port):
            back = await find("blue square")  # the same bot, nothing restarted on its side
            assert not back.error and back.cards, back.text
        await core.close()
    finally:
        await runtime.close()
        await asyncio.to_thread(_stop, service)


def test_the_compose_setup_runs_the_encoder_service_for_the_bot():
    s = config.load(ROOT / "deploy" / "config.toml", env={"CLIPFIND_ENCODER_TOKEN": "t"})
    assert s.encoder_url == "http://encoder:8765" and s.encoder_token == "t"
    compose = (ROOT / "deploy" / "compose.yaml").read_text()
    assert '"index", "serve"' in compose and "encoder:\n        condition: service_healthy" in compose
