"""Benchmark: point-in-time feature build on 10M synthetic impression rows against a plain read + sort.

    python bench/features.py [--rows 10000000] [--repeats 3] [--data data/bench/synthetic-10m]

Prints a short table and writes ``bench/results/features.json``. Each measured step runs in a fresh
child process, so its peak memory (max RSS) is its own. The floor is one plain read of
``impressions.parquet`` plus one sort of the same rows by (user_id, ts) — the least any per-user,
time-ordered feature computation has to do; a read + sort by ts alone is reported too.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FLOOR = """
import resource, sys, time, polars as pl
t = time.perf_counter()
frame = pl.read_parquet(sys.argv[1] + "/impressions.parquet").sort({keys})
print(time.perf_counter() - t, frame.height, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
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


def run_child(code: str, data: Path) -> tuple[float, int, float]:
    """Run ``code`` in a fresh interpreter; return (seconds, rows, the child's own peak RSS in GiB)."""
    out = subprocess.run([sys.executable, "-c", code, str(data)], check=True, capture_output=True, text=True, cwd=ROOT)
    seconds, rows, peak_kib = out.stdout.split()[-3:]
    return float(seconds), int(rows), int(peak_kib) / 2**20


def ensure_data(data: Path, rows: int) -> int:
    """Generate the synthetic dataset once (mean slate ~9.4 rows after de-duplication)."""
    manifest = data / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text())["impression_rows"] >= rows:
        return json.loads(manifest.read_text())["impression_rows"]
    impressions = int(rows / 9.39) + 1
    subprocess.run(
        [
            sys.executable,
            "-m",
            "offline.cli",
            "data",
            "prepare",
            "--dataset",
            "synthetic",
            "--out",
            str(data),
            "--impressions",
            str(impressions),
        ],
        check=True,
        cwd=ROOT,
    )
    return json.loads(manifest.read_text())["impression_rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=ROOT / "data/bench/synthetic-10m")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/features.json")
    args = parser.parse_args()
    n_rows = ensure_data(args.data, args.rows)

    results: dict[str, dict[str, float]] = {}
    steps = {
        "floor: read + sort(user_id, ts)": FLOOR.format(keys='"user_id", "ts"'),
        "read + sort(ts)": FLOOR.format(keys='"ts"'),
        "features build": BUILD,
    }
    for name, code in steps.items():
        times, peaks = [], []
        for _ in range(args.repeats):
            seconds, rows, peak = run_child(code, args.data)
            assert rows == n_rows, (name, rows, n_rows)
            times.append(seconds)
            peaks.append(peak)
        best = min(times)
        results[name] = {
            "seconds_best": best,
            "seconds_all": times,
            "rows_per_s": n_rows / best,
            "peak_rss_gib": max(peaks),
        }

    floor = results["floor: read + sort(user_id, ts)"]["seconds_best"]
    build = results["features build"]["seconds_best"]
    summary = {
        "rows": n_rows,
        "ratio_build_to_floor": build / floor,
        "ratio_build_to_read_sort_ts": build / results["read + sort(ts)"]["seconds_best"],
        "goal": "ratio <= 4, peak memory < 8 GiB",
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "steps": results,
    }
    print(f"\nfeature build on {n_rows:,} rows (best of {args.repeats}; fresh process each run)\n")
    print(f"{'step':<34}{'seconds':>9}{'rows/s':>14}{'peak RSS GiB':>14}")
    for name, res in results.items():
        print(f"{name:<34}{res['seconds_best']:>9.2f}{res['rows_per_s']:>14,.0f}{res['peak_rss_gib']:>14.2f}")
    print(f"\nratio build / floor (read + sort by user_id, ts): {summary['ratio_build_to_floor']:.2f}x  (goal <= 4x)")
    print(f"ratio build / read + sort by ts:                 {summary['ratio_build_to_read_sort_ts']:.2f}x")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
