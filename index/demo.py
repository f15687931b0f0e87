"""The demo collection: the synthetic shapes gallery, indexed with the bundled model.

`python -m index demo DIR` and `python -m bot [--console] --demo` both make it with
`make_demo`: DIR/gallery (the images and captions.csv) and DIR/collection. Running it again
completes what is missing (a killed build resumes) and adds nothing twice.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import TextIO

from .build import build
from .engine import Engine, EngineOptions
from .modelspec import DEFAULT_MODEL
from .sources import scan_folder
from .synthetic import DEMO_COUNT, DEMO_SEED, write_gallery


async def make_demo(root: Path, options: EngineOptions | None = None, *, count: int = DEMO_COUNT,
                    seed: int = DEMO_SEED, size: int = 128, out: TextIO | None = None) -> Engine:
    """The demo collection under `root`, written, built or completed; the caller closes the
    engine it returns. Progress lines go to `out` (default: sys.stdout as it is at the call)."""
    out = sys.stdout if out is None else out
    root = Path(root)
    gallery, collection = root / "gallery", root / "collection"
    if not (gallery / "captions.csv").exists():
        print(f"writing the demo gallery ({count} images) to {gallery} ...", file=out, flush=True)
        await asyncio.to_thread(write_gallery, gallery, count, seed, size)
    engine = await asyncio.to_thread(Engine.open, collection, model=DEFAULT_MODEL, create=True,
                                     options=options)
    try:
        records = await asyncio.to_thread(scan_folder, gallery)
        report = await build(engine.collection, engine.encoder, records)
    except BaseException:
        engine.close()
        raise
    print(f"demo collection {collection}: {report.summary()}", file=out, flush=True)
    return engine
