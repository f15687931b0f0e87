"""Encoder throughput: folder indexing, a lone text query, concurrent text queries.

    python -m bench.encoder                       # ViT-B-32 (random weights) and the bundled model
    python -m bench.encoder --models builtin:tiny-shapes --images 2048 --repeats 5
    python -m bench.encoder --busy 1              # beside one busy-loop process of its own

For each model, on CPU with --threads torch threads (and on CUDA too when a GPU is present):

1. Folder indexing, end to end: `index.build.build` on a folder of image files into a
   real Collection (read, decode, preprocess, encode, store in SQLite + FAISS, save)
   against the bare batched forward pass (`model.encode_image` on the same images,
   preprocessed beforehand, batches of the build's chunk size). Target: >= 0.9x.
   Images: 640x480 JPEGs for ViT-B-32 (a photo-sized input; the shapes gallery rendered
   large with sensor-like noise so the JPEG codec has real work), the 128 px PNG shapes
   gallery for the bundled 64 px model (what it is for).
2. A lone text query through the engine's text path (`Encoder.encode_texts`, text cache
   off) against open_clip's stock `model.encode_text` (tokenizer included in both).
   Target: <= 0.35x the time, vectors equal within 1e-5.
3. 16 concurrent text queries through the Encoder (asyncio.gather) against the same 16
   awaited one after another through the same Encoder. Target: >= 3x the throughput.

Runs alternate baseline and engine so that load on the machine hits both alike; the
tables give medians over the repeats and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from bench.common import BusyHost, header, machine, median, ms, pct, ratio, table

DEFAULT_MODELS = ("ViT-B-32:random", "builtin:tiny-shapes")
TEXTS = (
    "a red circle", "dog on a beach", "tokyo tower at night", "a bowl of ramen",
    "two cats sleeping on a sofa", "blue square", "snowy mountain lake at sunrise",
    "a man riding a bicycle in the rain", "green triangle", "birthday cake with candles",
    "an old map of paris", "yellow taxi in new york", "purple flowers in a vase",
    "a lighthouse in a storm", "white square next to a red circle", "children playing football",
    "a plate of sushi", "sunflower field", "a black and white photo of a train station",
    "a robot made of lego", "fireworks over the harbour", "a koala in a tree",
    "a desk with a laptop and coffee", "autumn leaves in a park",
)


def make_folder(folder: Path, n: int, photo: bool, seed: int = 0) -> None:
    from index.synthetic import random_scene, render

    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    for i in range(n):
        scene = random_scene(rng)
        if photo:
            im = render(scene, 640).resize((640, 480))
            arr = np.asarray(im, dtype=np.int16) + nrng.integers(-24, 25, (480, 640, 3))
            Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
                folder / f"photo_{i:05d}.jpg", quality=85)
        else:
            render(scene, 128).save(folder / f"shape_{i:05d}.png")


def on_model_thread(encoder, fn, threads: int | None = None):
    """Run fn on the encoder's model thread, at `threads` (default: the encoder's count).

    The baselines run there, not on the main thread: a thread that runs multi-threaded
    torch ops keeps an OpenMP team, and with more teams than CPUs GNU OpenMP makes every
    team's workers sleep between parallel regions, slowing the engine and the baseline
    alike (see index.models.load_model). On one thread both see the machine as a user's
    process does.
    """
    def pinned():
        old = torch.get_num_threads()
        torch.set_num_threads(threads or encoder._model_threads)
        try:
            return fn()
        finally:
            torch.set_num_threads(old)

    return encoder.call(pinned)


def text_path(encoder) -> str:
    """How the encoder runs a lone text, as warm-up chose."""
    if not encoder.lone_packed:  # padded to its own length: one text has no padding
        return "trimmed, lean walk, F.linear" if encoder._lean_padded else "trimmed tower"
    return "lean walk, " + ("oneDNN linears" if encoder.text_linear is not F.linear else "F.linear")


def batch_layout(encoder, kind: str) -> str:
    """How the encoder runs a batch of `kind` now, as its pass choice stands."""
    from index.encoder import SPLIT

    n = encoder.batch_threads.get(kind)
    return (f"split in {encoder._model_threads} parts, one torch thread each" if n == SPLIT
            else f"one pass on {n} torch thread{'s' if n != 1 else ''}")


def bare_forward(loaded, pixels: torch.Tensor, chunk: int, tower=None) -> tuple[float, np.ndarray]:
    """Seconds for the batched forward pass over pre-made tensors, and the vectors
    (open_clip's `encode_image`, or `tower`: the one the encoder chose at warm-up)."""
    tower = tower or loaded.model.encode_image
    out = []
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(pixels), chunk):
            x = pixels[s:s + chunk].to(loaded.device, loaded.dtype)
            out.append(F.normalize(tower(x), dim=-1).float().cpu())
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0, torch.cat(out).numpy()


