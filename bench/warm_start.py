"""Benchmark (#15): warm-started text-model fine-tuning against training from scratch, and forgetting.

    recrank data prepare --dataset ml100k --out data/ml100k-warm
    recrank features build --config conf/demo.yaml data.dir=data/ml100k-warm
    OMP_NUM_THREADS=1 python bench/warm_start.py [--data data/ml100k-warm] [--quick] [--set KEY=VALUE ...]

Goal: "Warm-started fine-tuning, validated on data after the days it trains on, reaches the from-scratch
model's metric there in <= 1/3 of the steps; after warm-started retraining the metric on the old validation
range drops by no more than its bootstrap interval."

With the folder's cut-offs V (val_start), S (test_start) and L = S - V, let P = V - L; the old validation
range is [P - L, P). Three trainings of the demo profile, same seed, in-sample train scores (oof_folds=0, so
train-range rows are scored by the model itself):

1. ``parent``: cut-offs (P - L, P): from scratch on < P - L, validated on [P - L, P); registered;
2. ``from_scratch``: cut-offs (V, S): from scratch on < V, validated on [V, S);
3. ``warm``: cut-offs (V, S), warm-started from the parent, trained on [P - L, V) only (``since = P - L``).

Steps are cumulative optimiser steps (textmodel.json ``train.epochs``; probe steps included). Reported: the
validation curves; the from-scratch best M and its step; warm's first step with val >= M; their ratio (goal
<= 1/3); impression AUC on [P - L, P) of parent, warm and from_scratch with the paired bootstrap (1000
resamples) of each minus the parent (goal: warm - parent's interval reaches 0 or above). Note the warm child
trains on [P - L, P) itself (the parent's validation range), as the protocol of the issue has it.
The folder's split.json is restored at the end. Writes bench/results/warm_start.{json,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/ itself: bench/features.py would shadow the package

from conf import load_config  # noqa: E402
from features import read_features  # noqa: E402
from features.split import TimeSplit, read_split, write_split  # noqa: E402
from offline.registry import register_textmodel  # noqa: E402
from offline.textmodel_stage import INTEREST_FILE, model_dir, train_textmodel  # noqa: E402
from offline.tracking import setup  # noqa: E402
from ranker.compare import paired_bootstrap  # noqa: E402
from ranker.metrics import per_group_metrics  # noqa: E402

RESULTS = ROOT / "bench" / "results"
QUICK = [
    "textmodel.train.epochs=1",
    "textmodel.train.max_steps_per_epoch=5",
    "textmodel.train.probe_epochs=1",
]
SAMPLES = 1000


def train(name: str, data: Path, split: TimeSplit, overrides: list[str], keep: Path) -> dict:
    """One ``train_textmodel`` under ``split``; textmodel.json and interest.parquet copied to ``keep/name``."""
    write_split(data, split)
    cfg = load_config(ROOT / "conf" / "demo.yaml", [f"data.dir={data}", "textmodel.train.oof_folds=0", *overrides])
    t0 = time.perf_counter()
    print(f"== {name}: train < {split.val_start}, validate [{split.val_start}, {split.test_start})", flush=True)
    train_textmodel(cfg, progress=True)
    seconds = time.perf_counter() - t0
    out = keep / name
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(model_dir(cfg) / "textmodel.json", out / "textmodel.json")
    shutil.copy2(data / INTEREST_FILE, out / INTEREST_FILE)
    meta = json.loads((out / "textmodel.json").read_text())
    print(f"== {name}: {seconds:.0f} s, best val {meta['train']['best_val_metric']:.4f}", flush=True)
    return {"cfg": cfg, "meta": meta, "seconds": seconds}


def curve(meta: dict) -> list[dict]:
    """(step, phase, val_metric) per validation, plus adapter steps (after the probe) and training seconds so far."""
    points, seconds = [], 0.0
    probe_steps = max(int(e["step"]) for e in meta["train"]["epochs"] if e["phase"] in ("init", "probe"))
    for e in meta["train"]["epochs"]:
        seconds += float(e["seconds"])
        step = int(e["step"])
        adapter = max(step - probe_steps, 0)
        points.append(
            {
                "step": step,
                "adapter_step": adapter,
                "seconds": seconds,
                "phase": e["phase"],
                "val_metric": e["val_metric"],
            }
        )
    return points


def first_at(points: list[dict], target: float) -> dict | None:
    return next((pt for pt in points if pt["val_metric"] >= target), None)


def old_range_auc(keep: Path, names: list[str], rows: pl.DataFrame) -> dict:
    """Paired impression AUC on ``rows`` (impression_id, item_id, clicked) for each run, minus the parent's."""
    per_group = {}
    for name in names:
        scores = pl.read_parquet(keep / name / INTEREST_FILE)
        frame = rows.join(scores, on=["impression_id", "item_id"], how="left").sort("impression_id", "item_id")
        if frame["interest_score"].null_count():
            raise SystemExit(f"{name}: {frame['interest_score'].null_count()} old-range rows without a score")
        per_group[name] = per_group_metrics(frame, score="interest_score").sort("impression_id")
    systems, gains = paired_bootstrap(per_group, "auc", SAMPLES, seed=0, baseline="parent")
    return {
        "impressions": per_group["parent"].height,
        "impressions_with_auc": int(per_group["parent"]["auc"].drop_nulls().len()),
        "auc": {k: v.to_json() for k, v in systems.items()},
        "minus_parent": {k: v.to_json() for k, v in gains.items()},
    }


