"""Does the promotion gate promote noise? The old rule (point gain >= margin) and the gate's rule, side by side.

    python bench/promotion_gate.py --data data/ml100k --challengers 10 [--small-fraction 0.01]
    python bench/promotion_gate.py --data data/cold20 --better

same-config (default): a features-only champion (``ranker.seed`` 0) and N challengers that differ from it only
    by ``ranker.seed`` (1..N), each registered in a scratch registry; every challenger is compared with the
    champion by the gate's own code (:func:`offline.gate.compare_versions`) on the full test split and on the
    last ``--small-fraction`` of the time range (the size of a replay day), and judged by both rules. A gate
    that tells signal from noise promotes at most one of them.
better (``--better``): the combined ranker (features + interest score) against a features-only champion of the
    same run: really better, it must still be promoted.

Works in a scratch copy of the data folder (``<data>-gate``: its tables, features and text model; a registry
of its own). Prints a table and writes ``bench/results/promotion_gate.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import load_config  # noqa: E402
from features.split import TimeSplit, read_split, write_split  # noqa: E402
from offline import registry  # noqa: E402
from offline.gate import INSUFFICIENT, PROMOTED, REFUSED, compare_versions, gate_rule  # noqa: E402
from offline.ranker_stage import RankerRun, train_ranker  # noqa: E402
from offline.textmodel_stage import model_dir  # noqa: E402
from offline.tracking import setup  # noqa: E402

RESULTS = ROOT / "bench" / "results"
SKIPPED = {"mlflow", "ranker", "report"}  # the scratch copy gets its own registry and rankers


def scratch(data: Path) -> Path:
    out = data.with_name(data.name + "-gate")
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(data, out, ignore=lambda folder, names: SKIPPED if Path(folder) == data else set())
    return out


def old_rule(gain, margin: float) -> bool:
    """The rule before the gate: the point gain alone."""
    return gain.mean >= margin


def judge(cfg, client, challenger: str, champion: str) -> dict:
    rule = gate_rule(cfg)
    gain, impressions, _ = compare_versions(cfg, client, challenger, champion)
    verdict, reason = rule.judge(gain, impressions)
    return {
        "challenger": challenger,
        "gain": gain.to_json(),
        "impressions": impressions,
        "old_rule_promotes": old_rule(gain, cfg.mlflow.promotion_margin),
        "gate": verdict,
        "gate_promotes": verdict == PROMOTED,
        "reason": reason,
    }


def small_split(folder: Path, fraction: float) -> TimeSplit:
    """The cut-offs with the test split cut to the last ``fraction`` of the data's time range."""
    import polars as pl

    from features import read_impressions

    ts = read_impressions(folder).select(pl.col("ts").min().alias("a"), pl.col("ts").max().alias("b")).collect()
    first, last = ts["a"][0], ts["b"][0]
    split = read_split(folder)
    return TimeSplit(
        val_start=split.val_start, test_start=last - timedelta(seconds=(last - first).total_seconds() * fraction)
    )


def same_config(args, folder: Path) -> dict:
    base = [f"data.dir={folder}", "ranker.use_text=false", *args.set]
    cfg = load_config(args.config, base)
    client = setup(cfg)
    versions = []
    for seed in range(args.challengers + 1):
        started = time.perf_counter()
        seeded = load_config(args.config, [*base, f"ranker.seed={seed}"])
        run = train_ranker(seeded)
        versions.append(registry.register_ranker(seeded, run, None, {}))
        print(f"ranker seed {seed}: version {versions[-1]} ({time.perf_counter() - started:.0f} s)", flush=True)
    registry.promote(cfg, challenger=versions[0])  # the first: champion
    champion, challengers = versions[0], versions[1:]
    full = read_split(folder)
    out = {}
    try:
        for name, split in (("full", full), ("small", small_split(folder, args.small_fraction))):
            write_split(folder, split)
            rows = [judge(cfg, client, v, champion) for v in challengers]
            out[name] = {
                "test_start": split.test_start.isoformat(),
                "impressions": rows[0]["impressions"],
                "old_rule_promoted": sum(r["old_rule_promotes"] for r in rows),
                "gate_promoted": sum(r["gate_promotes"] for r in rows),
                "verdicts": {v: sum(r["gate"] == v for r in rows) for v in (PROMOTED, REFUSED, INSUFFICIENT)},
                "challengers": rows,
            }
    finally:
        write_split(folder, full)
    return out


def better(args, folder: Path) -> dict:
    cfg = load_config(
        args.config, [f"data.dir={folder}", "ranker.use_text=true", "ranker.text_guard.min_gain=-1", *args.set]
    )
    client = setup(cfg)
    run = train_ranker(cfg)
    plain = RankerRun(run.features_only, run.features_only_inputs, run.spec, run.frame)
    champion = registry.register_ranker(cfg, plain, None, {})
    registry.promote(cfg, challenger=champion)
    text = registry.register_textmodel(cfg, model_dir(cfg))
    challenger = registry.register_ranker(cfg, run, text, {})
    return {"better": judge(cfg, client, challenger, champion)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--config", default=str(ROOT / "conf" / "demo.yaml"))
    parser.add_argument("--challengers", type=int, default=10)
    parser.add_argument("--small-fraction", type=float, default=0.01)
    parser.add_argument("--better", action="store_true", help="the combined ranker against a features-only champion")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides")
    parser.add_argument("--out", type=Path, default=RESULTS / "promotion_gate.json")
    args = parser.parse_args()
    folder = scratch(args.data.resolve())
    started = time.perf_counter()
    result = better(args, folder) if args.better else same_config(args, folder)
    cfg = load_config(args.config, args.set)
    record = {
        "data": str(args.data),
        "rule": gate_rule(cfg).describe(),
        "old_rule": f"point gain >= {cfg.mlflow.promotion_margin:g}",
        "seconds": time.perf_counter() - started,
        **result,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    previous = json.loads(args.out.read_text()) if args.out.is_file() else {}
    previous[f"{args.data.name}|{'better' if args.better else 'same-config'}"] = record
    args.out.write_text(json.dumps(previous, indent=2, default=str) + "\n")
    print("\n| data | test split | impressions | challengers | old rule promoted | gate promoted | gate verdicts |")
    print("|---|---|---|---|---|---|---|")
    if args.better:
        b = result["better"]
        g = b["gain"]
        print(
            f"| {args.data.name} | full | {b['impressions']} | combined vs features-only: {g['mean']:+.4f} "
            f"[{g['low']:+.4f}, {g['high']:+.4f}] | {int(b['old_rule_promotes'])} / 1 | {int(b['gate_promotes'])} / 1 "
            f"| {b['gate']} |"
        )
    else:
        for name, r in result.items():
            n = len(r["challengers"])
            print(
                f"| {args.data.name} | {name} ({r['test_start'][:10]} on) | {r['impressions']} | {n} same-config "
                f"| {r['old_rule_promoted']} / {n} | {r['gate_promoted']} / {n} | {r['verdicts']} |"
            )
    print(f"\n{args.out}  ({record['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
