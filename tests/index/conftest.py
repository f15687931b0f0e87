"""Fixtures of the engine's tests (tests/conftest.py has the shared ones)."""

import pytest


@pytest.fixture(scope="module")
def encoder(tiny):
    """One encoder of the bundled model for a module's engines (each engine of its own
    would warm one up). Modules that need another kind define their own `encoder`."""
    from index.encoder import Encoder
    enc = Encoder(tiny)
    yield enc
    enc.close()
