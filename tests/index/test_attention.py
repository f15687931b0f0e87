"""Word weights: captured in the encoding pass, equal to the separate read-out they replace."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from index.attention import words_from_row
from index.encoder import Encoder
from index.texttower import run_blocks
from tests.index.attention_reference import word_weights

TEXTS = ["a big red circle, next to Tokyo-tower!", "two purple triangles beside a white square",
         "snow", "the old wooden bridge over a misty lake at dawn"]


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


def paths(enc: Encoder) -> list[bool]:
    """The text passes this encoder can take: padded (module walk), and packed (lean walk)
    where warm-up found it equal."""
    return [False, True] if enc._packed_matches() else [False]


@pytest.fixture(scope="module", params=["tiny", "vitb32"])
def model_encoder(request):
    """One encoder per model for the module (a ViT-B-32 warm-up takes seconds); each test
    clears the text cache it relies on."""
    loaded = request.getfixturevalue(request.param)
    enc = Encoder(loaded, threads=1, max_wait_ms=0)
    assert enc.wait_ready(120)
    yield loaded, enc
    enc.close()


async def test_captured_weights_equal_the_separate_read_out(model_encoder):
    loaded, enc = model_encoder
    reference = {t: word_weights(loaded, t) for t in TEXTS}
    taken = paths(enc)
    if loaded.name.startswith("ViT-B-32"):
        assert taken == [False, True]  # both the stock walk and the lean one are checked
    for packed in taken:
        enc.pin("text", packed)
        for how in ("batch", "alone"):
            enc._cache.clear()
            if how == "batch":
                codes = await enc.encode_text_codes(TEXTS)
            else:
                codes = [(await enc.encode_text_codes([t]))[0] for t in TEXTS]
            for text, code in zip(TEXTS, codes, strict=True):
                ref = reference[text]
                assert code.words is not None
                assert [w for w, _ in code.words] == [w for w, _ in ref] == text.split()
                worst = max(abs(a - b) for (_, a), (_, b) in zip(code.words, ref, strict=True))
                assert worst <= 1e-5, (packed, how, text, worst)
                assert abs(sum(v for _, v in code.words) - 1) < 1e-6


async def test_one_pass_per_batch_and_the_cache_keeps_the_weights(model_encoder):
    _, enc = model_encoder
    enc._cache.clear()
    before = enc.stats.batches
    codes = await enc.encode_text_codes(TEXTS)
    assert enc.stats.batches - before == 1  # vectors and weights of all four: one pass
    again = await enc.encode_text_codes(TEXTS[:2])
    assert enc.stats.batches - before == 1
    assert again[0].words == codes[0].words and np.array_equal(again[0].vector, codes[0].vector)


@pytest.mark.parametrize("model", ["tiny", "vitb32"])
def test_reference_read_out_matches_an_independent_computation(model, request):
    loaded = request.getfixturevalue(model)
    text = TEXTS[0]
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
    # and the mapping the encoder uses gives the same from the same row
    mapped = words_from_row(loaded.tokenizer, text, ids, row.tolist())
    assert np.allclose([v for _, v in mapped], expected, atol=1e-6)


async def test_no_weights_for_a_tower_that_cannot_say(tiny):
    enc = Encoder(replace(tiny, text=None), threads=1)
    try:
        assert enc.wait_ready(30)
        (code,) = await enc.encode_text_codes(["red circle"])
        assert code.words is None and code.vector.shape == (tiny.dim,)
    finally:
        enc.close()
    assert words_from_row(tiny.tokenizer, "   ", [1, 2], [0.5, 0.5]) is None
    # words that are not the tokens the row is about: no guess
    assert words_from_row(tiny.tokenizer, "red circle", [49406, 1, 2, 49407], [0.1] * 4) is None
