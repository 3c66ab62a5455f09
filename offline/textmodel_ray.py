"""``textmodel.train.workers > 1``: the text model trained data-parallel on Ray Train (``TorchTrainer``).

The run, from the driver (``recrank textmodel train``, :func:`train_on_ray`):

1. **The lower-layer cache, once per item** (:func:`share_cache`): the catalogue is cut into one contiguous
   item range per worker and one Ray task per range (spread over the nodes) runs the frozen lower layers on
   it. Each shard is then *shared*, not recomputed: it stays in Ray's object store (every node that reads it
   holds one copy, and workers on a node read it zero-copy) or, when the cache would take more than half of
   the smallest node's store (``shared_cache: auto``; a 256-token Amazon cache is ~1.3 GB), it is written
   as an ``.npy`` file under the storage folder and memory-mapped (a cache built for the same backbone,
   layers and tokens is reused from there). The training workers and the driver read the same shards.
2. **Training** (:func:`_train_worker`, one per worker, gloo on CPU, NCCL with one GPU per worker): each
   worker builds the same model (same seed; rank 0's weights are broadcast anyway), takes the impression
   sets and tokens from the object store, and runs :meth:`ClickTrainer.fit` with a
   :class:`~textmodel.parallel.DataParallel` group: the same global batches as one process, each worker
   training on its slice, gradients summed. Validation, early stopping and the exported best state are the
   single-process ones (every worker validates on the same weights and takes the same decision).
3. **Checkpoints**: rank 0 hands Ray Train a resumable state (``textmodel.resume``) at each epoch's end and
   every ``checkpoint_every_steps`` steps. When a worker dies, Ray Train restarts the group (up to
   ``max_failures`` times) and each worker continues from the latest checkpoint, step for step. When the
   driver itself stopped, ``--resume RUN`` continues the run under the same name (``offline.train_runs``:
   refused unless it trains the same thing).
4. **The result**: the final weights and the training log come back in the last checkpoint; the driver loads
   them into its own model and the rest (scores of every split, cross-fitting, the artifact) is the
   single-process code. Every worker writes a record (rank, pid, Ray node id, attempt) under
   ``<storage>/<run>/workers/``: the summary lists the nodes that trained.

Ray Client (``ray://``) is not supported here: Ray Train needs the driver on the cluster (a GCS address).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import ray

from conf import Config
from features.io import atomic_path, write_json_atomic
from offline.train_runs import (
    SNAPSHOT_FILE,
    DistributedTrainError,
    check_resume,
    new_run_name,
    run_identity,
    start_run,
)
from runtime.progress import say

WORKERS_DIR = "workers"
CACHE_DIR = "cache"
OBJECT_STORE_SHARE = 0.5  # ``auto`` keeps the cache in the object store up to half the smallest node's store


@dataclass
class SharedCache:
    """Where the lower-layer cache's shards are: object refs (object store) or ``.npy`` paths (disk)."""

    mode: str
    starts: list[int]
    nbytes: int
    refs: list[Any] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)  # Ray node id that computed each shard ("" when reused)
    seconds: float = 0.0
    reused: bool = False

    def open(self):
        """The shards as a :class:`~textmodel.encoder.ShardedCache` (zero-copy from the store, or memory-mapped)."""
        from textmodel.encoder import ShardedCache

        shards = ray.get(self.refs) if self.mode == "object_store" else [np.load(p, mmap_mode="r") for p in self.paths]
        return ShardedCache(shards, self.starts)

    def to_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "shards": len(self.starts),
            "mb": round(self.nbytes / 2**20, 1),
            "nodes": sorted({n for n in self.nodes if n}),
            "seconds": self.seconds,
            "reused": self.reused,
        }


def storage_root(cfg: Config) -> Path:
    """Ray Train's storage folder: ``distributed.storage`` or ``<data.dir>/ray_train`` (absolute; not inside
    the artifact's folder, which is replaced whole when the model is saved)."""
    configured = cfg.textmodel.train.distributed.storage
    return Path(configured or Path(cfg.data.dir) / "ray_train").resolve()


def worker_config(cfg: Config) -> dict[str, Any]:
    """``cfg`` as JSON for Ray tasks and workers, its folders made absolute: a worker's working directory is
    not the driver's (Ray Train runs it elsewhere), so a relative ``data/models`` would find no backbone
    there. On a cluster these folders must be the same path on every node (a shared file system)."""
    absolute = cfg.model_copy(deep=True)
    absolute.data.dir = Path(cfg.data.dir).resolve()
    absolute.textmodel.cache_dir = Path(cfg.textmodel.cache_dir).resolve()
    if cfg.textmodel.train.distributed.storage is not None:
        absolute.textmodel.train.distributed.storage = str(storage_root(cfg))
    return absolute.model_dump(mode="json")


