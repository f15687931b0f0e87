"""The engine's command line: python -m index {demo,build,import-features,search,export,embed,explain,serve,info,remove,migrate,rehash}."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

import numpy as np

from . import DEFAULT_MODEL, DEMO_COUNT, ENCODER_TOKEN_ENV, parse_spec
from .errors import ClipfindError, QueryError, SourceError

MILVUS_TOKEN_ENV = "MILVUS_TOKEN"  # read when set; the token is never an argument
EPILOG = """query grammar: words run into one phrase; *W weights a term (-10..10, negative pushes
away); + and - separate terms; "quotes" keep a phrase; #N is the N-th --image.
examples:  red circle*1 blue square*2 | horse + stripes - brown | --image cat.jpg '#1*0.5 cars'
filters (a server library): in:CHANNEL_ID from:USER_ID before:2025-06-01 after:2025-01-31
during:2025-03, or --in/--from/--before/--after/--during; several in:/from: match any of them,
different kinds all apply; dates are UTC days"""


def _progress(total: int, desc: str):
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", disable=total == 0 or not sys.stderr.isatty(),
                file=sys.stderr)


def _records_for(sources: list[str]):
    from . import classify_source, read_unsplash_tsv, read_url_list, scan_folder
    records, problems = [], []
    for arg in sources:
        kind = classify_source(arg)
        if kind == "folder":
            found = scan_folder(Path(arg))
            if not found:
                problems.append(f"{arg}: no images (jpg, png, webp, gif) in this folder")
            records += found
        elif kind == "unsplash":
            records += read_unsplash_tsv(Path(arg))
        else:
            recs, bad = read_url_list(Path(arg))
            if not recs and bad:
                raise SourceError(f"{arg}: no valid image URLs (line {bad[0][0]}: {bad[0][1]})")
            problems += [f"{arg}:{line}: {why}" for line, why in bad]
            records += recs
    return records, problems


async def _demo(a) -> int:
    from . import EngineOptions, make_demo
    engine = await make_demo(Path(a.out), EngineOptions(device=a.device, threads=a.threads),
                             count=a.count, seed=a.seed, size=a.size)
    engine.close()
    return 0


def _store_args(a) -> dict:
    """--store, --milvus-uri and the token (from the environment variable --milvus-token-env)."""
    token = os.environ.get(a.milvus_token_env, "").strip() or None
    if a.store == "milvus" and token is None and a.milvus_token_env != MILVUS_TOKEN_ENV:
        raise ClipfindError(f"--milvus-token-env: the environment variable {a.milvus_token_env} "
                            "is not set (it should hold the Milvus token)")
    return {"store": a.store, "milvus_uri": a.milvus_uri, "milvus_token": token}


def _open_collection(a, model: str | None = None, create_dim: int | None = None):
    from . import open_store
    return open_store(Path(a.index), model, create_dim=create_dim,
                      index_type=getattr(a, "index_type", "auto"), **_store_args(a))


def _encoder_args(a) -> dict:
    """--encoder-url and its token (from the environment variable --encoder-token-env)."""
    url = getattr(a, "encoder_url", None)
    if not url:
        return {}
    return {"encoder_url": url, "encoder_token": os.environ.get(a.encoder_token_env, "").strip()}


def _open_engine(a, create: bool = False):
    from . import Engine, EngineOptions
    opts = EngineOptions(device=a.device, threads=a.threads, **_encoder_args(a))
    return Engine.open(a.index, model=getattr(a, "model", None), create=create,
                       index_type=getattr(a, "index_type", "auto"), options=opts,
                       **_store_args(a))


async def _build(a) -> int:
    from . import FetchLimits, build_collection
    records, problems = _records_for(a.sources)
    engine = _open_engine(a, create=True)
    try:
        bar = _progress(len(records), "indexing")
        limits = FetchLimits(max_bytes=a.max_bytes, timeout_s=a.timeout, concurrency=a.concurrency)
        report = await build_collection(engine.collection, engine.encoder, records, chunk=a.batch,
                             limits=limits, progress=bar.update)
        bar.close()
        await engine.floor.current()  # calibrated (and stored) here, not in the first search
        total = len(engine.collection)
    finally:
        engine.close()
    for p in problems:
        print(f"skipped {p}", file=sys.stderr)
    for source, why in report.failed:
        print(f"failed  {why if why.startswith(source) else f'{source}: {why}'}", file=sys.stderr)
    print(f"{a.index}: {report.summary()}; {total} items in the collection")
    return 0


async def _import_features(a) -> int:
    from . import add_vectors, read_features
    records, vectors = read_features(Path(a.features), Path(a.ids), a.url_template)
    spec = parse_spec(a.model).canonical
    with _open_collection(a, spec, create_dim=int(vectors.shape[1])) as col:
        report = await add_vectors(col, records, vectors)
        print(f"{a.index}: {report.summary()}; {len(col)} items in the collection")
    return 0


def _load_images(paths: list[str]) -> list[bytes]:
    out = []
    for p in paths:
        try:
            out.append(Path(p).read_bytes())
        except OSError as e:
            raise SourceError(f"--image {p}: cannot read it ({e.strerror or e})") from e
    return out


async def _search(a) -> int:
    from . import parse_query
    # everything the user typed is checked before the model loads: a refusal is then
    # instant, and the process never exits while the model thread is still warming up
    if a.k < 1:
        raise QueryError(f"-k {a.k}: give the number of results per page, 1 or more")
    if a.offset < 0:
        raise QueryError(f"--offset {a.offset}: give how many results to skip, 0 or more")
    images = _load_images(a.image)
    query = parse_query(" ".join([*a.query, *_filter_words(a)]), len(images))
    query.filters.need_ids()
    engine = _open_engine(a)
    try:
        result = await engine.search(query, images, k=a.k, offset=a.offset,
                                     keep_near_duplicates=a.keep_duplicates)
    finally:
        engine.close()
    filters = result.query.filters.labels()
    terms = [{"kind": t.kind, **({"text": t.text} if t.kind == "text" else {"image": t.image + 1}),
              "weight": t.weight} for t in result.query.terms]
    hits = [_hit_json(h) for h in result.hits]
    attention = [[{"word": w, "weight": round(v, 4)} for w, v in (att or [])] for att in result.attention]
    if a.json:
        out = {"terms": terms, **({"filters": filters} if filters else {}), "results": hits,
               "attention": attention,
               "floor": None if result.floor is None else round(result.floor, 6)}
        if result.attention_note:
            out["attention_note"] = result.attention_note
        print(json.dumps(out, ensure_ascii=False))
        return 0
    print(f"query: {result.query.describe()}")
    for att, term in zip(result.attention, result.query.text_terms, strict=True):
        if att:
            print(f"  {term.text!r}: " + "  ".join(f"{w} {v:.0%}" for w, v in att))
    if result.attention_note:
        print(f"  ({result.attention_note})")
    shown = [h for h in hits if a.weak or not h["weak"]]
    if not hits:
        print("no results" + (" on this page" if a.offset else ""))
    for h in shown:
        mark = "  (weak)" if h["weak"] else ""
        print(f"{h['rank']:4d}  {h['score']:.3f}  {h['source']}" + (f"  {h['title']}" if h["title"] else "") + mark)
        about = [x for x in (h.get("credit"), h.get("page")) if x and x != h["source"]]
        if about:
            print("            " + "  ".join(about))
        for c in h["copies"]:  # (credit and page travel with them too)
            about = [x for x in (c.get("credit"), c.get("page")) if x and x != c["source"]]
            print(f"            + near-copy {c['score']:.3f}  {c['source']}"
                  + "".join(f"  {x}" for x in about))
    print(floor_line(result, hits, a.weak) or "", end="")
    return 0


def _hit_json(h) -> dict:
    # credit and page travel with every result that leaves the program (Unsplash's terms)
    def one(x) -> dict:
        return {"rank": x.rank, "id": x.id, "score": round(x.score, 6), "source": x.item.source,
                "title": x.item.title, **({"credit": x.item.credit} if x.item.credit else {}),
                **({"page": x.item.page_url} if x.item.page_url else {}), "weak": x.weak}
    return {**one(h), "copies": [{k: v for k, v in one(c).items() if k != "rank"} for c in h.copies]}


def floor_line(result, hits: list[dict], weak: bool) -> str | None:
    """The one line about the relevance floor after a page (None: nothing to say)."""
    from . import MIN_FLOOR_ITEMS
    n_weak = sum(h["weak"] for h in hits)
    if weak and not n_weak:
        if result.floor is None:
            why = ("queries with images have no relevance floor" if result.query.image_terms
                   else f"this collection has no relevance floor (it is calibrated from "
                        f"{MIN_FLOOR_ITEMS} items on)")
            return f"--weak: nothing to add, {why}\n"
        return f"--weak: nothing to add, no result here is under the floor ({result.floor:.3f})\n"
    if not n_weak or weak:
        return None
    if n_weak == len(hits):
        return (f"no good match for {result.query.describe()}: the best score, {hits[0]['score']:.3f}, "
                f"is under this collection's floor ({result.floor:.3f}); --weak shows the "
                f"{n_weak} weak match{'es' if n_weak > 1 else ''}\n")
    return (f"{n_weak} weaker match{'es' if n_weak > 1 else ''} under the floor "
            f"({result.floor:.3f}) not shown; --weak shows them\n")


def _filter_words(a) -> list[str]:
    """--in/--from/--before/--after/--during as the query's own filter words (one grammar)."""
    words = []
    for option, key, values in (("--in", "in", a.in_), ("--from", "from", a.from_),
                                ("--before", "before", [a.before]), ("--after", "after", [a.after]),
                                ("--during", "during", [a.during])):
        for v in values:
            if v is None:
                continue
            if not v.strip() or any(c.isspace() or c in '"*' for c in v):
                raise QueryError(f"{option} {v!r}: give one "
                                 f"{'id' if key in ('in', 'from') else 'date like 2025-06-01'} "
                                 f"per {option}")
            words.append(f"{key}:{v}")
    return words


