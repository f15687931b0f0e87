"""`RemoteEncoder`: the encoder service, behind the interface the engine uses of the
in-process `Encoder` (encode texts with their word weights, encode images, reserve, close).

It needs neither torch nor the model. Its HTTP session lives on an event loop of its own
(one thread), so any caller's loop may await it, and `close()` may be called from any
thread, as the engine does. Texts are cached (LRU) as the in-process encoder does.

Faults become the engine's one-line errors: the service down or silent ->
`EncoderUnavailable`; its queue full (503) -> `Busy`; a refused token (401) ->
`EncoderTokenError` naming `encoder_token`.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
from yarl import URL

from ..codes import SEARCH, TextCode
from ..errors import (
    Busy,
    ClipfindError,
    EncoderTokenError,
    EncoderUnavailable,
    HeatmapUnavailable,
    ImageError,
)
from .protocol import Limits, unpack_vectors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RemoteModel:
    """What the engine reads of a loaded model, for one that runs in the service.
    `preprocess` None: pictures travel as their bytes, the service decodes them."""

    name: str
    dim: int
    preprocess: None = None
    model: None = None
    text: None = None


class _NoReservation:
    """The service holds no room for a caller; its 503 says Busy per request."""

    def take(self, n: int) -> int:
        return 0

    def release(self) -> None:
        pass

    def __enter__(self) -> _NoReservation:
        return self

    def __exit__(self, *exc) -> None:
        pass


class RemoteEncoder:
    def __init__(self, url: str, token: str | None, *, cache_size: int = 2048,
                 connect_timeout: float = 1.5, search_timeout: float = 10.0,
                 bulk_timeout: float = 300.0):
        self.url = _checked_url(url)
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.loaded: RemoteModel | None = None
        self.limits = Limits()
        self._cache: OrderedDict[str, TextCode] = OrderedDict()
        self._cache_size = cache_size
        self._connect_timeout = connect_timeout
        self._timeouts = {True: search_timeout, False: bulk_timeout}  # by "is a search"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="clipfind-encoder-client", daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def connect(cls, url: str, token: str | None, **kw) -> RemoteEncoder:
        """A client whose token and service were checked (blocking): EncoderTokenError on a
        refused token, EncoderUnavailable naming the URL when nothing answers there."""
        encoder = cls(url, token, **kw)
        try:
            info = asyncio.run_coroutine_threadsafe(
                encoder._request("GET", "/v1/info", search=True, at_start=True),
                encoder._loop).result()
            encoder.loaded = RemoteModel(str(info["model"]), int(info["dim"]))
            known = set(Limits.__dataclass_fields__)
            encoder.limits = Limits(**{k: v for k, v in info.get("limits", {}).items() if k in known})
        except BaseException:
            encoder.close()
            raise
        return encoder

    # -- what the engine uses -------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.loaded.dim

    @property
    def ready(self) -> bool:
        return True  # the service warms its model up; its queue holds what comes meanwhile

    def wait_ready(self, timeout: float | None = None) -> bool:
        return True

    def uncached(self, texts: list[str]) -> int:
        return len({t for t in texts if t not in self._cache})

    def reserve(self, n: int) -> _NoReservation:
        return _NoReservation()

    async def encode_texts(self, texts: list[str], priority: int = SEARCH) -> np.ndarray:
        codes = await self.encode_text_codes(texts, priority)
        return np.stack([c.vector for c in codes]) if codes else np.zeros((0, self.dim), np.float32)

    async def encode_text_codes(self, texts: list[str], priority: int = SEARCH,
                                reservation=None) -> list[TextCode]:
        out: list[TextCode | None] = [self._cache_get(t) for t in texts]
        missing = sorted({t for t, c in zip(texts, out, strict=True) if c is None})
        if missing:
            step = self.limits.max_texts
            found: dict[str, TextCode] = {}
            for i in range(0, len(missing), step):
                part = missing[i:i + step]
                answer = await self._call(self._request(
                    "POST", "/v1/texts", search=priority <= SEARCH,
                    json={"texts": part, "priority": _priority_name(priority)}))
                vectors = unpack_vectors(answer["vectors"], self.dim)
                for t, v, w in zip(part, vectors, answer["words"], strict=True):
                    found[t] = TextCode(v, None if w is None else tuple((str(a), float(b)) for a, b in w))
                    self._cache_put(t, found[t])
            out = [c if c is not None else found[t] for t, c in zip(texts, out, strict=True)]
        return out

    async def encode_images(self, images: list, priority: int = SEARCH,
                            reservation=None) -> np.ndarray:
        """Vectors of pictures (bytes, paths or PIL images), sent as bytes; the service
        decodes them (ImageError names the picture it could not)."""
        datas = [_as_bytes(im, i) for i, im in enumerate(images)]
        if not datas:
            return np.zeros((0, self.dim), np.float32)
        out = []
        for part in self._image_calls(datas):
            def form(part=part) -> aiohttp.FormData:  # made afresh for a retry
                f = aiohttp.FormData()
                f.add_field("priority", _priority_name(priority))
                for i, data in enumerate(part):
                    f.add_field("image", data, filename=f"{i + 1}",
                                content_type="application/octet-stream")
                return f
            answer = await self._call(self._request("POST", "/v1/images",
                                                    search=priority <= SEARCH, form=form))
            out.append(unpack_vectors(answer["vectors"], self.dim))
        return np.concatenate(out)

    async def encode_pixels(self, pixels: list[bytes], priority: int = SEARCH) -> np.ndarray:
        """The build pipeline's chunk: for this encoder, the pictures' bytes (see
        build._decode)."""
        return await self.encode_images(list(pixels), priority)

    async def preprocess(self, images):
        raise HeatmapUnavailable(f"this process encodes through the encoder service at "
                                 f"{self.url}: heatmaps need the model in the process")

    async def call(self, fn, *args, priority: int = SEARCH):
        await self.preprocess([])

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._thread.is_alive():
            if self._session is not None:
                asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)
        if not self._loop.is_running():
            self._loop.close()

    # -- the wire ------------------------------------------------------------------------------
    def _image_calls(self, datas: list[bytes]):
        """The pictures in calls within the service's limits (count and body size)."""
        room = self.limits.max_body - (1 << 20)  # the multipart framing's share
        part, size = [], 0
        for data in datas:
            if len(data) > self.limits.max_image_bytes:
                raise ImageError(f"image {len(part) + 1}: {len(data)} bytes; the encoder service "
                                 f"takes at most {self.limits.max_image_bytes}")
            if part and (len(part) == self.limits.max_images or size + len(data) > room):
                yield part
                part, size = [], 0
            part.append(data)
            size += len(data)
        if part:
            yield part

    async def _call(self, coro):
        """Run `coro` on this client's loop, awaited from the caller's."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self._loop))

    async def _request(self, method: str, path: str, *, search: bool, at_start: bool = False,
                       form=None, **kw) -> dict:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=self._timeouts[search],
                                        sock_connect=self._connect_timeout)
        for attempt in (1, 2):
            if form is not None:
                kw["data"] = form()
            try:
                async with self._session.request(method, self.url / path.lstrip("/"),
                                                 headers=self._headers, timeout=timeout, **kw) as r:
                    body = await r.read()
                    return self._answer(r.status, body, at_start)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
                # a kept-alive connection to a service that restarted fails once; a fresh one
                # tells whether it is back (refused connections are ClientConnectorError)
                if attempt == 2 or isinstance(e, aiohttp.ClientConnectorError):
                    raise self._unreachable(at_start, e) from e
            except (TimeoutError, aiohttp.ClientConnectionError) as e:
                raise self._unreachable(at_start, e) from e
        raise AssertionError("unreachable")

    def _unreachable(self, at_start: bool, e: Exception) -> EncoderUnavailable:
        if at_start:
            why = str(e).strip() or type(e).__name__
            return EncoderUnavailable(f"cannot reach the encoder service at {self.url} ({why}); "
                                      "start it (python -m index serve) or check encoder_url")
        log.warning("encoder service at %s unreachable: %r", self.url, e)
        return EncoderUnavailable()

    def _answer(self, status: int, body: bytes, at_start: bool) -> dict:
        try:
            answer = json.loads(body)
        except ValueError:
            answer = None
        if status == 200 and isinstance(answer, dict):
            return answer
        reason = answer.get("error") if isinstance(answer, dict) else None
        reason = reason or body[:200].decode("utf-8", "replace").strip() or f"HTTP {status}"
        kind = answer.get("kind") if isinstance(answer, dict) else None
        if status == 401:
            raise EncoderTokenError(f"the encoder service at {self.url} refused the token "
                                    "(401): set encoder_token (the environment variable "
                                    "encoder_token_env names) to the service's token")
        if status == 503:
            raise Busy()
        if kind == "image":
            raise ImageError(reason)
        if at_start and status == 404:
            raise EncoderUnavailable(f"{self.url} is not a clipfind encoder service (HTTP 404 "
                                     "on /v1/info); check encoder_url")
        raise ClipfindError(f"the encoder service refused the request: {reason}")

    def _cache_get(self, text: str) -> TextCode | None:
        code = self._cache.get(text)
        if code is not None:
            self._cache.move_to_end(text)
        return code

    def _cache_put(self, text: str, code: TextCode) -> None:
        self._cache[text] = code
        self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)


def _priority_name(priority: int) -> str:
    return "search" if priority <= SEARCH else "bulk"


def _checked_url(url: str) -> URL:
    try:
        parsed = URL(str(url).strip())
    except (ValueError, TypeError) as e:
        raise ClipfindError(f"encoder_url {url!r} is not a URL; use e.g. http://127.0.0.1:8765") from e
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ClipfindError(f"encoder_url {url!r}: use http://HOST:PORT (or https://)")
    return parsed


def _as_bytes(image, i: int) -> bytes:
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    if isinstance(image, Path):
        try:
            return image.read_bytes()
        except OSError as e:
            raise ImageError(f"{image}: cannot read it ({e.strerror or e})") from e
    if hasattr(image, "save"):  # a PIL image: losslessly, as PNG
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        return buf.getvalue()
    raise ImageError(f"image {i + 1}: not image bytes, a path or a picture")
