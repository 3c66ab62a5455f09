"""LambdaRank at scale: LightGBM's own data-parallel training (its socket "network mode") on Ray actors.

``ranker.distributed.workers: N > 1`` makes :func:`ranker.training.fit_ranker` land here. The fit is the
same ``LGBMRanker`` (same params, grid, seed, base margin, early stopping) with ``tree_learner=data``:

* **Sharding** (:func:`assign_workers`): whole impressions go to one worker, so every LightGBM query
  (``group``) is complete on its worker and the lambda gradients are the single-process ones. Impression ids
  are sorted and cut into ``N`` contiguous blocks of about equal row counts: deterministic, no hashing.
  Each worker builds its own ``group`` array (and long impressions are chunked by ``max_group_rows`` as in
  the in-process fit) and its own ``init_score`` (``logit(item CTR)`` with ``ranker.base_score``).
* **Validation**: every worker holds the *full* validation split (with its base margin). LightGBM computes
  evaluation metrics locally, without a collective, so identical validation data is what makes every worker
  take the same early-stopping decision (and stop at the same round); it costs each worker one copy of the
  validation split, which is small next to the training shards.
* **Network**: each actor reports its node IP and a free port (bound and released on that IP: 127.0.0.1 on a
  loopback-only local Ray), the driver hands everyone the ``machines`` list; LightGBM's ``Booster`` sets the
  network up from those params and frees it when the fit ends. **Exposure**: LightGBM's listening socket
  binds all interfaces (``0.0.0.0:port``; its network mode has no bind-address option), so while a fit runs
  each worker's port is reachable beyond loopback unless a firewall stops it; the ports close with the fit.
* **Result**: rank 0's booster (all ranks hold the same model) comes back as model text and is rebuilt as a
  plain ``lgb.Booster``: saving, the registry and the serving pipeline do not know it was distributed.

Why not Ray Train's ``LightGBMTrainer``: it adds a trainer actor, a placement group and checkpointing through
storage for what is one collective fit that returns a model of a few hundred kilobytes; plain actors with
LightGBM's documented network params do the same with fewer moving parts, and need nothing beyond ``ray``.

The fit needs Ray to be up (``offline.ranker_stage`` starts it from ``ray`` when ``workers > 1``) and at least
``workers * threads_per_worker`` CPUs in the cluster: all workers must run at once (a collective fit).
"""

from __future__ import annotations

import socket
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from conf import RankerConfig
from ranker.frame import GROUP, RankerInputs
from ranker.lambdarank import FitResult, Trial, dataset, estimator_params, fit_model, tune

__all__ = ["DistributedFitError", "assign_workers", "fit_distributed", "shards"]


class DistributedFitError(RuntimeError):
    """The distributed fit cannot run (no Ray, too few CPUs, too few impressions) or did not finish."""


