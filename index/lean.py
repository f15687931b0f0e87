"""open_clip's residual blocks walked as functional calls, with a chosen linear layer.

`nn.MultiheadAttention.forward` spends much of a small pass checking its arguments, and
`F.linear` goes to MKL's sgemm, which on this machine's AMD CPU takes twice the time of
oneDNN's for the same layers (4.2 vs 8.9 ms for the 48 text-tower layers of ViT-B-32 at 6
tokens; 24 vs 46 ms at 77). The walk relies on open_clip's block layout (ln_1, attn, ls_1,
ln_2, mlp, ls_2); the encoder uses it only after checking at warm-up that it gives the
stock pass's vectors within 1e-5, and only where it measures faster.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.nn.functional as F


def onednn_linear(bucket: bool = False) -> Callable | None:
    """`F.linear` through oneDNN, or None where this torch build lacks the op; with
    `bucket`, marked (`linear.bucket_rows`) for callers that pad their inputs to
    `bucket_rows` rows (the packed text pass, whose token counts vary).

    The op is the one torch's own compiler emits for CPU linear layers; it is not public
    API, hence the checks at warm-up."""
    try:
        op = torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None

    def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return op(x, weight, bias, "none", [], "")

    if bucket:
        linear.bucket_rows = bucket_rows
    return linear


def bucket_rows(rows: int) -> int:
    """The row count a oneDNN linear layer should see: `rows` rounded up to a few sizes
    (a multiple of 8 up to 64, where most lone queries fall and padding to 16 would double
    a short text's work; a multiple of 16 below 256; at most an eighth more above).

    oneDNN builds and caches a primitive (with JIT code) for every input shape it sees and
    keeps it for the life of the process, so each new token count of a text left a few MiB
    behind for good. Padded with rows that only attend to themselves and later padding,
    the real rows' results do not change (the warm-up still checks them within 1e-5), and
    the cache holds a few dozen shapes at most."""
    if rows <= 64:
        return -(-rows // 8) * 8
    step = max(16, 1 << max(rows.bit_length() - 4, 0))  # at most 1/8 more rows
    return -(-rows // step) * step


def walkable(blocks) -> bool:
    """Whether every block has the layout `block_forward` walks."""
    for b in blocks:
        attn = getattr(b, "attn", None)
        if not isinstance(attn, torch.nn.MultiheadAttention) or attn.in_proj_weight is None:
            return False
        if not all(hasattr(b, n) for n in ("ln_1", "ls_1", "ln_2", "mlp", "ls_2")):
            return False
    return True


def _mlp(block, h: torch.Tensor, linear: Callable) -> torch.Tensor:
    mlp = block.mlp
    if linear is F.linear or not all(hasattr(mlp, n) for n in ("c_fc", "gelu", "c_proj")):
        return mlp(h)
    h = mlp.gelu(linear(h, mlp.c_fc.weight, mlp.c_fc.bias))
    return linear(h, mlp.c_proj.weight, mlp.c_proj.bias)


def attention_rows(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
    """The attention probabilities of the query positions `rows`, averaged over heads, as
    `nn.MultiheadAttention(need_weights=True)` computes them (keys after a row are masked:
    causal, unless `mask` is given).

    q, k: (heads, tokens, head width) with `rows` (n,) indices into tokens -> (n, tokens);
    or (batch, heads, tokens, head width) with `rows` (batch,), one row per text ->
    (batch, tokens)."""
    scale = q.shape[-1] ** -0.5
    positions = torch.arange(k.shape[-2], device=k.device)
    if q.dim() == 3:
        scores = (q[:, rows] * scale) @ k.transpose(-1, -2)  # (heads, n, tokens)
        head_axis = 0
    else:
        picked = q[torch.arange(q.shape[0], device=q.device), :, rows]  # (batch, heads, hw)
        scores = ((picked * scale).unsqueeze(-2) @ k.transpose(-1, -2)).squeeze(-2)
        head_axis = 1  # scores: (batch, heads, tokens)
    if mask is not None:
        scores = scores + (mask[rows] if head_axis == 0 else mask[rows][:, None])
    else:
        later = positions[None, :] > rows[:, None]  # (n, tokens)
        scores = scores.masked_fill(later if head_axis == 0 else later[:, None], float("-inf"))
    return torch.softmax(scores.float(), dim=-1).mean(head_axis)


def block_forward(block, x: torch.Tensor, linear: Callable = F.linear,
                  mask: torch.Tensor | None = None, causal: bool = False,
                  attend_from: torch.Tensor | None = None):
    """One residual block on x of shape (tokens, width) or (batch, tokens, width).

    `attend_from` (token positions; for a batch, one per text): also return the head-
    averaged attention rows of those positions (see `attention_rows`), as (x, rows)."""
    attn = block.attn
    heads, width = attn.num_heads, x.shape[-1]
    lead = x.shape[:-1]
    flat = x.reshape(-1, width)
    qkv = linear(block.ln_1(flat), attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.view(*lead, 3, heads, width // heads)
    # -> (3, [batch,] heads, tokens, head width)
    qkv = qkv.permute(1, 2, 0, 3) if x.dim() == 2 else qkv.permute(2, 0, 3, 1, 4)
    o = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], attn_mask=mask, is_causal=causal)
    o = o.transpose(-3, -2).reshape(-1, width)  # back to (tokens..., width)
    o = linear(o, attn.out_proj.weight, attn.out_proj.bias)
    flat = flat + block.ls_1(o)
    flat = flat + block.ls_2(_mlp(block, block.ln_2(flat), linear))
    if attend_from is None:
        return flat.view(x.shape)
    return flat.view(x.shape), attention_rows(qkv[0], qkv[1], attend_from, mask)


class _Walk(torch.nn.Module):
    """Stands in for an open_clip `Transformer` (batch first, no mask): the same blocks,
    walked by `block_forward`. Holds them unregistered: the parameters stay the model's."""

    def __init__(self, blocks, linear: Callable):
        super().__init__()
        self.walk = (list(blocks), linear)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        blocks, linear = self.walk
        for b in blocks:
            x = block_forward(b, x, linear, attn_mask)
        return x


def lean_visual(model, linear: Callable) -> torch.nn.Module | None:
    """The model's image tower with its transformer walked by `block_forward`, sharing every
    weight and leaving the model itself untouched; None for a tower of another shape."""
    visual = getattr(model, "visual", None)
    tower = getattr(visual, "transformer", None)
    blocks = getattr(tower, "resblocks", None)
    if blocks is None or not getattr(tower, "batch_first", False) or not walkable(blocks):
        return None
    lean = copy.copy(visual)
    lean._modules = dict(visual._modules)  # a copy of the dict, so the model keeps its own
    lean._modules["transformer"] = _Walk(blocks, linear)
    return lean
