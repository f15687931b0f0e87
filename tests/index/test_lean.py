"""The functional block walk with oneDNN linear layers gives the stock towers' vectors."""

import pytest
import torch
import torch.nn.functional as F

from index.lean import lean_visual, onednn_linear


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
