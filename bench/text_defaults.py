"""Which text-model defaults hold up? Variants of the text model against each other, over data sets and seeds,
each run through the pipeline's own stages (``train_textmodel``, then ``train_ranker``), chosen on validation.

    python bench/text_defaults.py --data data/cold20 data/sci --seeds 0,1,2 \\
        --variants "current" "residual:textmodel.train.offset_feature=item_ctr_smoothed" [--set k=v ...] [--ranker]

Every variant is ``NAME`` or ``NAME:key=value,key=value`` (full config keys), applied over ``--config`` (the demo
profile) and ``--set``. Per run it records the interest score's impression-mean AUC on the text model's selection
impressions, on validation and on test, and with ``--ranker`` the combined and features-only rankers' metrics on
validation (what may choose) and on test (what is reported), with the paired 95% interval of the combined
ranker's test gain. It prints the mean over seeds per data set and variant, and writes every run to
``bench/results/text_defaults.json`` (a rerun of the same data, variant and seed replaces its row).

Each run works in a scratch copy of the data folder (``<data>-bench``) so the folder itself is left as it was.
The frozen lower-layer cache is computed once per data set, prompt and layer split, and reused across seeds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import load_config  # noqa: E402
from offline.ranker_stage import FEATURES_ONLY, train_ranker  # noqa: E402
from offline.textmodel_stage import train_textmodel  # noqa: E402
from ranker.compare import paired_bootstrap  # noqa: E402
from ranker.frame import split_rows  # noqa: E402
from ranker.lambdarank import predict  # noqa: E402
from ranker.metrics import per_impression_metrics, score_metrics  # noqa: E402
from textmodel.encoder import ItemEncoder  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SCRATCH_SKIP = {"textmodel", "ranker", "report", "mlflow", "interest.parquet", "ray_train"}


def parse_variant(spec: str) -> tuple[str, list[str]]:
    name, _, rest = spec.partition(":")
    return name, [kv for kv in rest.split(",") if kv]


def memoise_cache() -> dict:
    """Reuse the frozen lower layers' states across runs with the same tokens and layer split."""
    memo: dict = {}
    build = ItemEncoder.build_cache

    def cached(self: ItemEncoder, progress: bool = True) -> None:
        ids = self.tokens.ids.numpy()
        backbone = self.tower.backbone
        key = (hashlib.sha256(ids.tobytes()).hexdigest(), ids.shape, type(backbone).__name__, backbone.top_layers)
        if key not in memo:
            memo.clear()  # one cache at a time in memory
            build(self, progress)
            memo[key] = self.cache
        self.cache = memo[key]

    ItemEncoder.build_cache = cached
    return memo


def scratch_copy(data: Path) -> Path:
    out = data.with_name(data.name + "-bench")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(data, out, ignore=lambda _d, names: [n for n in names if n in SCRATCH_SKIP])
    return out


def metrics_of(frame: pl.DataFrame, scores) -> dict[str, float]:
    m = score_metrics(frame, pl.Series(np.asarray(scores, dtype=np.float64)))
    return {"auc": m["auc"], "ndcg_at_10": m["ndcg_at_10"]}


def paired_gain(frame: pl.DataFrame, a, b, samples: int = 1000) -> dict[str, list[float]]:
    per = {
        "a": per_impression_metrics(frame, pl.Series(np.asarray(a, dtype=np.float64))),
        "b": per_impression_metrics(frame, pl.Series(np.asarray(b, dtype=np.float64))),
    }
    out = {}
    for metric in ("auc", "ndcg_at_10"):
        iv = paired_bootstrap(per, metric, samples, 0, baseline="b")[1]["a"]
        out[metric] = [iv.mean, iv.low, iv.high]
    return out


def ranker_summary(cfg) -> dict[str, object]:
    """Both rankers on validation and test (point-in-time rows, the interest scores the text stage wrote)."""
    run = train_ranker(cfg)
    out: dict[str, object] = {"shipped": run.shipped_system, "guard": run.guard.to_json() if run.guard else None}
    for split in ("val", "test"):
        part = split_rows(run.frame, split)
        combined = predict(run.fit.booster, part, run.inputs, num_threads=0)
        plain = predict(run.features_only.booster, part, run.features_only_inputs, num_threads=0)
        out[split] = {
            "combined": metrics_of(part, combined),
            "features_only": metrics_of(part, plain),
            "gain": paired_gain(part, combined, plain),
        }
        if split == "test":
            shipped = plain if run.shipped_system == FEATURES_ONLY else combined
            out["test"]["shipped"] = metrics_of(part, shipped)
            out["test"]["shipped_gain"] = paired_gain(part, shipped, plain)
            if "interest_frozen" in part.columns:
                out["test"]["interest_gain_vs_frozen"] = paired_gain(
                    part, part["interest_score"], part["interest_frozen"]
                )
    return out


