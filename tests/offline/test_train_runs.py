"""``--resume RUN``'s guard (``offline.train_runs``): a run continues only under what it was started with."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conf import load_config
from offline.train_runs import RUN_FILE, SNAPSHOT_FILE, ResumeError, check_resume, run_identity, start_run


def _identity(cfg_overrides: list[str] = (), rows: np.ndarray | None = None, steps: int = 100) -> dict:
    tm = load_config(None, list(cfg_overrides)).textmodel.model_dump(mode="json")
    data = [np.arange(6).reshape(2, 3), np.array([0, 1, 1, 0]) if rows is None else rows]
    return run_identity(tm, "abc123", data, None, steps)


def _started(root: Path, identity: dict, registered: bool = True) -> str:
    start_run(root, "textmodel-1", identity)
    if registered:
        (root / "textmodel-1" / SNAPSHOT_FILE).write_text("{}")
    return "textmodel-1"


def test_the_same_training_resumes(tmp_path: Path) -> None:
    name = _started(tmp_path, _identity())
    check_resume(tmp_path, name, _identity())
    saved = json.loads((tmp_path / name / RUN_FILE).read_text())
    assert saved["backbone_sha256"] == "abc123" and saved["total_steps"] == 100
    assert not list((tmp_path / name).glob("*.tmp"))  # written whole


def test_restart_and_storage_settings_may_change(tmp_path: Path) -> None:
    name = _started(tmp_path, _identity())
    changed = ["textmodel.train.distributed.max_failures=5", "textmodel.train.distributed.checkpoint_every_steps=7"]
    check_resume(tmp_path, name, _identity([*changed, "textmodel.cache_dir=/elsewhere"]))


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"cfg_overrides": ["textmodel.train.lr=0.5"]}, "textmodel.train.lr: "),
        ({"cfg_overrides": ["textmodel.train.workers=3"]}, "textmodel.train.workers: 1 -> 3"),
        ({"rows": np.array([0, 1, 1, 1])}, "the train/validation impressions or item texts differ"),
        ({"rows": np.array([0, 1, 1, 0], dtype=np.int32)}, "data digest"),  # same values, other dtype
        ({"steps": 101}, "total_steps: 100 -> 101"),
    ],
)
def test_other_training_is_refused_and_named(tmp_path: Path, change: dict, named: str) -> None:
    name = _started(tmp_path, _identity())
    with pytest.raises(ResumeError, match="cannot continue") as err:
        check_resume(tmp_path, name, _identity(**change))
    assert named in str(err.value)


def test_an_unknown_run_lists_the_runs_there(tmp_path: Path) -> None:
    _started(tmp_path, _identity())
    with pytest.raises(ResumeError, match=r"--resume textmodel-2: no recrank run in .*\(textmodel-1\)"):
        check_resume(tmp_path, "textmodel-2", _identity())


def test_a_run_without_a_registered_checkpoint_is_refused(tmp_path: Path) -> None:
    name = _started(tmp_path, _identity(), registered=False)
    with pytest.raises(ResumeError, match="no registered checkpoint yet"):
        check_resume(tmp_path, name, _identity())


def test_resume_needs_ray_train_workers() -> None:
    with pytest.raises(ValueError, match="needs workers > 1"):
        load_config(None, ["textmodel.train.distributed.resume=textmodel-1"])
    cfg = load_config(None, ["textmodel.train.workers=2", "textmodel.train.distributed.resume=textmodel-1"])
    assert cfg.textmodel.train.distributed.resume == "textmodel-1"
