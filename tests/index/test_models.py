import json

import open_clip
import pytest
import torch

from index.errors import ModelError
from index.models import BUILTINS, load_model, parse_spec, pick_device


def test_builtin_is_a_local_dir_under_25_mb():
    folder = BUILTINS["tiny-shapes"]
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    assert {"model_cfg", "preprocess_cfg"} <= cfg.keys()
    weights = folder / "open_clip_model.safetensors"
    assert weights.stat().st_size < 25 * 2**20


def test_builtin_and_its_local_dir_load_the_same_weights(tiny):
    same = load_model(f"local-dir:{BUILTINS['tiny-shapes']}", device="cpu")
    tokens = tiny.tokenizer(["red circle"])
    with torch.inference_mode():
        assert torch.allclose(tiny.model.encode_text(tokens), same.model.encode_text(tokens))
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


LEAN_CHECK = r"""
import sys
from index.models import _needs_optional_libraries, load_model, open_clip_module, parse_spec
m = load_model("builtin:tiny-shapes", device="cpu")
assert m.model.encode_text(m.tokenizer(["red circle"])).shape == (1, m.dim)
heavy = [x for x in ("transformers", "timm", "sympy", "torch._dynamo") if x in sys.modules]
assert not heavy, heavy
assert m.tokenizer is sys.modules["open_clip"].tokenizer._tokenizer  # one vocabulary, not two
import torch
assert torch._dynamo.utils.is_compile_supported("cpu") in (True, False)  # the real one loads
assert "sympy" in sys.modules
needs = {s: _needs_optional_libraries(parse_spec(s)) for s in
         ("builtin:tiny-shapes", "ViT-B-32:random", "convnext_tiny:random", "roberta-ViT-B-32:random")}
assert needs == {"builtin:tiny-shapes": False, "ViT-B-32:random": False,
                 "convnext_tiny:random": True, "roberta-ViT-B-32:random": True}, needs
oc = open_clip_module(full=True)
assert oc.hf_model.transformers is not None and oc.timm_model.timm is not None
assert open_clip_module() is oc and sys.modules["open_clip"] is oc
print("ok")
"""


def test_the_bundled_model_loads_without_the_optional_libraries():
    """Memory at rest: timm, transformers and torch._dynamo (with sympy) stay out of a process
    whose model does not need them, and come in whole for one that does."""
    import os
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-c", LEAN_CHECK], capture_output=True, text=True,
                         timeout=240, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
