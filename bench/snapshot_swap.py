"""Benchmark: a new snapshot version committed under load, served without a restart (issue #15 item 2).

    python bench/snapshot_swap.py [--data data/ml100k] [--config conf/demo.yaml] [--rate 50] [--seconds 30]
                                  [--commit-at 10] [--refresh S] [--hours 24] [--timeout 5] [--set KEY=VALUE]

Needs a data folder with a registered champion (``make run`` makes one). The folder is copied first (the run
commits a snapshot version into the copy, never into yours). The uvicorn engine serves the copy on a free
loopback port (``bench/serving.py``'s server), polling the folder every ``--refresh`` seconds
(``serving.snapshot_refresh_s``; default: the config's). An open-loop client sends ``--rate`` requests a
second for ``--seconds`` (latency from each request's scheduled time; ``--timeout`` per request). At
``--commit-at`` seconds a snapshot version built over every event but the last ``--hours`` (built before the
load starts, so the build does not compete for the CPU) is written and committed, as
``recrank events append`` commits one.

Reports the time from the commit to the first response carrying the new snapshot id (against the configured
interval), failed requests, and p50/p99 latency before the commit, in the swap window and after it. Prints a
table and writes ``bench/results/snapshot_swap.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import aiohttp
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/features.py or bench/textmodel.py
from bench.loadgen import JSON, open_loop  # noqa: E402
from bench.serving import Server, request_bodies  # noqa: E402


@dataclass
class Answer:
    """One request: when it was scheduled and answered (seconds from the run's start), status, snapshot id."""

    scheduled: float
    answered: float
    status: int
    snapshot: str | None

    @property
    def latency_ms(self) -> float:
        return (self.answered - self.scheduled) * 1e3


def has_champion(cfg) -> str | None:
    """Why ``cfg``'s data folder cannot be served (None when a champion is registered)."""
    from ranker.loading import registry_client, resolve_alias

    try:
        resolve_alias(registry_client(cfg), cfg.mlflow.model_prefix, cfg.serving.model_alias)
    except Exception as exc:  # no registry, no alias: say so instead of a traceback
        return f"{type(exc).__name__}: {exc}"
    return None


def earlier_snapshot(data_dir: Path, hours: float):
    """A snapshot over every event but the last ``hours`` (the current version's spec): another version id."""
    import polars as pl

    from features.behaviour import build_snapshot
    from features.build import read_snapshot
    from features.history import histories
    from features.schema import read_impressions, read_items

    spec = read_snapshot(data_dir).feature_spec
    impressions = read_impressions(data_dir)
    impressions = impressions.filter(pl.col("ts") < pl.col("ts").max() - pl.duration(microseconds=int(hours * 3.6e9)))
    snapshot = build_snapshot(impressions, read_items(data_dir), spec)
    snapshot.users = histories(impressions, snapshot.users.lazy(), spec.history_cap).collect()
    return snapshot, spec


def commit_snapshot(data_dir: Path, snapshot, spec) -> str:
    """Write ``snapshot`` as a version and make it current (one rename of ``tables.json``); return its id."""
    from features.build import write_snapshot
    from features.prepare import read_manifest
    from features.store import commit, read_state, store_lock

    with store_lock(data_dir):
        sid = write_snapshot(snapshot, data_dir, spec, read_manifest(data_dir)["fingerprint"])
        state = read_state(data_dir)
        commit(data_dir, state.next(snapshot=sid, snapshots=(*state.snapshots, sid)))
    return sid


async def _send(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[int, str | None]:
    try:
        async with session.post(url, data=body, headers=JSON) as r:
            raw = await r.read()
            return r.status, json.loads(raw)["versions"].get("snapshot") if r.status == 200 else None
    except (TimeoutError, aiohttp.ClientError):
        return -1, None  # timeout or connection error


async def _run(url: str, bodies: list[bytes], rate: float, seconds: float, timeout_s: float, t0: float):
    """Open loop: request i is scheduled at ``t0 + i / rate`` whatever the server does."""
    answers: list[Answer | None] = [None] * int(rate * seconds)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=512), timeout=timeout) as session:

        async def one(i: int) -> None:
            scheduled = t0 + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.monotonic()))
            status, sid = await _send(session, url, bodies[i % len(bodies)])
            answers[i] = Answer(scheduled - t0, time.monotonic() - t0, status, sid)

        await asyncio.gather(*(one(i) for i in range(len(answers))))
    return answers


def _stats(answers: list[Answer]) -> dict[str, float | int]:
    ok = np.array([a.latency_ms for a in answers if a.status == 200])
    pct = (lambda q: float(np.percentile(ok, q))) if len(ok) else (lambda q: float("nan"))
    return {
        "requests": len(answers),
        "failed": sum(a.status != 200 for a in answers),
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": float(ok.max()) if len(ok) else float("nan"),
    }


