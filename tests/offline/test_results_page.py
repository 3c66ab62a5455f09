"""bench/results_page.py: docs/results.md's tables from the runs' reports, checked on two hand-made runs."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_results_page():
    # By file, not by sys.path: bench/features.py and bench/textmodel.py would shadow the packages.
    spec = importlib.util.spec_from_file_location("bench_results_page", ROOT / "bench" / "results_page.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


results_page = _load_results_page()


def _metrics(auc: dict[str, float], ndcg: dict[str, float], shipped: str, context: dict) -> dict:
    return {
        "context": {"profile": "demo", **context},
        "impressions": 12,
        "systems": {name: {"metrics": {"auc": auc[name], "ndcg_at_10": ndcg[name]}} for name in auc},
        "selection": {"shipped_ranker": shipped, "text_model": {"export": {"exported": "probe"}}},
    }


@pytest.fixture
def summary(tmp_path: Path) -> Path:
    systems = ["popularity", "item_ctr", "interest_frozen", "interest_score", "lightgbm_features_only", "ranker"]
    seed0 = _metrics(
        dict(zip(systems, [0.50, 0.60, 0.55, 0.55, 0.70, 0.74], strict=True)),
        dict(zip(systems, [0.40, 0.50, 0.45, 0.45, 0.60, 0.66], strict=True)),
        shipped="ranker",
        context={"git commit": "0123456789abcdef", "written": "2026-12-06T17:00:00+00:00"},
    )
    seed1 = _metrics(
        dict(zip(systems, [0.50, 0.60, 0.57, 0.57, 0.72, 0.71], strict=True)),
        dict(zip(systems, [0.40, 0.50, 0.47, 0.47, 0.62, 0.61], strict=True)),
        shipped="lightgbm_features_only",
        context={},  # a report from before reports recorded their commit
    )
    for seed, report in ((0, seed0), (1, seed1)):
        folder = tmp_path / f"runs-s{seed}" / "report"
        folder.mkdir(parents=True)
        (folder / "metrics.json").write_text(json.dumps(report))
    old = tmp_path / "runs-s1" / "report" / "metrics.json"
    stamp = 1796500000  # 2026-12-05T19:46:40Z
    os.utime(old, (stamp, stamp))
    args = {
        "dataset": "canonical",
        "source": "../shared/data/toy_shop",
        "out": str(tmp_path / "runs"),
        "config": "/elsewhere/checkout/conf/demo.yaml",
        "seeds": "0,1",
        "jobs": 2,
        "set": ["ranker.num_threads=1"],
        "aggregate": False,
    }
    path = tmp_path / "runs.json"
    path.write_text(json.dumps({"args": args, "runs": {"0": {}, "1": {}}}))
    return path


def test_means_ranges_shipped_and_provenance_come_from_the_runs(summary: Path) -> None:
    ds = results_page.read_summary(summary)
    assert ds.name == "toy_shop"
    assert [r.seed for r in ds.runs] == [0, 1]
    mean, low, high, n = results_page.system_stats(ds.runs, "ranker", "auc")
    assert (mean, low, high, n) == (pytest.approx(0.725), 0.71, 0.74, 2)  # (0.74 + 0.71) / 2
    mean, *_ = results_page.system_stats(ds.runs, "lightgbm_features_only", "ndcg_at_10")
    assert mean == pytest.approx(0.61)  # (0.60 + 0.62) / 2
    # the shipped ranker is per seed: the combined one at seed 0, features-only at seed 1
    mean, low, high, _ = results_page.system_stats(ds.runs, results_page.SHIPPED, "auc")
    assert (mean, low, high) == (pytest.approx(0.73), 0.72, 0.74)  # (0.74 + 0.72) / 2

    section = results_page.dataset_section(ds)
    combined = "| combined ranker (features + interest score) | 0.7250 (0.7100–0.7400) | 0.6350 (0.6100–0.6600) |"
    assert combined in section
    assert "| item CTR (smoothed) | 0.6000 (every seed) | 0.5000 (every seed) |" in section
    assert "seed 1 shipped `lightgbm_features_only`" in section
    assert "seed 0: commit `0123456789`, written 2026-12-06" in section
    assert "seed 1: commit not recorded, report file dated 2026-12-05" in section
    # the command that reruns the seeds, as a reader of this repository types it
    assert (
        "`OMP_NUM_THREADS=1 python bench/pipeline_seeds.py --dataset canonical --source ../shared/data/toy_shop "
        f"--out {summary.parent / 'runs'} --seeds 0,1 --set ranker.num_threads=1`" in section
    )


def test_the_page_says_how_it_was_made(summary: Path, tmp_path: Path) -> None:
    out = tmp_path / "results.md"
    assert results_page.main([str(summary), "--out", str(out)]) == 0
    page = out.read_text()
    assert page.startswith("# Results")
    assert f"python bench/results_page.py {summary} --out {out}" in page
    assert "## `toy_shop`" in page
