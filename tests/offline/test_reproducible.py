"""Same seed + same machine = identical metrics.json: the tiny pipeline run twice, in two fresh processes.

Two processes, not two calls in one, and each with its own ``PYTHONHASHSEED``: anything that leaked set or
dict order of strings, a process-global RNG or allocation addresses into the results would show here.
``metrics.json`` holds no wall-clock fields (timings live in ``textmodel.json``'s ``seconds`` /
``cache_seconds`` / ``oof_seconds`` / ``total_seconds`` and ``ranker.json``'s ``seconds``), so it is compared
byte for byte, and so are the trained models and the interest scores that lead to it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sample_data import TEXT_OVERRIDES, TINY_SYNTHETIC

from textmodel.backbone import build_tiny_gpt2

ROOT = Path(__file__).resolve().parents[2]
STAGES = [["data", "prepare"], ["features", "build"], ["textmodel", "train"], ["ranker", "train"]]
# The tiny world of the other offline tests, trained shorter (the comparison needs no good model).
FAST = [
    "textmodel.train.probe_epochs=1",
    "textmodel.train.oof_folds=2",
    "ranker.tune={}",
    "ranker.params.n_estimators=60",
    "ranker.early_stopping_rounds=20",
    "ranker.params.min_child_samples=20",
    "evaluation.bootstrap_samples=200",
]
SAME_BYTES = [
    "report/metrics.json",
    "interest.parquet",
    "textmodel/weights.safetensors",
    "textmodel/item_embeddings.parquet",
    "ranker/combined.txt",
    "ranker/features_only.txt",
]
RUN = """import json, sys
from offline.cli import main
for argv in json.loads(sys.argv[1]):
    assert main(argv) == 0, argv
"""


def _start(data: Path, cache: Path, hash_seed: str) -> subprocess.Popen:
    args = [*TINY_SYNTHETIC, f"data.dir={data}", f"textmodel.cache_dir={cache}", *TEXT_OVERRIDES, *FAST]
    # One thread each (torch, and LightGBM, whose default ignores OMP_NUM_THREADS): the two runs go side by side.
    env = {**os.environ, "PYTHONHASHSEED": hash_seed, "OMP_NUM_THREADS": "1", "LOKY_MAX_CPU_COUNT": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", RUN, json.dumps([[*stage, *args] for stage in STAGES])],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_two_runs_of_the_same_config_write_identical_metrics(tmp_path: Path, model_cache: Path) -> None:
    build_tiny_gpt2(model_cache)  # built once here, not raced by the two runs
    runs = {
        name: (tmp_path / name, _start(tmp_path / name, model_cache, seed)) for name, seed in (("a", "1"), ("b", "2"))
    }
    for name, (_, proc) in runs.items():  # side by side: the wall time of one run
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"run {name} failed:\n{err[-3000:]}"
    (a, _), (b, _) = runs.values()
    different = [f for f in SAME_BYTES if (a / f).read_bytes() != (b / f).read_bytes()]
    assert not different, f"two runs of the same config differ in {different}"
    # and the file holds the run's figures: the interest score's AUC recomputed by hand from interest.parquet
    import polars as pl

    from features import read_features
    from ranker.metrics import per_group_metrics, summarize

    systems = json.loads((a / "report/metrics.json").read_text())["systems"]
    test = read_features(a).filter(pl.col("split") == "test").collect()
    scored = test.join(pl.read_parquet(a / "interest.parquet"), on=["impression_id", "item_id"], how="left")
    frame = scored.select("impression_id", "clicked", pl.col("interest_score").alias("score"))
    assert systems["interest_score"]["metrics"]["auc"] == pytest.approx(summarize(per_group_metrics(frame))["auc"])
