"""Two pipeline runs on the same data, compared impression by impression: whose ranker (and interest score) is
better on the test split, with the paired 95% bootstrap interval.

    python bench/compare_runs.py --a data/scr_cold20-s1 --b data/side_cold20-s1 [--a ... --b ...]

Each run's ranker scores the test rows through its own scoring bundle (point-in-time features, its own text
model: what its report shows); both runs must share the data and the split (checked: the same test impressions).
Use it for "the combined ranker built on the fine-tuned text model against the one built on the frozen head":
run A exported the adapted model, run B (same seed, data and ranker config) the probe. Prints a table and
writes ``bench/results/compare_runs.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import polars as pl  # noqa: E402

from conf import load_config  # noqa: E402
from offline.ranker_stage import load_ranker_run, local_pipeline, point_in_time, scoring_rows  # noqa: E402
from ranker.compare import paired_bootstrap  # noqa: E402
from ranker.frame import split_rows  # noqa: E402
from ranker.metrics import per_impression_metrics  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def per_impression(folder: Path, config: str) -> dict[str, pl.DataFrame]:
    cfg = load_config(config, [f"data.dir={folder}"])
    run = load_ranker_run(cfg)
    part = split_rows(run.frame, "test").sort("impression_id", "item_id")
    pipeline = local_pipeline(run, cfg)
    scores = pipeline.score_rows(scoring_rows(part), point_in_time(cfg, part, run.spec), num_threads=0)
    out = {"ranker": per_impression_metrics(part, scores)}
    if "interest_score" in part.columns:
        out["interest_score"] = per_impression_metrics(part, part["interest_score"])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=Path, action="append", required=True)
    parser.add_argument("--b", type=Path, action="append", required=True)
    parser.add_argument("--config", default=str(ROOT / "conf" / "demo.yaml"))
    parser.add_argument("--metrics", default="auc,ndcg_at_10")
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--out", type=Path, default=RESULTS / "compare_runs.json")
    args = parser.parse_args()
    rows = []
    for a, b in zip(args.a, args.b, strict=True):
        pa, pb = per_impression(a, args.config), per_impression(b, args.config)
        for system in ("ranker", "interest_score"):
            if system not in pa or system not in pb:
                continue
            ids_a, ids_b = pa[system]["impression_id"], pb[system]["impression_id"]
            if not ids_a.equals(ids_b):
                raise SystemExit(f"{a} and {b}: not the same test impressions")
            for metric in args.metrics.split(","):
                systems, gains = paired_bootstrap({"a": pa[system], "b": pb[system]}, metric, args.samples, 0, "b")
                g = gains["a"]
                rows.append(
                    {
                        "a": str(a),
                        "b": str(b),
                        "system": system,
                        "metric": metric,
                        "a_value": systems["a"].mean,
                        "b_value": systems["b"].mean,
                        "gain": g.to_json(),
                        "impressions": ids_a.len(),
                    }
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print("| A | B | system | metric | A | B | A - B (95%) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        g = r["gain"]
        print(
            f"| {Path(r['a']).name} | {Path(r['b']).name} | {r['system']} | {r['metric']} | {r['a_value']:.4f} | "
            f"{r['b_value']:.4f} | {g['mean']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}] |"
        )


if __name__ == "__main__":
    main()
