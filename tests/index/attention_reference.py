"""The word weights read out by a separate pass (the engine's read-out before the encoder
captured them during the encoding): the reference the tests pin the captured weights to.

The weight of a word is the last text-transformer layer's attention from the end-of-text
token (the token CLIP pools into the embedding) to the word's BPE pieces, averaged over
heads and summed over the pieces, with the start and end tokens left out and the rest
normalised to sum to 1. The last layer's attention is recomputed from that layer's input
through `nn.MultiheadAttention`'s public API, so no open_clip internals are relied upon.
"""

from __future__ import annotations

import torch

from index.models import LoadedModel
from index.texttower import run_blocks


def _pieces_per_word(loaded: LoadedModel, words: list[str]) -> list[list[int]] | None:
    bpe = getattr(loaded.tokenizer, "encode", None)
    if bpe is None:
        return None
    return [bpe(w) for w in words]


def word_weights(loaded: LoadedModel, text: str, linear=None) -> list[tuple[str, float]] | None:
    """[(word as typed, weight)], weights summing to 1; None when the tower cannot say.

    `linear`: the encoder's checked linear layer (lean.py) to walk the blocks below the
    last one with; None walks them as modules."""
    parts = loaded.text
    words = text.split()
    if parts is None or not words:
        return None
    last = parts.blocks[-1]
    if not isinstance(getattr(last, "attn", None), torch.nn.MultiheadAttention):
        return None
    pieces = _pieces_per_word(loaded, words)
    if pieces is None:
        return None
    tok = loaded.tokenizer
    sot, eot = tok.sot_token_id, tok.eot_token_id
    context = int(parts.positional_embedding.shape[0])
    ids = [sot] + [p for ps in pieces for p in ps][: context - 2] + [eot]
    tokens = torch.tensor([ids], device=loaded.device)
    with torch.inference_mode():
        x, eot_pos, mask = run_blocks(parts, tokens, stop_before_last=True, linear=linear)
        if not parts.batch_first:
            x = x.transpose(0, 1)
        h = last.ln_1(x)
        _, att = last.attn(h, h, h, attn_mask=mask, need_weights=True, average_attn_weights=True)
    row = att[0, int(eot_pos[0])].float().cpu()
    weights, pos = [], 1
    for ps in pieces:
        n = max(0, min(len(ps), len(ids) - 1 - pos))
        weights.append(float(row[pos:pos + n].sum()))
        pos += n
    total = sum(weights)
    if total <= 0:
        return [(w, 1.0 / len(words)) for w in words]
    return [(w, v / total) for w, v in zip(words, weights, strict=True)]
