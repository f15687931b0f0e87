import json

import open_clip
import pytest
import torch

from index.errors import ModelError
from index.models import load_model, pick_device
from index.modelspec import BUILTINS, parse_spec


def test_builtin_is_a_local_dir_under_25_mb():
    folder = BUILTINS["tiny-shapes"]
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    assert {"model_cfg", "preprocess_cfg"} <= cfg.keys()
    weights = folder / "open_clip_model.safetensors"
    assert weights.stat().st_size < 25 * 2**20


def test_builtin_and_its_local_dir_load_the_same_model(tiny):
    """The bundled model is built from open_clip's parts (index/bundled.py), its local-dir
    through open_clip's factory: the same classes, weights, preprocess and tokenizer."""
    from PIL import Image

    same = load_model(f"local-dir:{BUILTINS['tiny-shapes']}", device="cpu")
    assert type(tiny.model) is type(same.model) is open_clip.CLIP
    theirs = same.model.state_dict()
    assert tiny.model.state_dict().keys() == theirs.keys()
    # the same weights (the token table in the float16 it is stored in: lossless)
    assert all(torch.equal(v.float(), theirs[k]) for k, v in tiny.model.state_dict().items())
    assert tiny.model.token_embedding.weight.dtype == torch.float16
    assert tiny.model.visual.preprocess_cfg == same.model.visual.preprocess_cfg
    assert repr(tiny.preprocess) == repr(same.preprocess)
    photo = Image.new("RGB", (90, 50), (200, 30, 40))
    photo.paste((10, 20, 250), (30, 5, 60, 45))
    pixels = tiny.preprocess(photo)[None]
    assert torch.equal(pixels, same.preprocess(photo)[None])
    tokens = tiny.tokenizer(["red circle", "a blue square"])
    assert torch.equal(tokens, same.tokenizer(["red circle", "a blue square"]))
    with torch.inference_mode():
        assert torch.equal(tiny.model.encode_text(tokens), same.model.encode_text(tokens))
        assert torch.equal(tiny.model.encode_image(pixels), same.model.encode_image(pixels))
    assert not tiny.model.training
    assert tiny.dim == same.dim == 128


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("", "no model given"),
        ("ViT-B-32", "needs a pretrained tag"),
        ("ViT-B-32:nope", "has no pretrained tag 'nope'"),
        ("NoSuchNet", "unknown model 'NoSuchNet'"),
        ("builtin:nope", "built-ins: builtin:tiny-shapes"),
        ("local-dir:/definitely/not/here", "no open_clip_config.json"),
        ("hf-hub:justaname", "names a repository"),
    ],
)
def test_bad_specs_get_one_clear_line(spec, fragment):
    with pytest.raises(ModelError) as e:
        parse_spec(spec)
    assert fragment in str(e.value)
    assert "\n" not in str(e.value)


def test_pretrained_tag_goes_to_the_hub_and_a_failed_download_is_one_line(monkeypatch):
    asked = []

    def no_network(repo_id, filename, *args, **kwargs):
        asked.append((repo_id, filename))
        raise OSError("network unreachable")

    monkeypatch.setattr(open_clip.pretrained, "hf_hub_download", no_network)
    with pytest.raises(ModelError) as e:
        load_model("ViT-B-32:laion2b_s34b_b79k", device="cpu")
    assert asked and asked[0][0] == "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    assert "could not fetch the weights of ViT-B-32:laion2b_s34b_b79k" in str(e.value)
    assert "local-dir:" in str(e.value)


def test_hf_hub_spec_is_passed_to_open_clip():
    spec = parse_spec("hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K")
    assert spec.open_clip_name == "hf-hub:laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
    assert spec.downloads


def test_multilingual_model_resolves_by_configuration():
    spec = parse_spec("xlm-roberta-base-ViT-B-32:laion5b_s13b_b90k")
    assert spec.open_clip_name == "xlm-roberta-base-ViT-B-32"
    assert spec.pretrained == "laion5b_s13b_b90k"


def test_local_dir_made_by_hand_loads(tmp_path, tiny):
    folder = BUILTINS["tiny-shapes"]
    for name in ("open_clip_config.json", "open_clip_model.safetensors"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    loaded = load_model(f"local-dir:{tmp_path}", device="cpu")
    assert loaded.name == f"local-dir:{tmp_path.resolve()}"


def test_cuda_asked_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelError, match="no CUDA GPU"):
        pick_device("cuda")
    assert pick_device("auto") == (torch.device("cpu"), torch.float32)


def test_random_architecture_loads_for_tests(vitb32):
    assert vitb32.dim == 512 and vitb32.text is not None


IDLE_BOT = r"""
import sys
import bot.console  # the bot's command logic and what it imports (bot.app adds discord)
from index import Engine
engine = Engine.open(sys.argv[1], model="builtin:tiny-shapes", create=True)  # model loaded
unused = ["open_clip.factory", "open_clip.pretrained", "open_clip.coca_model", "huggingface_hub",
          "torchvision.models", "torchvision.datasets", "torchvision.io", "pymilvus", "grpc",
          "timm", "transformers", "torch._dynamo", "sympy"]
held = [m for m in unused if m in sys.modules]
assert not held, held
m = engine.encoder.loaded
assert m.tokenizer is sys.modules["open_clip.tokenizer"]._tokenizer  # one vocabulary, not two
engine.close()  # (its warm-up imports nothing: bench.memory --at-rest measures after it)
# the rest comes on first use, around the classes already in use
import open_clip, torchvision
from index.heatmap import vit_tower
assert type(m.model) is open_clip.CLIP and "open_clip.factory" in sys.modules
assert vit_tower(m.model) is m.model.visual
assert torchvision.get_image_backend() == "PIL" and "torchvision.models" in sys.modules
heavy = [x for x in ("transformers", "timm", "sympy", "torch._dynamo") if x in sys.modules]
assert not heavy, heavy
import torch
assert torch._dynamo.utils.is_compile_supported("cpu") in (True, False)  # the real one loads
assert "sympy" in sys.modules
from index.models import _needs_optional_libraries, open_clip_module
from index.modelspec import parse_spec
needs = {s: _needs_optional_libraries(parse_spec(s)) for s in
         ("builtin:tiny-shapes", "ViT-B-32:random", "convnext_tiny:random", "roberta-ViT-B-32:random")}
assert needs == {"builtin:tiny-shapes": False, "ViT-B-32:random": False,
                 "convnext_tiny:random": True, "roberta-ViT-B-32:random": True}, needs
oc = open_clip_module(full=True)
assert oc.hf_model.transformers is not None and oc.timm_model.timm is not None
assert open_clip_module() is oc and sys.modules["open_clip"] is oc
print("ok")
"""


def test_the_idle_bot_imports_only_what_its_model_uses(tmp_path):
    """Memory at rest (issue 13). The bot serving the bundled model holds open_clip's towers,
    transform and tokenizer, not its registry, hub client or CoCa; not torchvision's models,
    datasets or video I/O; not timm, transformers, torch._dynamo (with sympy) or Milvus's
    client. A later use of open_clip or torchvision completes them in place (the same
    classes: heatmaps still recognise the model's tower), and a model that needs timm or
    transformers gets them."""
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", IDLE_BOT, str(tmp_path / "c")], capture_output=True,
                         text=True, timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
