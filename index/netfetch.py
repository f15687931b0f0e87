"""Fetching member- or operator-given URLs, safely.

A URL typed into Discord or listed in a build source may point anywhere; with
`public_only=True` nothing but public internet hosts is ever connected to:

- `PublicOnlyResolver` sits in the connector and drops every non-public address a name
  resolves to, *at connect time*, so a redirect to an internal name or a DNS answer that
  changes between a check and the connection (rebinding) is covered as well.
- aiohttp does not ask the resolver about literal IP hosts (http://10.0.0.1/), so a client
  middleware (aiohttp >= 3.12) checks the host of every request, redirects included, before
  it connects; fetch_bytes, which follows redirects itself, checks every hop as well.
  Legacy numeric forms (http://0x7f000001/, http://2130706433/, http://127.1/) are decoded
  the way the C library would and checked too.

`fetch_bytes` follows redirects itself (at most `max_redirects`, http/https only), bounds
the body (Content-Length refused up front, then streamed and cut at max_bytes + 1), checks
the content type, and retries 5xx answers, timeouts and connection errors with a short
backoff (never a 4xx). Every failure is a FetchError: "<url>: <reason>".
"""

from __future__ import annotations

import asyncio
import inspect
import ipaddress
import logging
import socket
import weakref
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from index.errors import FetchError

log = logging.getLogger(__name__)

USER_AGENT = "clipfind/0.1 (image search indexer)"
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# First retry waits this long, each further one twice as long as the one before.
BACKOFF_S = 0.25
_READ_CHUNK = 64 * 1024
_URL_SHOWN = 100


@dataclass
class FetchLimits:
    max_bytes: int = 10 * 2**20
    timeout_s: float = 15.0
    retries: int = 2
    max_redirects: int = 3
    concurrency: int = 8


class _UrlFetchError(FetchError):
    """A FetchError that also carries the URL and the bare reason (for fetch_many)."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{shorten_url(url)}: {reason}")
        self.url = url
        self.reason = reason


class _Refused(FetchError):
    """A host or address that public_only forbids; never retried."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Retryable(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def shorten_url(url: str, limit: int = _URL_SHOWN) -> str:
    """`url` cut to about `limit` characters for messages, on one line."""
    url = url.replace("\r", "").replace("\n", " ")
    return url if len(url) <= limit else url[: limit - 1] + "…"


# ---------------------------------------------------------------------------- addresses

_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
_CGNAT = ipaddress.ip_network("100.64.0.0/10")


def _why_not_public(ip: str) -> str | None:
    """None when `ip` is a public unicast address, else a word saying what it is."""
    try:
        addr = ipaddress.ip_address(ip.strip().strip("[]"))
    except ValueError:
        return "not an IP address"
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped
        if embedded is None and addr.sixtofour is not None:
            embedded = addr.sixtofour
        if embedded is None and addr.teredo is not None:
            embedded = addr.teredo[1]
        if embedded is None and any(addr in net for net in _NAT64):
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            inner = _why_not_public(str(embedded))
            return None if inner is None else f"{inner} IPv4 inside IPv6"
        if addr.is_site_local:
            return "site-local"
    for attr, word in (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    ):
        if getattr(addr, attr):
            return word
    if isinstance(addr, ipaddress.IPv4Address) and addr in _CGNAT:
        return "carrier-grade NAT"
    if not addr.is_global:
        return "not globally routable"
    return None


def is_public_ip(ip: str) -> bool:
    """True for a public unicast address; False for loopback, private, link-local,
    multicast, reserved, unspecified, CGNAT 100.64/10, site-local, documentation ranges,
    IPv6 forms that carry such an IPv4 (mapped, 6to4, Teredo, NAT64), and non-addresses."""
    return _why_not_public(ip) is None


def _literal_ip(host: str) -> str | None:
    """The address a URL host denotes when it is a literal IP (incl. legacy numeric IPv4)."""
    h = host.strip("[]")
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        pass
    if h and all(c in "0123456789abcdefxABCDEFX." for c in h):
        try:
            # inet_aton accepts 0x7f000001, 2130706433, 127.1, 0177.0.0.1 like getaddrinfo.
            return socket.inet_ntoa(socket.inet_aton(h))
        except OSError:
            return None
    return None


def _check_host(host: str | None) -> None:
    """Refuse a literal non-public IP host; names are left to PublicOnlyResolver."""
    if not host:
        return
    ip = _literal_ip(host)
    if ip is None:
        return
    why = _why_not_public(ip)
    if why is not None:
        shown = host if ip == host.strip("[]") else f"{host} = {ip}"
        raise _Refused(
            f"refused: {shown} is not a public address ({why}); "
            "only public internet hosts can be fetched"
        )


