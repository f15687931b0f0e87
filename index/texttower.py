"""A forward pass of open_clip's text tower that stops at the longest text in the batch.

The stock `encode_text` runs all 77 padded positions. Under the causal mask, positions
after the end-of-text token cannot change the pooled (end-of-text) vector, so trimming
the batch to its longest text gives the same vectors for a fraction of the work.

The same walk also yields the last layer's attention row of each end-of-text token (the
word weights of `attention.py`), computed beside the pass from the last block's own
queries and keys.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .lean import attention_rows, block_forward, walkable


@dataclass
class TextParts:
    """The modules of a CLIP-style causal text tower, wherever the model class keeps them."""

    token_embedding: torch.nn.Module
    positional_embedding: torch.Tensor
    blocks: list
    ln_final: torch.nn.Module
    projection: torch.Tensor | torch.nn.Module | None
    pool_type: str
    eos_id: int | None
    batch_first: bool


def text_parts(model) -> TextParts | None:
    """The text tower's parts, or None when it is not a causal CLIP tower (e.g. an HF tower)."""
    tower = getattr(model, "text", None)
    owner = tower if tower is not None and hasattr(tower, "token_embedding") else model
    if not hasattr(owner, "token_embedding") or not hasattr(owner, "transformer"):
        return None
    pool_type = getattr(owner, "pool_type", getattr(model, "text_pool_type", "argmax"))
    if pool_type not in ("argmax", "eos") or getattr(owner, "cls_emb", None) is not None:
        return None
    transformer = owner.transformer
    return TextParts(
        token_embedding=owner.token_embedding,
        positional_embedding=owner.positional_embedding,
        blocks=list(transformer.resblocks),
        ln_final=owner.ln_final,
        projection=getattr(owner, "text_projection", None),
        pool_type=pool_type,
        eos_id=getattr(owner, "eos_id", getattr(model, "text_eos_id", None)),
        batch_first=getattr(transformer, "batch_first", True),
    )


def eot_positions(tokens: torch.Tensor, parts: TextParts) -> torch.Tensor:
    if parts.pool_type == "eos":
        return (tokens == parts.eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def causal_mask(length: int, device, dtype) -> torch.Tensor:
    mask = torch.full((length, length), float("-inf"), device=device, dtype=dtype)
    return torch.triu(mask, 1)


def run_blocks(parts: TextParts, tokens: torch.Tensor, stop_before_last: bool = False,
               linear=None, attend: bool = False):
    """Embed and run the blocks on tokens trimmed to the longest text. Returns (x, eot, mask),
    and with `attend` (x, eot, mask, rows): the last block's head-averaged attention row of
    each text's end-of-text token, (texts, trimmed length), zero after the token; None
    where the last block is not an `nn.MultiheadAttention` with packed input weights.

    `linear`: walk the blocks with `lean.block_forward` and this linear layer (one the
    encoder checked at warm-up) instead of calling them as modules, where their layout
    allows."""
    eot = eot_positions(tokens, parts)
    length = int(eot.max().item()) + 1
    tokens = tokens[:, :length]
    dtype = parts.positional_embedding.dtype
    x = parts.token_embedding(tokens).to(dtype) + parts.positional_embedding[:length].to(dtype)
    mask = causal_mask(length, x.device, x.dtype)
    blocks = parts.blocks[:-1] if stop_before_last else parts.blocks
    rows = None
    if linear is not None and walkable(blocks):  # batch first, whatever the tower's layout
        for i, block in enumerate(blocks):
            if attend and i == len(blocks) - 1:
                x, rows = block_forward(block, x, linear, causal=True, attend_from=eot)
            else:
                x = block_forward(block, x, linear, causal=True)
        return (x, eot, mask, rows) if attend else (x, eot, mask)
    if not parts.batch_first:
        x = x.transpose(0, 1)
    seen: list[torch.Tensor] = []
    hook = None
    last_attn = getattr(blocks[-1], "attn", None) if blocks else None
    if attend and isinstance(last_attn, torch.nn.MultiheadAttention) \
            and last_attn.in_proj_weight is not None:
        hook = last_attn.register_forward_hook(
            lambda _m, args, kwargs, _out: seen.append(args[0] if args else kwargs["query"]),
            with_kwargs=True)
    try:
        for block in blocks:
            x = block(x, attn_mask=mask)
    finally:
        if hook is not None:
            hook.remove()
    if not parts.batch_first:
        x = x.transpose(0, 1)
    if seen:  # the last attention's input, batch first: recompute its rows from it
        h = seen[-1] if parts.batch_first else seen[-1].transpose(0, 1)
        rows = _mha_rows(last_attn, h, eot)
    return (x, eot, mask, rows) if attend else (x, eot, mask)


def _mha_rows(attn: torch.nn.MultiheadAttention, h: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    """The head-averaged attention rows of the eot positions of `attn` on input h (batch first)."""
    batch, length, width = h.shape
    heads = attn.num_heads
    qkv = F.linear(h, attn.in_proj_weight, attn.in_proj_bias)
    qkv = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    return attention_rows(qkv[0], qkv[1], eot)


def pool_and_project(parts: TextParts, x: torch.Tensor, eot: torch.Tensor) -> torch.Tensor:
    x = parts.ln_final(x)
    pooled = x[torch.arange(x.shape[0], device=x.device), eot]
    proj = parts.projection
    if proj is None:
        return pooled
    if isinstance(proj, torch.nn.Module):
        return proj(pooled)
    return pooled @ proj


def encode_text_trimmed(parts: TextParts, tokens: torch.Tensor, normalize: bool = True,
                        attend: bool = False, linear=None):
    """Text vectors; with `attend`, (vectors, rows): rows as `run_blocks` gives them.
    `linear`: as for `run_blocks`."""
    if attend:
        x, eot, _, rows = run_blocks(parts, tokens, linear=linear, attend=True)
    else:
        (x, eot, _), rows = run_blocks(parts, tokens, linear=linear), None
    out = pool_and_project(parts, x, eot)
    out = F.normalize(out, dim=-1) if normalize else out
    return (out, rows) if attend else out