def cmd_export(a) -> int:
    from . import nonfinite_note
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    with _open_collection(a) as col:
        ids = col.ids()
        vectors = col.vectors(list(ids)).astype(np.float32)
        bad = ~np.isfinite(vectors).all(axis=1)
        if bad.any():
            print(f"warning: {nonfinite_note(Path(a.index), ids[bad].tolist())}; "
                  "they are left out of this export", file=sys.stderr)
            ids, vectors = ids[~bad], vectors[~bad]
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        np.save(out / "vectors.npy", vectors)
        # a file name that is not UTF-8 is written as its own bytes, as the shell shows it
        with open(out / "items.jsonl", "w", encoding="utf-8", errors="surrogateescape") as f:
            for i in range(0, len(ids), 1000):
                for it in col.get(list(ids[i:i + 1000])):
                    f.write(json.dumps({"id": it.id, "source": it.source, "title": it.title},
                                       ensure_ascii=False) + "\n")
    print(f"wrote {len(ids)} vectors to {out / 'vectors.npy'} and {out / 'items.jsonl'}")
    return 0


async def _embed(a) -> int:
    if not a.image and not a.text:
        raise SourceError("nothing to embed; give TEXT arguments and/or --image PATH")
    images = _load_images(a.image)
    engine = _open_engine(a)
    try:
        vecs = []
        if images:
            vecs += list(await engine.embed_images(images))
        if a.text:
            vecs += list(await engine.embed_texts(a.text))
    finally:
        engine.close()
    for v in vecs:
        print(json.dumps([round(float(x), 7) for x in v]))
    return 0


