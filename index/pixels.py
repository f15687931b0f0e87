"""Images to the model's input tensors: the model's own preprocess, applied without
multi-threaded torch ops.

Decoding threads must not run multi-threaded torch ops: each thread that does keeps an
OpenMP team for its lifetime, and with more teams than CPUs GNU OpenMP makes the model
thread's workers sleep between parallel regions (see models.load_model). The usual CLIP
pipeline ends in ToTensor and Normalize, a map from each 8-bit channel value to a float,
so that tail is taken from the pipeline itself once (all 256 values of each channel) and
applied as a numpy table lookup: the same floats by construction, on the calling thread.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image


def split_preprocess(preprocess) -> tuple[Callable, Callable, Callable] | None:
    """(per-image PIL stages, batched to-tensor + normalise, the same per image) giving
    exactly the tensors that `preprocess` gives one image at a time; None for a pipeline
    not of that shape. (Run as torch ops on a whole chunk, the tail would also go
    multi-threaded and fight the model for the cores.)"""
    from torchvision import transforms as T

    stages = list(getattr(preprocess, "transforms", ()))
    if len(stages) < 2 or not isinstance(stages[-2], T.ToTensor):
        return None
    if not isinstance(stages[-1], T.Normalize):
        return None
    tail = T.Compose(stages[-2:])
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)  # 1x256 RGB
    try:
        table = tail(Image.fromarray(ramp, "RGB"))
    except Exception:
        return None
    if not isinstance(table, torch.Tensor) or tuple(table.shape) != (3, 1, 256):
        return None
    lut = table[:, 0, :].numpy().copy()  # (3, 256)
    pil = T.Compose(stages[:-2])

    def to_batch(images: list) -> torch.Tensor | None:
        if not all(isinstance(im, Image.Image) and im.mode == "RGB" for im in images):
            return None
        if len({im.size for im in images}) != 1:
            return None
        pixels = np.stack([np.asarray(im) for im in images])  # (n, h, w, 3) uint8
        out = np.empty((pixels.shape[0], 3, *pixels.shape[1:3]), dtype=lut.dtype)
        for c in range(3):
            np.take(lut[c], pixels[..., c], out=out[:, c])
        return torch.from_numpy(out)

    return pil, to_batch, tail


_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # preprocess -> split


def _split_of(preprocess):
    try:
        return _SPLITS[preprocess]
    except KeyError:
        split = _SPLITS[preprocess] = split_preprocess(preprocess)
        return split
    except TypeError:  # a preprocess that cannot be weakly referenced
        return split_preprocess(preprocess)


def resize_stage(preprocess) -> Callable[[Image.Image], Image.Image | torch.Tensor]:
    """The per-image part of `preprocess` (PIL stages), or all of it for another pipeline."""
    split = _split_of(preprocess)
    return split[0] if split else preprocess


def to_pixels(preprocess, staged: list) -> torch.Tensor:
    """The model's input batch from images that went through `resize_stage`."""
    split = _split_of(preprocess)
    if not split:
        return torch.stack(staged)
    pixels = split[1](staged)
    if pixels is None:  # sizes or modes differ: one lookup per image
        parts = [split[1]([im]) for im in staged]  # None for an image not in RGB
        if any(p is None for p in parts):
            return torch.stack([split[2](im) for im in staged])
        pixels = torch.cat(parts)  # type: ignore[arg-type]
    return pixels


def preprocess_images(preprocess, images: list[Image.Image]) -> torch.Tensor:
    """`torch.stack([preprocess(im) for im in images])`, single-threaded."""
    stage = resize_stage(preprocess)
    return to_pixels(preprocess, [stage(im) for im in images])
