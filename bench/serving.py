"""Benchmark: the ranking API under load, both engines, against floors measured in the same run.

    python bench/serving.py [--data data/ml100k] [--config conf/demo.yaml] [--seconds 10] [--confirm 60]
                            [--parts floor,uvicorn,ray,variants,fault]

Needs a data folder with a registered champion (``make run`` makes one). Every server runs as its own
process on a free loopback port; the load client runs here (same 2-core box: it costs the server CPU).

- floor: the ranking pipeline called in-process (100 cached candidates), and a no-op endpoint
  (``GET /healthz``) on the same app and host;
- per engine: closed loop (1 and 4 clients), open loop at fixed rates for ``--seconds`` each (highest rate
  with zero errors and p99 under 1 s), that rate confirmed for ``--confirm`` seconds, and 10% unknown items
  (the encoder path) at a fixed rate;
- variants (Ray): Ray Serve's defaults against recrank's settings, and Serve's internal knobs one at a time,
  with the CPU seconds Ray's processes spend per request and while idle;
- fault: two ingress replicas, one killed with SIGKILL during open-loop load: failed requests and recovery.

Prints tables and writes ``bench/results/serving.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/features.py or bench/textmodel.py
from bench.loadgen import LoadResult, closed_loop, open_loop  # noqa: E402
from serving.client import rank_body  # noqa: E402

RAY_DEFAULTS = [  # what a plain Ray Serve deployment gets
    "serving.access_log=true",
    "serving.max_ongoing_requests=5",
    "serving.ingress_num_cpus=1",
]
KNOBS = {  # Serve internals read from the environment of its processes (Ray 2.60)
    "user code on the replica's main loop": {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0"},
    "metrics export every 1 s (not 100 ms)": {"RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"},
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m serving`` in its own process group; stopped with SIGINT (then SIGKILL)."""

    def __init__(self, engine: str, args: argparse.Namespace, overrides: list[str], env: dict[str, str] | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable, "-m", "serving", "--config", str(args.config), "--engine", engine,
            "--port", str(self.port), f"data.dir={args.data}", "serving.reload_interval_s=0", *args.set, *overrides,
        ]  # fmt: skip
        self.log = open(ROOT / "bench" / "results" / f"server-{engine}.log", "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{engine} server did not become ready; see {self.log.name}")
            time.sleep(0.5)

    def processes(self) -> list[psutil.Process]:
        root = psutil.Process(self.proc.pid)
        return [root, *root.children(recursive=True)]

    def cpu_seconds(self) -> float:
        total = 0.0
        for p in self.processes():
            try:
                t = p.cpu_times()
                total += t.user + t.system
            except psutil.NoSuchProcess:
                pass
        return total

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=90)  # direct ingress drains replicas for 30 s before they stop
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def request_bodies(args, n: int = 300, candidates: int = 100, unknown: float = 0.0, seed: int = 0) -> list[bytes]:
    """Requests of ``candidates`` catalogue items for snapshot users; ``unknown`` of them new items with text."""
    import polars as pl

    from features.store import snapshot_dir

    users = pl.read_parquet(snapshot_dir(args.data) / "online_user.parquet")["user_id"].to_list()
    items = pl.read_parquet(snapshot_dir(args.data) / "online_item.parquet")["item_id"].to_list()
    rng = random.Random(seed)
    words = ["night", "river", "story", "love", "war", "city", "dream", "last", "king", "summer", "road", "home"]
    bodies = []
    for r in range(n):
        n_new = round(candidates * unknown)
        cands: list[object] = rng.sample(items, candidates - n_new)
        cands += [
            {"item_id": f"new-{seed}-{r}-{k}", "title": " ".join(rng.sample(words, 3)).title() + f" ({1990 + k})"}
            for k in range(n_new)
        ]
        bodies.append(json.dumps(rank_body(rng.choice(users), cands)).encode())
    return bodies


def in_process_floor(args, bodies: list[bytes]) -> dict:
    """The pipeline itself: what any host adds is measured against this."""
    from conf import load_config
    from ranker.loading import load_configured_pipeline, registry_client, resolve_alias
    from ranker.pipeline import Candidate

    cfg = load_config(args.config, [f"data.dir={args.data}", *args.set])
    version = resolve_alias(registry_client(cfg), cfg.mlflow.model_prefix, cfg.serving.model_alias)
    pipeline = load_configured_pipeline(cfg, version)
    requests = [json.loads(b) for b in bodies]
    for req in requests[:20]:
        pipeline.rank(req["user_id"], [Candidate(c) for c in req["candidates"]])
    times = []
    for req in requests:
        start = time.perf_counter()
        pipeline.rank(req["user_id"], [Candidate(c) for c in req["candidates"]])
        times.append(time.perf_counter() - start)
    ms = np.array(times) * 1e3
    return {
        "requests": len(times),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "rps_one_core": float(1e3 / ms.mean()),
    }


P99_LIMIT_MS = 250.0  # a step whose p99 exceeds this is queueing, not serving: it would not last 60 s


