"""Bot processes sharing one encoder service vs each holding its own model (issue 10, part 6).

    python -m bench.service                                 # bundled model, 4 processes
    python -m bench.service --model ViT-B-32:random --queries 24
    python -m bench.service --processes 4 --queries 48 --in-flight 8 --rounds 2

Makes a demo collection (the shapes gallery, built with --model), then for each
configuration starts --processes bot-like processes on it: each opens the collection the
way the bot does (`bot.runtime.Runtime` from Settings; with the service, `encoder_url`)
and answers `!find`-like requests through `bot.core.Core.find` (parse, encode, rank, word
weights, the result cards), every query distinct (no cache helps). When all are ready,
all start their burst together: --queries each, --in-flight at a time. Reported:

- throughput: all searches / the burst's wall time (first start to last answer);
- p50 / p99 of one search's latency across all processes;
- CPU ms per search: the CPU time (user + system, all threads) the bot processes and the
  service used during the burst, per search: the work, whatever share of a busy machine
  each configuration got;
- memory: the sum of VmRSS (and of Pss, which counts shared library pages once) of the bot
  processes, plus the service process where there is one, read after the burst;
- lone text: one process, texts encoded one after another (engine.encoder.encode_texts),
  in process vs through the service on loopback, p50 (the service's only extra is HTTP).

The configurations run one after the other, alternating per round; the machine's load is
printed with the table (ratios from the same run are the figures to quote).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import REPO, median, pct, ratio, table

COLORS = ["red", "green", "blue", "yellow", "purple", "orange", "white", "black"]
SHAPES = ["circle", "square", "triangle", "star", "cross", "ring", "diamond", "heart"]
TOKEN_ENV = "CLIPFIND_ENCODER_TOKEN"


# -- the worker: one bot-like process ------------------------------------------------------------
def _queries(worker: int, n: int, salt: str) -> list[str]:
    return [f"{COLORS[(i + worker) % 8]} {SHAPES[(i * 3 + worker) % 8]} {salt}{worker}x{i}"
            for i in range(n)]


async def _burst(core, queries: list[str], in_flight: int) -> list[float]:
    """Seconds per search, `in_flight` at a time (a burst of `!find` messages)."""
    from bot.core import FindRequest
    gate = asyncio.Semaphore(in_flight)
    lat: list[float] = []

    async def one(q: str) -> None:
        async with gate:
            t0 = time.perf_counter()
            reply = await core.find(FindRequest(q, 1))
            lat.append(time.perf_counter() - t0)
            if reply.error:
                raise RuntimeError(reply.text)
    await asyncio.gather(*(one(q) for q in queries))
    return lat


async def _worker(a) -> None:
    from dataclasses import replace

    from bot.config import Settings
    from bot.core import Core, FindRequest
    from bot.runtime import Runtime

    settings = Settings(collection=Path(a.collection), results_per_page=5, sync_commands=False,
                        cooldown_rate=0, threads=a.threads)
    if a.encoder_url:
        settings = replace(settings, encoder_url=a.encoder_url,
                           encoder_token=os.environ[TOKEN_ENV])
    runtime = Runtime(settings)
    if not await runtime.wait():
        print(json.dumps({"error": runtime.load_error}), flush=True)
        return
    core = Core(settings, runtime.engine)
    await core.find(FindRequest("warm up red circle", 1))
    print(json.dumps({"ready": os.getpid()}), flush=True)
    for line in iter(sys.stdin.readline, ""):
        cmd = line.strip()
        if cmd == "burst":
            start = time.time()
            lat = await _burst(core, _queries(a.worker, a.queries, a.salt), a.in_flight)
            print(json.dumps({"start": start, "end": time.time(), "latencies": lat}), flush=True)
        elif cmd == "lone":
            encoder = runtime.engine.encoder
            times = []
            for q in _queries(a.worker, a.lone, a.salt + "lone"):
                t0 = time.perf_counter()
                await encoder.encode_texts([q])
                times.append(time.perf_counter() - t0)
                await asyncio.sleep(0.005)  # one query at a time, as a quiet bot gets them
            print(json.dumps({"lone": times}), flush=True)
        elif cmd == "quit":
            break
    await core.close()
    await runtime.close()


# -- the parent ----------------------------------------------------------------------------------
def _memory(pid: int) -> tuple[float, float]:
    """(VmRSS, Pss) of a process, MiB."""
    rss = pss = float("nan")
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    pss = int(line.split()[1]) / 1024
    except OSError:
        pass
    return rss, pss


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _env(token: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), TOKEN_ENV: token}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_service(model: str, token: str, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "index", "serve", "--model", model, "--port", str(port)]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, env=_env(token), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 300
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit("the encoder service exited at start")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if json.loads(r.read())["ready"]:
                    return proc, url
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit("the encoder service did not get ready")


def _run_config(a, collection: Path, shared: bool, token: str, salt: str) -> dict:
    service, url = (None, None)
    if shared:
        service, url = _start_service(a.model, token, a.threads)
    procs = []
    try:
        for w in range(a.processes):
            cmd = [sys.executable, "-m", "bench.service", "--worker", str(w), "--collection",
                   str(collection), "--queries", str(a.queries), "--in-flight", str(a.in_flight),
                   "--lone", str(a.lone), "--salt", salt]
            if a.threads:
                cmd += ["--threads", str(a.threads)]
            if url:
                cmd += ["--encoder-url", url]
            procs.append(subprocess.Popen(cmd, env=_env(token), stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, text=True, cwd=REPO))
        for p in procs:
            answer = json.loads(p.stdout.readline() or '{"error": "worker died"}')
            if "error" in answer:
                raise SystemExit(f"worker failed: {answer['error']}")
        pids = [p.pid for p in procs] + ([service.pid] if service else [])
        cpu0 = sum(_cpu_seconds(pid) for pid in pids)
        for p in procs:
            p.stdin.write("burst\n")
            p.stdin.flush()
        bursts = [json.loads(p.stdout.readline()) for p in procs]
        cpu = sum(_cpu_seconds(pid) for pid in pids) - cpu0
        mem = [_memory(p.pid) for p in procs]
        service_mem = _memory(service.pid) if service else (0.0, 0.0)
        procs[0].stdin.write("lone\n")
        procs[0].stdin.flush()
        lone = json.loads(procs[0].stdout.readline())["lone"]
        for p in procs:
            p.stdin.write("quit\n")
            p.stdin.flush()
        for p in procs:
            p.wait(60)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        if service is not None:
            service.terminate()
            service.wait(30)
    lat = [x for b in bursts for x in b["latencies"]]
    wall = max(b["end"] for b in bursts) - min(b["start"] for b in bursts)
    return {"throughput": len(lat) / wall, "p50": median(lat), "p99": pct(lat, 99),
            "rss": sum(m[0] for m in mem) + service_mem[0],
            "pss": sum(m[1] for m in mem) + service_mem[1],
            "service_rss": service_mem[0], "lone": median(lone[3:]), "n": len(lat),
            "cpu": cpu / len(lat)}


def _collection(a, root: Path) -> Path:
    if a.keep and (Path(a.keep) / "collection" / "manifest.json").exists():
        return Path(a.keep) / "collection"
    from index import Engine, build_collection, scan_folder
    from index.synthetic import write_gallery
    write_gallery(root / "gallery", a.images, 0)
    engine = Engine.open(root / "collection", model=a.model, create=True)
    try:
        asyncio.run(build_collection(engine.collection, engine.encoder,
                                     scan_folder(root / "gallery")))
    finally:
        engine.close()
    return root / "collection"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="builtin:tiny-shapes")
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--queries", type=int, default=48, help="searches per process in the burst")
    p.add_argument("--in-flight", type=int, default=8, help="searches at once per process")
    p.add_argument("--lone", type=int, default=43, help="lone texts (the first 3 not counted)")
    p.add_argument("--images", type=int, default=300)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="torch threads of each model")
    p.add_argument("--keep", help="folder to keep the demo collection in, for reruns")
    # worker mode (started by the parent)
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--collection", help=argparse.SUPPRESS)
    p.add_argument("--encoder-url", help=argparse.SUPPRESS)
    p.add_argument("--salt", default="", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker is not None:
        asyncio.run(_worker(a))
        return
    token = secrets.token_urlsafe(16)
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="bench-service-") as tmp:
        root = Path(a.keep) if a.keep else Path(tmp)
        collection = _collection(a, root)
        runs: dict[bool, list[dict]] = {False: [], True: []}
        for r in range(a.rounds):
            order = (False, True) if r % 2 == 0 else (True, False)
            for shared in order:
                runs[shared].append(_run_config(a, collection, shared, token, f"r{r}"))
                print(f"round {r + 1}: {'shared service' if shared else 'own models'} done",
                      file=sys.stderr)
    end_load = " / ".join(f"{x:.2f}" for x in os.getloadavg())

    own, shared = runs[False], runs[True]
    rows = []
    for name, rs in (("4 processes, each its own model", own),
                     ("4 processes + one encoder service", shared)):
        rows.append([name.replace("4", str(a.processes)), sum(x["n"] for x in rs) // len(rs),
                     f"{median([x['throughput'] for x in rs]):.1f}",
                     f"{median([x['p50'] for x in rs]) * 1000:.1f}",
                     f"{median([x['p99'] for x in rs]) * 1000:.1f}",
                     f"{median([x['rss'] for x in rs]):,.0f}",
                     f"{median([x['pss'] for x in rs]):,.0f}",
                     f"{median([x['lone'] for x in rs]) * 1000:.2f}",
                     f"{median([x['cpu'] for x in rs]) * 1000:.1f}"])
    print(f"model {a.model}; {a.processes} processes x {a.queries} searches, {a.in_flight} in "
          f"flight each; {a.rounds} round(s); load average (1/5/15 min) at start {load}, "
          f"at end {end_load}; {os.cpu_count()} CPUs")
    print(table(["configuration", "searches", "searches/s", "p50 ms", "p99 ms",
                 "sum RSS MiB", "sum PSS MiB", "lone text p50 ms", "CPU ms per search"], rows))
    print("\nper round (searches/s, p50 ms, sum RSS MiB): " + "; ".join(
        f"{'shared' if sh else 'own'} r{i + 1}: {x['throughput']:.1f}, {x['p50'] * 1000:.0f}, "
        f"{x['rss']:,.0f}" for sh in (False, True) for i, x in enumerate(runs[sh])))
    t_own, t_sh = median([x["throughput"] for x in own]), median([x["throughput"] for x in shared])
    m_own, m_sh = median([x["rss"] for x in own]), median([x["rss"] for x in shared])
    p_own, p_sh = median([x["pss"] for x in own]), median([x["pss"] for x in shared])
    l_own, l_sh = median([x["lone"] for x in own]), median([x["lone"] for x in shared])
    print(f"\nmemory shared/own: RSS {ratio(m_sh / m_own)} (target <= 0.5x), "
          f"PSS {ratio(p_sh / p_own)}; throughput shared/own: {ratio(t_sh / t_own)} "
          f"(target >= 0.9x); lone text through the service: +{(l_sh - l_own) * 1000:.2f} ms "
          f"(target <= +5 ms)")


if __name__ == "__main__":
    main()
