"""One place that resolves a model spec and loads it through open_clip.

Specs:
  builtin:tiny-shapes            the bundled model (index/models/tiny-shapes, open_clip local-dir
                                 layout), built from open_clip's towers alone (index/bundled.py)
  local-dir:/path                an open_clip local-dir (open_clip_config.json + weights), offline
  hf-hub:org/repo                an open_clip model on the Hugging Face hub (downloaded on first use)
  NAME:TAG                       an open_clip architecture with a pretrained tag, e.g.
                                 ViT-B-32:laion2b_s34b_b79k (downloaded on first use)
  NAME:random                    the architecture with random weights (tests and benchmarks)
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import importlib.abc
import json
import logging
import platform
import sys
import threading
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from . import lazypkg
from .errors import ModelError
from .modelspec import ModelSpec, parse_spec
from .texttower import TextParts, text_parts

log = logging.getLogger(__name__)


# What `import open_clip` pulls in that only some towers use: timm (timm vision towers) and
# transformers (Hugging Face text towers, the multilingual ones). And torchvision, which
# open_clip needs for its transforms, imports torch._dynamo (and with it sympy and
# torch.distributed) at import time for one helper of an op we never call.
OPTIONAL_LIBRARIES = ("timm", "transformers")
_open_clip_lock = threading.RLock()
_lean_open_clip: types.ModuleType | None = None  # the open_clip imported lean, if it was


class _Absent(importlib.abc.MetaPathFinder):
    """Makes OPTIONAL_LIBRARIES look not installed while open_clip is imported: open_clip
    then leaves them out (its own `try: import ... except ImportError`)."""

    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in OPTIONAL_LIBRARIES:
            raise ImportError(f"{name} is imported only by models that need it")
        return None


def _is_compile_supported(device_type):  # torchvision's only use of torch._dynamo at import
    from torch._dynamo.utils import is_compile_supported
    return is_compile_supported(device_type)


@contextlib.contextmanager
def _lean_imports():
    """While inside, OPTIONAL_LIBRARIES look not installed and torch._dynamo is a stub
    (torchvision imports it for one helper); the real one loads on first use after."""
    stubs = {"torch._dynamo": types.ModuleType("torch._dynamo"),
             "torch._dynamo.utils": types.ModuleType("torch._dynamo.utils")}
    stubs["torch._dynamo"].__path__ = []
    stubs["torch._dynamo.utils"].is_compile_supported = _is_compile_supported
    finder = _Absent()
    lean = "torch._dynamo" not in sys.modules
    sys.meta_path.insert(0, finder)
    if lean:
        sys.modules.update(stubs)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)
        if lean:
            for name, stub in stubs.items():
                if sys.modules.get(name) is stub:
                    del sys.modules[name]
            if torch.__dict__.get("_dynamo") is stubs["torch._dynamo"]:
                del torch._dynamo  # the real one loads on first use (torch.__getattr__)


def _import_lean() -> types.ModuleType:
    """open_clip without timm, transformers and torch._dynamo (see OPTIONAL_LIBRARIES)."""
    with _lean_imports():
        return importlib.import_module("open_clip")


def _complete_lean(module: types.ModuleType) -> None:
    with _lean_imports():
        lazypkg.run_init(module)


def open_clip_parts() -> tuple[types.ModuleType, types.ModuleType, types.ModuleType]:
    """open_clip's `model`, `transform` and `tokenizer` modules, imported lean; where
    open_clip was not imported yet, without the rest of open_clip and of torchvision
    (index.lazypkg: the packages complete themselves on first use beyond these)."""
    with _open_clip_lock, _lean_imports():
        lazypkg.import_parts("torchvision", ("transforms", "ops.misc"), complete=_complete_lean)
        return tuple(lazypkg.import_parts("open_clip", ("model", "transform", "tokenizer"),
                                          complete=lambda _: open_clip_module()))


def open_clip_module(full: bool = False) -> types.ModuleType:
    """open_clip, imported lean the first time (see OPTIONAL_LIBRARIES); `full`: with timm
    and transformers, re-imported that way if it was imported lean."""
    global _lean_open_clip
    with _open_clip_lock:
        found = sys.modules.get("open_clip")
        if lazypkg.is_partial(found):  # only the bundled model's parts (open_clip_parts)
            if not full:
                try:
                    _complete_lean(found)
                    _lean_open_clip = found
                    return found
                except Exception:
                    log.debug("completing open_clip failed; importing it whole", exc_info=True)
            _forget_open_clip()
            found = None
        if found is not None and (not full or found is not _lean_open_clip):
            return found
        if found is not None:  # lean, and a model needs more: import it afresh
            _forget_open_clip()
        if not full:
            try:
                _lean_open_clip = _import_lean()
                return _lean_open_clip
            except Exception:  # a future open_clip/torchvision that needs more: import it all
                log.debug("lean open_clip import failed; importing it whole", exc_info=True)
                _forget_open_clip()
        return importlib.import_module("open_clip")


def _forget_open_clip() -> None:
    lazypkg.forget("open_clip")


def _needs_optional_libraries(parsed: ModelSpec) -> bool:
    """Whether the model's towers need timm or transformers (hf-hub: its config is only known
    once downloaded, so yes)."""
    name = parsed.open_clip_name
    if name.startswith("hf-hub:"):
        return True
    if name.startswith("local-dir:"):
        try:
            cfg = json.loads((Path(name.removeprefix("local-dir:")) / "open_clip_config.json").read_text())
        except (OSError, ValueError):
            return True  # open_clip reports what is wrong with it
        cfg = cfg.get("model_cfg", cfg) if isinstance(cfg, dict) else {}
    else:
        cfg = open_clip_module().get_model_config(name) or {}
    vision, text = cfg.get("vision_cfg") or {}, cfg.get("text_cfg") or {}
    return bool(vision.get("timm_model_name") or text.get("hf_model_name")
                or text.get("hf_tokenizer_name"))


def pick_device(device: str = "auto") -> tuple[torch.device, torch.dtype]:
    """`auto`: CUDA in float16 when present, else CPU in float32."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as e:
        raise ModelError(f"unknown device {device!r}; use auto, cpu or cuda") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError("device cuda was asked for but no CUDA GPU is available; use device = \"auto\" or \"cpu\"")
    return dev, (torch.float16 if dev.type == "cuda" else torch.float32)


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    preprocess: Callable  # PIL image -> (3, H, W) tensor
    tokenizer: Callable  # list[str] -> (n, context) tensor
    device: torch.device
    dtype: torch.dtype
    dim: int
    text: TextParts | None  # None: not a causal CLIP text tower (no fast path, no attention)

    @property
    def name(self) -> str:
        return self.spec.canonical