def cache_mode(setting: str, nbytes: int, node_stores: list[float]) -> str:
    """``object_store`` or ``disk`` for a cache of ``nbytes`` given each live node's object store size."""
    if setting != "auto":
        return setting
    if not node_stores:
        return "disk"
    return "object_store" if nbytes <= OBJECT_STORE_SHARE * min(node_stores) else "disk"


def _node_stores() -> list[float]:
    return [n["Resources"].get("object_store_memory", 0.0) for n in ray.nodes() if n.get("Alive")]


@ray.remote(num_cpus=1)
def _cache_shard(cfg_json: dict, tokens, start: int, stop: int, path: str | None):
    """Lower-layer states of items ``start..stop-1``: returned into the object store, or saved to ``path``."""
    import torch

    from textmodel.backbone import load_backbone
    from textmodel.encoder import ItemEncoder
    from textmodel.model import build_text_model_only

    cfg = Config.model_validate(cfg_json)
    tm = cfg.textmodel
    device = torch.device("cpu")
    model = build_text_model_only(tm, load_backbone(tm.backbone, tm.cache_dir), device)
    states = ItemEncoder(model.items, tokens, tm.train.encode_batch_tokens, device).lower_shard(start, stop).numpy()
    node = ray.get_runtime_context().get_node_id()
    if path is None:
        return states, node
    with atomic_path(path) as tmp, open(tmp, "wb") as out:  # a file object: np.save adds .npy to a bare name
        np.save(out, states)
    return path, node


def _resolved_lower_dtype(cfg: Config) -> Config:
    """``cfg`` with ``lower_dtype: auto`` resolved once, here on the driver, for the CPU the shard tasks run
    on: every shard is computed in one dtype, whatever each node would pick, and a cache on disk is keyed by
    the dtype it holds, not by ``auto`` (a reused cache was computed the way this run would compute it)."""
    import torch

    from textmodel.model import resolve_lower_dtype

    dtype = resolve_lower_dtype(cfg.textmodel.lower_dtype, torch.device("cpu"))
    resolved = cfg.model_copy(deep=True)
    resolved.textmodel.lower_dtype = "bfloat16" if dtype == torch.bfloat16 else "float32"
    return resolved


def _cache_key(cfg: Config, identity, tokens) -> str:
    """What the lower-layer states depend on: the backbone's content, the cut, the dtype and the token ids."""
    tm = cfg.textmodel
    digest = hashlib.sha256()
    side = tm.peft.method == "side"  # the side network caches per-layer pooled states, not token states
    digest.update(json.dumps([identity.sha256, tm.trainable_top_layers, tm.lower_dtype, side]).encode())
    digest.update(tokens.ids.numpy().tobytes())
    return digest.hexdigest()[:16]


def share_cache(cfg: Config, identity, tokens, hidden: int, workers: int, progress: bool = True) -> SharedCache:
    """Compute the lower-layer cache once per item, one contiguous shard per worker, spread over the nodes."""
    from textmodel.parallel import share_bounds

    cfg = _resolved_lower_dtype(cfg)
    n, width = tokens.ids.shape
    if cfg.textmodel.peft.method == "side":  # one pooled state per read layer (textmodel.side)
        width = cfg.textmodel.trainable_top_layers
    nbytes = n * width * hidden * 4
    mode = cache_mode(cfg.textmodel.train.distributed.shared_cache, nbytes, _node_stores())
    bounds = [share_bounds(n, r, workers) for r in range(workers)]
    starts = [a for a, _ in bounds]
    paths: list[str | None] = [None] * workers
    if mode == "disk":
        folder = storage_root(cfg) / CACHE_DIR / _cache_key(cfg, identity, tokens)
        folder.mkdir(parents=True, exist_ok=True)
        paths = [str(folder / f"shard-{k:03d}-of-{workers:03d}.npy") for k in range(workers)]
        if all(Path(p).is_file() for p in paths):
            say(f"lower-layer cache: reusing {len(paths)} shard(s) in {folder}", progress)
            return SharedCache(mode, starts, nbytes, paths=list(paths), nodes=[""] * workers, reused=True)
    say(f"lower-layer cache: {n} items, {nbytes / 2**20:.0f} MB in {workers} shard(s), kept in {mode}", progress)
    t0 = time.perf_counter()
    tokens_ref = ray.put(tokens)
    cfg_json = worker_config(cfg)
    outputs = [
        _cache_shard.options(num_returns=2, scheduling_strategy="SPREAD").remote(cfg_json, tokens_ref, a, b, p)
        for (a, b), p in zip(bounds, paths, strict=True)
    ]
    nodes = ray.get([node for _, node in outputs])
    cache = SharedCache(mode, starts, nbytes, nodes=nodes)
    if mode == "object_store":
        cache.refs = [states for states, _ in outputs]
        ray.wait(cache.refs, num_returns=len(cache.refs))
    else:
        cache.paths = ray.get([p for p, _ in outputs])
    cache.seconds = time.perf_counter() - t0
    return cache


