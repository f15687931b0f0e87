"""Model specs parsed and checked: the one place a spec string becomes what to load.

Kept apart from models.py (which imports torch) so that a command line that refuses its
input, prints its help or names the default model does not pay for importing torch; only a
named open_clip architecture needs open_clip's registry to be checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import ModelError

BUILTIN_DIR = Path(__file__).parent / "models"
BUILTINS = {"tiny-shapes": BUILTIN_DIR / "tiny-shapes"}
DEFAULT_MODEL = "builtin:tiny-shapes"
RANDOM_TAG = "random"


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec. `canonical` is what a collection's manifest records."""

    canonical: str
    open_clip_name: str  # what open_clip.create_model takes
    pretrained: str | None = None  # pretrained tag, None for local-dir/hf-hub/random
    downloads: bool = False  # whether loading may reach the network


def parse_spec(spec: str) -> ModelSpec:
    spec = (spec or "").strip()
    if not spec:
        raise ModelError(f"no model given; use e.g. {DEFAULT_MODEL} or ViT-B-32:laion2b_s34b_b79k")
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name not in BUILTINS:
            raise ModelError(f"unknown built-in model {spec!r}; built-ins: "
                             + ", ".join(f"builtin:{n}" for n in BUILTINS))
        return ModelSpec(spec, f"local-dir:{BUILTINS[name]}")
    if spec.startswith("local-dir:"):
        path = Path(spec.removeprefix("local-dir:")).expanduser().resolve()
        if not (path / "open_clip_config.json").is_file():
            raise ModelError(f"{spec}: no open_clip_config.json in {path}; a local-dir model needs "
                             "open_clip_config.json and its weights (open_clip_model.safetensors)")
        return ModelSpec(f"local-dir:{path}", f"local-dir:{path}")
    if spec.startswith("hf-hub:"):
        if "/" not in spec.removeprefix("hf-hub:"):
            raise ModelError(f"{spec}: an hf-hub spec names a repository, e.g. hf-hub:org/repo")
        return ModelSpec(spec, spec, downloads=True)
    from .models import open_clip_module  # only named models need its registry (and torch)

    open_clip = open_clip_module()
    name, _, tag = spec.partition(":")
    if name not in open_clip.list_models():
        raise ModelError(f"unknown model {name!r}; use {DEFAULT_MODEL}, local-dir:/path, "
                         "hf-hub:org/repo or an open_clip name such as ViT-B-32:laion2b_s34b_b79k")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if not tag:
        hint = f"{name}:{tags[0]}" if tags else f"{name}:{RANDOM_TAG}"
        raise ModelError(f"model {name!r} needs a pretrained tag, e.g. {hint} "
                         f"(tags: {', '.join(tags) or 'none'}; '{RANDOM_TAG}' for random weights)")
    if tag == RANDOM_TAG:
        return ModelSpec(spec, name)
    if tag not in tags:
        raise ModelError(f"model {name!r} has no pretrained tag {tag!r}; tags: {', '.join(tags) or 'none'}")
    return ModelSpec(spec, name, pretrained=tag, downloads=True)
