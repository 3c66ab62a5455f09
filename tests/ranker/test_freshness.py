"""Evaluation as served: the frozen and daily snapshots hold exactly the events before their time, and the
report's freshness section scores the same pipeline, its point-in-time row the main table's figure.

The counts are checked against a brute force over the event log (a count of rows with ``ts`` before the
snapshot time), not against the feature code.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sample_data import TINY_SYNTHETIC

from conf import load_config
from features.behaviour import FeatureSpec, build_offline
from features.sources import SnapshotFeatures
from ranker.freshness import REFERENCE, Replay, compare_modes, snapshot_before, utc_days
from ranker.metrics import METRIC_NAMES

SPEC = FeatureSpec(click_windows_days=(1, 7), ctr_prior_strength=20.0, history_cap=5)
# a small ranker without the text model (as tests/conftest.py's served world trains it): seconds on 2 cores
RANKER = ["ranker.use_text=false", "ranker.tune={}", "ranker.params.n_estimators=60"]
RANKER += ["ranker.early_stopping_rounds=20", "ranker.params.min_child_samples=20", "evaluation.bootstrap_samples=200"]


@pytest.fixture(scope="module")
def world(tiny_world) -> tuple[pl.DataFrame, pl.DataFrame, datetime]:
    """Items, impressions and a cut-off on an instant that some impressions share (ts truncated to the hour):
    those impressions are after the cut-off, their events not in the frozen snapshot."""
    items, impressions = tiny_world
    hours = impressions["ts"].unique().sort()
    # mid-day: the first test day's daily snapshot (its midnight) is then older than the frozen one
    cutoff = hours.filter((hours >= hours[int(hours.len() * 0.75)]) & (hours.dt.hour() >= 6))[0]
    assert impressions.filter(pl.col("ts") == cutoff).height > 0
    return items, impressions, cutoff


def _test_rows(impressions: pl.DataFrame, cutoff: datetime) -> pl.DataFrame:
    """The impressions at or after the cut-off as request rows, each at its own ts (display order kept)."""
    return (
        impressions.filter(pl.col("ts") >= cutoff)
        .sort("ts", "impression_id", "position")
        .select(pl.col("impression_id").alias("request_id"), "user_id", "item_id", "ts")
    )


def _count_before(impressions: pl.DataFrame, key: str, ids: list[str], cuts: list[datetime], clicks: bool) -> list:
    """Brute force: for each (id, cut), the rows (or clicks) of that id with ts strictly before the cut."""
    ts = impressions["ts"].to_list()
    keys = impressions[key].to_list()
    clicked = impressions["clicked"].to_list()
    by_key: dict[str, list[tuple[datetime, int]]] = {}
    for k, t, c in zip(keys, ts, clicked, strict=True):
        by_key.setdefault(k, []).append((t, c))
    pairs = zip(ids, cuts, strict=True)
    return [sum((c if clicks else 1) for t, c in by_key.get(i, []) if t < cut) for i, cut in pairs]


def _last_click_before(impressions: pl.DataFrame, users: list[str], cuts: list[datetime]) -> list[datetime | None]:
    clicks = impressions.filter(pl.col("clicked") == 1)
    times: dict[str, list[datetime]] = {}
    for u, t in zip(clicks["user_id"].to_list(), clicks["ts"].to_list(), strict=True):
        times.setdefault(u, []).append(t)
    return [max((t for t in times.get(u, []) if t < cut), default=None) for u, cut in zip(users, cuts, strict=True)]


def _assert_counts_are_the_events_before(feats: pl.DataFrame, rows: pl.DataFrame, impressions, cuts) -> None:
    """Every count feature of every row equals the brute-force count of events strictly before its row's cut."""
    items, users = rows["item_id"].to_list(), rows["user_id"].to_list()
    assert feats["item_impressions_before"].to_list() == _count_before(impressions, "item_id", items, cuts, False)
    assert feats["item_clicks_before"].to_list() == _count_before(impressions, "item_id", items, cuts, True)
    assert feats["user_impressions_before"].to_list() == _count_before(impressions, "user_id", users, cuts, False)
    assert feats["user_clicks_before"].to_list() == _count_before(impressions, "user_id", users, cuts, True)
    last = _last_click_before(impressions, users, cuts)
    want = [None if t is None else (ts - t) / timedelta(hours=1) for ts, t in zip(rows["ts"], last, strict=True)]
    got = feats["hours_since_last_click"].to_list()
    assert [g is None for g in got] == [w is None for w in want]
    assert [g for g in got if g is not None] == pytest.approx([w for w in want if w is not None], rel=1e-12)


