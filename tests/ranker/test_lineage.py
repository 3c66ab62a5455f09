"""A ranker is served only with a snapshot of its own feature definition and data; the snapshot has a content id."""

from __future__ import annotations

import dataclasses
import types
from pathlib import Path

import pytest

from features.behaviour import FeatureSpec, build_snapshot
from features.build import read_snapshot, write_snapshot
from ranker.loading import SnapshotMismatchError, check_snapshot
from serving.models import ModelHolder

SPEC = FeatureSpec(click_windows_days=(1, 7), ctr_prior_strength=20.0, history_cap=5)


@pytest.fixture(scope="module")
def written(tiny_world, tmp_path_factory) -> Path:
    items, impressions = tiny_world
    folder = tmp_path_factory.mktemp("snap")
    snapshot_id = write_snapshot(build_snapshot(impressions.lazy(), items.lazy(), SPEC), folder, SPEC, "fp-1")
    return folder / "snapshots" / snapshot_id


def test_the_snapshot_reads_back_its_lineage_and_a_content_id(written: Path, tiny_world, tmp_path: Path) -> None:
    snap = read_snapshot(written)
    assert snap.feature_spec == SPEC and snap.data_fingerprint == "fp-1"
    assert snap.snapshot_id and len(snap.snapshot_id) == 16
    # Same content, same id; other content (fewer events), another id.
    items, impressions = tiny_world
    assert written.name == snap.snapshot_id  # the version's folder is named by its content
    again = write_snapshot(build_snapshot(impressions.lazy(), items.lazy(), SPEC), tmp_path, SPEC, "fp-1")
    assert again == snap.snapshot_id
    shorter = impressions.head(impressions.height // 2)
    other = write_snapshot(build_snapshot(shorter.lazy(), items.lazy(), SPEC), tmp_path, SPEC, "fp-1")
    assert other != snap.snapshot_id and read_snapshot(tmp_path / "snapshots" / other).snapshot_id == other


def test_a_matching_snapshot_passes(written: Path) -> None:
    check_snapshot(SPEC, "fp-1", read_snapshot(written), "ranker 3", written)


def test_another_feature_spec_is_refused_naming_both_sides(written: Path) -> None:
    other = dataclasses.replace(SPEC, click_windows_days=(1, 3))
    with pytest.raises(SnapshotMismatchError, match=r"ranker 3 was trained with feature spec .*\[1, 3\].* built with "):
        check_snapshot(other, "fp-1", read_snapshot(written), "ranker 3", written)
    prior = dataclasses.replace(SPEC, ctr_prior_strength=5.0)  # would silently skew every score
    with pytest.raises(SnapshotMismatchError, match=r"'ctr_prior_strength': 5\.0"):
        check_snapshot(prior, "fp-1", read_snapshot(written), "ranker 3", written)


def test_another_data_set_is_refused(written: Path) -> None:
    with pytest.raises(SnapshotMismatchError, match=r"trained on data fingerprint fp-0, .* from data fingerprint fp-1"):
        check_snapshot(SPEC, "fp-0", read_snapshot(written), "ranker 3", written)


def test_a_server_keeps_its_bundle_when_the_new_one_does_not_match(written: Path) -> None:
    """A promotion to a ranker whose snapshot does not match: the reload fails, the old bundle keeps serving."""
    served = types.SimpleNamespace(versions={"ranker": "1"}, snapshot=read_snapshot(written))  # a stand-in bundle
    target = {"version": "1"}

    def load(version: str):
        if version == "1":
            return served
        check_snapshot(dataclasses.replace(SPEC, history_cap=50), "fp-1", read_snapshot(written), "ranker 2", written)

    holder = ModelHolder("champion", lambda: target["version"], load)
    assert holder.refresh() and holder.current is served
    target["version"] = "2"
    assert not holder.refresh()
    assert holder.current is served and "SnapshotMismatchError: ranker 2 was trained with" in holder.state.reload_error
