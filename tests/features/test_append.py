"""``events append``: incremental features and snapshot equal a full rebuild; bad or repeated batches change nothing."""

from __future__ import annotations

import json
import shutil
from datetime import timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from conf import load_config
from features import build_features, prepare_dataset, read_features, read_impressions, read_items, read_snapshot
from features.append import append_events
from features.behaviour import FeatureSpec
from features.schema import DataValidationError
from features.store import STORE_FILE, StoreLockedError, read_state, snapshot_dir, store_lock

SPEC = FeatureSpec(click_windows_days=(1, 7), ctr_prior_strength=20.0, history_cap=5)


def _prepare(root: Path, items: pl.DataFrame, impressions: pl.DataFrame, split_from: Path | None = None) -> Path:
    """A data folder prepared from canonical tables (optionally with another folder's cut-offs), features built."""
    source, out = root / "source", root / "data"
    source.mkdir(parents=True)
    items.write_parquet(source / "items.parquet")
    impressions.write_parquet(source / "impressions.parquet")
    cfg = load_config(None, ["data.dataset=canonical", f"data.source={source}", f"data.dir={out}"])
    prepare_dataset(cfg.data, progress=False)
    if split_from is not None:
        shutil.copy2(split_from / "split.json", out / "split.json")
    build_features(out, SPEC)
    return out


@pytest.fixture(scope="module")
def world(tiny_world):
    """The tiny world cut in three at hour boundaries (timestamps are hourly: ties straddle nothing),
    with the items first shown in the last two batches held out of the starting catalogue."""
    items, impressions = tiny_world
    t0, t1 = impressions["ts"].min(), impressions["ts"].max()
    cut_a = (t0 + (t1 - t0) * 0.7).replace(minute=0, second=0, microsecond=0)
    cut_b = (t0 + (t1 - t0) * 0.85).replace(minute=0, second=0, microsecond=0)
    a = impressions.filter(pl.col("ts") < cut_a)
    b = impressions.filter((pl.col("ts") >= cut_a) & (pl.col("ts") < cut_b))
    c = impressions.filter(pl.col("ts") >= cut_b)
    shown_in_a = a["item_id"].unique()
    held = items.filter(~pl.col("item_id").is_in(shown_in_a.implode()))
    return items, impressions, items.filter(pl.col("item_id").is_in(shown_in_a.implode())), held, a, b, c


@pytest.fixture(scope="module")
def appended(world, tmp_path_factory) -> tuple[Path, Path]:
    """(a folder grown A then B then C by appends, a folder built from A ∪ B ∪ C in one go, same cut-offs)."""
    items, impressions, items_a, held, a, b, c = world
    root = tmp_path_factory.mktemp("append")
    grown = _prepare(root / "grown", items_a, a)
    for i, batch in enumerate((b, c)):
        path = root / f"batch{i}.parquet"
        batch.write_parquet(path)
        new = held.filter(pl.col("item_id").is_in(batch["item_id"].unique().implode()))
        held = held.filter(~pl.col("item_id").is_in(new["item_id"].implode()))
        items_path = None
        if new.height:
            items_path = root / f"items{i}.parquet"
            new.write_parquet(items_path)
        append_events(grown, path, SPEC, items_path)
    shown = pl.concat([items_a, items.filter(pl.col("item_id").is_in(pl.concat([b, c])["item_id"].implode()))])
    full = _prepare(root / "full", shown.unique("item_id"), impressions, split_from=grown)
    return grown, full


def _sorted(frame: pl.DataFrame, keys: list[str]) -> pl.DataFrame:
    return frame.sort(keys).select(sorted(frame.columns))


def test_incremental_features_equal_a_full_rebuild_every_column(appended, world) -> None:
    grown, full = appended
    got = _sorted(read_features(grown).collect(), ["impression_id", "item_id"])
    want = _sorted(read_features(full).collect(), ["impression_id", "item_id"])
    assert got.height == world[1].height
    assert set(got["split"].unique()) == {"train", "val", "test"}
    assert_frame_equal(got, want, check_exact=True)


def test_incremental_snapshot_equals_a_full_rebuild_every_column(appended) -> None:
    grown, full = appended
    got, want = read_snapshot(grown), read_snapshot(full)
    assert got.as_of == want.as_of
    assert (got.global_impressions, got.global_clicks) == (want.global_impressions, want.global_clicks)
    assert_frame_equal(got.items, want.items, check_exact=True)
    assert_frame_equal(got.users, want.users, check_exact=True)
    assert_frame_equal(got.user_categories, want.user_categories, check_exact=True)
    assert got.items["item_clicks_1d"].sum() > 0  # the windows slid: some clicks in the last day
    assert got.data_fingerprint == read_snapshot(grown).data_fingerprint


def test_appends_are_parts_and_snapshot_versions(appended, world) -> None:
    grown, _ = appended
    state = read_state(grown)
    assert state.version == 3 and len(state.appends) == 2
    assert [Path(p).parts[0] for p in state.tables["impressions"]] == ["impressions.parquet", "parts", "parts"]
    assert read_impressions(grown).collect().height == world[1].height
    assert read_items(grown).collect()["item_id"].is_duplicated().sum() == 0
    assert len(state.snapshots) == 3 and snapshot_dir(grown).name == state.snapshot
    meta = json.loads((snapshot_dir(grown) / "online_meta.json").read_text())
    assert meta["parent_snapshot"] == state.snapshots[1] and meta["snapshot_id"] == state.snapshot