def run_one(data: Path, variant: list[str], seed: int, args) -> dict[str, object]:
    scratch = scratch_copy(data)
    overrides = [f"data.dir={scratch}", *args.set, *variant, f"textmodel.train.seed={seed}", f"ranker.seed={seed}"]
    cfg = load_config(args.config, overrides)
    started = time.perf_counter()
    summary = train_textmodel(cfg, progress=args.progress)
    probe = [e for e in summary["train"]["epochs"] if e["phase"] in ("probe", "init")]
    row: dict[str, object] = {
        "interest_auc": summary["impression_auc"],
        "export": summary["export"],
        "probe_curve": [round(e["val_metric"], 4) for e in probe],
        "best_epoch": summary["train"]["best_epoch"],
        "best_phase": summary["train"]["best_phase"],
        "text_seconds": time.perf_counter() - started,
    }
    if args.ranker:
        t0 = time.perf_counter()
        row["ranker"] = ranker_summary(cfg)
        row["ranker_seconds"] = time.perf_counter() - t0
    return row


def _mean(rows: list[dict], path: tuple[str, ...]) -> float:
    values = []
    for r in rows:
        v = r
        for k in path:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, list):
            v = v[0]
        if v is not None:
            values.append(float(v))
    return float(np.mean(values)) if values else float("nan")


def print_table(runs: dict[str, dict], keys: list[str]) -> None:
    groups: dict[tuple[str, str], list[dict]] = {}
    for key in keys:
        data, variant, _ = key.split("|")
        groups.setdefault((data, variant), []).append(runs[key])
    cols = [
        ("sel AUC", ("interest_auc", "selection")),
        ("val AUC", ("interest_auc", "val")),
        ("test AUC", ("interest_auc", "test")),
        ("rk val dNDCG", ("ranker", "val", "gain", "ndcg_at_10")),
        ("rk test dAUC", ("ranker", "test", "gain", "auc")),
        ("rk test dNDCG", ("ranker", "test", "gain", "ndcg_at_10")),
        ("comb test NDCG", ("ranker", "test", "combined", "ndcg_at_10")),
    ]
    print("\n| data | variant | seeds | " + " | ".join(c for c, _ in cols) + " |")
    print("|---|---|---|" + "---|" * len(cols))
    for (data, variant), rows in groups.items():
        cells = [f"{_mean(rows, path):.4f}" for _, path in cols]
        print(f"| {data} | {variant} | {len(rows)} | " + " | ".join(cells) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", required=True)
    parser.add_argument("--config", default=str(ROOT / "conf" / "demo.yaml"))
    parser.add_argument("--variants", nargs="+", default=["current"])
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every run")
    parser.add_argument("--ranker", action="store_true", help="also fit both rankers and compare them")
    parser.add_argument("--tag", default="", help="suffix of the variant names in the results")
    parser.add_argument("--progress", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "text_defaults.json", help="results JSON (merged)")
    parser.add_argument("--skip-done", action="store_true", help="skip runs already in the results JSON")
    args = parser.parse_args()
    out_json = args.out
    out_json.parent.mkdir(parents=True, exist_ok=True)
    runs = json.loads(out_json.read_text()) if out_json.is_file() else {}
    memoise_cache()
    keys = []
    for data in map(Path, args.data):
        for spec in args.variants:
            name, overrides = parse_variant(spec)
            for seed in [int(s) for s in args.seeds.split(",")]:
                key = f"{data.name}|{name}{args.tag}|{seed}"
                if args.skip_done and key in runs:
                    keys.append(key)
                    continue
                print(f"== {key}: {' '.join(overrides)}", flush=True)
                row = run_one(data, overrides, seed, args)
                row.update(overrides=overrides, set=args.set, seed=seed)
                keys.append(key)
                runs = json.loads(out_json.read_text()) if out_json.is_file() else {}  # another run may have written
                runs[key] = row
                tmp = out_json.with_suffix(".tmp")
                tmp.write_text(json.dumps(runs, indent=2, default=str))
                tmp.replace(out_json)
                auc = row["interest_auc"]
                line = f"{key}: interest sel {auc['selection']:.4f} val {auc['val']:.4f} test {auc['test']:.4f}"
                if "ranker" in row:
                    g = row["ranker"]["test"]["gain"]
                    line += f"; ranker test gain AUC {g['auc'][0]:+.4f} nDCG {g['ndcg_at_10'][0]:+.4f}"
                print(line + f"; curve {row['probe_curve']}", flush=True)
    print_table(runs, keys)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
