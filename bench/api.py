"""Benchmark: the out-of-the-box server's rate, and what metrics, request ids and access logs cost.

    python bench/api.py [--data data/ml100k] [--config conf/demo.yaml] [--parts default,observability,cost]
                        [--rate 100] [--seconds 60] [--ab-rate 50] [--ab-seconds 10] [--ab-rounds 5]

Needs a data folder with a registered champion (``make run`` makes one). Servers run as their own processes
on free loopback ports; the open-loop load client (``bench/loadgen.py``: latency counted from each request's
scheduled time) runs here, on the same machine. Requests: 100 catalogue items (cached by the text model) for
random snapshot users, built with :func:`serving.client.rank_body`.

- default: ``recrank serve --config CONFIG data.dir=DATA`` with no other flag (the engine ``auto`` picks,
  access lines and metrics on, the registry polled), a 10 s warm-up, then ``--rate`` req/s for ``--seconds``;
  goals: 0 failed, p99 <= 50 ms. The ``Server-Timing`` of the answered requests gives the ranking's own time.
- observability: two uvicorn servers of the same app, side by side: "on" (the defaults: request ids, metrics,
  JSON access lines) and "off" (``serving.metrics=false serving.access_log=false``: request ids only), loaded
  in alternating ``--ab-seconds`` segments at ``--ab-rate`` req/s; goal: the median over rounds of
  p50(on) / p50(off) <= 1.05.
- cost: the microseconds the request-id middleware, the metrics and the access line add per request in
  process, around a no-op app (what the A/B's noise cannot resolve).

Prints a table and writes ``bench/results/api.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.loadgen import open_loop  # noqa: E402
from bench.serving import free_port  # noqa: E402
from serving.client import rank_body  # noqa: E402


def bodies_for(data: Path, n: int = 400, candidates: int = 100, seed: int = 0) -> list[bytes]:
    import polars as pl

    from features.store import snapshot_dir

    users = pl.read_parquet(snapshot_dir(data) / "online_user.parquet")["user_id"].to_list()
    items = pl.read_parquet(snapshot_dir(data) / "online_item.parquet")["item_id"].to_list()
    rng = random.Random(seed)
    return [json.dumps(rank_body(rng.choice(users), rng.sample(items, candidates))).encode() for _ in range(n)]


class Process:
    """A server process in its own group, ready once ``/readyz`` answers 200; stopped with SIGINT."""

    def __init__(self, name: str, cmd: list[str]) -> None:
        self.port = int(cmd[cmd.index("--port") + 1])
        self.url = f"http://127.0.0.1:{self.port}"
        (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
        self.log_path = ROOT / "bench" / "results" / f"api-{name}.log"
        self.log = open(self.log_path, "w")  # noqa: SIM115
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        deadline = time.monotonic() + 240
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} server did not become ready; see {self.log_path}")
            time.sleep(0.5)

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
            self.proc.wait(timeout=90)
        except (subprocess.TimeoutExpired, ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def default_server(args) -> dict:
    cmd = [sys.executable, "-m", "offline.cli", "serve", "--config", str(args.config), "--port", str(free_port()),
           f"data.dir={args.data}"]  # fmt: skip
    server = Process("default", cmd)
    try:
        bodies = bodies_for(args.data)
        open_loop(f"{server.url}/rank", args.rate, 10, bodies)  # warm-up
        res = open_loop(f"{server.url}/rank", args.rate, args.seconds, bodies[::-1])
    finally:
        server.stop()
    engine = next(
        (line.strip() for line in server.log_path.read_text().splitlines() if line.startswith("engine:")), "?"
    )
    out = {"engine": engine, **res.to_json()}
    out["goal"] = {"zero_failed": res.errors == 0, "p99_le_50ms": res.p99_ms <= 50.0}
    return out


def observability(args) -> dict:
    port_on, port_off = free_port(), free_port()
    common = ["--config", str(args.config), f"data.dir={args.data}", "serving.reload_interval_s=0"]
    serve = [sys.executable, "-m", "serving", "--engine", "uvicorn"]
    on = Process("on", [*serve, "--port", str(port_on), *common])
    try:
        off = Process("off", [*serve, "--port", str(port_off), *common, *args.off_set])
    except Exception:
        on.stop()
        raise
    rounds = []
    try:
        bodies = bodies_for(args.data)
        for server in (on, off):
            open_loop(f"{server.url}/rank", args.ab_rate, 5, bodies)  # warm-up
        for r in range(args.ab_rounds):
            pair = {}
            order = (("on", on), ("off", off)) if r % 2 == 0 else (("off", off), ("on", on))
            for name, server in order:
                res = open_loop(f"{server.url}/rank", args.ab_rate, args.ab_seconds, bodies)
                pair[name] = res.to_json()
            pair["p50_ratio"] = pair["on"]["p50_ms"] / pair["off"]["p50_ms"]
            rounds.append(pair)
            print(f"  round {r + 1}: p50 on {pair['on']['p50_ms']:.2f} ms, off {pair['off']['p50_ms']:.2f} ms, "
                  f"ratio {pair['p50_ratio']:.3f}", flush=True)  # fmt: skip
        lines = sum(1 for line in on.log_path.read_text().splitlines() if '"recrank.access"' in line)
    finally:
        on.stop()
        off.stop()
    ratio = float(np.median([p["p50_ratio"] for p in rounds]))
    return {"rounds": rounds, "median_p50_ratio": ratio, "access_lines_written": lines, "goal_le_1_05": ratio <= 1.05}


def in_process_cost(n: int = 20000) -> dict[str, float]:
    """Microseconds per request that ``ObserveRequests`` adds around a no-op ASGI app, in this process: the
    request id alone, with the metrics, and with the metrics and the access line (written to /dev/null), plus
    the ``/rank`` route's own ranking metrics. What the A/B above cannot resolve under its noise."""
    import asyncio

    from serving.access import ObserveRequests, configure_logging
    from serving.metrics import ServiceMetrics
    from serving.models import ModelHolder

    metrics = ServiceMetrics(ModelHolder("champion", lambda: "1", lambda version: None))
    configure_logging("WARNING", access=True)
    from serving import access

    access._listener.handlers[0].setStream(open(os.devnull, "w"))  # noqa: SIM115  # the writer thread's stream

    async def noop(scope, receive, send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def per_request(app) -> float:
        async def receive():
            return {"type": "http.request"}

        async def send(message) -> None:
            pass

        scope = {"type": "http", "method": "POST", "path": "/rank", "headers": [(b"x-request-id", b"page-1")]}
        start = time.perf_counter()
        for _ in range(n):
            await app(dict(scope), receive, send)
        return (time.perf_counter() - start) / n * 1e6

    out = {
        name: asyncio.run(per_request(app))
        for name, app in (
            ("no middleware", noop),
            ("request id", ObserveRequests(noop, None, False)),
            ("request id + metrics", ObserveRequests(noop, metrics, False)),
            ("request id + metrics + access line", ObserveRequests(noop, metrics, True)),
        )
    }
    start = time.perf_counter()
    for _ in range(n):
        metrics.ranking(100, 0, False, {"features": 0.001, "text": 0.001, "booster": 0.0005})
    out["/rank's ranking metrics"] = (time.perf_counter() - start) / n * 1e6
    return {k: round(v, 2) for k, v in out.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/ml100k"))
    parser.add_argument("--config", type=Path, default=Path("conf/demo.yaml"))
    parser.add_argument("--parts", default="default,observability,cost")
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--ab-rate", type=float, default=50.0)
    parser.add_argument("--ab-seconds", type=float, default=10.0)
    parser.add_argument("--ab-rounds", type=int, default=5)
    parser.add_argument(
        "--off-set",
        nargs="*",
        default=["serving.metrics=false", "serving.access_log=false"],
        help="overrides of the 'off' server (none: an A/A run, two identical servers, to see the setup's own skew)",
    )
    parser.add_argument("--out", default="api.json")
    args = parser.parse_args()
    parts = args.parts.split(",")
    report: dict = {"machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
                    "data": str(args.data), "config": str(args.config),
                    "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}  # fmt: skip
    if "default" in parts:
        print(f"--- out-of-the-box server, {args.rate:g} req/s for {args.seconds:g} s", flush=True)
        d = report["default"] = default_server(args)
        print(f"{d['engine']}\n  sent {d['sent']}, failed {d['errors']}, p50 {d['p50_ms']:.2f} ms, "
              f"p99 {d['p99_ms']:.2f} ms, ranking (Server-Timing) p50 {d['app_p50_ms']:.2f} ms; goals {d['goal']}",
              flush=True)  # fmt: skip
    if "observability" in parts:
        print(f"--- metrics + request ids + access lines: on vs off, {args.ab_rate:g} req/s", flush=True)
        o = report["observability"] = observability(args)
        print(f"  median p50 ratio on/off {o['median_p50_ratio']:.3f} (goal <= 1.05); "
              f"{o['access_lines_written']} access lines written", flush=True)  # fmt: skip
    if "cost" in parts:
        print("--- what observability adds per request, in process (microseconds)", flush=True)
        c = report["in_process_us"] = in_process_cost()
        for name, us in c.items():
            print(f"  {name:38s} {us:7.2f}", flush=True)
    out = ROOT / "bench" / "results" / args.out
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
