"""Where in a picture the model saw a query: relevance maps over a ViT image tower's patches.

Three read-outs over the same hooked pass of the stock open_clip modules:

- `chefer`: gradient-weighted attention relevance (Chefer, Gur and Wolf 2021, "Generic
  Attention-model Explainability ...", their CLIP example): for each block,
  Ā = mean over heads of relu(∂s/∂A ⊙ A); R ← R + Ā·R from R = I; the map is the pooled
  token's row of R over the patch columns. s is the cosine of the image vector with the
  target (a text term's vector, or the whole composed query).
- `legrad`: LeGrad (Bousselham et al., ICCV 2025): for each block l, the cosine s_l of the
  target with that block's output pooled as LeGrad pools it (mean over tokens, then the
  tower's ln_post and projection); the map is the sum over blocks of the mean over heads
  and query rows of relu(∂s_l/∂A_l), over the patch columns.
- `rollout`: plain attention rollout (Abnar and Zuidema 2020), target-blind; a baseline.

The hooks (`_Capture`) replace each block's `nn.MultiheadAttention` output with the same
attention computed with explicit probabilities, kept for the backward pass. They are on
only inside one step of `relevance_stages`, and the engine runs every step on the encoder's
model thread (Encoder.call), so no other pass ever sees them. Which read-out the engine uses is decided by
`python -m index.quality --heatmaps` (README).
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .errors import HeatmapUnavailable

METHODS = ("chefer", "legrad", "rollout")
DEFAULT_METHOD = "legrad"  # chosen by measurement: README, "Why this result"
EXPLAIN = 5  # encoder priority: after searches (0), before bulk indexing (10)


@dataclass
class Heatmaps:
    """Relevance over the patch grid (rows, cols), one map per target, each scaled to a peak of 1
    (all zeros where nothing was relevant)."""

    labels: list[str]  # what each map explains: "query" first, then each text term
    maps: np.ndarray  # (targets, rows, cols) float32, >= 0
    method: str
    model: str

    def as_json(self) -> dict:
        return {"method": self.method, "model": self.model,
                "grid": list(self.maps.shape[1:]),
                "maps": [{"label": lab, "peak": [round(v, 4) for v in peak_point(m)],
                          "relevance": np.round(m, 4).tolist()}
                         for lab, m in zip(self.labels, self.maps, strict=True)]}


def peak_point(heat: np.ndarray) -> tuple[float, float]:
    """Where a map peaks, as (x, y) fractions of the picture's width and height, finer than
    its patch grid: the relevance-weighted mean of the patch centres in the 3×3 patches
    around the hottest patch (cut at the grid's edge).

    A patch is coarse beside the objects in it: an object that straddles two patches lights
    both, and the hottest one's centre may lie just outside it. The neighbours' relevance
    says which way within the patch the object lies (the centroid refinement used to decode
    keypoint heatmaps). Relevance further away does not move the point."""
    rows, cols = heat.shape
    r, c = np.unravel_index(int(np.argmax(heat)), heat.shape)
    r0, r1, c0, c1 = max(r - 1, 0), min(r + 2, rows), max(c - 1, 0), min(c + 2, cols)
    w = np.clip(heat[r0:r1, c0:c1], 0, None).astype(np.float64)
    if w.sum() <= 0:
        return (c + 0.5) / cols, (r + 0.5) / rows
    ys, xs = np.mgrid[r0:r1, c0:c1]
    return (float(((xs + 0.5) * w).sum() / w.sum() / cols),
            float(((ys + 0.5) * w).sum() / w.sum() / rows))


def vit_tower(model):
    """The model's image tower when it is an open_clip ViT whose blocks this module can hook
    (standard multi-head attention, class or mean pooling, no attentional pooler); else None."""
    from open_clip.transformer import VisionTransformer

    visual = getattr(model, "visual", None)
    if not isinstance(visual, VisionTransformer) or getattr(visual, "attn_pool", None) is not None:
        return None
    if getattr(visual, "pool_type", "tok") not in ("tok", "avg"):
        return None
    blocks = getattr(visual.transformer, "resblocks", None)
    if not blocks:
        return None
    for b in blocks:
        attn = getattr(b, "attn", None)
        if not isinstance(attn, torch.nn.MultiheadAttention) or attn.in_proj_weight is None:
            return None
        if not attn._qkv_same_embed_dim:
            return None
    return visual


def require_vit(loaded) -> object:
    visual = vit_tower(loaded.model)
    if visual is None:
        raise HeatmapUnavailable(f"heatmaps are not available for this model ({loaded.name}): "
                                 "they need an open_clip ViT image tower")
    return visual


class _Capture:
    """Each block's attention of a ViT tower computed with explicit probabilities (kept in
    `probs`, in the graph) and each block's output kept in `outputs`, while inside `with`.

    The attention modules' `forward` is swapped for `_attention` on the instances (and
    restored on exit): the stock module would compute the same output through a fused
    kernel that keeps no probabilities. `isolate` feeds each block a detached copy of the
    previous block's output, so that one backward pass of a sum of per-block scores gives
    each block's attention the gradient of its own block's score only (LeGrad)."""

    def __init__(self, visual, isolate: bool = False):
        self.visual = visual
        self.isolate = isolate
        self.probs: list[torch.Tensor] = []
        self.outputs: list[torch.Tensor] = []
        self._handles: list = []
        self._swapped: list = []

    def __enter__(self) -> _Capture:
        for block in self.visual.transformer.resblocks:
            attn = block.attn
            attn.forward = functools.partial(self._attention, attn)
            self._swapped.append(attn)
            self._handles.append(block.register_forward_hook(self._block))
            if self.isolate:
                self._handles.append(block.register_forward_pre_hook(self._detach))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        for attn in self._swapped:
            del attn.forward  # the class's forward again
        self._handles.clear()
        self._swapped.clear()

    def _attention(self, mod: torch.nn.MultiheadAttention, query, key=None, value=None, *,
                   attn_mask=None, need_weights=False, **_):
        if (key is not None and key is not query) or (value is not None and value is not query) \
                or attn_mask is not None:
            raise HeatmapUnavailable("heatmaps are not available for this model: its image "
                                     "tower's attention is not plain self-attention")
        x = query if mod.batch_first else query.transpose(0, 1)  # (batch, tokens, width)
        b, n, width = x.shape
        heads = mod.num_heads
        qkv = F.linear(x, mod.in_proj_weight, mod.in_proj_bias)
        qkv = qkv.view(b, n, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
        scale = (width // heads) ** -0.5
        probs = torch.softmax((qkv[0] * scale) @ qkv[1].transpose(-2, -1), dim=-1)
        self.probs.append(probs)  # (batch, heads, tokens, tokens)
        o = (probs @ qkv[2]).transpose(1, 2).reshape(b, n, width)
        o = mod.out_proj(o)
        return (o if mod.batch_first else o.transpose(0, 1)), None

    def _detach(self, mod, args):
        return (args[0].detach(), *args[1:])

    def _block(self, mod, args, output):
        x = output if self.visual.transformer.batch_first else output.transpose(0, 1)
        self.outputs.append(x)


def _walkable(visual) -> bool:
    """Whether the tower can be walked block by block the way its own forward walks it."""
    tower = visual.transformer
    return (callable(getattr(visual, "_embeds", None)) and getattr(tower, "batch_first", False)
            and not getattr(tower, "grad_checkpointing", False))


def _pooled_row(visual, n_tokens: int, device, dtype) -> torch.Tensor:
    """Which tokens the tower pools into its vector, as weights over the tokens."""
    if getattr(visual, "pool_type", "tok") == "avg":
        row = torch.full((n_tokens,), 1.0 / (n_tokens - 1), device=device, dtype=dtype)
        row[0] = 0
        return row
    row = torch.zeros(n_tokens, device=device, dtype=dtype)
    row[0] = 1
    return row


def _project(visual, pooled: torch.Tensor) -> torch.Tensor:
    x = visual.ln_post(pooled)
    return x @ visual.proj if visual.proj is not None else x


def relevance_maps(loaded, pixels: torch.Tensor, targets: torch.Tensor,
                   method: str = DEFAULT_METHOD) -> np.ndarray:
    """(targets, rows, cols) relevance of each patch of the one image `pixels` (1, 3, H, W)
    for each row of `targets` (target vectors, any norm), each map scaled to a peak of 1.

    Runs with gradients whatever the caller's mode (the encoder's model thread runs calls
    in inference mode). Raises HeatmapUnavailable for a tower that is no open_clip ViT."""
    out = None
    for stage in relevance_stages(loaded, pixels, targets, method):
        out = stage()
    return out


def relevance_stages(loaded, pixels: torch.Tensor, targets: torch.Tensor,
                     method: str = DEFAULT_METHOD, threads: int | None = None
                     ) -> list[Callable[[], np.ndarray | None]]:
    """`relevance_maps` as a list of steps to call in order on one thread; the last returns
    the maps. The engine runs each as its own model-thread call, so a search that arrives
    meanwhile waits for one step, not for the whole map (LeGrad: the embeddings, then one
    step per block, its forward and backward pass). `threads`: torch threads for each step (the encoder
    passes those its warm-up found fastest for one image; its calls otherwise run on the
    count chosen for one text)."""
    if method not in METHODS:
        raise ValueError(f"unknown heatmap method {method!r}; use one of {METHODS}")
    visual = require_vit(loaded)
    run = _Run(loaded, visual, pixels, targets, method)
    if method == "legrad" and _walkable(visual):
        # block by block: with the blocks isolated, block l's score needs only block l
        stages = [run.embed] + [functools.partial(run.block_step, i) for i in range(run.n_blocks)]
    else:
        stages = [run.forward]
        if method == "legrad":
            stages += [functools.partial(run.block_backward, i) for i in range(run.n_blocks)]
    stages.append(run.finish)
    return [_with_grad(s, threads) for s in stages]


def _with_grad(fn: Callable, threads: int | None = None) -> Callable:
    @functools.wraps(fn)
    def step():
        before = torch.get_num_threads()
        try:
            if threads and threads != before:
                torch.set_num_threads(threads)
            with torch.inference_mode(False), torch.enable_grad():
                return fn()
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
    return step


class _Run:
    """The state of one relevance computation between its stages."""

    def __init__(self, loaded, visual, pixels: torch.Tensor, targets: torch.Tensor, method: str):
        self.loaded, self.visual, self.method = loaded, visual, method
        self.pixels, self.targets = pixels, targets
        self.n_blocks = len(visual.transformer.resblocks)
        self.t = int(targets.shape[0])
        self.cap: _Capture | None = None
        self.scores: list[torch.Tensor] = []
        self.total = None
        self.out = None

    def _inputs(self) -> torch.Tensor:
        loaded, t = self.loaded, self.t
        pixels = self.pixels.detach().clone().to(loaded.device, loaded.dtype)
        self.goal = F.normalize(self.targets.detach().clone().to(loaded.device, torch.float32), dim=-1)
        self.cap = _Capture(self.visual, isolate=self.method == "legrad")
        return pixels.expand(t, *pixels.shape[1:]).contiguous()

    def embed(self) -> None:
        """LeGrad block by block: the tokens entering the first block."""
        self.x = self.visual._embeds(self._inputs()).detach()

    def block_step(self, i: int) -> None:
        """LeGrad block by block: block i's forward pass (hooked), score and gradient."""
        block = self.visual.transformer.resblocks[i]
        with self.cap:
            x = block(self.x)
        self.x = x.detach()
        self.scores = [self._score(x)]
        self.block_backward(0, i)
        self.cap.outputs.clear()

    def _score(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.normalize(_project(self.visual, x.mean(dim=1)).float(), dim=-1)
        return (pooled * self.goal).sum()

    def forward(self) -> None:
        visual = self.visual
        batch = self._inputs()
        cap = self.cap
        with cap:
            if self.method == "rollout":
                with torch.no_grad():
                    visual(batch[:1])
            else:
                self.out = visual(batch)
        if self.method == "legrad":
            # blocks ran isolated: block l's attention reaches only block l's score
            self.scores = [self._score(x) for x in cap.outputs]
            cap.outputs.clear()

    def block_backward(self, i: int, block: int | None = None) -> None:
        block = i if block is None else block
        (g,) = torch.autograd.grad(self.scores[i], [self.cap.probs[block]])
        self.scores[i] = None  # its graph is freed
        self.cap.probs[block] = None
        part = g.float().clamp(min=0).mean(dim=1).mean(dim=1)  # (batch, tokens)
        self.total = part if self.total is None else self.total + part

    def finish(self) -> np.ndarray:
        rows, cols = self.visual.grid_size
        probs = self.cap.probs
        if self.method == "rollout":
            rel = _rollout(self.visual, probs).expand(self.t, -1)
        elif self.method == "chefer":
            rel = _chefer(self.visual, probs, self.out, self.goal)
        else:
            rel = self.total[:, 1:]
        rel = rel.detach().float().clamp(min=0).reshape(self.t, rows, cols)
        peak = rel.flatten(1).amax(dim=1).clamp(min=1e-12)[:, None, None]
        return (rel / peak).cpu().numpy().astype(np.float32)


def _chefer(visual, probs: list[torch.Tensor], out: torch.Tensor, goal: torch.Tensor) -> torch.Tensor:
    # each copy of the image in the batch has its own target: the sum's gradient on copy i's
    # attention is the gradient of copy i's own score
    score = (F.normalize(out.float(), dim=-1) * goal).sum()
    grads = torch.autograd.grad(score, probs)
    n = probs[0].shape[-1]
    r = torch.eye(n, device=out.device, dtype=torch.float32).expand(out.shape[0], n, n)
    for a, g in zip(probs, grads, strict=True):
        cam = (g.float() * a.float()).clamp(min=0).mean(dim=1)  # (batch, tokens, tokens)
        r = r + cam @ r
    row = _pooled_row(visual, n, out.device, torch.float32)
    return (row @ r)[:, 1:]


def _rollout(visual, probs: list[torch.Tensor]) -> torch.Tensor:
    n = probs[0].shape[-1]
    eye = torch.eye(n, device=probs[0].device, dtype=torch.float32)
    r = eye
    for a in probs:
        m = 0.5 * a[0].float().mean(dim=0) + 0.5 * eye
        r = (m / m.sum(dim=-1, keepdim=True)) @ r
    row = _pooled_row(visual, n, r.device, torch.float32)
    return (row @ r)[1:][None]


class HeatmapCache:
    """The last few maps, keyed by (item, query, attached images)."""

    def __init__(self, size: int = 64):
        self.size = size
        self._items: OrderedDict = OrderedDict()

    def get(self, key) -> Heatmaps | None:
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
        return hit

    def put(self, key, value: Heatmaps) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def drop_item(self, item_id: int) -> None:
        for key in [k for k in self._items if k[0] == item_id]:
            del self._items[key]
