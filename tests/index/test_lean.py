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
    assert len(counts) <= 5
    assert all(bucket_rows(n) >= n for n in range(1, 5000))
    assert all(bucket_rows(n) <= n * 9 / 8 for n in range(128, 5000))  # little padding work


def test_bucketed_onednn_linear_gives_the_plain_rows():
    linear = onednn_linear(bucket=True)
    if linear is None:
        pytest.skip("this torch build has no oneDNN linear")
    gen = torch.Generator().manual_seed(2)
    weight, bias = torch.randn(24, 16, generator=gen), torch.randn(24, generator=gen)
    for rows in (1, 5, 16, 17, 77, 130):
        x = torch.randn(rows, 16, generator=gen)
        with torch.inference_mode():
            got = linear(x, weight, bias)
        assert got.shape == (rows, 24)
        assert (got - F.linear(x, weight, bias)).abs().max().item() < 1e-5