def sweep(url: str, bodies: list[bytes], rates: list[float], seconds: float) -> tuple[list[LoadResult], list[float]]:
    """Open loop at increasing rates; the rates with zero errors and p99 under the limit (stop at the first miss)."""
    results, passed = [], []
    for rate in rates:
        res = open_loop(f"{url}/rank", rate, seconds, bodies)
        results.append(res)
        print(row(res), flush=True)
        if res.errors or not res.p99_ms < P99_LIMIT_MS:
            break
        passed.append(rate)
    return results, passed


def drain(url: str, limit_s: float = 60.0) -> float:
    """Wait until the server answers ``/healthz`` promptly again; returns the seconds waited.

    A step above capacity leaves a backlog: the client gave up on those requests, but the server still works
    through them, and a run started right away would measure that backlog instead of its own rate.
    """
    start, prompt = time.monotonic(), 0
    while prompt < 5 and time.monotonic() - start < limit_s:
        t0 = time.monotonic()
        try:
            httpx.get(f"{url}/healthz", timeout=5)
            prompt = prompt + 1 if time.monotonic() - t0 < 0.05 else 0
        except httpx.HTTPError:
            prompt = 0
        time.sleep(0.2)
    return time.monotonic() - start


def confirm(
    url: str, bodies: list[bytes], passed: list[float], seconds: float
) -> tuple[list[LoadResult], float | None]:
    """The highest passing rate that also holds for ``seconds`` with zero errors (stepping down on a miss)."""
    runs = []
    for rate in reversed(passed):
        drain(url)
        res = open_loop(f"{url}/rank", rate, seconds, bodies)
        runs.append(res)
        print(row(res), f"({seconds:g} s)", flush=True)
        if res.errors == 0:
            return runs, rate
    return runs, None


def engine_runs(engine: str, args, bodies, new_bodies, rates, overrides=(), env=None) -> dict:
    server = Server(engine, args, list(overrides), env)
    out: dict = {"engine": engine, "overrides": list(overrides), "env": env or {}}
    try:
        idle0, t0 = server.cpu_seconds(), time.perf_counter()
        time.sleep(5)
        out["idle_cores"] = (server.cpu_seconds() - idle0) / (time.perf_counter() - t0)
        for target, method, b in (("healthz", "GET", ()), ("rank", "POST", bodies)):
            for conc in (1, 4):
                cpu0 = server.cpu_seconds()
                res = closed_loop(f"{server.url}/{target}", conc, args.seconds, b, method=method)
                res_json = res.to_json()
                res_json["server_cpu_ms_per_request"] = 1e3 * (server.cpu_seconds() - cpu0) / max(res.sent, 1)
                out[f"closed_{target}_c{conc}"] = res_json
                print(row(res), f"server CPU {res_json['server_cpu_ms_per_request']:.1f} ms/req", flush=True)
        fixed = rates[0]
        open_loop(f"{server.url}/rank", fixed, 3, bodies)  # warm-up: first open-loop seconds run cold
        for target, method, b in (("healthz", "GET", ()), ("rank", "POST", bodies)):
            res = open_loop(f"{server.url}/{target}", fixed, args.seconds, b, method=method)
            out[f"open_{target}_at_{fixed:g}"] = res.to_json()
            print(row(res), flush=True)
        results, passed = sweep(server.url, bodies, rates, args.seconds)
        out["sweep"] = [r.to_json() for r in results]
        out["best_rate"] = passed[-1] if passed else None
        if passed and args.confirm:
            runs, sustained = confirm(server.url, bodies, passed, args.confirm)
            out["confirm"] = [r.to_json() for r in runs]
            out["sustained_rate"] = sustained
        drain(server.url)
        res = open_loop(f"{server.url}/rank", args.unknown_rate, args.seconds, new_bodies, timeout_s=5)
        out["unknown_10pct"] = res.to_json()
        print(row(res), "(10% unknown items)", flush=True)
    finally:
        server.stop()
    return out


def variant_runs(args, bodies) -> list[dict]:
    """Ray Serve with its defaults, with recrank's settings, and with each internal knob on top."""
    variants = [("Ray Serve defaults", RAY_DEFAULTS, {}), ("recrank settings", [], {})]
    variants.append(("polars pool of 2 in the replica", ["serving.ingress_polars_threads=2"], {}))
    variants += [(name, [], env) for name, env in KNOBS.items()]
    variants.append(("recrank settings + all knobs", [], {k: v for e in KNOBS.values() for k, v in e.items()}))
    # Not a variant: RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0 made every request fail (Ray 2.60, seen here).
    out = []
    for name, overrides, env in variants:
        server = Server("ray", args, list(overrides), env)
        try:
            idle0, t0 = server.cpu_seconds(), time.perf_counter()
            time.sleep(5)
            rec = {"variant": name, "overrides": overrides, "env": env}
            rec["idle_cores"] = (server.cpu_seconds() - idle0) / (time.perf_counter() - t0)
            for target, method, b in (("healthz", "GET", ()), ("rank", "POST", bodies)):
                cpu0 = server.cpu_seconds()
                res = closed_loop(f"{server.url}/{target}", 1, args.seconds, b, method=method)
                rec[target] = res.to_json()
                rec[target]["server_cpu_ms_per_request"] = 1e3 * (server.cpu_seconds() - cpu0) / max(res.sent, 1)
            out.append(rec)
            noop, rank = rec["healthz"], rec["rank"]
            print(
                f"{name:38s} idle {rec['idle_cores']:.2f} cores | no-op p50 {noop['p50_ms']:.1f} ms "
                f"({noop['server_cpu_ms_per_request']:.1f} ms CPU/req) | rank p50 {rank['p50_ms']:.1f} "
                f"ms ({rank['server_cpu_ms_per_request']:.1f} ms CPU/req)",
                flush=True,
            )
        finally:
            server.stop()
    return out


