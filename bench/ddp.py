"""Benchmark (#16): data-parallel text-model training on Ray Train against the same run in one process.

    recrank data prepare --dataset ml100k --out data/ml100k
    recrank features build --config conf/demo.yaml data.dir=data/ml100k
    OMP_NUM_THREADS=1 python bench/ddp.py --data data/ml100k [--workers 2] [--address HOST:PORT | --loopback-cluster]
        [--quick] [--set K=V]

Two trainings of the demo profile on a scratch copy of the data folder, same seed: ``workers=1`` (in this
process) and ``workers=N`` on Ray Train (a local Ray, the cluster at ``--address``, or with
``--loopback-cluster`` the tests' two-node cluster on loopback, ``tests/ray_cluster.py``, one CPU per node).
Both take the same global batches (the sampler does not depend on the worker count). LoRA dropout is set
to 0 (each worker would draw its own dropout masks, so the runs would differ by sampling noise, not by the
parallelism) and cross-fitting is off (it runs on the driver after the fit, the same code either way).

Goals (issue #16): the loss at each of the first 20 steps within 1e-3 (relative) of one worker; the
validation loss at matched steps (each epoch's end) within 1%. The floor, in the same run: a third training
in one process with another ``encode_batch_tokens`` (``--floor-batch-tokens``), which only regroups items
into length buckets, as sharding a batch over workers does; how far that moves the losses is the float32
noise any regrouping brings, parallel or not. Printed: both gaps and the floor's, the validation AUC at each
epoch, the seconds of each run and the shared cache (where it was kept, its size). Writes
bench/results/ddp.json.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # before bench/ itself: bench/features.py would shadow the package

from conf import load_config  # noqa: E402
from offline.textmodel_stage import train_textmodel  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FIXED = ["textmodel.peft.dropout=0", "textmodel.train.oof_folds=0"]
QUICK = ["textmodel.train.epochs=1", "textmodel.train.max_steps_per_epoch=20", "textmodel.train.probe_epochs=1"]
STEPS_COMPARED = 20


def relative(a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12)


def run(name: str, data: Path, overrides: list[str]) -> dict:
    cfg = load_config(ROOT / "conf" / "demo.yaml", [f"data.dir={data}", *overrides])
    t0 = time.perf_counter()
    summary = train_textmodel(cfg, progress=False)
    summary["wall_seconds"] = time.perf_counter() - t0
    print(f"{name}: {summary['wall_seconds']:.0f} s, val AUC {summary['impression_auc']['val']:.4f}", flush=True)
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "ml100k")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--address", help="a Ray cluster's GCS address (default: a local Ray)")
    ap.add_argument(
        "--loopback-cluster",
        action="store_true",
        help="start the tests' two-node loopback cluster (1 CPU and ray.object_store_mb per node) and train on it",
    )
    ap.add_argument(
        "--floor-batch-tokens",
        type=int,
        default=3072,
        help="encode_batch_tokens of the floor run (one process, items regrouped); 0 = no floor run",
    )
    ap.add_argument("--quick", action="store_true", help="20 adapter steps, 1 probe epoch (a smoke run)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = ap.parse_args()
    if not (args.data / "features.parquet").is_file():
        sys.exit(f"{args.data}: no features.parquet (prepare and build features first, see the docstring)")
    common = [*FIXED, *(QUICK if args.quick else []), *args.set]
    cluster = None
    if args.loopback_cluster:
        sys.path.insert(0, str(ROOT / "tests"))
        from ray_cluster import start_cluster

        store_mb = load_config(ROOT / "conf" / "demo.yaml", common).ray.object_store_mb
        cluster = start_cluster(object_store_bytes=store_mb * 2**20)
        args.address = cluster.address
        print(f"loopback cluster at {cluster.address} (2 nodes, {store_mb} MB object store each)", flush=True)
    try:
        out = compare(args, common)
    finally:
        if cluster is not None:
            from ray_cluster import stop_cluster

            stop_cluster(cluster)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "ddp.json").write_text(json.dumps(out, indent=2))


def first_steps(one: dict, other: dict) -> tuple[list[float], int]:
    """Relative gap of each of the first ``STEPS_COMPARED`` step losses, and how many steps that was."""
    a, b = one["train"]["step_losses"], other["train"]["step_losses"]
    n = min(STEPS_COMPARED, len(a), len(b))
    return [relative(x, y) for x, y in zip(a[:n], b[:n], strict=True)], n


def matched_epochs(one: dict, other: dict) -> list[dict]:
    """The validation loss and AUC of both runs at each epoch's end (the same step in both)."""
    out = []
    for e1, e2 in zip(one["train"]["epochs"], other["train"]["epochs"], strict=False):
        if e1.get("val_loss") is None or e2.get("val_loss") is None:
            continue
        out.append(
            {
                "phase": e1["phase"],
                "step": e1["step"],
                "val_loss": [e1["val_loss"], e2["val_loss"]],
                "val_loss_rel": relative(e1["val_loss"], e2["val_loss"]),
                "val_auc": [e1["val_metric"], e2["val_metric"]],
            }
        )
    return out


