"""``recrank score --address`` on a real two-node Ray cluster (loopback, ``tests/ray_cluster.py``).

One cluster for the session, one job on it and the same job on a local single-node Ray, over the tiny
served world (champion = version 1). Both nodes share this machine's file system, so the absolute paths of
the data folder, the model cache and the SQLite MLflow store reach the actors on either node.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
import pytest
import yaml
from polars.testing import assert_frame_equal

from conf import Config
from offline.batch.staging import MANIFEST_FILE, NODE_KEY
from offline.cli import main

if TYPE_CHECKING:  # imported by pytest as a plugin (the fixture): importing it first would skip assert rewriting
    from ray_cluster import Listener, LoopbackCluster

pytest_plugins = ["ray_cluster"]
pytestmark = pytest.mark.integration

REQUESTS, SIZE, SHARD_REQUESTS = 80, 5, 5

# Sockets a Ray cluster without Serve may bind beyond loopback, each with the reason. None was found in
# Ray 2.60 with the nodes on 127.0.0.1 (GCS, raylets, dashboard and runtime-env agents, autoscaler monitor,
# Ray Client server, and every worker and actor gRPC server bind to loopback). The one known exception,
# each Serve replica's inter-deployment gRPC server on [::] (README, "Exposure"), needs Serve: not started here.
BEYOND_LOOPBACK_ALLOWED: dict[str, str] = {}


@dataclass
class Runs:
    local: Path
    cluster: Path
    listeners: set[Listener]  # sampled while the cluster job ran (its actors alive) and after it

    def manifest(self, which: str) -> dict:
        return json.loads((getattr(self, which) / MANIFEST_FILE).read_text())

    def scores(self, which: str) -> pl.DataFrame:
        return pl.read_parquet(getattr(self, which) / "part-*.parquet").sort("request_id", "item_id")


def write_requests(cfg: Config, path: Path) -> Path:
    """List-format requests over the catalogue: snapshot users, and every 7th an unknown (cold-start) one."""
    import torch

    from ranker.loading import load_configured_pipeline

    pipeline = load_configured_pipeline(cfg, "1", torch.device("cpu"), table_only=True)
    items, users = list(pipeline.text.item_ids), pipeline.snapshot.users["user_id"].to_list()
    rng = np.random.default_rng(16)
    pl.DataFrame(
        {
            "request_id": [f"R{r:04d}" for r in range(REQUESTS)],
            "user_id": [f"new-{r}" if r % 7 == 0 else str(rng.choice(users)) for r in range(REQUESTS)],
            "candidates": [[str(i) for i in rng.choice(items, SIZE, replace=False)] for _ in range(REQUESTS)],
        }
    ).write_parquet(path)
    return path


@pytest.fixture(scope="module")
def runs(served_world: Config, ray_cluster: LoopbackCluster, tmp_path_factory) -> Runs:
    """The same job twice through the CLI: a local Ray (1 node, 1 worker), then the cluster (2 workers)."""
    root = tmp_path_factory.mktemp("cluster")
    profile = root / "world.yaml"
    profile.write_text(yaml.safe_dump(served_world.model_dump(mode="json")))
    source = write_requests(served_world, root / "in.parquet")
    options = ["--config", str(profile), f"scoring.shard_requests={SHARD_REQUESTS}"]
    assert main(["score", str(source), str(root / "local"), *options, "--workers", "1", "ray.num_cpus=1"]) == 0
    from ray_cluster import Sampler

    sampler = Sampler(ray_cluster)
    sampler.start()
    try:
        cluster = ["--address", ray_cluster.address, "--workers", "2"]
        assert main(["score", str(source), str(root / "cluster"), *options, *cluster]) == 0
    finally:
        sampler.stop.set()
        sampler.join()
    return Runs(root / "local", root / "cluster", sampler.seen | set(ray_cluster.listeners()))


def test_cluster_is_two_nodes_in_two_sessions(ray_cluster: LoopbackCluster) -> None:
    names = sorted(p.name() for p in ray_cluster.processes() if p.name() in ("gcs_server", "raylet"))
    assert names == ["gcs_server", "raylet", "raylet"]
    assert ray_cluster.head_node_id != ray_cluster.second_node_id and len(ray_cluster.sessions) == 2
    assert ray_cluster.address.startswith("127.0.0.1:")


def test_shards_ran_on_both_nodes_and_the_summary_says_so(runs: Runs, ray_cluster: LoopbackCluster) -> None:
    manifest = runs.manifest("cluster")
    nodes = manifest["nodes"]
    assert set(nodes) == {ray_cluster.head_node_id, ray_cluster.second_node_id}
    shards = sorted(s for entry in nodes.values() for s in entry["shards"])
    assert shards == list(range(manifest["shards"])) == list(range(REQUESTS // SHARD_REQUESTS))
    assert sum(entry["rows"] for entry in nodes.values()) == manifest["rows"] == REQUESTS * SIZE
    assert manifest["workers"] == 2
    for node, entry in nodes.items():  # each part file names the node that scored it
        for shard in entry["shards"]:
            assert pl.read_parquet_metadata(runs.cluster / f"part-{shard:05d}.parquet")[NODE_KEY] == node
    local = runs.manifest("local")["nodes"]
    assert len(local) == 1 and not set(local) & set(nodes)  # the local run had its own single node


def test_cluster_scores_equal_single_node_scores(runs: Runs) -> None:
    local, cluster = runs.scores("local"), runs.scores("cluster")
    assert local.height == REQUESTS * SIZE
    assert_frame_equal(cluster, local, check_exact=True)  # the same floats, ranks and versions, bit for bit


def test_nothing_listens_beyond_loopback(runs: Runs) -> None:
    """Every listening socket of the cluster's processes, sampled while the job's actors were alive."""
    print(*sorted({(x.process, x.proto, x.ip) for x in runs.listeners}), sep="\n")  # shown with -rP
    names = {x.process for x in runs.listeners}
    assert any("MapWorker(MapBatches(PipelineActor))" in name for name in names), sorted(names)  # the actors
    assert any(x.pid == os.getpid() for x in runs.listeners)  # the driver's core worker
    exposed = sorted(
        f"{x.process} (pid {x.pid}) {x.proto} {x.ip}:{x.port}"
        for x in runs.listeners
        if not x.loopback and x.process not in BEYOND_LOOPBACK_ALLOWED
    )
    assert not exposed