def plot(curves: dict[str, list[dict]], best: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    labels = ("all optimiser steps", "adapter steps (after probe)")
    for ax, key, label in zip(axes, ("step", "adapter_step"), labels, strict=True):
        for name, points in curves.items():
            ax.plot([p[key] for p in points], [p["val_metric"] for p in points], marker="o", label=name)
        ax.axhline(best, color="grey", linestyle="--", label=f"from-scratch best M = {best:.4f}")
        ax.set_xlabel(label)
    axes[0].set_ylabel("validation impression AUC on [V, S)")
    axes[0].legend()
    fig.suptitle("warm start vs from scratch (ml100k, demo profile)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="data/ml100k-warm")
    ap.add_argument("--quick", action="store_true", help="a few steps per training: checks the script end to end")
    ap.add_argument("--set", nargs="*", default=[], help="extra config overrides for every training")
    ap.add_argument("--out", default=str(RESULTS / "warm_start.json"))
    args = ap.parse_args()
    data = Path(args.data)
    overrides = [*(QUICK if args.quick else []), *args.set]
    original = read_split(data)
    v, s = original.val_start, original.test_start
    length = s - v
    p = v - length
    old_lo = p - length
    keep = data / "warm_start_bench"
    shutil.rmtree(keep, ignore_errors=True)
    runs: dict[str, dict] = {}
    try:
        runs["parent"] = train("parent", data, TimeSplit(old_lo, p), overrides, keep)
        setup(runs["parent"]["cfg"])
        version = register_textmodel(runs["parent"]["cfg"], model_dir(runs["parent"]["cfg"]))
        print(f"== parent registered: textmodel version {version}", flush=True)
        runs["from_scratch"] = train("from_scratch", data, original, overrides, keep)
        warm = [f"textmodel.train.warm_start={version}", f"textmodel.train.since={old_lo.isoformat()}"]
        runs["warm"] = train("warm", data, original, [*overrides, *warm], keep)
    finally:
        write_split(data, original)

    curves = {name: curve(runs[name]["meta"]) for name in ("from_scratch", "warm")}
    best = float(runs["from_scratch"]["meta"]["train"]["best_val_metric"])  # the exported model's metric
    scratch, hit = first_at(curves["from_scratch"], best), first_at(curves["warm"], best)
    warm_best = max(pt["val_metric"] for pt in curves["warm"])
    ratios = {  # warm / from-scratch to reach M: all optimiser steps (the goal), adapter steps, training seconds
        k: None if hit is None else hit[k] / max(scratch[k], 1e-9) for k in ("step", "adapter_step", "seconds")
    }
    ratio = ratios["step"]

    features = read_features(data).select("impression_id", "item_id", "ts", "clicked").collect()
    rows = features.filter((pl.col("ts") >= old_lo) & (pl.col("ts") < p)).drop("ts")
    forgetting = old_range_auc(keep, ["parent", "warm", "from_scratch"], rows)
    drop = forgetting["minus_parent"]["warm"]

    result = {
        "data": str(data),
        "quick": args.quick,
        "overrides": overrides,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cutoffs": {"V": v.isoformat(), "S": s.isoformat(), "P": p.isoformat(), "old_val_start": old_lo.isoformat()},
        "parent_version": version,
        "curves": curves,
        "from_scratch": {"best_val_metric": best, "first_reaches_M": scratch},
        "warm": {"first_reaches_M": hit, "best_val_metric": warm_best},
        "ratios": ratios,
        "steps_goal_met": ratio is not None and ratio <= 1 / 3,
        "old_range": forgetting,
        "forgetting_goal_met": drop["high"] >= 0,
        "seconds": {name: r["seconds"] for name, r in runs.items()},
        "train_windows": {name: r["meta"].get("train_window") for name, r in runs.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(curves, best, out.with_suffix(".png"))

    print(f"\ncut-offs: old val [{old_lo:%Y-%m-%d %H:%M}, {p:%Y-%m-%d %H:%M}), val [{v:%Y-%m-%d}, {s:%Y-%m-%d})")
    for name, points in curves.items():
        print(f"{name:>12} curve: " + "  ".join(f"{pt['step']}:{pt['val_metric']:.4f}" for pt in points))

    def at(pt: dict | None) -> str:
        return "never" if pt is None else f"step {pt['step']} (adapter {pt['adapter_step']}, {pt['seconds']:.0f} s)"

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.3f}"

    print("\n| | figure | goal |\n|---|---|---|")
    print(f"| from-scratch best val AUC M | {best:.4f} | |")
    print(f"| from-scratch first reaches M | {at(scratch)} | |")
    print(f"| warm first reaches M | {at(hit)}; warm best {warm_best:.4f} | |")
    verdict = "met" if result["steps_goal_met"] else "NOT met"
    print(f"| warm / from-scratch, all optimiser steps | {fmt(ratio)} | <= 0.333: {verdict} |")
    print(
        f"| warm / from-scratch, adapter steps / seconds | {fmt(ratios['adapter_step'])} / {fmt(ratios['seconds'])} | |"
    )
    n = f"{forgetting['impressions_with_auc']} impressions"
    for name in ("parent", "warm", "from_scratch"):
        print(f"| old val range AUC, {name} ({n}) | {forgetting['auc'][name]['mean']:.4f} | |")
    for name in ("warm", "from_scratch"):
        g = forgetting["minus_parent"][name]
        goal = f"interval reaches 0: {'met' if g['high'] >= 0 else 'NOT met'}" if name == "warm" else ""
        interval = f"{g['mean']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}]"
        print(f"| {name} - parent, 95% paired interval | {interval} | {goal} |")
    print(f"\nwrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
