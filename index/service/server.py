"""The encoder service's HTTP face (aiohttp) around one in-process `Encoder`.

Every request goes into the one encoder's queue, so requests from all clients share its
micro-batches (requests that arrive while a pass runs join the next one) and its priority
order (a search before bulk indexing). Whatever a request does wrong ends in a 4xx with
a one-line reason; the service goes on serving the others.
"""

from __future__ import annotations

import hmac
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable

import numpy as np
from aiohttp import web

from ..errors import Busy, ClipfindError, ImageError
from .protocol import PRIORITIES, Limits, pack_vectors

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1  # what a 503 (queue full) tells the client to wait


class BadRequest(Exception):
    """A request the service refuses: its status and one line."""

    def __init__(self, status: int, reason: str, kind: str = "request"):
        super().__init__(reason)
        self.status, self.reason, self.kind = status, reason, kind


def _error(status: int, reason: str, kind: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": reason, "kind": kind}, status=status, headers=headers)


class EncoderService:
    """The routes (see protocol.py) over `encoder` (an `index.encoder.Encoder`)."""

    def __init__(self, encoder, token: str, limits: Limits | None = None):
        if not token:
            raise ClipfindError("the encoder service needs a token (encoder_token): set its "
                                "environment variable")
        self.encoder = encoder
        self.limits = limits or Limits()
        self._auth = f"Bearer {token}".encode()
        self.requests: Counter[str] = Counter()  # "route status" -> count
        self.app = web.Application(middlewares=[self._guard],
                                   client_max_size=self.limits.max_body)
        self.app.add_routes([web.get("/health", self.health), web.get("/metrics", self.metrics),
                             web.get("/v1/info", self.info), web.post("/v1/texts", self.texts),
                             web.post("/v1/images", self.images)])

    # -- every request ------------------------------------------------------------------------
    @web.middleware
    async def _guard(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]):
        response = await self._answer(request, handler)
        self.requests[f"{request.path} {response.status}"] += 1
        return response

    async def _answer(self, request, handler) -> web.StreamResponse:
        if request.path != "/health":
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, self._auth):
                return _error(401, "missing or wrong bearer token; the client's encoder_token "
                              "must be the service's", "token")
        size = request.content_length
        if size is not None and size > self.limits.max_body:
            return _error(413, f"the body is {size} bytes; at most {self.limits.max_body} per "
                          "request", "too-large")
        try:
            return await handler(request)
        except BadRequest as e:
            return _error(e.status, e.reason, e.kind)
        except Busy:
            return _error(503, "the encoder queue is full, try again shortly", "busy",
                          {"Retry-After": str(RETRY_AFTER_S)})
        except ImageError as e:
            return _error(400, str(e), "image")
        except web.HTTPRequestEntityTooLarge:
            return _error(413, f"the body is larger than {self.limits.max_body} bytes",
                          "too-large")
        except web.HTTPException as e:  # 404, 405 from the router
            return _error(e.status, e.reason, "request")
        except ClipfindError as e:
            return _error(400, str(e), "request")
        except Exception:  # a bug: logged, and the service goes on
            log.exception("encoder service: %s %s failed", request.method, request.path)
            return _error(500, "the encoder service failed on this request; see its log",
                          "internal")

    # -- routes ------------------------------------------------------------------------------------
    async def health(self, request: web.Request) -> web.Response:
        e = self.encoder
        return web.json_response({"model": e.loaded.name, "dim": e.dim, "ready": e.ready})

    async def info(self, request: web.Request) -> web.Response:
        e = self.encoder
        return web.json_response({"model": e.loaded.name, "dim": e.dim, "ready": e.ready,
                                  "limits": self.limits.as_json()})

    async def texts(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (ValueError, UnicodeDecodeError):
            raise BadRequest(400, 'the body is not JSON; send {"texts": ["...", ...]}') from None
        texts = body.get("texts") if isinstance(body, dict) else None
        lim = self.limits
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise BadRequest(400, 'give "texts": a list of strings')
        if not texts:
            raise BadRequest(400, '"texts" is empty; give 1 or more')
        if len(texts) > lim.max_texts:
            raise BadRequest(413, f"{len(texts)} texts in one call; at most {lim.max_texts}")
        long = next((i for i, t in enumerate(texts) if len(t) > lim.max_text_chars), None)
        if long is not None:
            raise BadRequest(413, f"text {long + 1} has {len(texts[long])} characters; at most "
                             f"{lim.max_text_chars}")
        codes = await self.encoder.encode_text_codes(texts, _priority(body.get("priority")))
        return web.json_response({
            "dim": self.encoder.dim,
            "vectors": pack_vectors(_stack([c.vector for c in codes], self.encoder.dim)),
            "words": [None if c.words is None else [list(w) for w in c.words] for c in codes]})

    async def images(self, request: web.Request) -> web.Response:
        datas, priority = await self._read_images(request)
        vectors = await self.encoder.encode_images(datas, priority)
        return web.json_response({"dim": self.encoder.dim, "vectors": pack_vectors(vectors)})

    async def _read_images(self, request: web.Request) -> tuple[list[bytes], int]:
        lim = self.limits
        datas: list[bytes] = []
        priority = None
        try:
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if part.name == "image":
                    if len(datas) == lim.max_images:
                        raise BadRequest(413, f"more than {lim.max_images} images in one call")
                    datas.append(await _read_part(part, lim.max_image_bytes, len(datas) + 1))
                elif part.name == "priority":
                    priority = (await part.text()).strip()
                else:
                    raise BadRequest(400, f"unknown part {part.name!r}; send 'image' parts "
                                     "(and an optional 'priority')")
        except (BadRequest, web.HTTPException):
            raise
        except Exception as e:  # aiohttp's multipart reader raises several kinds
            raise BadRequest(400, "malformed multipart body; send multipart/form-data with one "
                             f"'image' part per picture ({type(e).__name__})") from e
        if not datas:
            raise BadRequest(400, "no 'image' part; send one per picture")
        return datas, _priority(priority)

    async def metrics(self, request: web.Request) -> web.Response:
        e, stats = self.encoder, self.encoder.stats
        m = {"model": e.loaded.name, "ready": e.ready, "queue_depth": e.queued,
             "queue_size": e.queue_size, "passes": stats.batches, "inputs": stats.inputs,
             "model_seconds": round(stats.model_seconds, 6),
             "last_pass_seconds": round(stats.last_pass_seconds, 6),
             "batch_sizes": {str(k): v for k, v in sorted(stats.sizes.items())},
             "requests": dict(sorted(self.requests.items()))}
        if request.query.get("format") != "prometheus":
            return web.json_response(m)
        lines = [f"clipfind_encoder_queue_depth {m['queue_depth']}",
                 f"clipfind_encoder_queue_size {m['queue_size']}",
                 f"clipfind_encoder_passes_total {m['passes']}",
                 f"clipfind_encoder_inputs_total {m['inputs']}",
                 f"clipfind_encoder_model_seconds_total {m['model_seconds']}",
                 f"clipfind_encoder_last_pass_seconds {m['last_pass_seconds']}"]
        lines += [f'clipfind_encoder_passes_by_size{{size="{k}"}} {v}'
                  for k, v in m["batch_sizes"].items()]
        for key, n in m["requests"].items():
            route, status = key.rsplit(" ", 1)
            lines.append(f'clipfind_encoder_requests_total{{route="{route}",status="{status}"}} {n}')
        return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")


async def _read_part(part, limit: int, n: int) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(1 << 16):
        size += len(chunk)
        if size > limit:
            raise BadRequest(413, f"image {n} is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _priority(value) -> int:
    if value is None or value == "":
        return PRIORITIES["search"]
    if not isinstance(value, str) or value not in PRIORITIES:
        raise BadRequest(400, f"unknown priority {value!r}; use search or bulk")
    return PRIORITIES[value]


def _stack(vectors: list, dim: int) -> np.ndarray:
    return np.stack(vectors) if vectors else np.zeros((0, dim), np.float32)