def fault_run(args, bodies, rate: float) -> dict:
    """Two ingress replicas; SIGKILL one of them mid-load; count failures and time the recovery."""
    server = Server("ray", args, ["serving.ingress_replicas=2"])
    try:
        import threading

        result: dict = {}

        def load() -> None:
            result["load"] = open_loop(f"{server.url}/rank", rate, 40, bodies, timeout_s=5)

        thread = threading.Thread(target=load)
        thread.start()
        time.sleep(10)
        victims = [p for p in server.processes() if "RankIngress" in " ".join(_name(p))]
        victim = victims[0]
        killed_at = time.monotonic()
        victim.kill()
        replaced = None
        while time.monotonic() - killed_at < 60:
            alive = [p for p in server.processes() if "RankIngress" in " ".join(_name(p)) and p.pid != victim.pid]
            if len(alive) >= 2 and replaced is None:
                replaced = time.monotonic() - killed_at
                break
            time.sleep(0.2)
        thread.join()
        res: LoadResult = result["load"]
        out = {"rate": rate, "load": res.to_json(), "replicas_before": len(victims), "new_replica_process_s": replaced}
        print(row(res), f"(fault: killed 1 of {len(victims)} ingress replicas; new replica process after {replaced} s)")
        return out
    finally:
        server.stop()


def _gpu_name() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def _name(p: psutil.Process) -> list[str]:
    try:
        return [p.name(), *p.cmdline()]
    except psutil.NoSuchProcess:
        return []


def row(r: LoadResult) -> str:
    load = f"{r.offered_rps:g} req/s offered" if r.mode == "open" else f"{r.concurrency} clients"
    return (
        f"{r.mode:6s} {r.target.rsplit('/', 1)[-1]:8s} {load:20s} ok {r.ok:5d} err {r.errors:4d} "
        f"{r.achieved_rps:7.1f} req/s  p50 {r.p50_ms:7.1f}  p95 {r.p95_ms:7.1f}  p99 {r.p99_ms:7.1f} ms"
        + (f"  (in pipeline p50 {r.app_p50_ms:.1f} ms)" if r.app_p50_ms == r.app_p50_ms else "")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/ml100k"))
    parser.add_argument("--config", type=Path, default=Path("conf/demo.yaml"))
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load step")
    parser.add_argument("--confirm", type=float, default=60.0, help="length of the run at the best rate (0 = skip)")
    parser.add_argument("--parts", default="floor,uvicorn,ray,variants,fault")
    parser.add_argument("--uvicorn-rates", default="50,100,150,200,250")
    parser.add_argument("--ray-rates", default="20,30,40,50,60,80,100")
    parser.add_argument("--unknown-rate", type=float, default=2.0, help="req/s of the 10%%-unknown-items run")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override for every server and the floor (repeatable)",
    )
    parser.add_argument("--out", default="serving.json", help="file name under bench/results/")
    args = parser.parse_args()
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    parts = set(args.parts.split(","))
    bodies = request_bodies(args)
    new_bodies = request_bodies(args, unknown=0.1, seed=1)
    report: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "gpu": _gpu_name()}}
    report["args"] = {k: str(v) for k, v in vars(args).items()}
    if "floor" in parts:
        report["floor_in_process"] = in_process_floor(args, bodies)
        f = report["floor_in_process"]
        print(f"floor: pipeline in-process, 100 cached candidates: p50 {f['p50_ms']:.2f} ms, p99 {f['p99_ms']:.2f} ms")
    rates = {"uvicorn": [float(x) for x in args.uvicorn_rates.split(",")],
             "ray": [float(x) for x in args.ray_rates.split(",")]}  # fmt: skip
    for engine in ("uvicorn", "ray"):
        if engine in parts:
            print(f"--- {engine}", flush=True)
            report[engine] = engine_runs(engine, args, bodies, new_bodies, rates[engine])
    if "variants" in parts:
        print("--- Ray Serve settings (closed loop, 1 client)", flush=True)
        report["ray_variants"] = variant_runs(args, bodies)
    if "fault" in parts:
        print("--- fault", flush=True)
        best = (report.get("ray") or {}).get("sustained_rate") or 20.0
        report["fault"] = fault_run(args, bodies, max(10.0, best / 2))
    out = ROOT / "bench" / "results" / args.out
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
