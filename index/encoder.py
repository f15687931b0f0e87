"""The encoder worker: one thread owns the model; the asyncio side awaits vectors.

- Requests that arrive together are micro-batched into one forward pass (up to
  `max_batch` inputs). The model thread is woken once per event-loop tick, so a burst of
  requests made in one tick (asyncio.gather) is seen whole, and requests that arrive
  while a pass runs join the next one: under load, batches form by themselves. A request
  that finds the model idle may also wait for company, at most `max_wait_ms` and at most
  `company_share` of what a lone pass of its kind costs; the default share is 0 (measured:
  waiting cost a lone query 10-30% of its time and bought nothing the two rules above
  do not already give).
- Each sort of pass (a lone text, a batch of texts, a lone image, a batch of images)
  can run several ways that give the same vectors within 1e-5: on the configured torch
  threads or on one (tiny matrices: the hand-offs between threads cost more than they
  share, and on a busy host a multi-threaded pass waits for a second free core); a batch
  also split in parts encoded side by side on one torch thread each (no thread waits for
  another inside a pass, so decoding on the same cores or a busy neighbour delays only
  the part it preempts, not every operator of the pass); texts
  padded (open_clip's module walk) or packed (the tokens of all texts in one sequence,
  each attending only to its own text, so no work goes to padding: a batch of queries is
  ~30% padding when trimmed to its longest); images on the stock tower or on one with
  oneDNN linear layers. Warm-up times every way; the choice is then kept current under
  the host's load (passchoice.py), since a choice made once in a busy moment would hold
  for the process's whole life.
- glibc's malloc thresholds are pinned (see `_pin_malloc_thresholds`): without it every
  pass on the model thread page-faults its activations in afresh (700k faults and 30-40%
  of the time for 4096 images on the bundled model; the main thread does not suffer).
- Lower `priority` goes first, so a search is served before queued bulk indexing.
- The queue is bounded in inputs: past `queue_size` a caller gets `Busy` at once.
- Image decoding and preprocessing run in a thread pool, off the model thread.
- Text vectors are cached (LRU), with their word weights: queries repeat. The word
  weights (attention.py) are captured in the pass that computes the vector, and texts are
  tokenised on the model thread, not on the event loop.
- `reserve` holds queue room for several requests at once (a search's texts and images),
  so a search let in is not refused halfway.
"""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import gc
import itertools
import logging
import platform
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .attention import words_from_row
from .codes import BULK, SEARCH, TextCode  # noqa: F401 (BULK: its users import it here)
from .errors import Busy
from .images import open_image
from .lean import block_forward, lean_visual, onednn_linear, walkable
from .models import LoadedModel
from .passchoice import PassChoice, time_arms
from .pixels import preprocess_images
from .texttower import TextParts, encode_text_trimmed, eot_positions

log = logging.getLogger(__name__)

MALLOC_MMAP_THRESHOLD = 32 << 20  # glibc's own ceiling for its dynamic thresholds
MALLOC_TRIM_THRESHOLD = 64 << 20
_malloc_pinned = False
_thaw_registered = False


def _pin_malloc_thresholds() -> None:
    """Set glibc's mmap and trim thresholds once per process (Linux, glibc only).

    glibc raises these thresholds dynamically as large blocks are freed, which keeps the
    main thread's arena warm; a worker thread's arena instead gives its freed top back to
    the kernel and maps big blocks afresh, so each forward pass on the model thread
    faulted all its activation memory in again (measured: 721,840 minor faults and a 30%
    slower pass than the same pass on the main thread, for 4096 images of the bundled
    model; none with the thresholds pinned). Pinned at the values glibc's heuristic tops
    out at, freed memory up to 64 MiB per arena stays mapped for the next pass; peak
    memory does not change. Process-wide, as malloc is.
    """
    global _malloc_pinned
    if _malloc_pinned:
        return
    _malloc_pinned = True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, MALLOC_MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, MALLOC_TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


