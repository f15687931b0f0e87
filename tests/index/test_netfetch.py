"""index.netfetch against a local aiohttp server on 127.0.0.1; nothing leaves the machine."""

from __future__ import annotations

import asyncio
import io
import socket
import time
from collections import Counter

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from index import netfetch
from index.errors import ClipfindError, FetchError
from index.netfetch import (
    FetchLimits,
    PublicOnlyResolver,
    fetch_bytes,
    fetch_many,
    is_public_ip,
    make_session,
)


def _png() -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 10, 10)).save(out, format="PNG")
    return out.getvalue()


PNG = _png()


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(netfetch, "BACKOFF_S", 0.0)


@pytest.fixture(autouse=True)
async def _loopback_only(monkeypatch):
    """Fail any socket connect to anything but 127.0.0.1, so that even a regression in the
    public-only checks cannot make a test reach 10.0.0.1, 169.254.169.254 or the internet."""
    loop = asyncio.get_running_loop()
    real = loop.sock_connect

    async def guarded(sock, address):
        if address[0] != "127.0.0.1":
            raise AssertionError(f"test tried to connect to {address[0]}")
        return await real(sock, address)

    monkeypatch.setattr(loop, "sock_connect", guarded)


@pytest.fixture
async def server():
    hits: Counter[str] = Counter()
    release = asyncio.Event()
    flaky_state = {"n": 0}

    @web.middleware
    async def count(request, handler):
        hits[request.path] += 1
        return await handler(request)

    async def png(request):
        return web.Response(body=PNG, content_type="image/png")

    async def html(request):
        return web.Response(text="<html>hi</html>", content_type="text/html")

    async def big_with_length(request):
        # Claims 50 MB and sends 1 KB, then stalls: a client that tried to download it
        # would hit its timeout instead of refusing on the header.
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.content_length = 50_000_000
        await resp.prepare(request)
        await resp.write(b"x" * 1024)
        await asyncio.wait_for(release.wait(), 10)
        return resp

    async def big_chunked(request):
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        try:
            for _ in range(256):  # up to 2 MiB, far beyond the test limit
                await resp.write(b"y" * 8192)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def slow(request):
        await asyncio.wait_for(release.wait(), 10)
        return web.Response(body=PNG, content_type="image/png")

    async def flaky(request):
        flaky_state["n"] += 1
        if flaky_state["n"] == 1:
            return web.Response(status=500, text="boom")
        return web.Response(body=PNG, content_type="image/png")

    async def always_500(request):
        return web.Response(status=503, text="down")

    async def missing(request):
        return web.Response(status=404, text="nope")

    async def redirect(request):
        n = int(request.match_info["n"])
        if n == 0:
            raise web.HTTPFound("/png")
        raise web.HTTPFound(f"/redirect/{n - 1}")

    async def redirect_file(request):
        raise web.HTTPFound("file:///etc/passwd")

    async def redirect_to(request):
        raise web.HTTPFound(request.query["to"])

    app = web.Application(middlewares=[count])
    app.router.add_get("/png", png)
    app.router.add_get("/html", html)
    app.router.add_get("/big", big_with_length)
    app.router.add_get("/chunked", big_chunked)
    app.router.add_get("/slow", slow)
    app.router.add_get("/flaky", flaky)
    app.router.add_get("/down", always_500)
    app.router.add_get("/404", missing)
    app.router.add_get("/redirect/{n}", redirect)
    app.router.add_get("/redirect-file", redirect_file)
    app.router.add_get("/redirect-to", redirect_to)

    srv = TestServer(app, host="127.0.0.1")
    await srv.start_server()
    srv.hits = hits
    srv.base = f"http://127.0.0.1:{srv.port}"
    try:
        yield srv
    finally:
        release.set()
        await srv.close()


LIMITS = FetchLimits(max_bytes=4096, timeout_s=2.0, retries=2, max_redirects=3, concurrency=4)


async def _get(url: str, limits: FetchLimits = LIMITS, public_only: bool = False, **kw):
    async with make_session(public_only, limits) as session:
        return await fetch_bytes(session, url, limits, **kw)


async def _error(url: str, limits: FetchLimits = LIMITS, public_only: bool = False, **kw):
    with pytest.raises(FetchError) as info:
        await _get(url, limits, public_only, **kw)
    msg = str(info.value)
    assert "\n" not in msg
    assert isinstance(info.value, ClipfindError)
    return msg


# ---------------------------------------------------------------------------- behaviour


async def test_png_is_fetched(server):
    assert await _get(server.base + "/png") == PNG
    assert server.hits["/png"] == 1


async def test_html_is_not_an_image(server):
    msg = await _error(server.base + "/html")
    assert msg.startswith(server.base + "/html: not an image (content-type text/html)")
    assert server.hits["/html"] == 1  # not retried


async def test_accept_other_types(server):
    assert b"hi" in await _get(server.base + "/html", accept="text/")


async def test_content_length_over_limit_refused_before_download(server):
    t0 = time.monotonic()
    msg = await _error(server.base + "/big")
    assert "too large (50000000 bytes, limit 4096)" in msg
    assert time.monotonic() - t0 < 1.5  # did not wait for the stalled body
    assert server.hits["/big"] == 1


