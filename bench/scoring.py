"""Benchmark: offline batch scoring (``recrank score`` on Ray Data) against the in-process pipeline on one core.

    python bench/scoring.py [--rows 5000000] [--workers 1,2] [--config conf/demo.yaml] [key=value ...]

Needs a data folder with a registered champion (default ``data/ml100k`` of ``conf/demo.yaml``). Generates
``--rows`` candidate rows once (requests of ``--request-size`` candidates drawn from the embedding table's
items, so no item needs encoding; users from the snapshot plus ``--unknown-users`` of cold-start users) into
``data/bench/``, then measures:

- floor: ``pipeline.score`` over a sample of the same requests in this process, one thread (rows/s);
- the batch job (the library call behind ``recrank score``) with each worker count, each in a fresh child
  process that starts its own local Ray: end-to-end seconds; rows/s over the scoring phase (Ray and actor
  start-up included), per worker and against the floor; "busy" rows/s of one actor while it scores
  (rows / summed actor seconds: the per-actor overhead against the floor, start-up excluded); and the
  peak RSS summed over the child's process tree (driver + Ray processes + actors; shared pages such as
  the object store count once per process that maps them, so it over-states).

Prints a short table and writes ``bench/results/scoring.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import Config, load_config  # noqa: E402

CHILD = """
import json, sys
from pathlib import Path
from conf import load_config
from offline.scoring import score_batch
cfg = load_config(sys.argv[1] or None, json.loads(sys.argv[2]))
summary = score_batch(cfg, Path(sys.argv[3]), Path(sys.argv[4]), progress=False)
print(json.dumps(summary.to_json()))
"""


def load_champion(cfg: Config):
    import torch

    from offline.tracking import setup
    from ranker.loading import load_pipeline_version, resolve_alias

    client = setup(cfg)
    version = resolve_alias(client, cfg.mlflow.model_prefix, cfg.scoring.model_alias)
    return load_pipeline_version(
        client, cfg.mlflow.model_prefix, version, cfg.data.dir, cfg.textmodel.cache_dir, torch.device("cpu")
    )


def make_input(pipeline, path: Path, rows: int, size: int, unknown_users: float, seed: int) -> Path:
    """Long-format requests over the embedding table's items; written once per shape."""
    if path.is_file():
        return path
    rng = np.random.default_rng(seed)
    items = np.asarray(pipeline.text.item_ids if pipeline.text is not None else pipeline.snapshot.items["item_id"])
    users = np.asarray(pipeline.snapshot.users["user_id"].to_list())
    n_req = -(-rows // size)
    frames = []
    for start in range(0, n_req, 2000):
        n = min(2000, n_req - start)
        picks = np.argpartition(rng.random((n, len(items))), size, axis=1)[:, :size]  # sampled without replacement
        who = users[rng.integers(0, len(users), n)].astype(object)
        cold = rng.random(n) < unknown_users
        who[cold] = [f"cold-{start + i}" for i in np.flatnonzero(cold)]
        frames.append(
            pl.DataFrame(
                {
                    "request_id": np.repeat([f"r{start + i:08d}" for i in range(n)], size),
                    "user_id": np.repeat(who.astype(str), size),
                    "item_id": items[picks].ravel(),
                }
            )
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.concat(frames).head(rows).write_parquet(path)
    return path


def floor_rows_per_s(pipeline, path: Path, requests: int) -> dict[str, float]:
    """``pipeline.score`` request by request, one thread, no Ray: the least a batch job has to do."""
    import torch

    from ranker.pipeline import Candidate

    torch.set_num_threads(1)
    head = pl.read_parquet(path, n_rows=requests * 200)
    reqs = head.partition_by("request_id", maintain_order=True)[:requests]
    pipeline.score(reqs[0]["user_id"][0], [Candidate(i) for i in reqs[0]["item_id"]])  # warm-up
    start = time.perf_counter()
    rows = 0
    for req in reqs:
        pipeline.score(req["user_id"][0], [Candidate(i) for i in req["item_id"]])
        rows += req.height
    seconds = time.perf_counter() - start
    return {"rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process may end between listing and reading
            total += p.memory_info().rss
    return total


def run_job(config: str | None, overrides: list[str], source: Path, out: Path) -> dict:
    """One batch job in a fresh child process; its summary plus the peak RSS of its process tree."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", CHILD, str(config) if config else "", json.dumps(overrides), str(source), str(out)]
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc, peak, stop = psutil.Process(child.pid), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(proc))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    stop.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"scoring job failed ({child.returncode}):\n{stderr[-3000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary.update(peak_rss_gib=peak[0] / 2**30)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--request-size", type=int, default=100)
    parser.add_argument("--unknown-users", type=float, default=0.1, help="share of requests from cold-start users")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated")
    parser.add_argument("--shard-requests", type=int, default=200, help="requests per shard (scoring.shard_requests)")
    parser.add_argument("--floor-requests", type=int, default=300, help="requests timed for the floor")
    parser.add_argument("--config", default=str(ROOT / "conf/demo.yaml"))
    parser.add_argument("--input", type=Path, default=None, help="input parquet (default data/bench/scoring-ROWS)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/scoring.json")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args()
    cfg = load_config(args.config, args.overrides)

    pipeline = load_champion(cfg)
    source = args.input or ROOT / f"data/bench/scoring-{args.rows}x{args.request_size}.parquet"
    t = time.perf_counter()
    make_input(pipeline, source, args.rows, args.request_size, args.unknown_users, seed=0)
    print(f"input: {source} ({time.perf_counter() - t:.1f} s)")
    floor = floor_rows_per_s(pipeline, source, args.floor_requests)
    del pipeline

    runs = {}
    for workers in [int(w) for w in args.workers.split(",")]:
        overrides = [*args.overrides, f"scoring.workers={workers}", f"scoring.shard_requests={args.shard_requests}"]
        out = ROOT / f"data/bench/scoring-out-{workers}w"
        res = run_job(args.config, overrides, source, out)
        shutil.rmtree(out, ignore_errors=True)
        busy = res["rows"] / res["worker_seconds"]
        res.update(
            rows_per_s_per_worker=res["rows_per_s"] / workers,
            ratio_to_floor=res["rows_per_s"] / floor["rows_per_s"],
            busy_rows_per_s_per_worker=busy,
            busy_ratio_to_floor=busy / floor["rows_per_s"],
        )
        res.pop("job", None)
        runs[workers] = res

    summary = {
        "rows": args.rows,
        "request_size": args.request_size,
        "shard_requests": args.shard_requests,
        "floor": floor,
        "runs": runs,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "config": args.config,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    print(f"\nbatch scoring of {args.rows:,} rows (requests of {args.request_size}, {args.shard_requests} per shard)\n")
    cols = ("seconds", 9), ("rows/s", 10), ("/worker", 10), ("x floor", 9), ("busy/s", 10), ("x floor", 9)
    print(f"{'run':<22}" + "".join(f"{name:>{width}}" for name, width in cols) + f"{'peak GiB':>10}")
    print(f"{'floor (1 core, no Ray)':<22}{floor['seconds']:>9.1f}{floor['rows_per_s']:>10,.0f}{'':>10}{1:>9.2f}")
    for workers, res in runs.items():
        print(
            f"{f'recrank score, {workers} worker' + ('s' if workers > 1 else ''):<22}{res['seconds']:>9.1f}"
            f"{res['rows_per_s']:>10,.0f}{res['rows_per_s_per_worker']:>10,.0f}{res['ratio_to_floor']:>9.2f}"
            f"{res['busy_rows_per_s_per_worker']:>10,.0f}{res['busy_ratio_to_floor']:>9.2f}{res['peak_rss_gib']:>10.2f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