def test_frozen_features_are_the_events_before_the_cut_off(world) -> None:
    items, impressions, cutoff = world
    rows = _test_rows(impressions, cutoff)
    replay = Replay(impressions.lazy(), items.lazy(), SPEC, cutoff)
    (part,) = replay.parts("frozen", rows, point_in_time=None)
    assert part.as_of == cutoff and part.rows.tolist() == list(range(rows.height))
    frozen = part.source.features(rows)
    _assert_counts_are_the_events_before(frozen, rows, impressions, [cutoff] * rows.height)
    # The request itself is the impression: position and size as the offline rows have them.
    pit = (
        build_offline(impressions.lazy(), items.lazy(), SPEC)
        .collect()
        .join(
            rows.select(pl.col("request_id").alias("impression_id"), "item_id").with_row_index("_r"),
            on=["impression_id", "item_id"],
        )
        .sort("_r")
    )
    assert pit.height == rows.height
    assert frozen["position"].equals(pit["position"]) and frozen["impression_size"].equals(pit["impression_size"])
    # Point-in-time counts also the events between the cut-off and the impression; frozen never does.
    between = np.asarray(_count_before(impressions, "item_id", rows["item_id"].to_list(), rows["ts"].to_list(), False))
    between -= frozen["item_impressions_before"].to_numpy()
    assert (pit["item_impressions_before"].to_numpy() - frozen["item_impressions_before"].to_numpy()).tolist() == (
        between.tolist()
    )
    assert (between > 0).mean() > 0.5 and (between == 0).any()  # most rows see events in between; the first do not
    assert not pit["item_ctr_smoothed"].equals(frozen["item_ctr_smoothed"])


def test_the_frozen_snapshot_serves_the_histories_before_the_cut_off(world) -> None:
    """The user tower reads the snapshot's history: the user's last clicks strictly before the cut-off."""
    items, impressions, cutoff = world
    snapshot = snapshot_before(impressions.lazy(), items.lazy(), SPEC, cutoff)
    source = SnapshotFeatures(snapshot, SPEC)
    before = impressions.filter((pl.col("clicked") == 1) & (pl.col("ts") < cutoff))
    clicks = before.sort("ts", "impression_id", "position")
    for user in impressions.filter(pl.col("ts") >= cutoff)["user_id"].unique().sort().to_list()[:40]:
        want = clicks.filter(pl.col("user_id") == user)["item_id"].to_list()[-SPEC.history_cap :]
        assert source.history(user) == want, user


def test_daily_features_are_the_events_before_each_days_midnight(world) -> None:
    items, impressions, cutoff = world
    rows = _test_rows(impressions, cutoff)
    replay = Replay(impressions.lazy(), items.lazy(), SPEC, cutoff)
    parts = replay.parts("daily", rows, point_in_time=None)
    midnights = sorted({datetime(t.year, t.month, t.day, tzinfo=UTC) for t in rows["ts"].to_list()})
    assert [p.as_of for p in parts] == midnights and len(parts) >= 2  # one snapshot per test day
    covered = np.sort(np.concatenate([p.rows for p in parts]))
    assert covered.tolist() == list(range(rows.height))  # every row in exactly one day
    for part in parts:
        mine = rows[part.rows]
        assert (utc_days(mine["ts"]) == part.as_of).all()  # the rows of its day, no other
        feats = part.source.features(mine)
        _assert_counts_are_the_events_before(feats, mine, impressions, [part.as_of] * mine.height)
    # the first day's snapshot is older than the cut-off (a rebuild at midnight); a later day's is newer
    assert parts[0].as_of < cutoff < parts[1].as_of