async def test_chunked_body_over_limit_cut(server):
    msg = await _error(server.base + "/chunked")
    assert "too large (more than 4096 bytes)" in msg
    assert server.hits["/chunked"] == 1


async def test_slow_endpoint_times_out_and_is_retried(server):
    limits = FetchLimits(max_bytes=4096, timeout_s=0.2, retries=1)
    msg = await _error(server.base + "/slow", limits)
    assert "timed out after 0.2 s (tried 2 times)" in msg
    assert server.hits["/slow"] == 2


async def test_500_then_200_retry_succeeds(server):
    assert await _get(server.base + "/flaky") == PNG
    assert server.hits["/flaky"] == 2


async def test_persistent_5xx_gives_up(server):
    msg = await _error(server.base + "/down")
    assert "server error HTTP 503" in msg and "tried 3 times" in msg
    assert server.hits["/down"] == 3


async def test_404_not_retried(server):
    msg = await _error(server.base + "/404")
    assert msg == f"{server.base}/404: HTTP 404 Not Found"
    assert server.hits["/404"] == 1


async def test_redirects_within_limit_followed(server):
    # /redirect/2 -> /redirect/1 -> /redirect/0 -> /png: exactly 3 redirects
    assert await _get(server.base + "/redirect/2") == PNG


async def test_redirect_chain_longer_than_limit(server):
    msg = await _error(server.base + "/redirect/3")  # 4 redirects
    assert "too many redirects (more than 3)" in msg
    assert server.hits["/png"] == 0
    assert sum(v for k, v in server.hits.items() if k.startswith("/redirect/")) == 4


async def test_redirect_to_file_url_refused(server):
    msg = await _error(server.base + "/redirect-file")
    assert "redirected to a non-http(s) URL (file:///etc/passwd)" in msg


async def test_connection_refused_is_retried():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    msg = await _error(f"http://127.0.0.1:{port}/x.png")
    assert "connection failed" in msg and "tried 3 times" in msg


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "javascript:alert(1)",
        "data:image/png;base64,AAAA",
        "example.com/a.png",
    ],
)
async def test_only_http_and_https(url):
    msg = await _error(url)
    assert msg == f"{url}: only http and https URLs can be fetched"


async def test_long_url_truncated_in_message():
    url = "ftp://example.com/" + "a" * 500
    msg = await _error(url)
    assert len(msg) < 160 and msg.endswith("only http and https URLs can be fetched")


# ---------------------------------------------------------------------------- public only


@pytest.mark.parametrize(
    "make_url",
    [
        lambda port: f"http://127.0.0.1:{port}/png",
        lambda port: f"http://localhost:{port}/png",
        lambda port: f"http://10.0.0.1:{port}/png",
        lambda port: "http://169.254.169.254/latest/meta-data/",
        lambda port: f"http://[::1]:{port}/png",
        lambda port: f"http://0x7f000001:{port}/png",
        lambda port: f"http://2130706433:{port}/png",
        lambda port: f"http://127.1:{port}/png",
        lambda port: f"http://[::ffff:127.0.0.1]:{port}/png",
    ],
)
async def test_public_only_refuses_local_addresses(server, make_url):
    url = make_url(server.port)
    limits = FetchLimits(max_bytes=4096, timeout_s=2.0, retries=2)
    t0 = time.monotonic()
    msg = await _error(url, limits, public_only=True)
    assert "refused:" in msg and "only public internet hosts can be fetched" in msg
    assert time.monotonic() - t0 < 1.5  # refused, not timed out after a connection attempt
    assert sum(server.hits.values()) == 0


async def test_public_only_off_reaches_localhost(server):
    assert await _get(f"http://localhost:{server.port}/png") == PNG


class FakeResolver:
    """Stands in for aiohttp's DefaultResolver: a fixed table, no DNS."""

    table = {
        "mixed.test": ["93.184.216.34", "127.0.0.1"],
        "rebind.test": ["127.0.0.2"],
        "v6.test": ["::1", "fe80::1"],
    }

    def __init__(self, *args, **kwargs):
        pass

    async def resolve(self, host, port=0, family=socket.AF_INET):
        if host not in self.table:
            raise OSError(f"unknown host {host}")
        fam = socket.AF_INET
        return [
            {"hostname": host, "host": ip, "port": port, "family": fam, "proto": 0, "flags": 0}
            for ip in self.table[host]
        ]

    async def close(self):
        pass


async def test_public_only_resolver_filters():
    r = PublicOnlyResolver(FakeResolver())
    got = await r.resolve("mixed.test", 80)
    assert [x["host"] for x in got] == ["93.184.216.34"]
    for host in ("rebind.test", "v6.test"):
        with pytest.raises(FetchError, match="resolves only to non-public addresses"):
            await r.resolve(host, 80)
    with pytest.raises(FetchError, match=r"127.0.0.1 is not a public address \(loopback\)"):
        await r.resolve("127.0.0.1", 80)
    await r.close()


