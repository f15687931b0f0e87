"""clipfind's search engine (see DESIGN.md)."""

from .explain_image import ImageExplanation  # noqa: F401  (the facade: Engine.explain_image's answer)
from .overlay import overlay_png  # noqa: F401