def test_a_mode_scored_like_point_in_time_gains_exactly_nothing() -> None:
    """compare_modes pairs the impressions: identical scores give a gain of 0 in every resample."""
    frame = pl.DataFrame(
        {"impression_id": ["a"] * 3 + ["b"] * 3, "item_id": list("xyzxyz"), "clicked": [1, 0, 0, 0, 1, 0]}
    )
    good, bad = np.array([0.9, 0.1, 0.2, 0.1, 0.8, 0.3]), np.array([0.1, 0.9, 0.2, 0.9, 0.1, 0.3])
    cfg = load_config(None).evaluation.model_copy(
        update={"bootstrap_samples": 200, "seed": 0, "cold_item_max_impressions": 5}
    )
    out = compare_modes(frame, {REFERENCE: {"s": good}, "frozen": {"s": good}, "daily": {"s": bad}}, cfg)
    assert out.metrics["s"][REFERENCE]["auc"] == 1.0 and out.metrics["s"]["daily"]["auc"] == 0.0
    same = out.gains["auc"]["s"]["frozen"]
    assert (same.mean, same.low, same.high) == (0.0, 0.0, 0.0)
    assert out.gains["auc"]["s"]["daily"].mean == -1.0
    assert set(out.gains["auc"]["s"]) == {"frozen", "daily"}
    json.dumps(out.to_json())


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """A tiny world prepared, featurised and its ranker (no text) trained and evaluated through the CLI."""
    from offline.cli import main

    out = tmp_path_factory.mktemp("freshness") / "d"
    args = [*TINY_SYNTHETIC, f"data.dir={out}", *RANKER]
    for command in (["data", "prepare"], ["features", "build"], ["ranker", "train"]):
        assert main([*command, *args]) == 0
    return out


def test_the_report_carries_three_modes_and_point_in_time_is_the_main_figure(evaluated: Path) -> None:
    metrics = json.loads((evaluated / "report/metrics.json").read_text())
    fresh = metrics["freshness"]
    assert fresh["modes"] == ["point_in_time", "frozen", "daily"] and fresh["reference"] == REFERENCE
    assert set(fresh["metrics"]) == {"ranker", "item_ctr"}  # no features-only ranker without text
    for system, by_mode in fresh["metrics"].items():
        for mode, values in by_mode.items():
            assert all(math.isfinite(values[m]) for m in METRIC_NAMES), (system, mode)
        # point-in-time is the main table's figure, to the bit, and its interval the main one
        assert {m: by_mode[REFERENCE][m] for m in METRIC_NAMES} == {
            m: metrics["systems"][system]["metrics"][m] for m in METRIC_NAMES
        }
        for metric in METRIC_NAMES:
            assert fresh["intervals"][metric][system][REFERENCE] == metrics["intervals"][metric]["systems"][system]
            for mode in ("frozen", "daily"):
                gain = fresh["gains_vs_point_in_time"][metric][system][mode]
                assert gain["mean"] == pytest.approx(by_mode[mode][metric] - by_mode[REFERENCE][metric], abs=1e-12)
                assert gain["low"] <= gain["mean"] + 1e-12 <= gain["high"] + 2e-12
    assert len(fresh["snapshots"]["frozen"]) == 1 and len(fresh["snapshots"]["daily"]) >= 2
    # the stale modes are not the fresh one in disguise: frozen features move the ranker's figure
    assert fresh["metrics"]["ranker"]["frozen"]["auc"] != fresh["metrics"]["ranker"][REFERENCE]["auc"]
    report = (evaluated / "report/report.md").read_text()
    assert "## Feature freshness" in report and "| ranker | frozen |" in report and "| item_ctr | daily |" in report
    assert (evaluated / "report/feature_freshness.png").is_file()


def test_no_freshness_modes_no_section(evaluated: Path) -> None:
    from offline.cli import main

    args = [*TINY_SYNTHETIC, f"data.dir={evaluated}", *RANKER]
    assert main(["evaluate", *args, "evaluation.freshness=[]"]) == 0
    metrics = json.loads((evaluated / "report/metrics.json").read_text())
    assert "freshness" not in metrics
    assert "Feature freshness" not in (evaluated / "report/report.md").read_text()


def test_the_served_worlds_report_compares_the_text_ranker_under_every_mode(served_world) -> None:
    """With the text model: the combined and features-only rankers, their user tower fed the snapshot's
    histories in the stale modes; the point-in-time row is still the main table's (read-only on the world)."""
    metrics = json.loads((Path(served_world.data.dir) / "report/metrics.json").read_text())
    fresh = metrics["freshness"]
    assert set(fresh["metrics"]) == {"ranker", "lightgbm_features_only", "item_ctr"}
    for system, by_mode in fresh["metrics"].items():
        assert set(by_mode) == {"point_in_time", "frozen", "daily"}
        assert all(math.isfinite(v[m]) for v in by_mode.values() for m in METRIC_NAMES), system
        assert by_mode[REFERENCE]["auc"] == metrics["systems"][system]["metrics"]["auc"]
        assert by_mode[REFERENCE]["ndcg_at_10"] == metrics["systems"][system]["metrics"]["ndcg_at_10"]
    assert any("user tower reads each user's history from the snapshot" in n for n in fresh["notes"])
