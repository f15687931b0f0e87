"""Which words of a text the text encoder attended to.

The weight of a word is the last text-transformer layer's attention from the end-of-text
token (the token CLIP pools into the embedding) to the word's BPE pieces, averaged over
heads and summed over the pieces, with the start and end tokens left out and the rest
normalised to sum to 1. The attention row itself is captured by the encoder during the
pass that computes the text's vector (`texttower.run_blocks(attend=True)`,
`encoder.encode_text_packed(attend=True)`): no second pass. This module maps that row
onto the words as typed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

UNAVAILABLE = "word weights are not available for this model's text encoder"

WordWeights = tuple[tuple[str, float], ...]


def words_from_row(tokenizer: Callable, text: str, ids: Sequence[int],
                   row: Sequence[float]) -> WordWeights | None:
    """((word as typed, weight), ...) summing to 1, from the end-of-text token's attention
    row over the text's tokens `ids` (start token .. end-of-text token, as the tokenizer
    gave them). None when the words cannot be matched to the tokens (a tokenizer without
    BPE `encode`, or one that does not tokenise word by word)."""
    words = text.split()
    if not words or getattr(tokenizer, "encode", None) is None or len(ids) < 2 \
            or len(row) != len(ids):
        return None
    pieces = [_pieces(tokenizer, w) for w in words]
    inner = list(ids[1:-1])
    if [p for ps in pieces for p in ps][:len(inner)] != inner:
        return None
    weights, pos = [], 1
    for ps in pieces:
        n = max(0, min(len(ps), len(ids) - 1 - pos))
        weights.append(float(sum(row[pos:pos + n])))
        pos += n
    total = sum(weights)
    if total <= 0:
        return tuple((w, 1.0 / len(words)) for w in words)
    return tuple((w, v / total) for w, v in zip(words, weights, strict=True))


@functools.lru_cache(maxsize=8192)
def _pieces(tokenizer: Callable, word: str) -> tuple[int, ...]:
    """A word's BPE pieces (words repeat across queries; the tokenizer's cleaning is not free)."""
    return tuple(tokenizer.encode(word))