class PublicOnlyResolver(AbstractResolver):
    """Wraps a resolver (aiohttp's default unless given) and drops non-public addresses.

    Raises FetchError when none remain, so the connector never connects to one.
    """

    def __init__(self, resolver: AbstractResolver | None = None):
        self._resolver = resolver if resolver is not None else DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        _check_host(host)
        results = await self._resolver.resolve(host, port, family=family)
        public = [r for r in results if is_public_ip(r["host"])]
        if not public:
            seen = sorted({str(r["host"]) for r in results}) or ["no address"]
            raise _Refused(
                f"refused: {host} resolves only to non-public addresses ({', '.join(seen)}); "
                "only public internet hosts can be fetched"
            )
        return public

    async def close(self) -> None:
        await self._resolver.close()


async def _public_only_middleware(
    request: aiohttp.ClientRequest,
    handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]],
) -> aiohttp.ClientResponse:
    """Runs before every request of the session, each redirect hop included."""
    _check_host(request.url.host)
    return await handler(request)


# ---------------------------------------------------------------------------- sessions

# Client middlewares arrived in aiohttp 3.12; fetch_bytes checks every hop itself as well.
_HAS_CLIENT_MIDDLEWARES = "middlewares" in inspect.signature(aiohttp.ClientSession).parameters
_PUBLIC_ONLY_SESSIONS: weakref.WeakSet[aiohttp.ClientSession] = weakref.WeakSet()


def make_session(public_only: bool, limits: FetchLimits) -> aiohttp.ClientSession:
    """A session for fetch_bytes; call it inside a running event loop and close it after.

    public_only=True: only public internet addresses are connected to (see module doc).
    The environment's proxy settings are ignored (a proxy would defeat the address check).
    """
    connector = aiohttp.TCPConnector(
        limit=max(1, limits.concurrency),
        resolver=PublicOnlyResolver() if public_only else None,
    )
    kwargs: dict[str, Any] = {}
    if public_only and _HAS_CLIENT_MIDDLEWARES:
        kwargs["middlewares"] = (_public_only_middleware,)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=limits.timeout_s),
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
        **kwargs,
    )
    if public_only:
        _PUBLIC_ONLY_SESSIONS.add(session)
    return session


# ---------------------------------------------------------------------------- fetching


def _parse_url(url: str) -> URL:
    if not isinstance(url, str) or not url.strip():
        raise _UrlFetchError(str(url), "empty URL; give an http or https URL")
    try:
        parsed = URL(url.strip())
    except (ValueError, TypeError):
        raise _UrlFetchError(url, "not a valid URL") from None
    if parsed.scheme not in ("http", "https"):
        raise _UrlFetchError(url, "only http and https URLs can be fetched")
    if not parsed.host:
        raise _UrlFetchError(url, "the URL has no host name")
    return parsed


def _is_redirect_target_ok(target: URL) -> bool:
    return target.scheme in ("http", "https") and bool(target.host)


async def fetch_bytes(
    session: aiohttp.ClientSession, url: str, limits: FetchLimits, accept: str = "image/"
) -> bytes:
    """The body of `url`, at most `limits.max_bytes`, whose content type starts with `accept`.

    Raises FetchError("<url>: <reason>") on every failure.
    """
    parsed = _parse_url(url)
    attempts = max(0, limits.retries) + 1
    reason = "failed"
    for attempt in range(attempts):
        try:
            async with asyncio.timeout(limits.timeout_s):
                return await _fetch_once(session, url, parsed, limits, accept)
        except _Retryable as e:
            reason = e.reason
        except TimeoutError:
            reason = f"timed out after {limits.timeout_s:g} s"
        if attempt + 1 < attempts:
            await asyncio.sleep(BACKOFF_S * 2**attempt)
    tries = f" (tried {attempts} times)" if attempts > 1 else ""
    raise _UrlFetchError(url, reason + tries)


