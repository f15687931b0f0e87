"""The single-threaded preprocess gives exactly the tensors of the model's own pipeline."""

import numpy as np
import pytest
import torch
from PIL import Image

from index.pixels import preprocess_images


def _images():
    rng = np.random.default_rng(0)
    sizes = [(64, 64), (128, 96), (37, 200), (640, 480)]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB") for w, h in sizes]


@pytest.mark.parametrize("model", ["tiny", "vitb32"])
def test_mixed_sizes_give_the_pipelines_own_tensors(model, request):
    loaded = request.getfixturevalue(model)
    images = _images()
    expected = torch.stack([loaded.preprocess(im) for im in images])
    got = preprocess_images(loaded.preprocess, images)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert torch.equal(got, expected)


def test_a_pipeline_of_another_shape_is_used_as_it_is():
    def preprocess(im):  # not a Compose ending in ToTensor + Normalize
        return torch.from_numpy(np.asarray(im.resize((8, 8)), dtype=np.float32)).permute(2, 0, 1)

    images = _images()
    got = preprocess_images(preprocess, images)
    assert torch.equal(got, torch.stack([preprocess(im) for im in images]))
