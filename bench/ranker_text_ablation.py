"""Ablation: ways of letting the interest score into the LambdaRank ranker, selected on validation.

    python bench/ranker_text_ablation.py [--data data/ml100k] [--config conf/demo.yaml]

Needs a data folder after ``recrank pipeline`` (ranking frame with interest scores, saved rankers). Each
variant is fitted on train and tuned/early-stopped on validation like the shipped ranker; test is read once.
Prints a table and writes ``bench/results/ranker_text_ablation.json``. Not a timed benchmark: it answers
"does any use of the text score beat the features-only ranker", the question behind issue #4.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the packages, not bench/features.py or bench/textmodel.py
from conf import load_config  # noqa: E402
from offline.ranker_stage import load_ranker_run  # noqa: E402
from ranker.frame import RankerInputs, split_rows  # noqa: E402
from ranker.lambdarank import fit_ranker, predict  # noqa: E402
from ranker.metrics import ranking_metrics  # noqa: E402

GROUP = "impression_id"
EXTRAS = {
    "features only": [],
    "+ interest score and rank (shipped)": ["interest_score", "interest_rank"],
    "+ z-score within impression": ["interest_z"],
    "+ z-score and rank": ["interest_z", "interest_rank"],
    "+ rank only": ["interest_rank"],
}
WIDE_GRID = {"num_leaves": [3, 7, 15], "min_child_samples": [50, 200, 500], "colsample_bytree": [0.5, 0.8]}


def zscore(col: str) -> pl.Expr:
    mean, std = pl.col(col).mean().over(GROUP), pl.col(col).std().over(GROUP)
    return ((pl.col(col) - mean) / (std + 1e-9)).fill_nan(0).fill_null(0)


def metrics(part: pl.DataFrame, scores) -> dict[str, float]:
    r = ranking_metrics(part.with_columns(pl.Series("s", scores)), score="s")
    return {"auc": r["auc"], "ndcg_at_10": r["ndcg_at_10"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/ml100k")
    parser.add_argument("--config", default="conf/demo.yaml")
    args = parser.parse_args()
    cfg = load_config(args.config, [f"data.dir={args.data}"])
    run = load_ranker_run(cfg)
    frame = run.frame.with_columns(zscore("interest_score").alias("interest_z"))
    train, val, test = (split_rows(frame, s) for s in ("train", "val", "test"))
    base = [f for f in run.features_only_inputs.features if f not in run.inputs.categorical]
    rows = []
    for name, extra in EXTRAS.items():
        for grid_name, grid in (("default grid", cfg.ranker.tune), ("wide grid", WIDE_GRID)):
            inputs = RankerInputs((*base, *extra, *run.inputs.categorical), run.inputs.categorical, run.inputs.vocab)
            fit = fit_ranker(train, val, inputs, cfg.ranker.model_copy(update={"tune": grid}))
            row = {"variant": name, "grid": grid_name, "params": {k: fit.params[k] for k in grid}}
            row["val"] = metrics(val, predict(fit.booster, val, inputs))
            row["test"] = metrics(test, predict(fit.booster, test, inputs))
            rows.append(row)
            print(
                f"{name:38s} {grid_name:12s} val {row['val']['auc']:.4f} / {row['val']['ndcg_at_10']:.4f}   "
                f"test {row['test']['auc']:.4f} / {row['test']['ndcg_at_10']:.4f}",
                flush=True,
            )
    ctr = {"val": metrics(val, val["item_ctr_smoothed"]), "test": metrics(test, test["item_ctr_smoothed"])}
    print(f"{'item_ctr (smoothed)':51s} val {ctr['val']['auc']:.4f} / {ctr['val']['ndcg_at_10']:.4f}   "
          f"test {ctr['test']['auc']:.4f} / {ctr['test']['ndcg_at_10']:.4f}")  # fmt: skip
    out = ROOT / "bench" / "results" / "ranker_text_ablation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"variants": rows, "item_ctr": ctr}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