@pytest.fixture
def folder(world, tmp_path: Path) -> tuple[Path, Path]:
    """A fresh folder of batch A and batch B as a file to append."""
    _, _, items_a, _, a, b, _ = world
    data = _prepare(tmp_path, items_a, a)
    path = tmp_path / "b.parquet"
    b.filter(pl.col("item_id").is_in(items_a["item_id"].implode())).write_parquet(path)
    return data, path


def _files(data: Path) -> dict[str, bytes]:
    return {str(p.relative_to(data)): p.read_bytes() for p in sorted(data.rglob("*")) if p.is_file()}


def test_appending_twice_is_refused_or_skipped_and_changes_nothing(folder) -> None:
    data, path = folder
    first = append_events(data, path, SPEC)
    assert first.rows > 0 and first.store_version == 2
    before = _files(data)
    already = r"b\.parquet: column 'impression_id': \d+ impression\(s\) already in"
    with pytest.raises(DataValidationError, match=already):
        append_events(data, path, SPEC)
    again = append_events(data, path, SPEC, skip_existing=True)
    assert (again.rows, again.skipped_rows, again.part) == (0, first.rows, None)
    assert _files(data) == before


def _one_unknown_item(frame: pl.DataFrame) -> pl.DataFrame:
    first = pl.int_range(pl.len()) == 0
    return frame.with_columns(pl.when(first).then(pl.lit("nope")).otherwise("item_id").alias("item_id"))


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda f: f.with_columns(pl.col("clicked").cast(pl.Int32) * 2), r"'clicked': \d+ label\(s\) outside 0/1"),
        (lambda f: f.drop("position"), r"column 'position': missing column"),
        (_one_unknown_item, r"column 'item_id': 1 item id\(s\) not in the items"),
        (lambda f: f.with_columns(pl.col("ts") - timedelta(days=30)), r"'ts': \d+ row\(s\) before the data's snapshot"),
    ],
)
def test_a_bad_batch_is_refused_with_its_column_and_nothing_changes(folder, tmp_path: Path, mutate, match) -> None:
    data, path = folder
    bad = tmp_path / "bad.parquet"
    mutate(pl.read_parquet(path)).write_parquet(bad)
    before = _files(data)
    with pytest.raises(DataValidationError, match=match):
        append_events(data, bad, SPEC)
    assert _files(data) == before


def test_a_crash_before_the_commit_leaves_the_old_state_and_is_swept(folder, monkeypatch) -> None:
    data, path = folder
    before = read_state(data)
    import features.append as append_module

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(append_module, "commit", crash)
    with pytest.raises(OSError, match="disk full"):
        append_events(data, path, SPEC)
    assert read_state(data) == before and read_snapshot(data).snapshot_id == before.snapshot
    monkeypatch.undo()
    summary = append_events(data, path, SPEC)  # the orphans of the crashed try are swept by this commit
    assert sorted(p.name for p in (data / "parts").iterdir()) == [summary.part]
    assert sorted(p.name for p in (data / "snapshots").iterdir()) == sorted(read_state(data).snapshots)


def test_a_concurrent_writer_is_locked_out(folder) -> None:
    data, path = folder
    with store_lock(data), pytest.raises(StoreLockedError, match="another"):
        append_events(data, path, SPEC)
    assert not (data / "parts").exists()


def test_old_snapshot_versions_are_pruned_by_retention(world, tmp_path: Path) -> None:
    _, _, items_a, _, a, b, _ = world
    data = _prepare(tmp_path, items_a, a)
    b = b.filter(pl.col("item_id").is_in(items_a["item_id"].implode()))
    days = b.with_columns(pl.col("ts").dt.truncate("1h").alias("_h")).partition_by("_h", maintain_order=True)
    for i, batch in enumerate(days[:4]):
        path = tmp_path / f"h{i}.parquet"
        batch.drop("_h").write_parquet(path)
        append_events(data, path, SPEC, retention=2)
    state = read_state(data)
    assert len(state.snapshots) == 2 and state.snapshots[-1] == state.snapshot
    assert sorted(p.name for p in (data / "snapshots").iterdir()) == sorted(state.snapshots)
    assert (data / STORE_FILE).is_file()


def test_preparing_the_folder_again_drops_the_appended_parts(folder, world) -> None:
    data, path = folder
    append_events(data, path, SPEC)
    cfg = load_config(None, ["data.dataset=canonical", f"data.source={data.parent / 'source'}", f"data.dir={data}"])
    prepare_dataset(cfg.data, progress=False)  # the same source again: the folder holds batch A only
    assert read_impressions(data).collect().height == world[4].height
    with pytest.raises(FileNotFoundError, match="features build"):
        read_snapshot(data)
    build_features(data, SPEC)
    assert not (data / "parts").exists() or not any((data / "parts").iterdir())  # swept by the build's commit