@pytest.mark.parametrize("middleware", [True, False])
async def test_redirect_hops_are_checked_at_connect_time(server, monkeypatch, middleware):
    # Pretend 127.0.0.1 (the test server) is the public internet; every other address stays
    # non-public. Then a redirect to a literal 127.0.0.2 or to a name that resolves there
    # must be refused, and the server must never see the follow-up request.
    monkeypatch.setattr(netfetch, "is_public_ip", lambda ip: ip == "127.0.0.1")
    monkeypatch.setattr(
        netfetch, "_why_not_public", lambda ip: None if ip == "127.0.0.1" else "private"
    )
    monkeypatch.setattr(netfetch, "DefaultResolver", FakeResolver)
    # Without the middleware (aiohttp < 3.12) fetch_bytes' own per-hop check must suffice.
    monkeypatch.setattr(netfetch, "_HAS_CLIENT_MIDDLEWARES", middleware)
    limits = FetchLimits(max_bytes=4096, timeout_s=2.0, retries=2)
    port = server.port
    assert await _get(server.base + "/png", limits, public_only=True) == PNG

    for target in (f"http://127.0.0.2:{port}/png", f"http://rebind.test:{port}/png"):
        url = f"{server.base}/redirect-to?to={target}"
        msg = await _error(url, limits, public_only=True)
        assert "refused:" in msg, msg
    assert server.hits["/png"] == 1  # only the direct fetch above
    assert server.hits["/redirect-to"] == 2  # refusals are not retried


async def test_public_only_session_used_directly(server):
    # The session itself refuses, not only fetch_bytes: a caller using session.get directly
    # (redirects followed by aiohttp) is covered too.
    limits = FetchLimits()
    async with make_session(True, limits) as session:
        for url in (server.base + "/png", f"http://localhost:{server.port}/redirect/1"):
            with pytest.raises(FetchError, match="refused:"):
                async with session.get(url):
                    pass
    assert sum(server.hits.values()) == 0


# ---------------------------------------------------------------------------- addresses


@pytest.mark.parametrize(
    ("ip", "public"),
    [
        ("8.8.8.8", True),
        ("93.184.216.34", True),
        ("2606:4700:4700::1111", True),
        ("2a00:1450:4001:80b::200e", True),
        ("127.0.0.1", False),
        ("127.8.9.10", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("100.127.255.254", False),
        ("0.0.0.0", False),
        ("224.0.0.1", False),
        ("239.255.255.250", False),
        ("240.0.0.1", False),
        ("255.255.255.255", False),
        ("192.0.2.1", False),
        ("::1", False),
        ("::", False),
        ("fe80::1", False),
        ("fe80::1%eth0", False),
        ("fc00::1", False),
        ("fd12:3456::1", False),
        ("fec0::1", False),
        ("ff02::1", False),
        ("2001:db8::1", False),
        ("::ffff:127.0.0.1", False),
        ("::ffff:10.1.2.3", False),
        ("::ffff:8.8.8.8", True),
        ("2002:7f00:1::", False),
        ("64:ff9b::a9fe:a9fe", False),
        ("not-an-ip", False),
        ("", False),
    ],
)
def test_is_public_ip(ip, public):
    assert is_public_ip(ip) is public


# ---------------------------------------------------------------------------- fetch_many


async def test_fetch_many_mixes_successes_and_failures(server):
    b = server.base
    urls = [b + "/png", b + "/404", b + "/html", b + "/redirect/1", "file:///x", b + "/flaky"]
    seen = []
    ok, bad = await fetch_many(urls, public_only=False, limits=LIMITS, progress=seen.append)
    assert ok == [(b + "/png", PNG), (b + "/redirect/1", PNG), (b + "/flaky", PNG)]
    assert [u for u, _ in bad] == [b + "/404", b + "/html", "file:///x"]
    reasons = dict(bad)
    assert reasons[b + "/404"] == "HTTP 404 Not Found"
    assert reasons[b + "/html"].startswith("not an image (content-type text/html)")
    assert reasons["file:///x"] == "only http and https URLs can be fetched"
    assert sum(seen) == len(urls)
    assert server.hits["/404"] == 1


async def test_fetch_many_public_only_and_empty(server):
    ok, bad = await fetch_many([server.base + "/png"], public_only=True, limits=LIMITS)
    assert ok == [] and len(bad) == 1 and bad[0][1].startswith("refused:")
    assert sum(server.hits.values()) == 0
    assert await fetch_many([], public_only=True, limits=LIMITS) == ([], [])


async def test_fetch_many_bounded_concurrency(server, monkeypatch):
    active = 0
    peak = 0
    real = netfetch.fetch_bytes

    async def counting(session, url, limits, accept="image/"):
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await asyncio.sleep(0.01)
            return await real(session, url, limits, accept)
        finally:
            active -= 1

    monkeypatch.setattr(netfetch, "fetch_bytes", counting)
    limits = FetchLimits(max_bytes=4096, timeout_s=2.0, concurrency=2)
    ok, bad = await fetch_many([server.base + "/png"] * 7, public_only=False, limits=limits)
    assert len(ok) == 7 and bad == []
    assert peak == 2
