"""The bundled model's training script: reproducible, and its losses mean what they say."""

import torch

from index.models import load_model
from index.train_tiny import structure_loss, train


def test_training_is_reproducible_for_a_seed_and_writes_a_loadable_local_dir(tmp_path):
    for name in ("a", "b"):
        train(tmp_path / name, steps=2, batch=8, seed=3, lr=1e-3, align=0.15, pool=16,
              threads=1, hard_negatives=True, structure=10.0)
    a = (tmp_path / "a" / "open_clip_model.safetensors").read_bytes()
    assert a == (tmp_path / "b" / "open_clip_model.safetensors").read_bytes()
    loaded = load_model(f"local-dir:{tmp_path / 'a'}")
    with torch.inference_mode():
        v = loaded.model.encode_text(loaded.tokenizer(["red circle"]))
    assert v.shape == (1, 128)


def test_structure_loss_is_zero_when_image_similarities_equal_object_overlap():
    members = torch.tensor([[1.0, 0, 0], [1, 1, 0], [0, 0, 1]])
    exact = torch.nn.functional.normalize(members, dim=-1)  # cosines = overlap
    assert structure_loss(exact, members).item() < 1e-12
    same = torch.nn.functional.normalize(torch.ones(3, 3), dim=-1)  # all alike
    assert structure_loss(same, members).item() > 0.1