async def _explain(a) -> int:
    """A result's heatmap as an overlay PNG and/or its relevance grids as JSON."""
    from . import overlay_png, parse_for_heatmap

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


def cmd_serve(a) -> int:
    from . import serve_encoder
    return serve_encoder(a.model, host=a.host, port=a.port, token_env=a.token_env,
                         device=a.device, threads=a.threads, queue_size=a.queue_size)


def cmd_info(a) -> int:
    with _open_collection(a) as col:
        m = col.manifest
        print(f"collection {a.index}\n  model: {m.model}\n  items: {len(col)}\n  dim: {m.dim}\n"
              f"  index: {col.index_description}\n  relevance floor: {_floor_info(col)}\n"
              f"  perceptual hashes: {_hash_info(a, col)}")
    return 0


def _hash_info(a, col) -> str:
    from . import unhashed_count
    n = unhashed_count(col)
    if n is None:
        return "this collection cannot keep them (python -m index rehash says how to move it)"
    if not n:
        return "every item read from a picture has one"
    return (f"{n} item{'s' if n > 1 else ''} without one (stored before them): "
            f"python -m index rehash --index {a.index}"
            + (" --store milvus" if a.store == "milvus" else ""))


def _floor_info(col) -> str:
    from . import FLOOR_GROWTH, MIN_FLOOR_ITEMS, floor_of
    f = floor_of(col)
    if f is None:
        return f"none yet (calibrated at the first search from {MIN_FLOOR_ITEMS} items on)"
    return (f"{f.value:.3f} (calibrated at {f.items} items from {f.basis}: absent "
            f"{f.absent:.3f}, present {f.present:.3f}; again at {int(f.items * FLOOR_GROWTH)} items)")


