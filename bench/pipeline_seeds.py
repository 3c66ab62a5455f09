"""The whole pipeline over seeds: what ships, and how it does on test, as a mean over seeds.

    python bench/pipeline_seeds.py --dataset canonical --source ../shared/data/amazon_scientific_cold20 \\
        --out data/goal_cold20 --seeds 0,1,2 [--config conf/demo.yaml] [--jobs 2] [--set k=v ...]
    python bench/pipeline_seeds.py --dataset ml100k --out data/goal_ml100k --seeds 0,1,2

Each seed runs ``recrank pipeline`` (prepare -> features -> text model -> ranker -> evaluate -> register ->
promote) in its own data folder ``<out>-s<seed>`` and process, with ``textmodel.train.seed`` and ``ranker.seed``
set to the seed, and its wall time taken. Then, from each run's report (``report/metrics.json``) and artifacts:
the interest score's AUC on the ranker's validation and test rows and their gap, which text model was
exported, which ranker shipped, and on test the combined ranker, the features-only ranker and the shipped one
with the paired 95% interval of each one's gain over features-only. Prints one row per seed and the mean, and
writes ``<out>.json``. ``--aggregate`` only reads finished runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
COMBINED, FEATURES_ONLY = "ranker", "lightgbm_features_only"


def run_seed(args, seed: int) -> float:
    """One pipeline in its own process; returns its wall seconds (the log goes to ``<folder>.log``)."""
    folder = Path(f"{args.out}-s{seed}")
    cmd = [
        sys.executable,
        "-m",
        "offline.cli",
        "pipeline",
        "--config",
        args.config,
        f"data.dataset={args.dataset}",
        f"data.dir={folder}",
        f"textmodel.train.seed={seed}",
        f"ranker.seed={seed}",
        *([f"data.source={args.source}"] if args.source else []),
        *args.set,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    started = time.perf_counter()
    with open(f"{folder}.log", "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    seconds = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"seed {seed}: recrank pipeline exited {code} (log: {folder}.log)")
    (folder / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def summarise(folder: Path) -> dict[str, object]:
    """The figures of one finished run."""
    metrics = json.loads((folder / "report" / "metrics.json").read_text())
    systems, intervals = metrics["systems"], metrics["intervals"]
    selection = metrics.get("selection") or {}
    shipped = selection.get("shipped_ranker", COMBINED)
    text = selection.get("text_model") or {}
    by_split = (text.get("interest_auc_by_split") or {}).get("interest_score", {})
    out: dict[str, object] = {
        "shipped": shipped,
        "exported_text": (text.get("export") or {}).get("exported"),
        "interest": {s: by_split.get(s) for s in ("train", "selection", "val", "test")},
        "interest_val_minus_test": (by_split.get("val", np.nan) - by_split.get("test", np.nan)),
    }
    for metric in ("auc", "ndcg_at_10"):
        gains = intervals[metric].get(f"gain_vs_{FEATURES_ONLY}", {})
        combined = gains.get(COMBINED)
        out[metric] = {
            "combined": systems[COMBINED]["metrics"][metric],
            "features_only": systems.get(FEATURES_ONLY, systems[COMBINED])["metrics"][metric],
            "interest": systems.get("interest_score", {}).get("metrics", {}).get(metric),
            "interest_frozen": systems.get("interest_frozen", {}).get("metrics", {}).get(metric),
            "combined_gain": combined,
            # the shipped ranker is one of the two: its gain is the combined one's, or exactly zero
            "shipped_gain": combined if shipped == COMBINED else {"mean": 0.0, "low": 0.0, "high": 0.0},
        }
    wall = folder / "wall_seconds.txt"
    out["wall_seconds"] = float(wall.read_text()) if wall.is_file() else None
    return out


def _fmt(iv: dict | None) -> str:
    return "—" if not iv else f"{iv['mean']:+.4f} [{iv['low']:+.3f}, {iv['high']:+.3f}]"


def print_table(rows: dict[int, dict]) -> None:
    head = [
        "seed",
        "text exported",
        "shipped",
        "interest val / test (gap)",
        "combined AUC / nDCG@10",
        "features-only AUC / nDCG@10",
        "combined - features-only AUC",
        "combined - features-only nDCG@10",
        "shipped - features-only nDCG@10",
        "wall min",
    ]
    print("| " + " | ".join(head) + " |\n|" + "---|" * len(head))
    for seed, r in rows.items():
        i, a, n = r["interest"], r["auc"], r["ndcg_at_10"]
        wall = f"{r['wall_seconds'] / 60:.1f}" if r["wall_seconds"] else "—"
        print(
            f"| {seed} | {r['exported_text']} | {r['shipped']} | {i['val']:.4f} / {i['test']:.4f} "
            f"({r['interest_val_minus_test']:+.4f}) | {a['combined']:.4f} / {n['combined']:.4f} | "
            f"{a['features_only']:.4f} / {n['features_only']:.4f} | {_fmt(a['combined_gain'])} | "
            f"{_fmt(n['combined_gain'])} | {_fmt(n['shipped_gain'])} | {wall} |"
        )
    mean = {
        "gap": np.mean([r["interest_val_minus_test"] for r in rows.values()]),
        "val": np.mean([r["interest"]["val"] for r in rows.values()]),
        "test": np.mean([r["interest"]["test"] for r in rows.values()]),
    }
    for metric in ("auc", "ndcg_at_10"):
        for key in ("combined", "features_only"):
            mean[f"{metric}_{key}"] = np.mean([r[metric][key] for r in rows.values()])
        for key in ("combined_gain", "shipped_gain"):
            mean[f"{metric}_{key}"] = np.mean([r[metric][key]["mean"] for r in rows.values()])
    print(
        f"| mean | | | {mean['val']:.4f} / {mean['test']:.4f} ({mean['gap']:+.4f}) | "
        f"{mean['auc_combined']:.4f} / {mean['ndcg_at_10_combined']:.4f} | "
        f"{mean['auc_features_only']:.4f} / {mean['ndcg_at_10_features_only']:.4f} | "
        f"{mean['auc_combined_gain']:+.4f} | {mean['ndcg_at_10_combined_gain']:+.4f} | "
        f"{mean['ndcg_at_10_shipped_gain']:+.4f} | |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", required=True, choices=["ml100k", "canonical", "mind", "synthetic"])
    parser.add_argument("--source", help="input folder (canonical, mind)")
    parser.add_argument("--out", required=True, help="prefix of the data folders: <out>-s<seed>")
    parser.add_argument("--config", default=str(ROOT / "conf" / "demo.yaml"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--jobs", type=int, default=1, help="pipelines at once (each on one torch thread)")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every run")
    parser.add_argument("--aggregate", action="store_true", help="only read the finished runs")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.aggregate:
        with ThreadPoolExecutor(args.jobs) as pool:
            for seed, seconds in zip(seeds, pool.map(lambda s: run_seed(args, s), seeds), strict=True):
                print(f"seed {seed}: {seconds / 60:.1f} min", flush=True)
    rows = {seed: summarise(Path(f"{args.out}-s{seed}")) for seed in seeds}
    Path(f"{args.out}.json").write_text(json.dumps({"args": vars(args), "runs": rows}, indent=2, default=str))
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
