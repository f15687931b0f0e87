"""Train the bundled `builtin:tiny-shapes` model on the synthetic shapes gallery.

    python -m index.train_tiny --out index/models/tiny-shapes

Reproducible: the seed fixes the scenes, captions, batches and initial weights
(on the same torch build and thread count). Writes open_clip's `local-dir:` layout:
open_clip_config.json + open_clip_model.safetensors.

The defaults are the shipped model (about 45 min on one core of this 2-core machine).
Four objectives, weighted:
- CLIP's contrastive loss on captions that name a random subset of each image's objects, as
  real alt-texts do (captions naming every object teach exact-set matching: joint queries
  fail).
- Hard negatives: per image, a caption that swaps its colours between its shapes ("green
  square" for a blue square beside a green circle), so the towers learn binding.
- Structure (`--structure`, 10): image-to-image cosines matched to the overlap of the two
  images' objects. A picture's vector then depends on what it shows, not where or how
  large, which is what a query picture added to words needs (image + text 0.61 -> 0.98
  against the previous model, trained without it).
- Alignment (`--align`, 0.15): each image's vector pulled towards the normalised sum of its
  objects' text vectors. A little of it makes the plain-sum composition work too (0.86 ->
  0.96); at 1.0 it cost binding (weighted 0.82), because "blue circle" + "green square"
  and "blue square" + "green circle" sum to nearly the same text vector.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from . import synthetic
from .texttower import encode_text_trimmed, text_parts

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

MODEL_CFG = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "layers": 4, "width": 128, "head_width": 32, "patch_size": 8},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 128, "heads": 4, "layers": 4},
}
PREPROCESS_CFG = {
    "size": 64, "mode": "RGB", "mean": list(MEAN), "std": list(STD),
    "interpolation": "bicubic", "resize_mode": "shortest",
}


def build_model() -> open_clip.CLIP:
    return open_clip.CLIP(**MODEL_CFG)


def render_pool(count: int, seed: int, transform) -> tuple[list[synthetic.Scene], torch.Tensor]:
    """Scenes and their preprocessed pixels as uint8 (the same resize the encoder uses)."""
    scenes = list(synthetic.scenes(count, seed))
    pixels = torch.empty((count, 3, 64, 64), dtype=torch.uint8)
    for i, s in enumerate(scenes):
        img = transform(synthetic.render(s))
        pixels[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8)).permute(2, 0, 1)
    return scenes, pixels


def swapped_concept(scene: synthetic.Scene, rng: random.Random) -> str:
    """A concept the scene does not hold, made of a colour and a shape that it does hold
    (blue square + green circle -> "green square"): a hard negative that teaches binding."""
    pairs = [(a.colour, b.shape) for a in scene.objects for b in scene.objects
             if a is not b and a.colour != b.colour and a.shape != b.shape]
    candidates = [f"{c} {s}" for c, s in pairs if f"{c} {s}" not in scene.concepts]
    if not candidates:
        candidates = [c for c in synthetic.CONCEPTS if c not in scene.concepts]
    return rng.choice(candidates)


def structure_loss(img: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Image-to-image similarities matched to the overlap of the images' objects (cosine of
    their concept sets, bound pairs: {blue square} and {blue circle} share nothing).

    It makes a picture's vector depend on what it shows, not where or how large, so a query
    picture of a red circle lands near every picture holding one; and it teaches binding on
    the image side without tying image vectors to sums of text vectors (which the text
    tower's additive colour + shape structure would unbind)."""
    target = F.normalize(members, dim=-1)
    target = target @ target.T
    return ((img @ img.T - target) ** 2).mean()


def normalise_pixels(batch: torch.Tensor) -> torch.Tensor:
    x = batch.float() / 255.0
    mean = torch.tensor(MEAN).view(1, 3, 1, 1)
    std = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def save(model: torch.nn.Module, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "open_clip_model.safetensors"))
    cfg = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (out / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def train(out: Path, steps: int, batch: int, seed: int, lr: float, align: float,
          pool: int, threads: int, init: Path | None = None, hard_negatives: bool = False,
          structure: float = 0.0) -> None:
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = random.Random(seed)
    model = build_model()
    if init is not None:  # continue from an earlier run's weights (a second stage)
        from safetensors.torch import load_file
        state = load_file(str(init / "open_clip_model.safetensors"))
        model.load_state_dict({k: v.float() for k, v in state.items()})
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    # Resize and centre-crop only: the same geometry as the inference transform.
    from torchvision import transforms as T
    geometry = T.Compose([T.Resize(64, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(64)])
    t0 = time.time()
    scenes, pixels = render_pool(pool, seed, geometry)
    print(f"rendered {pool} scenes in {time.time() - t0:.0f}s", flush=True)

    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": other, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98))
    warmup = max(1, steps // 15)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    parts = text_parts(model)
    concept_tokens = tokenizer(list(synthetic.CONCEPTS))
    membership = torch.tensor([[float(c in s.concepts) for c in synthetic.CONCEPTS] for s in scenes])
    model.train()
    t0 = time.time()
    for step in range(steps):
        idx = [rng.randrange(pool) for _ in range(batch)]
        x = normalise_pixels(pixels[idx])
        flip = torch.tensor([rng.random() < 0.5 for _ in idx])
        x[flip] = x[flip].flip(-1)
        partial = tokenizer([synthetic.partial_caption(scenes[i], rng) for i in idx])
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = encode_text_trimmed(parts, partial)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * img @ txt.T
        labels = torch.arange(batch)
        image_logits = logits
        if hard_negatives:
            negs = tokenizer([synthetic.caption([swapped_concept(scenes[i], rng)], rng) for i in idx])
            image_logits = torch.cat([logits, scale * img @ encode_text_trimmed(parts, negs).T], dim=1)
        loss = (F.cross_entropy(image_logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        if align > 0:
            concept_vecs = encode_text_trimmed(parts, concept_tokens)
            target = F.normalize(membership[idx] @ concept_vecs, dim=-1)
            loss = loss + align * (1 - (img * target).sum(-1)).mean()
        if structure > 0:
            loss = loss + structure * structure_loss(img, membership[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == steps - 1:
            el = time.time() - t0
            print(f"step {step:5d} loss {loss.item():.3f} scale {scale.item():.1f} "
                  f"{el / (step + 1):.2f}s/step", flush=True)
    save(model.eval(), out)
    print(f"saved {out} after {time.time() - t0:.0f}s of training", flush=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path(__file__).parent / "models" / "tiny-shapes")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--align", type=float, default=0.15)
    p.add_argument("--pool", type=int, default=40000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--init", type=Path, default=None, help="start from this local-dir's weights")
    p.add_argument("--hard-negatives", action=argparse.BooleanOptionalAction, default=True,
                   help="add a swapped-binding caption per image as an extra negative")
    p.add_argument("--structure", type=float, default=10.0,
                   help="weight of the image-image loss matching similarities to object overlap")
    a = p.parse_args(argv)
    train(a.out, a.steps, a.batch, a.seed, a.lr, a.align, a.pool, a.threads, a.init,
          a.hard_negatives, a.structure)


if __name__ == "__main__":
    main()