async def build_once(loaded, encoder, records, chunk: int) -> tuple[float, np.ndarray, str]:
    from index.build import build
    from index.store import Collection

    tmp = Path(tempfile.mkdtemp(prefix="clipfind-bench-"))
    try:
        coll = Collection.create(tmp / "c", loaded.name, loaded.dim)
        t0 = time.perf_counter()
        report = await build(coll, encoder, records, chunk=chunk)
        seconds = time.perf_counter() - t0
        by_source = dict(zip((it.source for it in coll.get(coll.ids())), coll.vectors(), strict=True))
        coll.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    vecs = np.stack([by_source[r.source] for r in records])
    return seconds, vecs, report.summary()


def bench_indexing(loaded, encoder, n: int, repeats: int, chunk: int, workdir: Path) -> dict:
    from index.images import open_image
    from index.sources import scan_folder

    size = getattr(getattr(loaded.model, "visual", None), "image_size", (224, 224))
    photo = (size[0] if isinstance(size, tuple | list) else int(size)) >= 128
    folder = workdir / ("photos" if photo else "shapes")
    if not folder.exists():
        make_folder(folder, n, photo)
    records = scan_folder(folder)[:n]
    def run(fn):
        return asyncio.run(on_model_thread(encoder, fn))

    pixels = run(lambda: torch.stack([loaded.preprocess(open_image(Path(r.location)))
                                      for r in records]))
    run(lambda: bare_forward(loaded, pixels[:chunk], chunk))  # warm
    own = encoder._image_tower  # None: the encoder runs the stock tower
    bares, owns, e2es, summary, diff = [], [], [], "", 0.0
    for _ in range(repeats):
        b, ref = run(lambda: bare_forward(loaded, pixels, chunk))
        if own is not None:
            owns.append(run(lambda: bare_forward(loaded, pixels, chunk, own))[0])
        e, got, summary = asyncio.run(build_once(loaded, encoder, records, chunk))
        bares.append(b)
        e2es.append(e)
        diff = max(diff, float(np.abs(got - ref).max()))
    return {"n": len(records), "kind": "640x480 JPEG" if photo else "128 px PNG",
            "bare": bares, "own": owns, "e2e": e2es, "summary": summary, "diff": diff}


def bench_lone_text(loaded, encoder, repeats: int) -> dict:
    texts = list(TEXTS)
    dev = loaded.device

    def stock(t: str) -> np.ndarray:
        with torch.inference_mode():
            v = loaded.model.encode_text(loaded.tokenizer([t]).to(dev), normalize=True)
        return v.float().cpu().numpy()

    async def engine_all() -> tuple[list[float], list[float], float]:
        e_times, s_times, diff = [], [], 0.0
        for _ in range(repeats):
            for t in texts:
                t0 = time.perf_counter()
                ref = await on_model_thread(encoder, lambda t=t: stock(t))
                s_times.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                got = await encoder.encode_texts([t])
                e_times.append(time.perf_counter() - t0)
                diff = max(diff, float(np.abs(got - ref).max()))
        return e_times, s_times, diff

    for t in texts[:3]:  # warm both paths
        asyncio.run(on_model_thread(encoder, lambda t=t: stock(t)))
    asyncio.run(encoder.encode_texts(texts[:3]))
    e, s, diff = asyncio.run(engine_all())
    return {"engine": e, "stock": s, "diff": diff, "n": len(s)}


def bench_concurrent(encoder, repeats: int, n: int = 16) -> dict:
    async def run() -> tuple[list[float], list[float], list[int]]:
        conc, seq, passes = [], [], []
        for r in range(repeats):
            # fresh texts each time (the cache is off too): nothing is served from memory
            texts_a = [f"{TEXTS[i % len(TEXTS)]} {r} a" for i in range(n)]
            texts_b = [f"{TEXTS[i % len(TEXTS)]} {r} b" for i in range(n)]
            t0 = time.perf_counter()
            for t in texts_a:
                await encoder.encode_texts([t])
            seq.append(time.perf_counter() - t0)
            before = encoder.stats.batches
            t0 = time.perf_counter()
            got = await asyncio.gather(*(encoder.encode_texts([t]) for t in texts_b))
            conc.append(time.perf_counter() - t0)
            passes.append(encoder.stats.batches - before)
        return conc, seq, passes, texts_b, np.concatenate(got)

    conc, seq, passes, texts, got = asyncio.run(run())
    m = encoder.loaded

    def stock():
        with torch.inference_mode():
            return m.model.encode_text(m.tokenizer(texts).to(m.device), normalize=True).float().cpu()

    ref = asyncio.run(on_model_thread(encoder, stock))
    diff = float(np.abs(got - ref.numpy()).max())
    return {"conc": conc, "seq": seq, "passes": passes, "n": n, "diff": diff}


