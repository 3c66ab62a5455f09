"""``recrank textmodel train --workers 2 --address ...`` on the two-node loopback cluster (``tests/ray_cluster.py``).

The tiny world trained three times with the same seed and schedule, LoRA dropout off (each worker would
draw its own masks) and no cross-fitting (driver-side code, the same either way): in this process
(``workers=1``), on the cluster with two Ray Train workers, and on the cluster again with one worker killed by
pid after a checkpoint; and once more with the driver (the ``recrank`` process) killed, then continued with
``--resume RUN``. Both cluster runs must have trained on both nodes and follow the single-process loss
trajectory step for step; the killed runs must have restarted from their checkpoint and end the same.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import psutil
import pytest
from sample_data import TEXT_OVERRIDES, TINY_SYNTHETIC

from conf import load_config
from features import FeatureSpec, build_features, prepare_dataset
from offline.cli import main
from offline.textmodel_stage import model_dir
from textmodel.artifact import META_FILE

if TYPE_CHECKING:
    from ray_cluster import Listener, LoopbackCluster

pytest_plugins = ["ray_cluster"]
pytestmark = pytest.mark.integration

CHECKPOINT_EVERY = 25
SCHEDULE = [
    "textmodel.peft.dropout=0",
    "textmodel.train.oof_folds=0",
    "textmodel.train.probe_epochs=1",
    "textmodel.train.epochs=2",
    "textmodel.train.max_steps_per_epoch=12",
    f"textmodel.train.distributed.checkpoint_every_steps={CHECKPOINT_EVERY}",
]
# The killed runs share the lower-layer cache as .npy shards on disk (what `auto` picks for a cache too big for
# the object store): restarted workers memory-map them again, and the resumed driver reuses them.
DISK_CACHE = "textmodel.train.distributed.shared_cache=disk"
LOSS_RTOL = 1e-3  # issue #16: each step's loss within 1e-3 (relative) of one worker with the same global batch
WORKERS_DIR = "workers"  # offline.textmodel_ray.WORKERS_DIR (that module imports ray: see tests/ray_cluster.py)

# The one socket a Ray Train run binds beyond loopback (README, "Exposure"): torch.distributed's TCPStore,
# the process group's rendezvous, served by rank 0 on [::] at MASTER_PORT. torch 2.13 has no bind-address
# option for it (the libuv server listens on every interface); it lives only while the workers train. It is
# allowed by exact process and port (the workers record MASTER_PORT), never by process name alone.
TCPSTORE_REASON = "torch.distributed TCPStore of rank 0: no bind-address option in torch 2.13"


@dataclass
class Run:
    meta: dict
    storage: Path
    listeners: set[Listener] = field(default_factory=set)
    killed: dict | None = None  # the worker record of the process this test killed

    @property
    def losses(self) -> list[float]:
        return self.meta["train"]["step_losses"]


def _args(data: Path, models: Path) -> list[str]:
    return [*TINY_SYNTHETIC, f"data.dir={data}", f"textmodel.cache_dir={models}", *TEXT_OVERRIDES, *SCHEDULE]


def _train(args: list[str], *extra: str) -> dict:
    assert main(["textmodel", "train", *args, *extra]) == 0
    return json.loads((model_dir(load_config(None, args)) / META_FILE).read_text())


class Killer(threading.Thread):
    """SIGKILLs a process of the run once Ray Train has registered a mid-run checkpoint: the rank-1 training
    worker (``victim=None``) or the given pid (the driver).

    Registered, not just written: Ray Train's controller takes a reported checkpoint when it next polls the
    workers (its ``checkpoint_manager_snapshot.json`` then names it); a worker killed before that restarts
    the group from the checkpoint before (here: from scratch, which would prove nothing)."""

    def __init__(self, storage: Path, victim: int | None = None) -> None:
        super().__init__(daemon=True)
        self.storage, self.victim, self.stop = storage, victim, threading.Event()
        self.killed: dict | None = None  # the killed worker's record, or {"pid": driver pid}
        self.run_name: str | None = None
        self.workers: list[dict] = []  # the worker records when the kill happened

    def _registered_steps(self) -> int:
        for snapshot in self.storage.glob("textmodel-*/checkpoint_manager_snapshot.json"):
            try:
                latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result") or {}
            except json.JSONDecodeError:  # being rewritten
                continue
            metrics = latest.get("metrics") or {}
            if not metrics.get("final"):
                self.run_name = snapshot.parent.name
                return int(metrics.get("steps", 0))
        return 0

    def run(self) -> None:
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline:
            records = sorted(self.storage.glob(f"textmodel-*/{WORKERS_DIR}/rank*.json"))
            if len(records) >= 2 and self._registered_steps() >= CHECKPOINT_EVERY:
                self.workers = [json.loads(p.read_text()) for p in records]
                target = self.victim or next(r["pid"] for r in self.workers if r["rank"] == 1)
                os.kill(target, signal.SIGKILL)
                self.killed = next((r for r in self.workers if r["pid"] == target), {"pid": target})
                return
            self.stop.wait(0.1)


def _kill_the_driver(data: Path, args: list[str], cluster: list[str]) -> tuple[Killer, list[int]]:
    """``recrank textmodel train`` as a separate process, SIGKILLed after a mid-run checkpoint; returns the
    killer (the run's name) and the worker pids that were still alive a minute later (Ray ends a dead
    driver's actors: none should be)."""
    log = data.parent / "killed-driver.log"
    with log.open("w") as sink:
        driver = subprocess.Popen(
            [str(Path(sys.executable).parent / "recrank"), "textmodel", "train", *args, *cluster],
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    killer = Killer(data / "ray_train", victim=driver.pid)
    killer.start()
    try:
        rc = driver.wait(timeout=600)
    finally:
        killer.stop.set()
        killer.join()
        if driver.poll() is None:
            driver.kill()
    assert killer.killed is not None and rc == -signal.SIGKILL, f"the driver ended first ({rc}): {log.read_text()}"
    pids = [r["pid"] for r in killer.workers]
    deadline = time.monotonic() + 60
    while any(psutil.pid_exists(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    return killer, [p for p in pids if psutil.pid_exists(p)]


@pytest.fixture(scope="module")
def runs(ray_cluster: LoopbackCluster, model_cache: Path, tmp_path_factory) -> dict[str, Run]:
    """The single-process run, the two-worker cluster run (sockets sampled), and the run with a worker killed."""
    from ray_cluster import Sampler

    root = tmp_path_factory.mktemp("ddp")
    base = root / "data"
    cfg = load_config(None, _args(base, model_cache))
    prepare_dataset(cfg.data, progress=False)
    build_features(base, FeatureSpec.from_config(cfg))
    folders = {name: root / name for name in ("single", "cluster", "killed", "driver")}
    for folder in folders.values():
        shutil.copytree(base, folder)
    cluster = ["--workers", "2", "--address", ray_cluster.address]
    out = {"single": Run(_train(_args(folders["single"], model_cache)), folders["single"] / "ray_train")}
    sampler = Sampler(ray_cluster)
    sampler.start()
    try:
        meta = _train(_args(folders["cluster"], model_cache), *cluster)
    finally:
        sampler.stop.set()
        sampler.join()
    out["cluster"] = Run(meta, folders["cluster"] / "ray_train", sampler.seen)
    killer = Killer(folders["killed"] / "ray_train")
    killer.start()
    try:
        meta = _train([*_args(folders["killed"], model_cache), DISK_CACHE], *cluster)
    finally:
        killer.stop.set()
        killer.join()
    out["killed"] = Run(meta, folders["killed"] / "ray_train", killed=killer.killed)
    return out


@pytest.fixture(scope="module")
def driver_resumed(runs: dict[str, Run], ray_cluster: LoopbackCluster, model_cache: Path) -> tuple[Run, list[int]]:
    """A run whose driver (the ``recrank`` process) was killed, continued with ``--resume RUN``; and the
    worker pids that outlived the killed driver."""
    data = runs["single"].storage.parent.parent / "driver"  # a copy of the fresh data folder (``runs``)
    args, cluster = [*_args(data, model_cache), DISK_CACHE], ["--workers", "2", "--address", ray_cluster.address]
    driver, alive = _kill_the_driver(data, args, cluster)
    meta = _train(args, *cluster, "--resume", driver.run_name)
    return Run(meta, data / "ray_train", killed=driver.killed), alive


def test_both_nodes_trained_and_each_worker_recorded_its_node(runs: dict[str, Run], ray_cluster) -> None:
    dist = runs["cluster"].meta["distributed"]
    assert dist["workers"] == 2 and dist["attempts"] == 1 and not dist["resumed_from_step"]
    both = {ray_cluster.head_node_id, ray_cluster.second_node_id}
    assert set(dist["nodes"]) == both
    records = [json.loads(p.read_text()) for p in runs["cluster"].storage.glob(f"*/{WORKERS_DIR}/rank*.json")]
    assert sorted(r["rank"] for r in records) == [0, 1]
    assert {r["node_id"] for r in records} == both  # one worker per node (1 CPU each)
    assert set(dist["cache"]["nodes"]) == both and dist["cache"]["mode"] == "object_store"  # tiny cache
    assert runs["single"].meta["distributed"] is None


def test_two_workers_follow_the_single_process_loss_trajectory(runs: dict[str, Run]) -> None:
    one, two = runs["single"].losses, runs["cluster"].losses
    assert len(one) == len(two) == runs["single"].meta["train"]["steps"] > 100
    np.testing.assert_allclose(two[:20], one[:20], rtol=LOSS_RTOL)  # the goal: the first 20 steps
    np.testing.assert_allclose(two, one, rtol=LOSS_RTOL)  # and, on this tiny run, every step
    for e1, e2 in zip(runs["single"].meta["train"]["epochs"], runs["cluster"].meta["train"]["epochs"], strict=True):
        assert (e1["phase"], e1["step"]) == (e2["phase"], e2["step"])
        assert e2["val_metric"] == pytest.approx(e1["val_metric"], abs=1e-3)
    for split, auc in runs["single"].meta["impression_auc"].items():
        assert runs["cluster"].meta["impression_auc"][split] == pytest.approx(auc, abs=1e-3)


def test_a_killed_worker_is_restarted_from_its_checkpoint(runs: dict[str, Run], ray_cluster) -> None:
    run = runs["killed"]
    assert run.killed is not None, "the run ended before a checkpoint was registered: nothing was killed"
    dist = run.meta["distributed"]
    assert dist["attempts"] == 2
    records = dist["worker_records"]
    first = [r for r in records if r["attempt"] == 1]
    second = [r for r in records if r["attempt"] == 2]
    assert run.killed["pid"] in {r["pid"] for r in first}
    assert sorted(r["rank"] for r in second) == [0, 1]  # the whole group restarted, new processes
    assert not {r["pid"] for r in second} & {r["pid"] for r in first}
    assert {r["node_id"] for r in second} == {ray_cluster.head_node_id, ray_cluster.second_node_id}
    steps = run.meta["train"]["steps"]
    resumed = {r["resumed_from_step"] for r in second}
    assert len(resumed) == 1 and CHECKPOINT_EVERY <= resumed.pop() < steps  # from a mid-run checkpoint
    assert steps == runs["single"].meta["train"]["steps"]
    np.testing.assert_allclose(run.losses, runs["single"].losses, rtol=LOSS_RTOL)  # the same run, step for step
    assert run.meta["train"]["best_epoch"] == runs["single"].meta["train"]["best_epoch"]
    cache = dist["cache"]
    assert cache["mode"] == "disk" and not cache["reused"] and cache["shards"] == 2
    shards = sorted(p.name for p in run.storage.glob("cache/*/shard-*.npy"))
    assert shards == ["shard-000-of-002.npy", "shard-001-of-002.npy"]
    # the same shards as the object store held, and an exact resume: the uninterrupted cluster run's losses
    assert run.losses == runs["cluster"].losses


def test_training_listens_on_loopback_only(runs: dict[str, Run]) -> None:
    """Every listening socket of the cluster's processes (the training workers' process group included)."""
    listeners = runs["cluster"].listeners
    print(*sorted({(x.process, x.proto, x.ip, x.port) for x in listeners}), sep="\n")  # shown with -rP
    assert any("RayTrainWorker" in x.process for x in listeners), sorted({x.process for x in listeners})
    records = runs["cluster"].meta["distributed"]["worker_records"]
    rendezvous = {(r["pid"], int(r["rendezvous"].rsplit(":", 1)[1])) for r in records if r["rank"] == 0}
    exposed = sorted(
        f"{x.process} (pid {x.pid}) {x.proto} {x.ip}:{x.port}"
        for x in listeners
        if not x.loopback and (x.pid, x.port) not in rendezvous
    )
    assert not exposed, f"beyond loopback (allowed only: {TCPSTORE_REASON} at {rendezvous})"


def test_a_killed_driver_is_resumed_from_its_checkpoint(driver_resumed: tuple[Run, list[int]], runs) -> None:
    """``--resume RUN`` after the driver died: the same run name, a second attempt from the registered
    checkpoint, and the run ends as the uninterrupted one did."""
    run, outlived = driver_resumed
    assert not outlived, f"worker pids {outlived} outlived their driver"
    dist = run.meta["distributed"]
    records = dist["worker_records"]
    first = [r for r in records if r["attempt"] == 1]
    second = [r for r in records if r["attempt"] == 2]
    assert sorted(r["rank"] for r in first) == sorted(r["rank"] for r in second) == [0, 1]
    assert run.killed["pid"] not in {r["pid"] for r in records}  # the driver, not a worker, was killed
    steps = run.meta["train"]["steps"]
    resumed = {r["resumed_from_step"] for r in second}
    assert len(resumed) == 1 and CHECKPOINT_EVERY <= resumed.pop() < steps
    assert steps == runs["single"].meta["train"]["steps"]
    np.testing.assert_allclose(run.losses, runs["single"].losses, rtol=LOSS_RTOL)
    assert run.meta["train"]["best_epoch"] == runs["single"].meta["train"]["best_epoch"]
    assert run.meta["config"]["train"]["distributed"]["resume"] == dist["run"]
    assert dist["cache"]["mode"] == "disk" and dist["cache"]["reused"]  # the killed driver's shards


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--workers", "3"], "textmodel.train.workers=3: the Ray cluster has 2 CPU(s)"),
        (["--workers", "2", "--resume", "textmodel-none"], "--resume textmodel-none: no recrank run in"),
    ],
)
def test_a_run_that_cannot_start_fails_in_one_line(
    runs: dict[str, Run], ray_cluster: LoopbackCluster, model_cache: Path, capsys, extra: list[str], message: str
) -> None:
    """Too many workers for the cluster, or an unknown run to resume: exit 2, one line naming it, no traceback."""
    data = runs["single"].storage.parent  # trained already: nothing of it is touched by a refused run
    before = sorted(p.name for p in (data / "ray_train").glob("*"))
    capsys.readouterr()
    code = main(["textmodel", "train", *_args(data, model_cache), "--address", ray_cluster.address, *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err, err
    assert sorted(p.name for p in (data / "ray_train").glob("*")) == before


def test_the_cache_goes_to_disk_when_it_would_take_over_half_the_smallest_store() -> None:
    from offline.textmodel_ray import cache_mode  # imports ray: only once the cluster fixture set it up

    mb = 2**20
    assert cache_mode("auto", 100 * mb, [512 * mb, 300 * mb]) == "object_store"  # 100 <= 150
    assert cache_mode("auto", 151 * mb, [512 * mb, 300 * mb]) == "disk"  # the smallest node decides
    assert cache_mode("auto", int(1.3 * 1024) * mb, [512 * mb]) == "disk"  # the 256-token Amazon cache
    assert cache_mode("auto", 1, []) == "disk"  # no node reported a store
    assert cache_mode("object_store", 10**12, [512 * mb]) == "object_store"  # forced either way
    assert cache_mode("disk", 1, [512 * mb]) == "disk"


def test_the_cache_is_computed_and_keyed_in_the_dtype_the_driver_resolves() -> None:
    """``lower_dtype: auto`` is resolved once, on the driver: every shard task and the disk key get that dtype."""
    import torch

    from offline.textmodel_ray import _resolved_lower_dtype
    from textmodel.model import native_bf16

    expected = "bfloat16" if native_bf16(torch.device("cpu")) else "float32"
    assert _resolved_lower_dtype(load_config(None, ["textmodel.lower_dtype=auto"])).textmodel.lower_dtype == expected
    for forced in ("float32", "bfloat16"):
        cfg = load_config(None, [f"textmodel.lower_dtype={forced}"])
        assert _resolved_lower_dtype(cfg).textmodel.lower_dtype == forced
        assert cfg.textmodel.lower_dtype == forced  # the caller's config is left as it was