@dataclass(order=True)
class _Request:
    priority: int
    seq: int
    kind: str = field(compare=False)  # "text" | "image" | "call"
    inputs: torch.Tensor | list[str] = field(compare=False)  # texts: the strings
    n: int = field(compare=False)  # inputs counted against the queue
    done: object = field(compare=False)  # callable(result | BaseException)
    fn: object = field(compare=False, default=None)  # kind "call": run alone on the model thread


class Reservation:
    """Queue room held for requests still to be made (see `Encoder.reserve`)."""

    def __init__(self, encoder: Encoder, n: int):
        self.encoder, self.left = encoder, n

    def take(self, n: int) -> int:
        """Up to n of the held inputs; returns how many it had."""
        got = min(n, self.left)
        self.left -= got
        return got

    def release(self) -> None:
        self.encoder._release(self)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def encode_text_packed(parts: TextParts, tokens: torch.Tensor,
                       linear: Callable = F.linear, attend: bool = False):
    """Normalised text vectors from all texts' real tokens packed into one sequence; with
    `attend`, (vectors, rows): each text's end-of-text attention row in the last block
    (head-averaged, over its own tokens), from the same pass.

    Same arithmetic as the padded (trimmed) pass, minus the padding: each block runs its
    linear layers on the packed tokens, and attention uses a block-diagonal causal mask,
    so a token sees the earlier tokens of its own text only. The blocks are walked with
    functional calls instead of through `nn.MultiheadAttention.forward`, whose argument
    checks cost a lone ViT-B-32 text about a third of its time. Relies on open_clip's
    residual block layout (ln_1, attn, ls_1, ln_2, mlp, ls_2); the encoder checks it
    against the padded pass at warm-up and does not use it when they differ.
    """
    eot = eot_positions(tokens, parts)
    lengths = (eot + 1).tolist()
    total = sum(lengths)
    device = tokens.device
    ids = torch.cat([tokens[i, :n] for i, n in enumerate(lengths)])
    pos = torch.cat([torch.arange(n, device=device) for n in lengths])
    dtype = parts.positional_embedding.dtype
    x = parts.token_embedding(ids).to(dtype) + parts.positional_embedding[pos].to(dtype)
    rounded = getattr(linear, "bucket_rows", None)  # pad to a few shapes (lean.bucket_rows)
    pad = rounded(total) - total if rounded else 0
    if pad:  # trailing rows: causal attention keeps them out of every real row
        x = F.pad(x, (0, 0, 0, pad))
    mask = None  # one text: plain causal attention, no mask to build or read
    if len(lengths) > 1:
        seq = torch.repeat_interleave(torch.arange(len(lengths) + 1, device=device),
                                      torch.tensor(lengths + [pad], device=device))
        total += pad
        idx = torch.arange(total, device=device)
        allowed = (seq[:, None] == seq[None, :]) & (idx[:, None] >= idx[None, :])
        mask = torch.zeros(total, total, dtype=dtype, device=device).masked_fill_(
            ~allowed, float("-inf"))
    ends = torch.cumsum(torch.tensor(lengths, device=device), 0) - 1
    rows = None
    for i, block in enumerate(parts.blocks):
        if attend and i == len(parts.blocks) - 1:
            x, rows = block_forward(block, x, linear, mask, causal=mask is None, attend_from=ends)
        else:
            x = block_forward(block, x, linear, mask, causal=mask is None)
    x = parts.ln_final(x)
    pooled = x[ends]
    proj = parts.projection
    if isinstance(proj, torch.nn.Module):
        pooled = proj(pooled)
    elif proj is not None:
        pooled = pooled @ proj
    vectors = F.normalize(pooled, dim=-1)
    if not attend:
        return vectors
    starts = (ends + 1 - torch.tensor(lengths, device=device)).tolist()
    return vectors, [rows[i, a:a + n] for i, (a, n) in enumerate(zip(starts, lengths, strict=True))]


