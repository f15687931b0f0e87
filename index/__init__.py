"""clipfind's search engine (see DESIGN.md)."""

_LAZY = {  # name -> module: imported on first use, so `import index.errors` stays light
    "ImageExplanation": "explain_image",  # what Engine.explain_image answers
    "overlay_png": "overlay",  # an ImageExplanation as the overlay picture
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
