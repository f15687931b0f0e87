"""The encoder service over HTTP: batching across clients, the token, a full queue, and bad
requests (each a 4xx with one line, the service serving the others meanwhile)."""

import asyncio
import io
import time

import aiohttp
import pytest
from PIL import Image
from servicekit import AUTH, hold_model_thread, served

from index.service.protocol import unpack_vectors


@pytest.fixture
def encoder(service_encoder):
    return service_encoder


def png(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), color).save(buf, format="PNG")
    return buf.getvalue()


async def metrics(session, url) -> dict:
    async with session.get(f"{url}/metrics", headers=AUTH) as r:
        assert r.status == 200
        return await r.json()


async def until(check, timeout=10.0):
    end = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < end, "timed out"
        await asyncio.sleep(0.01)


def one_line(answer: dict) -> str:
    reason = answer["error"]
    assert reason and "\n" not in reason and "Traceback" not in reason
    return reason


async def test_sixteen_clients_each_sending_one_text_share_one_forward_pass(encoder):
    """16 separate clients (sessions, connections) send one text each while the model is
    busy: their requests meet in the one queue and go through the model in one pass."""
    async with served(encoder) as (_, url), aiohttp.ClientSession() as probe:
        task, started, release = hold_model_thread(encoder)
        await asyncio.to_thread(started.wait, 10)
        before = await metrics(probe, url)
        clients = [aiohttp.ClientSession() for _ in range(16)]
        try:
            posts = [asyncio.ensure_future(c.post(f"{url}/v1/texts", headers=AUTH,
                                                  json={"texts": [f"client {i} red circle"]}))
                     for i, c in enumerate(clients)]

            async def all_queued():
                return (await metrics(probe, url))["queue_depth"] == 16
            await until(all_queued)
            release.set()
            await task
            for r in await asyncio.gather(*posts):
                assert r.status == 200
                body = await r.json()
                assert unpack_vectors(body["vectors"], body["dim"]).shape == (1, encoder.dim)
                assert body["words"][0] is not None  # the word weights come along
        finally:
            release.set()
            await asyncio.gather(*(c.close() for c in clients))
        after = await metrics(probe, url)
    assert after["passes"] - before["passes"] == 1
    assert after["inputs"] - before["inputs"] == 16
    assert after["batch_sizes"]["16"] == before["batch_sizes"].get("16", 0) + 1


async def test_the_token_is_required_except_for_health(encoder):
    async with served(encoder) as (_, url), aiohttp.ClientSession() as s:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "test-token-0123"}):
            async with s.post(f"{url}/v1/texts", json={"texts": ["red"]}, headers=headers) as r:
                assert r.status == 401
                assert "encoder_token" in one_line(await r.json())
            async with s.get(f"{url}/metrics", headers=headers) as r:
                assert r.status == 401
        async with s.get(f"{url}/health") as r:
            assert r.status == 200
            assert await r.json() == {"model": "builtin:tiny-shapes", "dim": encoder.dim,
                                      "ready": True}
        async with s.get(f"{url}/metrics?format=prometheus", headers=AUTH) as r:
            text = await r.text()
            assert "clipfind_encoder_queue_depth 0" in text
            assert 'clipfind_encoder_requests_total{route="/v1/texts",status="401"} 3' in text


async def test_a_full_queue_answers_503_with_retry_after(encoder):
    async with served(encoder) as (_, url), aiohttp.ClientSession() as s:
        task, started, release = hold_model_thread(encoder)
        try:
            await asyncio.to_thread(started.wait, 10)
            queued = asyncio.ensure_future(s.post(
                f"{url}/v1/texts", headers=AUTH, json={"texts": [f"fill {i}" for i in range(64)]}))
            await until(lambda: asyncio.sleep(0, encoder.queued == 64))
            async with s.post(f"{url}/v1/texts", headers=AUTH, json={"texts": ["one more"]}) as r:
                assert r.status == 503 and r.headers["Retry-After"] == "1"
                assert "busy" == (await r.json())["kind"]
        finally:
            release.set()
        await task
        assert (await queued).status == 200


async def test_bad_requests_get_a_4xx_with_one_line_and_the_service_goes_on(encoder):
    def multipart(body: bytes, boundary="XyZ"):
        return {"data": body, "headers": {**AUTH,
                "Content-Type": f"multipart/form-data; boundary={boundary}"}}

    form = aiohttp.FormData()
    form.add_field("image", b"this is not a picture", filename="a.png")
    cases = [  # (route, request arguments, status, words in the reason)
        ("/v1/images", multipart(b"--XyZ\r\nno headers and no end"), 400, "multipart"),
        ("/v1/images", {"json": {"texts": ["red"]}, "headers": AUTH}, 400, "multipart"),
        ("/v1/images", {"data": form, "headers": AUTH}, 400, "image 1"),
        ("/v1/texts", {"json": {"texts": ["x"] * 10_000}, "headers": AUTH}, 413, "10000 texts"),
        ("/v1/texts", {"json": {"texts": ["x" * 5000]}, "headers": AUTH}, 413, "5000 characters"),
        ("/v1/texts", {"data": b"{not json", "headers": AUTH}, 400, "not JSON"),
        ("/v1/texts", {"json": {"texts": "red"}, "headers": AUTH}, 400, "list of strings"),
        ("/v1/texts", {"json": {"texts": ["red"], "priority": ["x"]}, "headers": AUTH}, 400,
         "priority"),
        ("/v1/texts", {"data": b"x" * (100 << 20), "headers": AUTH}, 413, "at most"),
        ("/v1/nothing", {"json": {}, "headers": AUTH}, 404, "Not Found"),
    ]
    async with served(encoder) as (_, url), aiohttp.ClientSession() as s:
        for route, kw, status, words in cases:
            async with s.post(url + route, **kw) as r:
                assert r.status == status, (route, words, await r.text())
                assert words in one_line(await r.json())
        form = aiohttp.FormData()
        for color in ((250, 0, 0), (0, 0, 250)):
            form.add_field("image", png(color), filename="x.png")
        async with s.post(f"{url}/v1/images", data=form, headers=AUTH) as r:
            assert r.status == 200
            body = await r.json()
            assert unpack_vectors(body["vectors"], body["dim"]).shape == (2, encoder.dim)
        async with s.get(f"{url}/health") as r:
            assert (await r.json())["ready"]
