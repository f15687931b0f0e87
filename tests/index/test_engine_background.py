"""EngineOptions.background_rebuilds reaches the collection (the bot sets it)."""

from __future__ import annotations

from index.engine import Engine, EngineOptions
from index.store import Collection


def test_engine_option_turns_on_background_rebuilds(tmp_path):
    with Collection.create(tmp_path / "c", "builtin:tiny-shapes", 16) as c:
        assert not c.background_rebuilds
        Engine(c, encoder=None, options=EngineOptions(), owns_encoder=False)
        assert not c.background_rebuilds
        # as Namespaces does: a collection opened elsewhere, handed to an Engine
        Engine(c, encoder=None, options=EngineOptions(background_rebuilds=True), owns_encoder=False)
        assert c.background_rebuilds
