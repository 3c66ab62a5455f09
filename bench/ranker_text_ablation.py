"""Ablation: ways of letting the interest score into the LambdaRank ranker, over several ranker seeds.

    python bench/ranker_text_ablation.py [--data data/ml100k] [--config conf/demo.yaml] [--seeds 4] [--wide]
                                         [--only NAME ...] [--base both|config|zero]

Needs a data folder after ``recrank pipeline`` (ranking frame with interest scores, saved rankers). Each
variant is fitted like the shipped ranker (on the train rows it may fit on, tuned and early-stopped on
validation) once per seed; test is read only to report. Prints mean validation and test metrics with the
test range over seeds, and writes ``bench/results/ranker_text_ablation.json``. Not a timed benchmark: it
answers "does a use of the text score beat the features-only ranker and item CTR, beyond seed noise"
(issue #4). The seed changes LightGBM's row and feature subsampling only. ``--base`` fits each variant
boosted from the configured ``ranker.base_score`` (logit of item CTR), from zero, or both.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/features.py or bench/textmodel.py
from conf import load_config  # noqa: E402
from offline.ranker_stage import load_ranker_run  # noqa: E402
from ranker.frame import RankerInputs, fit_rows, split_rows  # noqa: E402
from ranker.lambdarank import predict  # noqa: E402
from ranker.metrics import score_metrics  # noqa: E402
from ranker.training import fit_ranker  # noqa: E402

GROUP = "impression_id"
METRICS = ("auc", "ndcg_at_10")
EXTRAS = {
    "features only": [],
    "+ interest score and rank (shipped)": ["interest_score", "interest_rank"],
    "+ centred within impression and rank": ["interest_centred", "interest_rank"],
    "+ centred within impression": ["interest_centred"],
    "+ z-score within impression": ["interest_z"],
    "+ z-score and rank": ["interest_z", "interest_rank"],
    "+ rank only": ["interest_rank"],
}
WIDE_GRID = {"num_leaves": [3, 7, 15], "min_child_samples": [50, 200, 500], "colsample_bytree": [0.5, 0.8]}


def zscore(col: str) -> pl.Expr:
    mean, std = pl.col(col).mean().over(GROUP), pl.col(col).std().over(GROUP)
    z = ((pl.col(col) - mean) / (std + 1e-9)).fill_nan(0).fill_null(0)  # one-row impressions: 0
    return pl.when(pl.col(col).is_null()).then(None).otherwise(z)  # unscored rows stay unscored


def metrics(part: pl.DataFrame, scores) -> dict[str, float]:
    r = score_metrics(part, scores)
    return {m: r[m] for m in METRICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/ml100k")
    parser.add_argument("--config", default="conf/demo.yaml")
    parser.add_argument("--seeds", type=int, default=4, help="ranker seeds per variant (0..N-1)")
    parser.add_argument("--wide", action="store_true", help=f"tune over {WIDE_GRID} instead of ranker.tune")
    parser.add_argument("--only", nargs="*", default=None, help="variants whose name contains one of these")
    parser.add_argument("--base", choices=["both", "config", "zero"], default="both", help="boost from what")
    args = parser.parse_args()
    cfg = load_config(args.config, [f"data.dir={args.data}"])
    run = load_ranker_run(cfg)
    centred = pl.col("interest_score") - pl.col("interest_score").mean().over(GROUP)
    frame = run.frame.with_columns(zscore("interest_score").alias("interest_z"), centred.alias("interest_centred"))
    val, test = (split_rows(frame, s) for s in ("val", "test"))
    base = [f for f in run.features_only_inputs.features if f not in run.inputs.categorical]
    grid = WIDE_GRID if args.wide else cfg.ranker.tune
    ctr = {"val": metrics(val, val["item_ctr_smoothed"]), "test": metrics(test, test["item_ctr_smoothed"])}
    print(f"{'system':52s} {'val AUC / nDCG@10':>18s}   {'test AUC / nDCG@10 (mean)':>26s}   test range over seeds")
    print(f"{'item_ctr (smoothed)':52s} {ctr['val']['auc']:.4f} / {ctr['val']['ndcg_at_10']:.4f}   "
          f"{ctr['test']['auc']:16.4f} / {ctr['test']['ndcg_at_10']:.4f}")  # fmt: skip
    bases = {"config": [cfg.ranker.base_score], "zero": [None], "both": [None, cfg.ranker.base_score]}[args.base]
    rows = []
    for (variant, extra), base_score in itertools.product(EXTRAS.items(), dict.fromkeys(bases)):
        if args.only is not None and not any(word in variant for word in args.only):
            continue
        name = f"{variant}, from {base_score or 'zero'}"
        inputs = RankerInputs(
            (*base, *extra, *run.inputs.categorical), run.inputs.categorical, run.inputs.vocab, base_score
        )
        fit_on = fit_rows(frame, "train", inputs)  # with text: the train rows that have an honest score
        runs = []
        for seed in range(args.seeds):
            fit = fit_ranker(fit_on, val, inputs, cfg.ranker.model_copy(update={"tune": grid, "seed": seed}))
            runs.append(
                {
                    "seed": seed,
                    "params": {k: fit.params[k] for k in grid},
                    "best_iteration": fit.best_iteration,
                    "val": metrics(val, predict(fit.booster, val, inputs)),
                    "test": metrics(test, predict(fit.booster, test, inputs)),
                }
            )
        summary = {
            split: {m: float(np.mean([r[split][m] for r in runs])) for m in METRICS} for split in ("val", "test")
        }
        span = {m: (min(r["test"][m] for r in runs), max(r["test"][m] for r in runs)) for m in METRICS}
        beats = sum(all(r["test"][m] > ctr["test"][m] for m in METRICS) for r in runs)
        rows.append({"variant": name, "base_score": base_score, "rows": fit_on.height, "mean": summary,
                     "test_range": span, "runs": runs, "seeds_beating_item_ctr_on_both": beats})  # fmt: skip
        print(
            f"{name:52s} {summary['val']['auc']:.4f} / {summary['val']['ndcg_at_10']:.4f}   "
            f"{summary['test']['auc']:16.4f} / {summary['test']['ndcg_at_10']:.4f}   "
            f"AUC {span['auc'][0]:.4f}-{span['auc'][1]:.4f}, nDCG@10 {span['ndcg_at_10'][0]:.4f}-"
            f"{span['ndcg_at_10'][1]:.4f}; beats item_ctr on both in {beats}/{args.seeds}",
            flush=True,
        )
    out = ROOT / "bench" / "results" / "ranker_text_ablation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"seeds": args.seeds, "grid": grid, "variants": rows, "item_ctr": ctr}
    out.write_text(json.dumps(payload, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