def assign_workers(frame: pl.DataFrame, workers: int, group: str = GROUP) -> np.ndarray:
    """Worker of every row of ``frame``: sorted impression ids cut into ``workers`` contiguous blocks of about
    equal row counts, so an impression's rows all go to one worker. Raises when a worker would get nothing."""
    if workers < 1:
        raise ValueError(f"workers must be positive, got {workers}")
    counts = frame.group_by(group).len().sort(group)
    n_groups = counts.height
    if n_groups < workers:
        raise DistributedFitError(f"{n_groups} impression(s) cannot be shared among {workers} workers")
    sizes = counts["len"].to_numpy().astype(np.int64)
    before = np.cumsum(sizes) - sizes  # rows ahead of each impression in id order
    block = np.minimum(before * workers // max(int(sizes.sum()), 1), workers - 1)
    # a huge impression can swallow a block: fall back to equal numbers of impressions then
    if len(np.unique(block)) < workers:
        block = np.arange(n_groups) * workers // n_groups
    of_group = pl.DataFrame({group: counts[group], "_worker": block.astype(np.int64)})
    return frame.select(group).join(of_group, on=group, how="left", maintain_order="left")["_worker"].to_numpy()


def shards(frame: pl.DataFrame, workers: int, group: str = GROUP) -> list[pl.DataFrame]:
    """``frame`` split by :func:`assign_workers` (row order kept within each shard)."""
    worker = assign_workers(frame, workers, group)
    return [frame.filter(pl.Series(worker == k)) for k in range(workers)]


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        return int(s.getsockname()[1])


class _Worker:
    """One LightGBM machine: holds its training shard and the full validation split, fits on request."""

    def __init__(self, rank: int, train: Any, val: Any, feature_names: list[str], categorical: list[int]) -> None:
        self.rank, self.train, self.val = rank, train, val
        self.feature_names, self.categorical = feature_names, categorical

    def endpoint(self) -> tuple[str, int]:
        import ray

        host = ray.util.get_node_ip_address()
        return host, _free_port(host)

    def fit(self, estimator: dict[str, Any], network: dict[str, Any], rounds: int) -> tuple[str | None, int, float]:
        model = lgb.LGBMRanker(**estimator, **network)
        fit_model(model, self.train, self.val, list(self.feature_names), list(self.categorical), rounds)
        text = model.booster_.model_to_string() if self.rank == 0 else None
        return text, int(model.best_iteration_), float(model.best_score_["valid_0"]["ndcg@10"])


def fit_distributed(
    train: pl.DataFrame, val: pl.DataFrame, inputs: RankerInputs, cfg: RankerConfig, progress: bool = True
) -> FitResult:
    """LambdaRank over ``cfg.distributed.workers`` Ray actors, tuned by the same loop as the in-process fit
    (:func:`ranker.lambdarank.tune`; see the module doc)."""
    import ray

    dist = cfg.distributed
    n, threads = dist.workers, dist.threads_per_worker
    if not ray.is_initialized():
        raise DistributedFitError("ranker.distributed.workers > 1 needs Ray up (start_ray)")
    cpus = ray.cluster_resources().get("CPU", 0)
    if cpus < n * threads:
        raise DistributedFitError(
            f"ranker.distributed: {n} workers x {threads} thread(s) need {n * threads} CPUs at once, Ray has {cpus:g}"
        )
    parts = [dataset(p, inputs, cfg.max_group_rows) for p in shards(train, n)]
    val_ref = ray.put(dataset(val, inputs, cfg.max_group_rows))
    categorical = [inputs.features.index(c) for c in inputs.categorical]
    actor = ray.remote(num_cpus=threads)(_Worker)
    workers = [
        actor.options(scheduling_strategy="SPREAD").remote(k, parts[k], val_ref, list(inputs.features), categorical)
        for k in range(n)
    ]

    def fit_one(params: dict[str, object]) -> Trial:
        endpoints = ray.get([w.endpoint.remote() for w in workers], timeout=dist.timeout_s)
        machines = ",".join(f"{host}:{port}" for host, port in endpoints)
        estimator = {**estimator_params(params, cfg), "n_jobs": threads}
        runs = [
            w.fit.remote(
                estimator,
                {
                    "tree_learner": "data",
                    "num_machines": n,
                    "machines": machines,
                    "local_listen_port": port,
                    "time_out": max(1, dist.timeout_s // 60),
                    "pre_partition": True,
                },
                cfg.early_stopping_rounds,
            )
            for w, (_, port) in zip(workers, endpoints, strict=True)
        ]
        try:
            results = ray.get(runs, timeout=dist.timeout_s)
        except ray.exceptions.GetTimeoutError as e:
            raise DistributedFitError(f"ranker.distributed: fit not done after {dist.timeout_s}s") from e
        text, best_iteration, score = results[0]
        if len({(it, round(s, 12)) for _, it, s in results}) != 1:  # the same model everywhere, or a bug
            raise DistributedFitError(f"ranker.distributed: workers disagree: {[r[1:] for r in results]}")

        def booster() -> lgb.Booster:
            b = lgb.Booster(model_str=text)
            b.best_iteration = best_iteration
            return b

        return Trial(booster, best_iteration, score)

    try:
        return tune(cfg, fit_one, progress, label=f" ({n} workers)")
    finally:
        for w in workers:
            ray.kill(w)
