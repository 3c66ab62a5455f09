"""The Ray Train runs of ``recrank textmodel train --workers N`` under the storage folder: what each trains,
and continuing one whose driver stopped (``--resume RUN``).

Ray Train restarts a worker group on its own (``max_failures``), but not the driver: when the ``recrank``
process itself dies (a crash, a lost node), its run's checkpoints stay in
``<storage>/<run>/``. Ray Train continues a run when a new trainer is given the same run name and storage
(its checkpoint manager reloads the snapshot there), so resuming is naming the run again, with one guard:
a run continues only under the training it was started with. Each run writes its :func:`run_identity`
(the text-model config that shapes training, the backbone's content hash, a digest of the train and
validation impressions and item tokens, the parent model, the step budget) to ``recrank_run.json`` before it
starts; ``--resume`` refuses a run whose identity differs and names what differs. Nothing here imports Ray.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from features.io import write_json_atomic

RUN_FILE = "recrank_run.json"
SNAPSHOT_FILE = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's registered checkpoints
# Settings that may change on resume: how restarts and checkpoints are handled, where files are, not what is
# trained (the cache's placement and the resume target itself included).
RESUMABLE = ("train.distributed", "cache_dir")


class DistributedTrainError(RuntimeError):
    """The distributed text-model run cannot start or did not finish (the message says which part)."""


class ResumeError(ValueError):
    """``--resume RUN`` cannot continue that run (the message says why and what to do)."""


def run_identity(
    textmodel: dict[str, Any], backbone_sha: str, data: list[np.ndarray], parent: str | None, total_steps: int
) -> dict[str, Any]:
    """What a run trains: two runs with the same identity take the same steps from the same start."""
    config = json.loads(json.dumps(textmodel))  # a deep copy
    for path in RESUMABLE:
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node.get(key, {})
        node.pop(leaf, None)
    digest = hashlib.sha256()
    for array in data:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    return {
        "textmodel": config,
        "backbone_sha256": backbone_sha,
        "data_sha256": digest.hexdigest(),
        "parent_version": parent,
        "total_steps": total_steps,
    }


def new_run_name() -> str:
    """A fresh run name: UTC start time and this process's id."""
    return time.strftime("textmodel-%Y%m%d-%H%M%S", time.gmtime()) + f"-{os.getpid()}"


def start_run(root: Path, name: str, identity: dict[str, Any]) -> None:
    """Record a new run's identity (written whole: a temporary file renamed)."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    write_json_atomic(identity, folder / RUN_FILE)


def check_resume(root: Path, name: str, identity: dict[str, Any]) -> None:
    """Raise :class:`ResumeError` unless run ``name`` under ``root`` exists, has a registered checkpoint and
    was started with this ``identity``."""
    folder = root / name
    if not (folder / RUN_FILE).is_file():
        runs = sorted(p.parent.name for p in root.glob(f"*/{RUN_FILE}"))
        raise ResumeError(
            f"--resume {name}: no recrank run in {root} ({', '.join(runs) or 'none there'}); the name is the one "
            "`recrank textmodel train` printed (Ray Train: ... run NAME)"
        )
    if not (folder / SNAPSHOT_FILE).is_file():
        raise ResumeError(f"--resume {name}: {folder} has no registered checkpoint yet; start a new run instead")
    saved = json.loads((folder / RUN_FILE).read_text())
    differs = _differences(saved, identity)
    if differs:
        raise ResumeError(
            f"--resume {name}: the run was started with other training settings or data, so it cannot continue "
            f"under these: {'; '.join(differs)}"
        )


def _differences(saved: dict[str, Any], now: dict[str, Any], prefix: str = "") -> list[str]:
    """Every leaf that differs, as ``path: saved -> now`` (the data digest as a plain sentence)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        path = f"{prefix}{key}"
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{path}.")
        elif a != b:
            if key == "data_sha256":
                out.append("the train/validation impressions or item texts differ (data digest)")
            else:
                out.append(f"{path}: {a!r} -> {b!r}")
    return out