def load_model(spec: str | ModelSpec, device: str = "auto") -> LoadedModel:
    """Load a model; raises ModelError with a one-line reason.

    The work runs on a short-lived thread of its own. Creating and initialising the weights
    runs multi-threaded torch ops, and GNU OpenMP keeps a team of worker threads for each
    thread that ever ran one, for the life of that thread. Once more such threads exist than
    CPUs, it stops letting idle workers spin between parallel regions, and every region of
    the encoder's model thread pays a wake-up instead: a lone ViT-B-32 text took 17 ms
    instead of 13.5 ms here after the model was loaded on the main thread. A team that dies
    with its thread costs nothing.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="clipfind-model-load") as loader:
        loaded = loader.submit(_load_model, spec, device).result()  # its thread ends on exit
    _give_back_freed_memory()
    return loaded


def _give_back_freed_memory() -> None:
    """Hand what loading freed (the random initial weights, the checkpoint, a duplicate
    tokenizer) back to the system: glibc keeps freed heap mapped, and this is memory a
    long-running process would hold at rest for nothing. Linux/glibc only."""
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _shared_tokenizer(open_clip, tokenizer):
    """open_clip builds a default CLIP tokenizer when imported (its `tokenize()`), and
    get_tokenizer another, the same, for each model (~26 MB of vocabulary tables each): a
    model whose tokenizer is the default one shares open_clip's."""
    shared = getattr(open_clip.tokenizer, "_tokenizer", None)
    kind = open_clip.tokenizer.SimpleTokenizer
    if type(tokenizer) is not kind or type(shared) is not kind:
        return tokenizer
    same = all(getattr(tokenizer, a, None) == getattr(shared, a, None)
               for a in ("context_length", "clean_fn", "reduction_fn", "sot_token_id",
                         "eot_token_id", "all_special_ids", "encoder", "bpe_ranks"))
    return shared if same else tokenizer


def _load_model(spec: str | ModelSpec, device: str) -> LoadedModel:
    parsed = spec if isinstance(spec, ModelSpec) else parse_spec(spec)
    dev, dtype = pick_device(device)
    try:
        if parsed.canonical.startswith("builtin:"):  # open_clip's towers, not all of it
            from .bundled import load_bundled

            folder = Path(parsed.open_clip_name.removeprefix("local-dir:"))
            model, preprocess, tokenizer = load_bundled(folder, dev, dtype)
        else:
            open_clip = open_clip_module(full=_needs_optional_libraries(parsed))
            model, _, preprocess = open_clip.create_model_and_transforms(
                parsed.open_clip_name, pretrained=parsed.pretrained, device=dev,
                precision="fp16" if dtype == torch.float16 else "fp32")
            tokenizer = _shared_tokenizer(open_clip, open_clip.get_tokenizer(parsed.open_clip_name))
    except ModelError:
        raise
    except Exception as e:  # open_clip and the hub raise many types; all mean "could not load"
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        if parsed.downloads:
            raise ModelError(f"could not fetch the weights of {parsed.canonical} ({reason}); check the "
                             "network, or download them once and use local-dir:/path") from e
        raise ModelError(f"could not load {parsed.canonical}: {reason}") from e
    model.eval()
    with torch.inference_mode():
        dim = int(model.encode_text(tokenizer(["a"]).to(dev)).shape[-1])
    return LoadedModel(parsed, model, preprocess, tokenizer, dev, dtype, dim, text_parts(model))
