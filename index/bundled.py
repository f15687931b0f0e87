"""A bundled (`builtin:`) model, built from the few open_clip modules it needs.

The bundled models are plain CLIP models (open_clip's own towers and tokenizer) stored in
open_clip's local-dir layout. `open_clip.create_model_and_transforms` would import all of
open_clip (its model registry, pretrained tables and hub client, losses, CoCa) and with it
all of torchvision (datasets, models, video I/O), which a process serving the bundled model
would hold for nothing. So they are built here from `open_clip.model`, `open_clip.transform`
and `open_clip.tokenizer` alone (models.open_clip_parts), the way open_clip's factory builds
a local-dir model: the same classes, weights, preprocess and tokenizer
(tests/index/test_models.py compares the two). Every other spec loads through open_clip.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from .models import open_clip_parts

CONFIG = "open_clip_config.json"
WEIGHTS = "open_clip_model.safetensors"


def plain_clip(model_cfg: dict) -> bool:
    """Whether a model config is one this module builds: open_clip's own towers."""
    vision, text = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    return not (model_cfg.get("custom_text") or "multimodal_cfg" in model_cfg
                or vision.get("timm_model_name") or text.get("hf_model_name")
                or "hf_tokenizer_name" in text)


def load_bundled(folder: Path, device: torch.device,
                 dtype: torch.dtype) -> tuple[torch.nn.Module, Callable, Callable]:
    """(model, preprocess, tokenizer) of the model in `folder`, in eval mode on `device`
    (float16 weights as open_clip's "fp16" precision where dtype is float16)."""
    from safetensors.torch import load_file

    model_mod, transform, tokens = open_clip_parts()
    cfg = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    model_cfg = dict(cfg["model_cfg"])
    if not plain_clip(model_cfg):
        raise ValueError(f"{folder / CONFIG} is not a plain CLIP model")
    precision = "fp16" if dtype == torch.float16 else "fp32"
    model = model_mod.CLIP(**model_cfg, cast_dtype=model_mod.get_cast_dtype(precision))
    model.to(device=device)
    if precision == "fp16":  # open_clip's mixed precision: layer norms stay float32
        model_mod.convert_weights_to_lp(model, dtype=torch.float16)
    state = load_file(str(folder / WEIGHTS), device="cpu")
    model.load_state_dict(state, strict=True)
    table = state.get("token_embedding.weight")
    if table is not None and table.dtype.itemsize < model.token_embedding.weight.dtype.itemsize:
        # The text tower's token table (most of a small model's weights) is only looked up,
        # and every lookup is cast to the tower's dtype: kept in the stored precision, the
        # same vectors come out, from half the memory.
        model.token_embedding.to(table.dtype)
    preprocess_cfg = transform.merge_preprocess_dict(transform.PreprocessCfg(),
                                                     cfg.get("preprocess_cfg", {}))
    preprocess_cfg["size"] = model.visual.image_size
    model_mod.set_model_preprocess_cfg(model, preprocess_cfg)
    preprocess = transform.image_transform_v2(transform.PreprocessCfg(**preprocess_cfg),
                                              is_train=False)
    text = model_cfg.get("text_cfg") or {}
    length = text.get("context_length", tokens.DEFAULT_CONTEXT_LENGTH)
    kwargs = text.get("tokenizer_kwargs") or {}
    shared = tokens._tokenizer  # the one open_clip made at import (~26 MB of tables)
    tokenizer = (shared if not kwargs and shared.context_length == length
                 else tokens.SimpleTokenizer(context_length=length, **kwargs))
    return model.eval(), preprocess, tokenizer