def _packable(parts: TextParts | None) -> bool:
    return parts is not None and parts.pool_type in ("argmax", "eos") and walkable(parts.blocks)


class _Closing(Exception):
    """The encoder was closed during its warm-up: stop measuring, end the thread."""


_PROBE_TEXTS = ("a dog", "a photo of a small red car parked in front of an old house at night",
                "tokyo tower", "two cats sleeping on a sofa in the sun", "snow", "a bowl of ramen",
                "a lighthouse in a storm", "sunflower field")


SPLIT = "split"  # an arm's layout: the batch cut in parts, one torch thread each (_forward)


def _torch_threads(layout: int | str) -> int:
    """The model thread's torch thread count for an arm's layout (a count, or SPLIT)."""
    return 1 if layout == SPLIT else layout


def _split_arms(arms) -> list:
    """The SPLIT arms among `arms`: warm-up estimates them, never times them."""
    return [a for a in arms if a[0] == SPLIT]


@dataclass
class EncoderStats:
    batches: int = 0
    inputs: int = 0
    model_seconds: float = 0.0
    sizes: dict[int, int] = field(default_factory=dict)  # inputs in a pass -> passes
    last_pass_seconds: float = 0.0


class Encoder:
    def __init__(self, loaded: LoadedModel, *, max_batch: int = 32, max_wait_ms: float = 4.0,
                 queue_size: int = 512, cache_size: int = 2048, threads: int | None = None,
                 decode_workers: int = 2, company_share: float = 0.0):
        _pin_malloc_thresholds()
        # The model and its libraries (torch, open_clip) are hundreds of thousands of objects
        # that live as long as the process: kept out of the cyclic collector's full passes,
        # which otherwise walk them all and hold the GIL (the event loop) meanwhile. Thawed at
        # exit, so the interpreter's last collection still finalises them in its usual order.
        gc.freeze()
        global _thaw_registered
        if not _thaw_registered:
            _thaw_registered = True
            atexit.register(gc.unfreeze)
        self.loaded = loaded
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.company_share = company_share
        # seconds a pass with one input takes, per kind (measured at warm-up, then tracked),
        # and the torch thread count such a pass runs on now
        self.lone_pass: dict[str, float] = {}
        self.lone_threads: dict[str, int] = {}
        # threads of a batch pass, where measured (SPLIT: one per part, see _forward)
        self.batch_threads: dict[str, int | str] = {}
        # how passes run, per (kind, lone): arms (threads, way) timed at warm-up, and the
        # choice among them kept current under load (passchoice.py); the way is `packed`
        # for texts and the tower's name for images; a batch's threads may be SPLIT
        self._arm_times: dict[tuple[str, bool], dict] = {}
        self._choices: dict[tuple[str, bool], PassChoice] = {}
        self.packed = False  # batches of texts run packed (the present choice)
        self.lone_packed = False  # so does a lone text
        self._towers: dict[str, Callable] = {}  # image towers equal to the stock one
        self.queue_size = queue_size
        self.threads = threads
        self._model_threads = threads or torch.get_num_threads()
        self.stats = EncoderStats()
        self._cache: OrderedDict[str, TextCode] = OrderedDict()
        self._cache_size = cache_size
        self._cond = threading.Condition()
        self._pending: list[_Request] = []
        self._pending_inputs = 0
        self._seq = itertools.count()
        self._closed = False
        self._ready = threading.Event()
        self._packed_ok: bool | None = None
        self._linear: Callable = F.linear  # the packed pass's linear layers (see warm-up)
        self._lean_padded = False  # padded texts walked by lean.block_forward (see warm-up)
        self._decode_pool = ThreadPoolExecutor(decode_workers, thread_name_prefix="clipfind-decode")
        self._helpers: ThreadPoolExecutor | None = None  # the other workers of a SPLIT pass
        self._thread = threading.Thread(target=self._run, name="clipfind-encoder", daemon=True)
        self._thread.start()

    # -- public API -----------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self.loaded.dim

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def queued(self) -> int:
        """Inputs waiting for the model (and room reserved for them)."""
        return self._pending_inputs

    def wait_ready(self, timeout: float | None = None) -> bool:
        return self._ready.wait(timeout)

    @property
    def text_linear(self) -> Callable | None:
        """The linear layer the lean text walk uses, once warm-up checked it; else None."""
        return self._linear if self._packed_ok else None

    async def encode_texts(self, texts: list[str], priority: int = SEARCH) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text."""
        codes = await self.encode_text_codes(texts, priority)
        return np.stack([c.vector for c in codes]) if codes else np.zeros((0, self.dim), np.float32)

    async def encode_text_codes(self, texts: list[str], priority: int = SEARCH,
                                reservation: Reservation | None = None) -> list[TextCode]:
        """A `TextCode` (vector and word weights, one pass) per text; texts not cached are
        tokenised and encoded on the model thread."""
        out: list[TextCode | None] = [self._cache_get(t) for t in texts]
        missing = sorted({t for t, v in zip(texts, out, strict=True) if v is None})
        if missing:
            codes = await self._submit("text", missing, priority, reservation=reservation)
            for t, c in zip(missing, codes, strict=True):
                self._cache_put(t, c)
            found = dict(zip(missing, codes, strict=True))
            out = [c if c is not None else found[t] for t, c in zip(texts, out, strict=True)]
        return out

    def uncached(self, texts: list[str]) -> int:
        """How many distinct texts of `texts` an encoding would have to compute now."""
        return len({t for t in texts if t not in self._cache})

    def reserve(self, n: int) -> Reservation:
        """Hold queue room for n inputs of requests to be made (Busy when it is not there),
        so that a caller making several requests is refused before the first or never;
        release it (or use it as a context manager) once they are made."""
        with self._cond:
            if self._closed:
                raise RuntimeError("encoder closed")
            if n and self._pending_inputs and self._pending_inputs + n > self.queue_size:
                raise Busy()
            self._pending_inputs += n
        return Reservation(self, n)

    def _release(self, reservation: Reservation) -> None:
        with self._cond:
            self._pending_inputs -= reservation.take(reservation.left)

    async def encode_images(self, images: list[Image.Image | bytes | Path],
                            priority: int = SEARCH, reservation: Reservation | None = None) -> np.ndarray:
        """L2-normalised float32 vectors; bytes and paths are decoded safely (ImageError)."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        pixels = await self.preprocess(images)
        return await self._submit("image", pixels, priority, reservation=reservation)

    async def preprocess(self, images: list[Image.Image | bytes | Path]) -> torch.Tensor:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._decode_pool, self._preprocess_sync, list(images))

    async def encode_pixels(self, pixels: torch.Tensor, priority: int = SEARCH) -> np.ndarray:
        return await self._submit("image", pixels, priority)

    async def call(self, fn, *args, priority: int = SEARCH):
        """Run fn(*args) on the model thread (for work that needs the model but is no batch,
        such as the attention read-out), queued like any request."""
        return await self._submit("call", [], priority, fn=lambda: fn(*args))

    def close(self) -> None:
        with self._cond:
            self._closed = True
            pending, self._pending = self._pending, []
            self._cond.notify_all()
        for r in pending:
            r.done(RuntimeError("encoder closed"))
        # Wait for the model thread, however long its current pass: a process that exits
        # while it still runs torch ops aborts ("terminate called without an active
        # exception"). Warm-up stops at its next pass once closed (_timed_forward).
        self._thread.join()
        self._decode_pool.shutdown(wait=False, cancel_futures=True)
        if self._helpers is not None:
            self._helpers.shutdown(wait=True)  # idle once the model thread has stopped

    # -- internals --------------------------------------------------------------------------
    def _preprocess_sync(self, images) -> torch.Tensor:
        decoded = []
        for i, im in enumerate(images):
            if not isinstance(im, Image.Image):
                name = str(im) if isinstance(im, Path) else f"image {i + 1}"
                im = open_image(im, name=name)
            decoded.append(im.convert("RGB"))
        return preprocess_images(self.loaded.preprocess, decoded)

    def _cache_get(self, text: str) -> TextCode | None:
        v = self._cache.get(text)
        if v is not None:
            self._cache.move_to_end(text)
        return v

    def _cache_put(self, text: str, v: TextCode) -> None:
        self._cache[text] = v
        self._cache.move_to_end(text)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _submit(self, kind: str, inputs: torch.Tensor | list[str], priority: int, fn=None,
                      reservation: Reservation | None = None):
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()

        def done(result):
            def settle():
                if fut.done():
                    return
                if isinstance(result, BaseException):
                    fut.set_exception(result)
                else:
                    fut.set_result(result)
            loop.call_soon_threadsafe(settle)

        n = 1 if kind == "call" else len(inputs)
        with self._cond:
            if self._closed:
                raise RuntimeError("encoder closed")
            held = reservation.take(n) if reservation is not None else 0
            extra = n - held  # inputs not covered by a reservation
            # A request larger than the whole queue is still let in when the queue is empty.
            if extra and self._pending_inputs and self._pending_inputs + extra > self.queue_size:
                if reservation is not None:
                    reservation.left += held
                raise Busy()
            self._pending.append(_Request(priority, next(self._seq), kind, inputs, n, done, fn))
            self._pending_inputs += extra
        # Wake the model thread after this tick of the loop, so that the requests made in
        # the same tick (asyncio.gather of several queries) are in the queue when it looks.
        loop.call_soon(self._wake)
        return await fut

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    def _take_batch(self) -> list[_Request] | None:
        """Block for the most urgent request, then gather same-kind company for max_wait."""
        with self._cond:
            while not self._pending and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            start = time.monotonic()
            while True:
                first = min(self._pending)
                if first.kind == "call":
                    batch = [first]
                    break
                wait = min(self.max_wait, self.company_share * self.lone_pass.get(first.kind, 0.0))
                same = sorted(r for r in self._pending if r.kind == first.kind)
                batch, size = [], 0
                for r in same:
                    if batch and size + r.n > self.max_batch:
                        break
                    batch.append(r)
                    size += r.n
                left = start + wait - time.monotonic()
                if size >= self.max_batch or left <= 0 or self._closed:
                    break
                self._cond.wait(left)
            for r in batch:
                self._pending.remove(r)
                self._pending_inputs -= r.n
            return batch

    def _forward(self, kind: str, inputs: torch.Tensor | list[str], way=None,
                 split: bool = False) -> np.ndarray | list[TextCode]:
        """One pass; `way`: packed or not (texts), the tower's name (images); None: the
        present choice. `split`: the inputs are cut into one part per configured thread,
        each part encoded on one torch thread, the first here and the others on helper
        threads at the same time (a SPLIT arm)."""
        if not split or len(inputs) < 2:
            return self._forward_one(kind, inputs, way)
        n = min(self._model_threads, len(inputs))
        bounds = [len(inputs) * i // n for i in range(n + 1)]
        parts = [inputs[a:b] for a, b in itertools.pairwise(bounds)]
        if self._helpers is None:
            self._helpers = ThreadPoolExecutor(self._model_threads - 1, initializer=torch.set_num_threads,
                                               initargs=(1,), thread_name_prefix="clipfind-encoder")
        others = [self._helpers.submit(self._forward_one, kind, p, way) for p in parts[1:]]
        try:
            outs = [self._forward_one(kind, parts[0], way)]
        finally:  # the helpers' parts end before this pass does, even when it fails
            outs += [f.result() for f in others]
        return [c for part in outs for c in part] if kind == "text" else np.concatenate(outs)

    def _forward_one(self, kind: str, inputs: torch.Tensor | list[str],
                     way=None) -> np.ndarray | list[TextCode]:
        m = self.loaded
        if kind == "text":
            return self._text_codes(inputs, way)
        with torch.inference_mode():
            tower = self._towers.get(way) if way is not None else self._image_tower
            tower = tower or m.model.encode_image
            v = F.normalize(tower(inputs.to(m.device, m.dtype)), dim=-1)
        return v.float().cpu().numpy()

    @property
    def _image_tower(self) -> Callable | None:
        """The tower image batches run on now (None: the model's encode_image)."""
        choice = self._choices.get(("image", False))
        return self._towers.get(choice.best[1]) if choice is not None else None

    def _text_codes(self, texts: list[str], packed: bool | None = None) -> list[TextCode]:
        """Tokenise and encode texts in one pass, capturing each one's word weights."""
        m = self.loaded
        tokens = m.tokenizer(texts).to(m.device)
        rows = None
        with torch.inference_mode():
            if m.text is not None:
                if packed is None:
                    packed = self.packed if len(texts) > 1 else self.lone_packed
                v, rows = self._text_pass(tokens, packed, attend=True)
            else:
                v = F.normalize(m.model.encode_text(tokens), dim=-1)
        vectors = v.float().cpu().numpy()
        if rows is None:
            return [TextCode(vec, None) for vec in vectors]
        codes = []
        for i, (text, vec, row) in enumerate(zip(texts, vectors, rows, strict=True)):
            ids = tokens[i, :len(row)].tolist()
            codes.append(TextCode(vec, words_from_row(m.tokenizer, text, ids, row.tolist())))
        return codes

    def _text_pass(self, tokens: torch.Tensor, packed: bool, attend: bool = False):
        """Vectors, or with `attend` (vectors, rows): each text's end-of-text attention row
        over its tokens (None where the tower cannot give it)."""
        if packed:
            return encode_text_packed(self.loaded.text, tokens, self._linear, attend=attend)
        walk = F.linear if self._lean_padded else None
        if not attend:
            return encode_text_trimmed(self.loaded.text, tokens, linear=walk)
        vectors, rows = encode_text_trimmed(self.loaded.text, tokens, attend=True, linear=walk)
        if rows is None:
            return vectors, None
        ends = eot_positions(tokens, self.loaded.text).tolist()
        return vectors, [rows[i, :e + 1] for i, e in enumerate(ends)]

    def _packed_matches(self) -> bool:
        """Whether the packed pass gives the padded pass's vectors within 1e-5, for a batch
        of texts and for each text alone (checked once, at warm-up); with oneDNN's linear
        layers where that holds, else with `F.linear`."""
        if self._packed_ok is None:
            m, ok = self.loaded, False
            if m.text is not None and _packable(m.text):
                tokens = m.tokenizer(list(_PROBE_TEXTS)).to(m.device)
                fast = onednn_linear(bucket=True) if m.device.type == "cpu" else None
                with torch.inference_mode():
                    padded, padded_rows = self._text_pass(tokens, False, attend=True)
                for linear in ([fast] if fast else []) + [F.linear]:
                    try:
                        with torch.inference_mode():
                            batch, rows = encode_text_packed(m.text, tokens, linear, attend=True)
                            alone = [encode_text_packed(m.text, t[None], linear, attend=True)
                                     for t in tokens]
                        rows_alone = [r for _, (r,) in alone]
                        alone = torch.cat([v for v, _ in alone])
                        ok = max(float((padded - batch).abs().max()),
                                 float((padded - alone).abs().max())) <= 1e-5
                        if ok and padded_rows is not None:  # the word weights agree too
                            ok = all(float((a - x).abs().max()) <= 1e-5
                                     for a, b, c in zip(padded_rows, rows, rows_alone, strict=True)
                                     for x in (b, c))
                    except Exception:  # an unusual tower or torch build: try the next
                        log.debug("packed text pass with %s failed", linear, exc_info=True)
                        ok = False
                    if ok:
                        self._linear = linear
                        break
                if not ok:
                    log.warning("packed text pass differs from the padded one; not used")
                self._lean_padded = self._lean_padded_matches(tokens, padded, padded_rows)
            self._packed_ok = ok
        return self._packed_ok

    def _lean_padded_matches(self, tokens: torch.Tensor, padded: torch.Tensor,
                             padded_rows) -> bool:
        """Whether the padded texts walked by `lean.block_forward` (no `nn.MultiheadAttention`
        argument checks, which weigh on a tiny model's lone text) give the module walk's
        vectors and word weights (`padded`, `padded_rows`) within 1e-5."""
        try:
            with torch.inference_mode():
                vectors, rows = encode_text_trimmed(self.loaded.text, tokens, attend=True,
                                                    linear=F.linear)
        except Exception:  # an unusual tower or torch build: the module walk serves
            log.debug("lean padded text pass failed", exc_info=True)
            return False
        if float((vectors - padded).abs().max()) > 1e-5:
            return False
        if padded_rows is None or rows is None:
            return padded_rows is None and rows is None
        return all(float((a - b[:len(a)]).abs().max()) <= 1e-5
                   for a, b in zip(padded_rows, rows, strict=True))

    def _equal_towers(self, probe: torch.Tensor) -> dict[str, Callable]:
        """The image towers that give the stock vectors within 1e-5 on `probe`: the stock
        one, and the one with oneDNN linear layers (lean.lean_visual) where it does."""
        m = self.loaded
        towers = {"stock": m.model.encode_image}
        fast = onednn_linear() if m.device.type == "cpu" and m.dtype == torch.float32 else None
        lean = lean_visual(m.model, fast) if fast else None
        if lean is None:
            return towers
        try:
            with torch.inference_mode():
                stock = F.normalize(m.model.encode_image(probe), dim=-1)
                if float((F.normalize(lean(probe), dim=-1) - stock).abs().max()) > 1e-5:
                    log.warning("image tower with oneDNN linear layers differs; not used")
                    return towers
        except Exception:  # an unusual tower or torch build: the stock one serves
            log.debug("image tower with oneDNN linear layers failed", exc_info=True)
            return towers
        towers["lean"] = lean
        return towers

    def _warm_up(self) -> None:
        """Time every way each sort of pass can run (threads × equal walks or towers) and
        start each sort's choice from those times (passchoice.py)."""
        m = self.loaded
        threads = self._model_threads
        cpu = m.device.type == "cpu"
        counts = [threads, 1] if threads > 1 and cpu else [threads]
        pixels = m.preprocess(Image.new("RGB", (32, 32))).unsqueeze(0)
        gen = torch.Generator().manual_seed(0)
        batch = torch.cat([pixels, torch.randn((3, *pixels.shape[1:]), generator=gen)])
        self._towers = self._equal_towers(batch)
        ways = [False, True] if self._packed_matches() else [False]
        sorts = {("text", True): (["a photo of a dog"], ways),
                 ("image", True): (pixels, list(self._towers)),
                 ("image", False): (batch, list(self._towers))}
        if cpu and m.text is not None:  # on a GPU padding is nearly free; threads not ours
            sorts["text", False] = (list(_PROBE_TEXTS), ways)
        for (kind, lone), (inputs, sort_ways) in sorts.items():
            arms = [(n, w) for n in counts for w in sort_ways]
            seconds = time_arms(arms, lambda arm, kind=kind, inputs=inputs:
                                self._forward(kind, inputs, arm[1]),
                                rounds=5 if kind == "text" else 3, stop=self._stop_if_closed,
                                switch=lambda arm: self._use_threads(arm[0]))
            per_input = {a: t / len(inputs) for a, t in seconds.items()}
            if threads > 1 and cpu and not lone:
                # A batch may also run SPLIT. Not timed here: the helper threads it needs
                # would each carry their own memory in a process that may stay idle. Its
                # estimate, the one-thread time shared by the parts, makes the first batch
                # try it, and that batch's time replaces the estimate.
                for w in sort_ways:
                    per_input[SPLIT, w] = per_input[1, w] / threads
            self._arm_times[kind, lone] = per_input
            self._choices[kind, lone] = PassChoice(per_input, guessed=_split_arms(per_input))
            self._follow(kind, lone)

    def _use_threads(self, n: int) -> bool:
        """Run the model thread's next passes on n torch threads; whether that changed it.
        Kept between passes (not set back after each): a change makes the next parallel
        region grow or shrink the thread team, which costs more than a tiny pass."""
        if torch.get_num_threads() == n:
            return False
        torch.set_num_threads(n)
        return True

    def _follow(self, kind: str, lone: bool) -> None:
        """Mirror a sort's present choice in the attributes others read."""
        choice = self._choices[kind, lone]
        n, way = choice.best
        (self.lone_threads if lone else self.batch_threads)[kind] = n
        if lone:
            self.lone_pass[kind] = choice.avg[n, way]
        if kind == "text":
            if lone:
                self.lone_packed = way
            else:
                self.packed = way

    def pin(self, kind: str, way) -> None:
        """Run every pass of `kind` the `way` way from now on (tests and benchmarks compare
        the ways); the thread count stays chosen by load."""
        for (k, lone), times in self._arm_times.items():
            if k == kind:
                arms = {a: t for a, t in times.items() if a[1] == way}
                if not arms:
                    raise ValueError(f"{kind} passes cannot run {way!r} here")
                self._choices[k, lone] = PassChoice(arms, guessed=_split_arms(arms))
                self._follow(k, lone)

    def _stop_if_closed(self) -> None:
        """Raise _Closing when close() was called: a process that exits early (a bad query on
        the command line) must not leave the model thread running torch at exit."""
        if self._closed:
            raise _Closing()

    def _run(self) -> None:
        # Always set here: a thread that never set its own count takes torch's process-wide
        # default, which any other thread's set_num_threads changes.
        torch.set_num_threads(self._model_threads)
        try:
            self._warm_up()
        except _Closing:
            self._ready.set()
            return
        except Exception:  # a broken model shows up on the first real request too
            log.exception("encoder warm-up failed")
        self._ready.set()
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            if batch[0].kind == "call":
                # calls are small one-text jobs (the attention read-out): lone-text threads
                self._use_threads(self.lone_threads.get("text", self._model_threads))
                try:
                    with torch.inference_mode():
                        result = batch[0].fn()
                except Exception as e:
                    result = e
                batch[0].done(result)
                continue
            kind = batch[0].kind
            if kind == "text":
                inputs = [t for r in batch for t in r.inputs]
            else:
                inputs = torch.cat([r.inputs for r in batch]) if len(batch) > 1 else batch[0].inputs
            count = sum(r.n for r in batch)
            choice = self._choices.get((kind, count == 1))
            arm = choice.pick() if choice is not None else (self._model_threads, None)
            self._use_threads(_torch_threads(arm[0]))
            t0 = time.perf_counter()
            try:
                out = self._forward(kind, inputs, arm[1], split=arm[0] == SPLIT)
            except Exception as e:
                log.exception("encoder forward pass failed")
                for r in batch:
                    r.done(e)
                continue
            seconds = time.perf_counter() - t0
            self.stats.batches += 1
            self.stats.inputs += count
            self.stats.model_seconds += seconds
            self.stats.sizes[count] = self.stats.sizes.get(count, 0) + 1
            self.stats.last_pass_seconds = seconds
            if choice is not None:
                choice.record(arm, seconds / count)
                self._follow(kind, count == 1)
            start = 0
            for r in batch:
                r.done(out[start:start + r.n])
                start += r.n