def cmd_remove(a) -> int:
    with _open_collection(a) as col:
        n = col.remove(a.ids)
    print(f"removed {n} of {len(a.ids)} items")
    return 0


def cmd_migrate(a) -> int:
    from . import MigrateEndpoint as Endpoint
    from . import migrate_collection as migrate
    from . import milvus_name
    token = os.environ.get(a.milvus_token_env, "").strip() or None
    if token is None and a.milvus_token_env != MILVUS_TOKEN_ENV:
        raise ClipfindError(f"--milvus-token-env: the environment variable {a.milvus_token_env} "
                            "is not set (it should hold the Milvus token)")
    src, dst = Endpoint(a.source, token=token), Endpoint(a.destination, token=token)
    src.name = dst.name = milvus_name(src, dst, a.name)
    tty = sys.stderr.isatty()

    def progress(done: int, total: int) -> None:
        end = "\n" if done == total or not tty else "\r"
        print(f"migrate: {done} of {total} items", end=end, file=sys.stderr, flush=True)

    report = migrate(src, dst, index_type=a.index_type, chunk=a.chunk, sample=a.sample,
                     progress=progress)
    print(report.summary())
    return 0


async def _rehash(a) -> int:
    from . import FetchLimits, rehash_collection
    if a.batch < 1:
        raise ClipfindError(f"--batch {a.batch}: give the items per commit, 1 or more")
    with _open_collection(a) as col:
        bar = None

        def started(n: int) -> None:
            nonlocal bar
            bar = _progress(n, "hashing")

        limits = FetchLimits(max_bytes=a.max_bytes, timeout_s=a.timeout, concurrency=a.concurrency)
        try:
            # the operator's own collection: its URLs are fetched as the build fetched them
            report = await rehash_collection(col, batch=a.batch, limits=limits, public_only=False,
                                             started=started, progress=lambda k: bar.update(k))
        finally:
            if bar is not None:
                bar.close()
    for source, why in report.unreachable:
        print(f"failed  {why if why.startswith(source) else f'{source}: {why}'}", file=sys.stderr)
    print(f"{a.index}: {report.summary()}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m index", description="clipfind's search engine",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def store_opts(sp):
        sp.add_argument("--store", choices=("faiss", "milvus"), default="faiss",
                        help="faiss: embedded in the --index folder (default); milvus: in the "
                             "Milvus at --milvus-uri, named by the last component of --index")
        sp.add_argument("--milvus-uri", default=None,
                        help="http://HOST:19530, or a Milvus Lite file ending in .db "
                             "(default: INDEX/milvus.db)")
        sp.add_argument("--milvus-token-env", default=MILVUS_TOKEN_ENV, metavar="NAME",
                        help=f"environment variable holding the Milvus token "
                             f"(default {MILVUS_TOKEN_ENV}, when set)")

    def engine_opts(sp, model_help="model spec (default: the one that built the collection)"):
        sp.add_argument("--index", required=True, help="collection directory")
        store_opts(sp)
        sp.add_argument("--model", help=model_help)
        sp.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
        sp.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        sp.add_argument("--encoder-url", default=None, metavar="URL",
                        help="encode through the encoder service at URL (python -m index "
                             "serve) instead of loading the model here")
        sp.add_argument("--encoder-token-env", default=ENCODER_TOKEN_ENV, metavar="NAME",
                        help=f"environment variable holding the service's token "
                             f"(default {ENCODER_TOKEN_ENV})")

    d = sub.add_parser("demo", help="make the demo collection: OUT/gallery (synthetic shapes) "
                       "and OUT/collection (built with the bundled model)")
    d.add_argument("out")
    d.add_argument("--count", type=int, default=DEMO_COUNT)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--size", type=int, default=128, help="image side in pixels")
    d.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    d.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    d.set_defaults(run=_demo)

    b = sub.add_parser("build", help="add images from folders, URL lists or Unsplash TSVs")
    engine_opts(b, f"model spec for a new collection (default {DEFAULT_MODEL})")
    b.add_argument("--index-type", default="auto",
                   help="auto, or a FAISS factory string (--store milvus: FLAT, HNSW, IVF_FLAT)")
    b.add_argument("--batch", type=int, default=64)
    b.add_argument("--max-bytes", type=int, default=20 * 2**20, help="URL download size cap")
    b.add_argument("--timeout", type=float, default=20.0, help="URL download timeout, seconds")
    b.add_argument("--concurrency", type=int, default=8, help="parallel URL downloads")
    b.add_argument("sources", nargs="+", metavar="SOURCE")
    b.set_defaults(run=_build)

    f = sub.add_parser("import-features", help="import precomputed CLIP features (N x D .npy)")
    f.add_argument("--index", required=True)
    store_opts(f)
    f.add_argument("--features", required=True)
    f.add_argument("--ids", required=True, help="CSV with header photo_id, row i <-> vector i")
    f.add_argument("--url-template", default="https://unsplash.com/photos/{id}")
    f.add_argument("--model", default="ViT-B-32:openai", help="the model that made the features")
    f.add_argument("--index-type", default="auto")
    f.set_defaults(run=_import_features)

    s = sub.add_parser("search", help="search a collection", epilog=EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    engine_opts(s)
    s.add_argument("-k", type=int, default=10, help="results per page")
    s.add_argument("--offset", type=int, default=0)
    s.add_argument("--image", action="append", default=[], help="attach an image (#1, #2, ...)")
    s.add_argument("--json", action="store_true")
    s.add_argument("--keep-duplicates", action="store_true",
                   help="keep results that are near-copies of a query image")
    s.add_argument("--weak", action="store_true",
                   help="also show the results under the collection's relevance floor")
    s.add_argument("--in", dest="in_", action="append", default=[], metavar="CHANNEL_ID",
                   help="only pictures posted in this channel (repeat: any of them); "
                        "a server library's collection")
    s.add_argument("--from", dest="from_", action="append", default=[], metavar="USER_ID",
                   help="only pictures posted by this member (repeat: any of them)")
    s.add_argument("--before", metavar="DATE", help="posted before this UTC day: YYYY-MM-DD")
    s.add_argument("--after", metavar="DATE", help="posted after this UTC day: YYYY-MM-DD")
    s.add_argument("--during", metavar="DATE", help="posted within YYYY, YYYY-MM or YYYY-MM-DD")
    s.add_argument("query", nargs="*", help="the query (see the grammar below)")
    s.set_defaults(run=_search)

    e = sub.add_parser("export", help="write vectors.npy and items.jsonl")
    e.add_argument("--index", required=True)
    store_opts(e)
    e.add_argument("--out", required=True)
    e.set_defaults(func=cmd_export)

    m = sub.add_parser("embed", help="print L2-normalised vectors as JSON lists")
    engine_opts(m)
    m.add_argument("--image", action="append", default=[])
    m.add_argument("text", nargs="*")
    m.set_defaults(run=_embed)

    x = sub.add_parser("explain", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
                       help="where in a stored image the model saw the query (relevance heatmap)")
    engine_opts(x)
    x.add_argument("--id", type=int, required=True, help="the item id (search --json shows it)")
    x.add_argument("--image", action="append", default=[], help="attach an image (#1, #2, ...)")
    x.add_argument("--out", help="write the overlay PNG here (one panel per text term + the query)")
    x.add_argument("--json", action="store_true", help="print the relevance grids as JSON")
    x.add_argument("query", nargs="*", help="the query (needs at least one text term)")
    x.set_defaults(run=_explain)

    v = sub.add_parser("serve", help="run the encoder as an HTTP service for bots and CLIs "
                       "(token from --token-env)")
    v.add_argument("--model", default=DEFAULT_MODEL, help=f"model spec (default {DEFAULT_MODEL})")
    v.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    v.add_argument("--port", type=int, default=8765, help="port (0: any free one)")
    v.add_argument("--token-env", default=ENCODER_TOKEN_ENV, metavar="NAME",
                   help=f"environment variable holding the bearer token (default {ENCODER_TOKEN_ENV})")
    v.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    v.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    v.add_argument("--queue-size", type=int, default=512,
                   help="inputs waiting at most; past it clients get 503 (busy)")
    v.set_defaults(func=cmd_serve)

    i = sub.add_parser("info", help="describe a collection")
    i.add_argument("--index", required=True)
    store_opts(i)
    i.set_defaults(func=cmd_info)

    r = sub.add_parser("remove", help="remove items by id")
    r.add_argument("--index", required=True)
    store_opts(r)
    r.add_argument("ids", nargs="+", type=int)
    r.set_defaults(func=cmd_remove)

    g = sub.add_parser("migrate", help="copy a collection between a folder and Milvus (resumable)",
                       description="FROM and TO are each a collection folder or a Milvus URI "
                       "(http://HOST:19530, or a Milvus Lite file ending in .db). Run the same "
                       "command again to resume a stopped migration; nothing is copied twice.")
    g.add_argument("--from", dest="source", required=True, metavar="FROM")
    g.add_argument("--to", dest="destination", required=True, metavar="TO")
    g.add_argument("--name", help="Milvus collection name (default: the folder's name)")
    g.add_argument("--index-type", default="auto", help="index type of a new destination")
    g.add_argument("--chunk", type=int, default=1000, help="items per write")
    g.add_argument("--sample", type=int, default=100, help="vectors compared at the end")
    g.add_argument("--milvus-token-env", default=MILVUS_TOKEN_ENV, metavar="NAME",
                   help=f"environment variable holding the Milvus token (default {MILVUS_TOKEN_ENV}, "
                        "when set)")
    g.set_defaults(func=cmd_migrate)

    h = sub.add_parser("rehash", help="make the perceptual hashes (near-copies) of items "
                       "stored before them (resumable)",
                       description="Reads the pictures of the items that have no perceptual "
                       "hash again (files, URLs) and stores their hash; vectors are not "
                       "touched. Run the same command again to resume; a second run hashes "
                       "nothing. Pictures that cannot be read are listed and kept as they are.")
    h.add_argument("--index", required=True, help="collection directory")
    store_opts(h)
    h.add_argument("--batch", type=int, default=64, help="items per commit")
    h.add_argument("--max-bytes", type=int, default=20 * 2**20, help="URL download size cap")
    h.add_argument("--timeout", type=float, default=20.0, help="URL download timeout, seconds")
    h.add_argument("--concurrency", type=int, default=8, help="parallel URL downloads")
    h.set_defaults(run=_rehash)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    a = parser().parse_args(argv)
    try:
        if hasattr(a, "run"):
            return asyncio.run(a.run(a))
        return a.func(a)
    except ClipfindError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