async def _fetch_once(
    session: aiohttp.ClientSession, url: str, parsed: URL, limits: FetchLimits, accept: str
) -> bytes:
    current = parsed
    headers = {"Accept": f"{accept}*" if accept.endswith("/") else (accept or "*/*")}
    public_only = session in _PUBLIC_ONLY_SESSIONS
    for _hop in range(max(0, limits.max_redirects) + 1):
        try:
            if public_only:
                _check_host(current.host)
            async with session.get(current, allow_redirects=False, headers=headers) as resp:
                if resp.status in REDIRECT_STATUSES:
                    current = _redirect_target(url, resp)
                    continue
                return await _read_body(url, resp, limits, accept)
        except FetchError as e:
            if isinstance(e, _UrlFetchError):
                raise
            raise _UrlFetchError(url, getattr(e, "reason", str(e))) from None
        except aiohttp.ClientConnectorDNSError as e:
            raise _UrlFetchError(url, f"cannot resolve host {current.host}") from e
        except aiohttp.ClientConnectorCertificateError as e:
            raise _UrlFetchError(url, "TLS certificate not valid") from e
        except aiohttp.ClientSSLError as e:
            raise _UrlFetchError(url, "TLS handshake failed") from e
        except aiohttp.InvalidURL as e:
            raise _UrlFetchError(url, "not a valid URL") from e
        except aiohttp.ClientResponseError as e:
            raise _UrlFetchError(url, f"bad HTTP response ({e.message})") from e
        except TimeoutError as e:
            raise _Retryable(f"timed out after {limits.timeout_s:g} s") from e
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise _Retryable(f"connection failed ({_describe(e)})") from e
        except aiohttp.ClientError as e:
            raise _UrlFetchError(url, f"request failed ({_describe(e)})") from e
    raise _UrlFetchError(url, f"too many redirects (more than {limits.max_redirects})")


def _redirect_target(url: str, resp: aiohttp.ClientResponse) -> URL:
    location = resp.headers.get("Location")
    if not location:
        raise _UrlFetchError(url, f"HTTP {resp.status} redirect without a Location")
    try:
        target = resp.url.join(URL(location))
    except (ValueError, TypeError):
        raise _UrlFetchError(url, "redirected to an invalid URL") from None
    if not _is_redirect_target_ok(target):
        raise _UrlFetchError(url, f"redirected to a non-http(s) URL ({shorten_url(location, 60)})")
    return target


async def _read_body(
    url: str, resp: aiohttp.ClientResponse, limits: FetchLimits, accept: str
) -> bytes:
    status = resp.status
    if status >= 500:
        raise _Retryable(f"server error HTTP {status} {resp.reason or ''}".rstrip())
    if status >= 400:
        raise _UrlFetchError(url, f"HTTP {status} {resp.reason or ''}".rstrip())
    if status != 200:
        raise _UrlFetchError(url, f"unexpected HTTP status {status}")

    raw_type = resp.headers.get("Content-Type", "")
    mime = raw_type.split(";", 1)[0].strip().lower()
    if accept and not mime.startswith(accept.lower()):
        shown = mime or "missing"
        if accept.lower().startswith("image/"):
            raise _UrlFetchError(
                url, f"not an image (content-type {shown}); link to the image file itself"
            )
        raise _UrlFetchError(url, f"unexpected content-type {shown} (wanted {accept}…)")

    length = resp.content_length
    if length is not None and length > limits.max_bytes:
        raise _UrlFetchError(url, f"too large ({length} bytes, limit {limits.max_bytes})")

    chunks: list[bytes] = []
    total = 0
    while True:
        chunk = await resp.content.read(min(_READ_CHUNK, limits.max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        if total > limits.max_bytes:
            raise _UrlFetchError(url, f"too large (more than {limits.max_bytes} bytes)")
    if not total:
        raise _UrlFetchError(url, "empty response body")
    return b"".join(chunks)


def _describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:120] if text else type(e).__name__


async def fetch_many(
    urls: Sequence[str],
    *,
    public_only: bool,
    limits: FetchLimits,
    progress: Callable[[int], None] | None = None,
) -> tuple[list[tuple[str, bytes]], list[tuple[str, str]]]:
    """Fetch every URL with at most `limits.concurrency` in flight; never raises for one URL.

    Returns (successes as (url, bytes) in input order, failures as (url, reason) in input
    order). `progress(1)` is called as each URL finishes (tqdm's update fits).
    Everything fetched is held in memory: give it batches, not a whole Unsplash dump.
    """
    n = len(urls)
    bodies: list[bytes | None] = [None] * n
    reasons: list[str | None] = [None] * n
    if n == 0:
        return [], []
    sem = asyncio.Semaphore(max(1, limits.concurrency))

    async with make_session(public_only, limits) as session:

        async def one(i: int, url: str) -> None:
            async with sem:
                try:
                    bodies[i] = await fetch_bytes(session, url, limits)
                except FetchError as e:
                    reasons[i] = getattr(e, "reason", str(e))
                except Exception as e:  # one URL must not sink the batch
                    log.exception("unexpected error fetching %s", shorten_url(url))
                    reasons[i] = f"unexpected error ({type(e).__name__}: {_describe(e)})"
            if progress is not None:
                try:
                    progress(1)
                except Exception:  # a broken progress bar is not a fetch error
                    log.exception("progress callback failed")

        await asyncio.gather(*(one(i, u) for i, u in enumerate(urls)))

    ok = [(u, b) for u, b in zip(urls, bodies, strict=True) if b is not None]
    bad = [(u, r) for u, r in zip(urls, reasons, strict=True) if r is not None]
    return ok, bad
