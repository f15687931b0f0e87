"""The functional block walk with oneDNN linear layers gives the stock towers' vectors."""

import pytest
import torch
import torch.nn.functional as F

from index.lean import bucket_rows, lean_visual, onednn_linear


@pytest.mark.parametrize("model", ["tiny", "vitb32"])
def test_lean_image_tower_equals_encode_image_and_leaves_the_model_alone(model, request):
    linear = onednn_linear() or F.linear
    loaded = request.getfixturevalue(model)
    original = loaded.model.visual.transformer
    lean = lean_visual(loaded.model, linear)
    assert lean is not None
    assert loaded.model.visual.transformer is original  # the model keeps its own tower
    pixels = torch.randn(3, 3, *loaded.preprocess.transforms[1].size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        stock = F.normalize(loaded.model.encode_image(pixels), dim=-1)
        got = F.normalize(lean(pixels), dim=-1)
    assert (got - stock).abs().max().item() < 1e-5


def test_a_tower_of_another_shape_is_not_walked():
    class NotClip(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = torch.nn.Linear(4, 4)

    assert lean_visual(NotClip(), F.linear) is None


def test_text_token_counts_reach_onednn_as_a_few_shapes():
    # oneDNN keeps a primitive per input shape for good: every token count of a lone text
    # (1..77) must map onto a handful of row counts, each at least the real one
    counts = {bucket_rows(n) for n in range(1, 78)}
    assert len(counts) <= 9
    assert all(bucket_rows(n) >= n for n in range(1, 5000))
    assert all(bucket_rows(n) <= n * 9 / 8 for n in range(128, 5000))  # little padding work


def test_packed_text_pass_pads_to_buckets_and_gives_the_same_vectors(tiny):
    from index.encoder import encode_text_packed

    exact = onednn_linear() or F.linear
    seen = []

    def recording(x, weight, bias):
        seen.append(x.shape[0])
        return exact(x, weight, bias)

    recording.bucket_rows = bucket_rows
    texts = [" ".join(["red square"] * k) for k in range(1, 30)]
    with torch.inference_mode():
        for batch in [[t] for t in texts] + [texts[:5], texts[3:20]]:
            tokens = tiny.tokenizer(batch)
            want, want_rows = encode_text_packed(tiny.text, tokens, exact, attend=True)
            got, got_rows = encode_text_packed(tiny.text, tokens, recording, attend=True)
            assert (got - want).abs().max().item() < 1e-5
            for a, b in zip(got_rows, want_rows, strict=True):
                assert a.shape == b.shape and (a - b).abs().max().item() < 1e-5
    lone_counts = {n for n in seen if n <= 80}
    assert len(lone_counts) <= 9, lone_counts  # not one shape per token count