def run_model(spec: str, device: str, args, workdir: Path) -> list[tuple[str, str]]:
    from index.encoder import Encoder
    from index.models import load_model

    loaded = load_model(spec, device)
    threads = args.threads if loaded.device.type == "cpu" else None
    if threads:
        torch.set_num_threads(threads)
    encoder = Encoder(loaded, threads=threads, cache_size=0)
    encoder.wait_ready(120)
    label = f"{spec} on {loaded.device.type}" + (f" ({threads} threads)" if threads else "")
    n_images = args.images if args.images else (128 if loaded.dim >= 512 and device == "cpu" else 4096)
    if loaded.device.type == "cuda":
        n_images = max(n_images, 2048)
    sections = []
    try:
        ix = bench_indexing(loaded, encoder, n_images, args.repeats, args.chunk, workdir)
        b, e = median(ix["bare"]), median(ix["e2e"])
        rows = [
            ("bare batched forward (pre-made tensors)", f"{ix['n'] / b:,.1f}", f"{b:.2f}", "1.00×"),
        ]
        if ix["own"]:
            o = median(ix["own"])
            rows.append(("bare batched forward, the encoder's tower (oneDNN linears)",
                         f"{ix['n'] / o:,.1f}", f"{o:.2f}", ratio(b / o)))
        rows.append(("**engine: index.build.build, folder → Collection**", f"{ix['n'] / e:,.1f}",
                     f"{e:.2f}", ratio(b / e)
                     + (f" ({ratio(median(ix['own']) / e)} of its own tower)" if ix["own"] else "")))
        sections.append((f"Folder indexing — {label}",
                         f"{ix['n']} images ({ix['kind']}), chunk {args.chunk}, median of "
                         f"{len(ix['bare'])} runs each; build: {ix['summary']}; the encoder's "
                         f"image batches after it: {batch_layout(encoder, 'image')}; largest "
                         f"difference between stored (float16) and bare vectors: {ix['diff']:.1e}. "
                         f"Target: engine ≥ 0.9× the bare throughput.\n\n"
                         + table(("path", "images/s", "seconds", "throughput vs bare"), rows)))
        lt = bench_lone_text(loaded, encoder, args.repeats)
        s50, e50 = median(lt["stock"]), median(lt["engine"])
        rows = [
            ("open_clip `model.encode_text` (77 positions)", ms(s50), ms(pct(lt["stock"], 99)), "1.00×"),
            (f"**engine: `Encoder.encode_texts` ({text_path(encoder)})**", ms(e50),
             ms(pct(lt["engine"], 99)), ratio(e50 / s50)),
        ]
        sections.append((f"Lone text query — {label}",
                         f"{lt['n']} single-text queries ({len(TEXTS)} distinct texts × "
                         f"{args.repeats}), tokenizer included, text cache off; largest "
                         f"|engine − stock| over all vectors: {lt['diff']:.1e} (target ≤ 1e-5). "
                         f"Target: engine ≤ 0.35× the time.\n\n"
                         + table(("path", "p50 ms", "p99 ms", "time vs stock"), rows)))
        cc = bench_concurrent(encoder, max(args.repeats, 5))
        sq, cq = median(cc["seq"]), median(cc["conc"])
        rows = [
            (f"{cc['n']} one after another (`await` each)", f"{cc['n'] / sq:,.1f}", ms(sq), "1.00×"),
            (f"**{cc['n']} concurrent (`asyncio.gather`)**", f"{cc['n'] / cq:,.1f}", ms(cq), ratio(sq / cq)),
        ]
        sections.append((f"16 concurrent text queries — {label}",
                         f"median of {len(cc['seq'])} rounds, fresh texts each round; forward passes "
                         f"per concurrent round: {sorted(set(cc['passes']))}; text batches packed: "
                         f"{'yes' if encoder.packed else 'no (measured slower at warm-up)'}; largest "
                         f"|concurrent − stock encode_text| {cc['diff']:.1e}. Target: ≥ 3× the "
                         f"throughput.\n\n"
                         + table(("path", "queries/s", "ms for all 16", "throughput vs sequential"), rows)))
    finally:
        encoder.close()
    return sections


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.encoder", description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    ap.add_argument("--images", type=int, default=0,
                    help="images to index (default: 128 for 512-d models on CPU, 4096 otherwise)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2, help="torch threads on CPU")
    ap.add_argument("--chunk", type=int, default=64, help="build chunk = bare batch size")
    ap.add_argument("--busy", type=int, default=0, metavar="N",
                    help="run beside N busy-loop processes of its own (a busier host)")
    ap.add_argument("--devices", nargs="+", default=None,
                    help="default: cpu, plus cuda when a GPU is present")
    args = ap.parse_args(argv)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(header("Encoder throughput", argv))
    print(machine() + "\n")
    busy = BusyHost(args.busy)
    if args.busy:
        print(f"Busier host: {busy.describe()}.\n")
    if not torch.cuda.is_available():
        print("No CUDA GPU on this machine: CPU only.\n")
    workdir = Path(tempfile.mkdtemp(prefix="clipfind-bench-images-"))
    try:
        for spec in args.models:
            for device in devices:
                try:
                    with busy:
                        sections = run_model(spec, device, args,
                                             workdir / spec.replace(":", "_"))
                except Exception as e:  # e.g. the bundled model missing in a checkout
                    print(f"### {spec} on {device}\n\nskipped: {type(e).__name__}: {e}\n")
                    continue
                for title, body in sections:
                    print(f"### {title}\n\n{body}\n", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
