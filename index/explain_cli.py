"""`python -m index explain`: a result's heatmap as an overlay PNG and/or its grid as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .errors import SourceError

HELP = "where in a stored image the model saw the query (relevance heatmap)"


def add_parser(sub, engine_opts, epilog: str, formatter) -> None:
    x = sub.add_parser("explain", help=HELP, epilog=epilog, formatter_class=formatter)
    engine_opts(x)
    x.add_argument("--id", type=int, required=True, help="the item id (search --json shows it)")
    x.add_argument("--image", action="append", default=[], help="attach an image (#1, #2, ...)")
    x.add_argument("--out", help="write the overlay PNG here (one panel per text term + the query)")
    x.add_argument("--json", action="store_true", help="print the relevance grids as JSON")
    x.add_argument("query", nargs="*", help="the query (needs at least one text term)")
    x.set_defaults(run=run)


async def run(a) -> int:
    from .__main__ import _load_images, _open_engine
    from .explain_image import parse_for_heatmap
    from .overlay import overlay_png

    if not a.out and not a.json:
        raise SourceError("nothing to write; give --out heat.png and/or --json")
    if a.out and Path(a.out).suffix.lower() != ".png":
        raise SourceError(f"--out {a.out}: the overlay is a PNG; give a path ending in .png")
    images = _load_images(a.image)
    query = parse_for_heatmap(" ".join(a.query), len(images))  # before the model loads
    engine = _open_engine(a)
    try:
        # the operator's own collection: its URLs are fetched as the build fetched them
        x = await engine.explain_image(a.id, query, images, public_only=False)
    finally:
        engine.close()
    if a.out:
        try:
            Path(a.out).write_bytes(overlay_png(x))
        except OSError as e:
            raise SourceError(f"--out {a.out}: cannot write it ({e.strerror or e})") from e
        panels = ", ".join(x.heatmaps.labels)
        print(f"wrote {a.out} ({x.heatmaps.method} relevance of item {a.id} for {x.query}: {panels})",
              file=sys.stderr if a.json else sys.stdout)
    if a.json:
        print(json.dumps({"id": a.id, "query": x.query, **x.heatmaps.as_json()}, ensure_ascii=False))
    return 0
