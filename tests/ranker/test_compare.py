"""Paired bootstrap intervals."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from ranker.compare import compare_systems, paired_bootstrap


def per(values: list[float | None]) -> pl.DataFrame:
    return pl.DataFrame({"impression_id": [f"i{k}" for k in range(len(values))], "auc": values})


def test_identical_systems_have_a_zero_width_gain() -> None:
    vals = list(np.random.default_rng(1).random(50))
    systems, gains = paired_bootstrap({"a": per(vals), "b": per(vals)}, "auc", 300, 0, baseline="a")
    assert gains["b"].mean == 0.0 and gains["b"].low == 0.0 and gains["b"].high == 0.0
    assert systems["a"].low < systems["a"].mean < systems["a"].high


def test_constant_gain_is_exact_and_pairing_removes_noise() -> None:
    rng = np.random.default_rng(2)
    base = rng.random(80)
    systems, gains = paired_bootstrap({"a": per(list(base)), "b": per(list(base + 0.1))}, "auc", 300, 0, "a")
    assert gains["b"].mean == pytest.approx(0.1)
    assert gains["b"].low == pytest.approx(0.1) and gains["b"].high == pytest.approx(0.1)
    # The systems' own intervals are wide (impressions differ a lot); the paired difference is not.
    assert systems["a"].high - systems["a"].low > 0.05


def test_missing_values_are_skipped_and_seed_is_deterministic() -> None:
    a = per([0.2, None, 0.6, 0.8])
    b = per([0.4, 0.9, None, 0.8])
    s1, g1 = paired_bootstrap({"a": a, "b": b}, "auc", 200, 5, "a")
    s2, g2 = paired_bootstrap({"a": a, "b": b}, "auc", 200, 5, "a")
    assert s1 == s2 and g1 == g2
    assert s1["a"].mean == pytest.approx((0.2 + 0.6 + 0.8) / 3)


def test_systems_on_different_impressions_are_refused() -> None:
    with pytest.raises(ValueError, match="different impressions"):
        paired_bootstrap({"a": per([0.1, 0.2]), "b": per([0.1, 0.2, 0.3])}, "auc", 100, 0)


def test_compare_systems_gives_one_paired_gain_table_per_reference() -> None:
    rng = np.random.default_rng(3)
    base = rng.random(40)
    per_group = {
        name: pl.DataFrame({"impression_id": [f"i{k}" for k in range(40)], "auc": vals, "mrr": 1 - vals})
        for name, vals in {"ctr": base, "plain": base + 0.05, "ranker": base + 0.2 * rng.random(40)}.items()
    }
    out = compare_systems(per_group, ("auc", "mrr"), 300, 4, references=("ctr", "plain"))
    assert set(out["auc"]) == {"systems", "gain_vs_ctr", "gain_vs_plain"}
    assert set(out["auc"]["gain_vs_plain"]) == {"ctr", "ranker"}
    for metric in ("auc", "mrr"):
        for ref in ("ctr", "plain"):
            # the same draws as a separate call with the same seed: figures do not depend on what else is compared
            systems, gains = paired_bootstrap(per_group, metric, 300, 4, baseline=ref)
            assert out[metric][f"gain_vs_{ref}"] == gains and out[metric]["systems"] == systems
    assert out["auc"]["gain_vs_ctr"]["plain"].mean == pytest.approx(0.05)
    assert out["auc"]["gain_vs_plain"]["ctr"].low == pytest.approx(-0.05)


def test_an_empty_slice_has_no_interval_rather_than_an_error() -> None:
    empty = pl.DataFrame({"impression_id": [], "auc": []}, schema={"impression_id": pl.String, "auc": pl.Float64})
    out = compare_systems({"a": empty, "b": empty}, ("auc",), 100, 0, references=("a",))
    iv = out["auc"]["gain_vs_a"]["b"]
    assert np.isnan(iv.mean) and np.isnan(iv.low) and np.isnan(iv.high)
