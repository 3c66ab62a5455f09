"""Benchmark: appending one day of events to a 10M-row synthetic world against a full features rebuild.

    python bench/append.py [--rows 10000000] [--data data/bench/append]

The world (30 days) is generated once; its last day is held out. The data folder is prepared and built
from the other 29 days, then, each in a fresh child process (so peak memory is its own):

1. ``append``: ``recrank events append`` of the held-out day (incremental features + snapshot, one commit);
2. ``full rebuild``: ``recrank features build`` of the same folder, now holding all 30 days (the floor
   an append is compared with, measured in the same run);
3. a check that the incremental result equals the rebuild: the snapshot tables and the day's feature rows.

Prints a short table and writes ``bench/results/append.json``. Goal (#15): append <= 0.1x rebuild, peak < 4 GiB.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

APPEND = """
import resource, sys, time
from conf import load_config
from features.append import append_events
from features.behaviour import FeatureSpec
from features.build import read_snapshot
data, events = sys.argv[1], sys.argv[2]
spec = FeatureSpec.from_config(load_config(None))
t = time.perf_counter()
summary = append_events(data, events, spec)
seconds = time.perf_counter() - t
snap = read_snapshot(data)
for name in ("items", "users", "user_categories"):
    getattr(snap, name).write_parquet(sys.argv[3] + f"/{name}.parquet")
print(seconds, summary.rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
BUILD = """
import resource, sys, time
from conf import load_config
from features.behaviour import FeatureSpec
from features.build import build_features
spec = FeatureSpec.from_config(load_config(None))
t = time.perf_counter()
summary = build_features(sys.argv[1], spec)
print(time.perf_counter() - t, summary["rows"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
CHECK = """
import sys, polars as pl
from polars.testing import assert_frame_equal
from features.build import read_features, read_snapshot
data, saved, part = sys.argv[1], sys.argv[2], sys.argv[3]
snap = read_snapshot(data)
for name in ("items", "users", "user_categories"):
    assert_frame_equal(getattr(snap, name), pl.read_parquet(f"{saved}/{name}.parquet"), check_exact=True)
incremental = pl.read_parquet(part).drop("split").sort("impression_id", "item_id")
keys = incremental.select("impression_id").unique()
full = read_features(data).join(keys.lazy(), on="impression_id", how="semi").drop("split").collect()
assert_frame_equal(incremental, full.sort("impression_id", "item_id").select(incremental.columns), check_exact=True)
print(0, incremental.height, 0)
"""


def _bench_features():
    """bench/features.py (its data generator), loaded by path: ``features`` is also the project's package."""
    spec = importlib.util.spec_from_file_location("bench_features", ROOT / "bench" / "features.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_child(code: str, *args: Path) -> tuple[float, int, float]:
    """Run ``code`` in a fresh interpreter; return (seconds, rows, the child's own peak RSS in GiB)."""
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], check=True, capture_output=True, text=True, cwd=ROOT
    )
    seconds, rows, peak_kib = out.stdout.split()[-3:]
    return float(seconds), int(rows), int(peak_kib) / 2**20


def prepare_base(world: Path, data: Path, work: Path) -> Path:
    """``data``: the world without its last day, prepared and built; returns the held-out day's events file."""
    import polars as pl

    impressions = pl.scan_parquet(world / "impressions.parquet")
    cut = impressions.select(pl.col("ts").max()).collect().item().replace(hour=0, minute=0, second=0, microsecond=0)
    source = work / "source"
    source.mkdir(parents=True, exist_ok=True)
    shutil.copy2(world / "items.parquet", source / "items.parquet")
    impressions.filter(pl.col("ts") < cut).sink_parquet(source / "impressions.parquet")
    day = work / "last_day.parquet"
    impressions.filter(pl.col("ts") >= cut).sink_parquet(day)
    cli = [sys.executable, "-m", "offline.cli"]
    subprocess.run([*cli, "data", "prepare", "--dataset", "canonical", "--source", str(source), "--out", str(data)],
                   check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    shutil.copy2(world / "split.json", data / "split.json")  # the world's cut-offs: the check compares splits too
    run_child(BUILD, data)
    return day


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--world", type=Path, default=ROOT / "data/bench/synthetic-10m")
    parser.add_argument("--data", type=Path, default=ROOT / "data/bench/append")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/append.json")
    args = parser.parse_args()
    n_rows = _bench_features().ensure_data(args.world, args.rows)
    shutil.rmtree(args.data, ignore_errors=True)
    work = args.data.with_name(args.data.name + "-work")
    shutil.rmtree(work, ignore_errors=True)
    t = time.perf_counter()
    day = prepare_base(args.world, args.data, work)
    setup_s = time.perf_counter() - t
    saved = work / "incremental"
    saved.mkdir()
    results = {}
    results["append one day"] = run_child(APPEND, args.data, day, saved)
    state = json.loads((args.data / "tables.json").read_text())
    part = args.data / state["tables"]["features"][-1]
    shutil.copy2(part, work / "part_features.parquet")
    results["full rebuild (30 days)"] = run_child(BUILD, args.data)
    check = run_child(CHECK, args.data, saved, work / "part_features.parquet")
    append_s, rebuild_s = results["append one day"][0], results["full rebuild (30 days)"][0]
    summary = {
        "world_rows": n_rows,
        "day_rows": results["append one day"][1],
        "ratio_append_to_rebuild": append_s / rebuild_s,
        "incremental_equals_rebuild": True,
        "checked_rows": check[1],
        "goal": "append <= 0.1x full rebuild, peak memory < 4 GiB",
        "setup_seconds": setup_s,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "steps": {k: {"seconds": s, "rows": r, "peak_rss_gib": m} for k, (s, r, m) in results.items()},
    }
    print(f"\nappend one day to a {n_rows:,}-row synthetic world (fresh process per step)\n")
    print(f"{'step':<26}{'seconds':>9}{'rows':>13}{'peak RSS GiB':>14}")
    for name, (seconds, rows, peak) in results.items():
        print(f"{name:<26}{seconds:>9.2f}{rows:>13,}{peak:>14.2f}")
    print(f"\nratio append / full rebuild: {summary['ratio_append_to_rebuild']:.3f}x  (goal <= 0.1x)")
    print(f"incremental == rebuild: snapshot tables and the day's {check[1]:,} feature rows, exactly")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