def summarise(answers: list[Answer], commit_at: float, committed: float, old: str, new: str) -> dict:
    """Swap delay, failures, and latency before the commit, in the swap window and after it."""
    carrying = [a.answered for a in answers if a.snapshot == new]
    first_new = min(carrying) if carrying else float("nan")
    window_end = first_new + 1.0 if carrying else float("inf")  # requests in flight at the swap, and a margin
    return {
        "old_snapshot": old,
        "new_snapshot": new,
        "commit_started_s": commit_at,
        "committed_s": committed,
        "first_new_response_s": first_new,
        "commit_to_first_new_s": first_new - committed,
        "old_after_first_new": sum(a.snapshot == old for a in answers if a.scheduled > first_new),
        "snapshots_seen": sorted({a.snapshot or "none" for a in answers}),
        "all": _stats(answers),
        "before": _stats([a for a in answers if a.answered < commit_at]),
        "swap_window": _stats([a for a in answers if commit_at <= a.answered < window_end]),
        "after": _stats([a for a in answers if a.scheduled >= window_end]),
    }


def run(args: argparse.Namespace, cfg) -> dict:
    from features.build import read_snapshot

    bodies = request_bodies(args)
    snapshot, spec = earlier_snapshot(args.data, args.hours)
    if snapshot.as_of == read_snapshot(args.data).as_of:
        sys.exit(f"no events in the last {args.hours:g} hours of {args.data}: raise --hours")
    refresh = cfg.serving.snapshot_refresh_s if args.refresh is None else args.refresh
    server = Server("uvicorn", args, [f"serving.snapshot_refresh_s={refresh}"])
    try:
        old = _get(f"{server.url}/readyz")["versions"]["snapshot"]
        open_loop(f"{server.url}/rank", args.rate, 3, bodies)  # warm-up: the first open-loop seconds run cold
        t0 = time.monotonic() + 0.2
        marks: dict[str, object] = {}

        def committer() -> None:
            time.sleep(max(0.0, t0 + args.commit_at - time.monotonic()))
            marks["commit_at"] = time.monotonic() - t0
            marks["id"] = commit_snapshot(args.data, snapshot, spec)
            marks["committed"], marks["wall"] = time.monotonic() - t0, time.time()

        thread = threading.Thread(target=committer)
        thread.start()
        answers = asyncio.run(_run(f"{server.url}/rank", bodies, args.rate, args.seconds, args.timeout, t0))
        thread.join()
        ready = _get(f"{server.url}/readyz")
    finally:
        server.stop()
    out = summarise(answers, marks["commit_at"], marks["committed"], old, marks["id"])
    out["snapshot_refresh_s"] = refresh
    out["rate"], out["seconds"], out["timeout_s"] = args.rate, args.seconds, args.timeout
    out["readyz_after"] = ready
    # The server's own clock: from the commit to the swap (its /readyz snapshot.loaded_at).
    out["commit_to_server_swap_s"] = datetime.fromisoformat(ready["snapshot"]["loaded_at"]).timestamp() - marks["wall"]
    out["new_as_of"] = snapshot.as_of.isoformat()
    return out


def _get(url: str) -> dict:
    import httpx

    return httpx.get(url, timeout=5).json()


def table(r: dict) -> str:
    rows = [
        f"uvicorn, {r['rate']:g} req/s open loop for {r['seconds']:g} s, client timeout {r['timeout_s']:g} s, "
        f"serving.snapshot_refresh_s={r['snapshot_refresh_s']:g}",
        f"snapshot {r['old_snapshot']} -> {r['new_snapshot']} (as of {r['new_as_of']}), "
        f"committed at {r['committed_s']:.2f} s",
        f"commit -> first response with the new id: {r['commit_to_first_new_s']:.2f} s "
        f"(interval {r['snapshot_refresh_s']:g} s; swapped in the server {r['commit_to_server_swap_s']:.2f} s after "
        f"the commit); requests sent after it answered with the old id: {r['old_after_first_new']}",
        f"{'phase':12s} {'requests':>8s} {'failed':>6s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s}",
    ]
    for phase in ("before", "swap_window", "after", "all"):
        s = r[phase]
        rows.append(
            f"{phase:12s} {s['requests']:8d} {s['failed']:6d} {s['p50_ms']:8.1f} {s['p99_ms']:8.1f} {s['max_ms']:8.1f}"
        )
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/ml100k"))
    parser.add_argument("--config", type=Path, default=Path("conf/demo.yaml"))
    parser.add_argument("--rate", type=float, default=50.0, help="requests a second (open loop)")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--commit-at", type=float, default=10.0, help="seconds into the run")
    parser.add_argument("--refresh", type=float, default=None, help="serving.snapshot_refresh_s (default: config)")
    parser.add_argument("--hours", type=float, default=24.0, help="the new version leaves out the last HOURS")
    parser.add_argument("--timeout", type=float, default=5.0, help="client timeout per request, seconds")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--out", default="snapshot_swap.json", help="file name under bench/results/")
    args = parser.parse_args()
    from conf import load_config

    cfg = load_config(args.config, [f"data.dir={args.data}", *args.set])
    why = has_champion(cfg)
    if why is not None:
        sys.exit(f"{args.data}: no servable champion ({why}); `make run` trains one")
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="snapshot-swap-") as tmp:
        copy = Path(tmp) / "data"
        shutil.copytree(args.data, copy)  # the registry's artifacts stay where they are (absolute URIs)
        args.data = copy
        report = run(args, cfg)
    report["machine"] = {"cpus": os.cpu_count(), "python": platform.python_version()}
    print(table(report))
    out = ROOT / "bench" / "results" / args.out
    out.write_text(json.dumps(report, indent=2, default=str))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
