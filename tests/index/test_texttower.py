import pytest
import torch

from index.texttower import encode_text_trimmed

TEXTS = ["red circle", "a blue square next to a green triangle", "Tokyo tower at night", "x"]


@pytest.mark.parametrize("model", ["tiny", "vitb32"])
def test_trimmed_text_tower_equals_open_clips_encode_text(model, request):
    loaded = request.getfixturevalue(model)
    tokens = loaded.tokenizer(TEXTS)
    with torch.inference_mode():
        stock = loaded.model.encode_text(tokens, normalize=True)
        fast = encode_text_trimmed(loaded.text, tokens)
    assert fast.shape == stock.shape
    assert (fast - stock).abs().max().item() < 1e-5
