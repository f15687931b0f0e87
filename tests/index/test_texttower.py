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


@pytest.mark.parametrize("linear", ["torch", "onednn"])
@pytest.mark.parametrize("model", ["tiny", "vitb32"])
def test_packed_text_pass_equals_open_clips_encode_text_in_a_batch_and_alone(model, linear, request):
    import torch.nn.functional as F

    from index.encoder import encode_text_packed, onednn_linear

    fn = F.linear if linear == "torch" else onednn_linear()
    if fn is None:
        pytest.skip("this torch build has no oneDNN linear op")
    loaded = request.getfixturevalue(model)
    tokens = loaded.tokenizer(TEXTS)
    with torch.inference_mode():
        stock = loaded.model.encode_text(tokens, normalize=True)
        batch = encode_text_packed(loaded.text, tokens, fn)
        alone = torch.cat([encode_text_packed(loaded.text, t[None], fn) for t in tokens])
    assert (batch - stock).abs().max().item() < 1e-5
    assert (alone - stock).abs().max().item() < 1e-5