def compare(args: argparse.Namespace, common: list[str]) -> dict:
    """Both runs on a scratch copy of the data folder; print the table and return the figures."""
    parallel = [f"textmodel.train.workers={args.workers}", *([f"ray.address={args.address}"] if args.address else [])]
    with tempfile.TemporaryDirectory(prefix="ddp-bench-") as scratch:
        data = Path(scratch) / "data"
        shutil.copytree(args.data, data, ignore=shutil.ignore_patterns("textmodel", "mlflow", "scores*", "replay*"))
        one = run("1 worker (in process)", data, common)
        many = run(f"{args.workers} workers (Ray Train)", data, [*common, *parallel])
        floor = None
        if args.floor_batch_tokens:
            regroup = f"textmodel.train.encode_batch_tokens={args.floor_batch_tokens}"
            floor = run("floor: 1 worker, items regrouped", data, [*common, regroup])
    step_rel, n = first_steps(one, many)
    epochs = matched_epochs(one, many)
    floor_steps, _ = first_steps(one, floor) if floor else ([float("nan")], 0)
    floor_epochs = matched_epochs(one, floor) if floor else []
    a, b = one["train"]["step_losses"], many["train"]["step_losses"]
    out = {
        "workers": args.workers,
        "address": args.address,
        "loopback_cluster": args.loopback_cluster,
        "overrides": common,
        "steps": [len(a), len(b)],
        "first_steps_rel": step_rel,
        "first_steps_max_rel": max(step_rel),
        "first_steps_goal": 1e-3,
        "floor_batch_tokens": args.floor_batch_tokens or None,
        "floor_first_steps_rel": floor_steps if floor else None,
        "floor_first_steps_max_rel": max(floor_steps),
        "floor_val_loss_rel": [e["val_loss_rel"] for e in floor_epochs],
        "epochs": epochs,
        "val_loss_max_rel": max((e["val_loss_rel"] for e in epochs), default=float("nan")),
        "val_loss_goal": 0.01,
        "seconds": [one["wall_seconds"], many["wall_seconds"]],
        "cache_seconds": [one["cache_seconds"], many["cache_seconds"]],
        "distributed": many["distributed"],
        "impression_auc": [one["impression_auc"], many["impression_auc"]],
    }
    floor_rel = {e["step"]: e["val_loss_rel"] for e in floor_epochs}
    print(f"\n{'':28s}{'1 worker':>12s}{str(args.workers) + ' workers':>12s}{'rel diff':>10s}{'floor':>10s}")
    print(f"{'steps':28s}{len(a):12d}{len(b):12d}")
    print(
        f"{'first ' + str(n) + ' step losses (max)':28s}{'':24s}{out['first_steps_max_rel']:10.2e}"
        f"{out['floor_first_steps_max_rel']:10.2e}"
    )
    for e in epochs:
        print(
            f"{'val loss @ step ' + str(e['step']) + ' (' + e['phase'] + ')':28s}"
            f"{e['val_loss'][0]:12.5f}{e['val_loss'][1]:12.5f}{e['val_loss_rel']:10.2e}"
            f"{floor_rel.get(e['step'], float('nan')):10.2e}"
        )
    print(f"{'val AUC (exported)':28s}{one['impression_auc']['val']:12.4f}{many['impression_auc']['val']:12.4f}")
    print(f"{'seconds (whole stage)':28s}{one['wall_seconds']:12.0f}{many['wall_seconds']:12.0f}")
    print(f"{'lower-layer cache seconds':28s}{one['cache_seconds']:12.0f}{many['cache_seconds']:12.0f}")
    cache = many["distributed"]["cache"]
    print(
        f"shared cache: {cache['mb']} MB in {cache['shards']} shards, kept in {cache['mode']}; "
        f"nodes {len(many['distributed']['nodes'])}"
    )
    return out


if __name__ == "__main__":
    main()
