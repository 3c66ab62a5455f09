"""LightGBM's data-parallel fit on Ray actors (ranker.distributed): whole impressions per worker, and on a tiny
world the same test impression-mean AUC as the in-process fit (within 0.005)."""

from __future__ import annotations

import time
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest
from sample_data import TINY_SYNTHETIC

from conf import Config, load_config
from features import FeatureSpec, build_features, prepare_dataset, read_items, serving_unknown_columns
from offline.ranker_stage import load_ranking_frame
from ranker.distributed import DistributedFitError, assign_workers, shards
from ranker.frame import RankerInputs, fit_rows, split_rows
from ranker.lambdarank import predict
from ranker.metrics import per_group_metrics, summarize
from ranker.training import fit_ranker
from runtime.ray_env import start_ray

pytest_plugins = ["ray_cluster"]

# bagging off: LightGBM bags rows on each worker locally, a different sample than one process draws (see
# ranker/distributed.py); with it the tiny world's early-stopped fits differ by more than the noise bound
RANKER = ["ranker.use_text=false", "ranker.tune={}", "ranker.params.n_estimators=60"]
RANKER += ["ranker.early_stopping_rounds=20", "ranker.params.min_child_samples=20", "ranker.params.subsample=1.0"]


def test_every_impression_goes_to_exactly_one_worker() -> None:
    rng = np.random.default_rng(0)
    sizes = rng.integers(1, 30, 200)
    ids = np.repeat([f"i{k:03d}" for k in range(200)], sizes)
    frame = pl.DataFrame({"impression_id": ids[rng.permutation(ids.size)]})  # rows shuffled
    for workers in (1, 2, 3, 7):
        worker = assign_workers(frame, workers)
        owners = frame.with_columns(pl.Series("w", worker)).group_by("impression_id").agg(pl.col("w").n_unique())
        assert owners["w"].max() == 1  # no impression on two workers
        parts = shards(frame, workers)
        assert [p.height > 0 for p in parts] == [True] * workers
        seen = [set(p["impression_id"]) for p in parts]
        assert set().union(*seen) == set(ids) and sum(map(len, seen)) == 200  # union = all, disjoint
        assert sum(p.height for p in parts) == frame.height
        assert (assign_workers(frame, workers) == worker).all()  # deterministic
        if workers > 1:  # about equal rows (a block is cut at an impression's edge)
            assert max(p.height for p in parts) - min(p.height for p in parts) <= 2 * sizes.max()
    with pytest.raises(DistributedFitError, match="3 impression"):
        assign_workers(pl.DataFrame({"impression_id": ["a", "b", "c"]}), 4)


@dataclass
class World:
    cfg: Config
    inputs: RankerInputs
    train: pl.DataFrame
    val: pl.DataFrame
    test: pl.DataFrame
    single_auc: float

    def auc(self, fit) -> float:
        scored = self.test.with_columns(pl.Series("score", predict(fit.booster, self.test, self.inputs)))
        return summarize(per_group_metrics(scored))["auc"]

    def fit_on_workers(self, workers: int):
        two = self.cfg.ranker.model_copy(
            update={"distributed": self.cfg.ranker.distributed.model_copy(update={"workers": workers})}
        )
        t = time.perf_counter()
        fit = fit_ranker(self.train, self.val, self.inputs, two, progress=False)
        return fit, time.perf_counter() - t


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    """The tiny synthetic world featurised, split, and fitted in process (workers = 1)."""
    out = tmp_path_factory.mktemp("distributed")
    cfg = load_config(None, [*TINY_SYNTHETIC, f"data.dir={out}", *RANKER])
    prepare_dataset(cfg.data, progress=False)
    spec = FeatureSpec.from_config(cfg)
    build_features(out, spec)
    inputs = RankerInputs.build(
        spec, cfg.ranker, read_items(out).collect(), serving_unknown=serving_unknown_columns(out)
    )
    frame = load_ranking_frame(cfg, inputs)
    w = World(cfg, inputs, fit_rows(frame, "train", inputs), split_rows(frame, "val"), split_rows(frame, "test"), 0.0)
    t = time.perf_counter()
    single = fit_ranker(w.train, w.val, inputs, cfg.ranker, progress=False)
    w.single_auc = w.auc(single)
    print(f"\nimp-AUC in process {w.single_auc:.4f} ({single.best_iteration} trees, {time.perf_counter() - t:.1f}s)")
    return w


def _check(world: World, fit, seconds: float, where: str) -> None:
    auc = world.auc(fit)
    print(f"\nimp-AUC 2 workers, {where}: {auc:.4f} ({fit.best_iteration} trees, {seconds:.1f}s)")
    assert isinstance(fit.booster, lgb.Booster) and fit.booster.num_trees() == fit.best_iteration > 0
    assert fit.booster.feature_name() == list(world.inputs.features)
    assert abs(auc - world.single_auc) <= 0.005


@pytest.mark.integration
def test_two_workers_on_a_local_ray_match_the_in_process_fit(world: World) -> None:
    started = start_ray(world.cfg.ray.model_copy(update={"num_cpus": 2, "address": None}))
    import ray  # after start_ray: it sets Ray's environment up first

    try:
        fit, seconds = world.fit_on_workers(2)
    finally:
        if started:
            ray.shutdown()
    _check(world, fit, seconds, "local Ray")


@pytest.mark.integration
def test_two_workers_on_a_two_node_cluster_match_the_in_process_fit(world: World, ray_cluster) -> None:
    """One CPU per node: the two LightGBM machines run on different nodes (ports on 127.0.0.1 each)."""
    started = start_ray(world.cfg.ray, address=ray_cluster.address)
    import ray

    try:
        assert len([n for n in ray.nodes() if n["Alive"]]) == 2 and ray.cluster_resources()["CPU"] == 2
        fit, seconds = world.fit_on_workers(2)
    finally:
        if started:
            ray.shutdown()
    _check(world, fit, seconds, "two-node cluster")
