"""Shared fixtures: the bundled model and a real architecture with random weights.

Both are loaded once per session; they are read-only, so tests may share them.
"""

from __future__ import annotations

import pytest

from index.models import load_model


@pytest.fixture(scope="session")
def tiny():
    return load_model("builtin:tiny-shapes", device="cpu")


@pytest.fixture(scope="session")
def vitb32():
    """ViT-B-32 with random weights: the real architecture, no download."""
    return load_model("ViT-B-32:random", device="cpu")