@dataclass
class RayTrainRun:
    """What came back: the final trainable state, the training log, the workers' records and the cache."""

    weights: dict[str, Any]
    result: dict[str, Any]
    workers: list[dict[str, Any]]
    cache: SharedCache
    name: str
    seconds: float
    probe_state: dict[str, Any] | None = None  # the probe's weights (the export guard's reference)

    def summary(self) -> dict[str, object]:
        attempts = sorted({w["attempt"] for w in self.workers})
        return {
            "workers": len({w["rank"] for w in self.workers}),
            "nodes": sorted({w["node_id"] for w in self.workers}),
            "attempts": len(attempts),  # > 1: the worker group was restarted and resumed from a checkpoint
            "resumed_from_step": [w["resumed_from_step"] for w in self.workers if w["resumed_from_step"] is not None],
            "run": self.name,
            "worker_records": self.workers,  # rank, pid, node id, attempt, resumed_from_step of every process
            "cache": self.cache.to_json(),
            "seconds": self.seconds,
        }


def _record_worker(folder: Path, rank: int, resumed_from_step: int | None) -> None:
    """This worker's record (one file per process): which node and pid trained which rank, in which attempt."""
    folder.mkdir(parents=True, exist_ok=True)
    attempt = 1 + sum(1 for p in folder.glob(f"rank{rank}-*.json"))
    record = {
        "rank": rank,
        "pid": os.getpid(),
        "node_id": ray.get_runtime_context().get_node_id(),
        "attempt": attempt,
        "resumed_from_step": resumed_from_step,
        "started": time.time(),
        # torch.distributed's rendezvous (TCPStore, served by rank 0): the one socket a run opens beyond
        # loopback, since torch has no bind-address option for it (README, "Exposure")
        "rendezvous": f"{os.environ.get('MASTER_ADDR', '')}:{os.environ.get('MASTER_PORT', '')}",
    }
    write_json_atomic(record, folder / f"rank{rank}-{os.getpid()}.json")


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: build the model, join the data-parallel group, fit (resuming when restarted)."""
    import ray.train
    import ray.train.torch

    from ranker.metrics import impression_auc
    from textmodel.backbone import load_backbone
    from textmodel.encoder import ItemEncoder
    from textmodel.model import build_text_model_only
    from textmodel.parallel import DataParallel
    from textmodel.resume import load_state, save_state
    from textmodel.train import ClickTrainer

    cfg = Config.model_validate(config["cfg"])
    tm = cfg.textmodel
    rank = ray.train.get_context().get_world_rank()
    device = ray.train.torch.get_device()
    resume = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume = load_state(Path(folder))
    _record_worker(Path(config["records"]), rank, None if resume is None else int(resume["result"]["steps"]))
    if resume is not None and resume.get("final"):
        return  # the run had finished (its last report was taken) when the group was restarted

    def report(state: dict[str, Any]) -> None:
        """All workers report (a barrier); rank 0 attaches the state as the checkpoint."""
        with tempfile.TemporaryDirectory() as folder:
            saved = None
            if rank == 0:
                save_state(state, Path(folder))
                saved = ray.train.Checkpoint.from_directory(folder)
            ray.train.report({"steps": int(state["result"]["steps"]), "final": bool(state.get("final"))}, saved)

    model = build_text_model_only(tm, load_backbone(tm.backbone, tm.cache_dir), device, config["total_steps"])
    encoder = ItemEncoder(model.items, ray.get(config["tokens"]), tm.train.encode_batch_tokens, device)
    encoder.cache = config["cache"].open()
    parallel = DataParallel(device)
    encoder.parallel = parallel
    trainer = ClickTrainer(model, encoder, tm.train, device, impression_auc, parallel, report)
    if config["parent"] is not None:
        weights, trainer_state = ray.get(config["parent"])
        trainer.warm_start(weights, trainer_state)
    parallel.broadcast([p for p in model.parameters() if p.requires_grad] + [trainer.bias, trainer.offset_weight])
    train, selection = ray.get(config["train"]), ray.get(config["val"])  # val: the text model's selection set
    result = trainer.fit(train, selection, progress=False, resume=resume)
    report(
        {
            "final": True,
            "weights": trainer.trainable_state(),
            "result": result.to_json(),
            "probe_state": trainer.probe_state,
        }
    )


def _identity(cfg: Config, backbone, encoder, train, val, parent, total_steps: int) -> dict[str, Any]:
    """What this run trains (``offline.train_runs``): config, backbone, impressions and tokens, parent, steps."""
    arrays = [encoder.tokens.ids.numpy(), encoder.tokens.lengths.numpy()]
    for split in (train, val):
        arrays += [split.history, split.row_item, split.row_impression, split.row_label]
        arrays += [a for a in (split.impression_ts, split.row_offset) if a is not None]
    parent_version = None if parent is None else str(parent.version)
    textmodel = cfg.textmodel.model_dump(mode="json")
    return run_identity(textmodel, backbone.identity.sha256, arrays, parent_version, total_steps)


def train_on_ray(
    cfg: Config,
    backbone,
    encoder,
    train,
    val,
    parent,
    total_steps: int,
    progress: bool = True,
) -> RayTrainRun:
    """Train on Ray Train (Ray must be up: joined or started by the caller) and leave the shared cache on
    ``encoder`` (the driver scores every split through it). Raises :class:`DistributedTrainError` when the run
    cannot start or fails after ``max_failures`` restarts."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    tm = cfg.textmodel
    workers, dist_cfg = tm.train.workers, tm.train.distributed
    if len(encoder.tokens) < workers:
        raise DistributedTrainError(f"{len(encoder.tokens)} catalogue item(s) cannot be shared among {workers} workers")
    gpu = tm.train.device == "cuda" or (tm.train.device == "auto" and ray.cluster_resources().get("GPU", 0) >= workers)
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < workers:
        raise DistributedTrainError(f"textmodel.train.workers={workers}: the Ray cluster has {cpus:g} CPU(s)")
    root = storage_root(cfg)
    identity = _identity(cfg, backbone, encoder, train, val, parent, total_steps)
    name = dist_cfg.resume or new_run_name()
    if dist_cfg.resume:
        check_resume(root, name, identity)  # before any work: a refused resume costs nothing
    else:
        start_run(root, name, identity)
    started = time.perf_counter()
    cache = share_cache(cfg, backbone.identity, encoder.tokens, backbone.identity.hidden_size, workers, progress)
    encoder.cache = cache.open()
    records = root / name / WORKERS_DIR
    parent_ref = None if parent is None else ray.put((parent.weights, parent.trainer_state))
    config = {
        "cfg": worker_config(cfg),
        "tokens": ray.put(encoder.tokens),
        "train": ray.put(train),
        "val": ray.put(val),
        "cache": cache,
        "parent": parent_ref,
        "total_steps": total_steps,
        "records": str(records),
    }
    action = "resuming run" if dist_cfg.resume else "run"
    say(f"Ray Train: {workers} worker(s) ({'GPU' if gpu else 'CPU'}), {action} {name} in {root}", progress)
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name=name,
            storage_path=str(root),
            failure_config=FailureConfig(max_failures=dist_cfg.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
        ),
    )
    try:
        outcome = trainer.fit()
    except Exception as exc:  # Ray Train raises its own error types; the cause is in the message
        again = f" (continue it with --resume {name})" if (root / name / SNAPSHOT_FILE).is_file() else ""
        raise DistributedTrainError(f"Ray Train run {name} failed{again}: {exc}") from exc
    if outcome.checkpoint is None:
        raise DistributedTrainError(f"Ray Train run {name} ended without a checkpoint")
    from textmodel.resume import load_state

    with outcome.checkpoint.as_directory() as folder:
        final = load_state(Path(folder))
    if not final.get("final"):
        raise DistributedTrainError(f"Ray Train run {name}: the last checkpoint is not the final state")
    worker_records = [json.loads(p.read_text()) for p in sorted(records.glob("rank*.json"))]
    seconds = time.perf_counter() - started
    return RayTrainRun(
        final["weights"], final["result"], worker_records, cache, name, seconds, final.get("probe_state")
    )
