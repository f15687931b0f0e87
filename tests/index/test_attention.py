import math

import numpy as np
import pytest
import torch

from index.attention import word_weights
from index.texttower import run_blocks


def independent_attention(loaded, text):
    """The last layer's EOT attention row, recomputed by hand from the weight matrices."""
    parts = loaded.text
    tokens = loaded.tokenizer([text])
    eot = int(tokens.argmax(-1))
    with torch.inference_mode():
        x, _, _ = run_blocks(parts, tokens, stop_before_last=True)
        block = parts.blocks[-1]
        h = torch.nn.functional.layer_norm(
            x, (x.shape[-1],), block.ln_1.weight, block.ln_1.bias, block.ln_1.eps)[0]
        w, b = block.attn.in_proj_weight, block.attn.in_proj_bias
        d = h.shape[-1]
        q, k = h @ w[:d].T + b[:d], h @ w[d:2 * d].T + b[d:2 * d]
        heads = block.attn.num_heads
        hd = d // heads
        rows = []
        for i in range(heads):
            qi, ki = q[:, i * hd:(i + 1) * hd], k[:, i * hd:(i + 1) * hd]
            scores = (qi[eot] @ ki[: eot + 1].T) / math.sqrt(hd)  # causal: keys up to eot
            rows.append(torch.softmax(scores, -1))
        return torch.stack(rows).mean(0).numpy(), tokens[0, : eot + 1].tolist()


@pytest.mark.parametrize("model", ["tiny", "vitb32"])
def test_word_weights_match_an_independent_computation(model, request):
    loaded = request.getfixturevalue(model)
    text = "a big red circle, next to Tokyo-tower!"
    got = word_weights(loaded, text)
    row, ids = independent_attention(loaded, text)
    # the same tokens as the tokenizer gives for the whole text
    pieces = [loaded.tokenizer.encode(w) for w in text.split()]
    assert [p for ps in pieces for p in ps] == ids[1:-1]
    expected, pos = [], 1
    for ps in pieces:
        expected.append(row[pos:pos + len(ps)].sum())
        pos += len(ps)
    expected = np.array(expected) / np.sum(expected)
    assert [w for w, _ in got] == text.split()
    assert np.allclose([v for _, v in got], expected, atol=1e-4)
    assert abs(sum(v for _, v in got) - 1) < 1e-6


def test_no_weights_for_a_tower_that_cannot_say(tiny):
    from dataclasses import replace
    assert word_weights(replace(tiny, text=None), "red circle") is None
    assert word_weights(tiny, "   ") is None


@pytest.mark.parametrize("model", ["tiny", "vitb32"])
def test_word_weights_through_the_lean_walk_equal_the_module_walk(model, request):
    import torch.nn.functional as F

    from index.lean import onednn_linear

    loaded = request.getfixturevalue(model)
    text = "two purple triangles beside a white square"
    stock = word_weights(loaded, text)
    for linear in (F.linear, onednn_linear()):
        if linear is None:
            continue
        lean = word_weights(loaded, text, linear)
        assert [w for w, _ in lean] == [w for w, _ in stock]
        assert max(abs(a - b) for (_, a), (_, b) in zip(lean, stock, strict=True)) < 1e-5
