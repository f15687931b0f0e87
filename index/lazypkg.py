"""Some modules of a package, imported without running the package's `__init__`.

Importing `pkg.sub` runs `pkg/__init__.py` first, and some packages import everything they
have there: open_clip its model registry, the Hugging Face hub client, losses and CoCa;
torchvision its datasets, models, video I/O and detection ops. `import_parts` registers the
package module in `sys.modules` without executing it, imports only the named submodules,
and gives the package a module `__getattr__` (PEP 562) that runs its `__init__` on the first
attribute it lacks, in the same module object: the submodules already imported, and the
classes they define, stay the ones the rest of the package then uses. So code that uses
the package as usual (`open_clip.create_model`, `torchvision.get_image_backend()`) gets the
whole package, later.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import threading
import types
from collections.abc import Callable, Sequence

_lock = threading.RLock()


class _Completer:
    """A partial package's `__getattr__`: completes the package, then answers."""

    def __init__(self, module: types.ModuleType,
                 complete: Callable[[types.ModuleType], types.ModuleType | None]):
        self.module, self.complete = module, complete
        self.busy = False  # while the parts are imported: no completion from within

    def __call__(self, name: str):
        if self.busy or (name.startswith("__") and name not in ("__version__", "__all__")):
            raise AttributeError(f"module {self.module.__name__!r} has no attribute {name!r}")
        target = self.complete(self.module) or self.module
        if is_partial(target):
            raise AttributeError(f"module {self.module.__name__!r} has no attribute {name!r}")
        return getattr(target, name)


def is_partial(module: types.ModuleType | None) -> bool:
    """Whether `module` is a package imported by `import_parts` whose `__init__` has not run."""
    return module is not None and isinstance(module.__dict__.get("__getattr__"), _Completer)


def run_init(module: types.ModuleType) -> None:
    """Run a partial package's `__init__` in its module (nothing for a complete one)."""
    with _lock:
        completer = module.__dict__.get("__getattr__")
        if not isinstance(completer, _Completer):
            return
        del module.__dict__["__getattr__"]
        try:
            module.__spec__.loader.exec_module(module)
        except BaseException:
            module.__dict__["__getattr__"] = completer  # still partial: a later use retries
            raise


def import_parts(package: str, parts: Sequence[str],
                 complete: Callable[[types.ModuleType], types.ModuleType | None] = run_init
                 ) -> list[types.ModuleType]:
    """The modules `package.part` for each part; the package itself is left partial when it
    was not imported yet (see the module's docstring). `complete(module)` runs when the
    package is first used beyond these parts: it runs `run_init(module)`, or returns the
    package module to use instead."""
    with _lock:
        if package not in sys.modules:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.submodule_search_locations is None or spec.loader is None:
                raise ImportError(f"no package named {package!r}")
            module = importlib.util.module_from_spec(spec)
            completer = _Completer(module, complete)
            module.__getattr__ = completer
            sys.modules[package] = module
            completer.busy = True
            try:
                for part in parts:
                    importlib.import_module(f"{package}.{part}")
            except BaseException:
                forget(package)
                raise
            finally:
                completer.busy = False
        return [importlib.import_module(f"{package}.{part}") for part in parts]


def forget(package: str) -> None:
    """Drop a package and its submodules from `sys.modules` (a later import starts afresh)."""
    for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
        del sys.modules[name]
