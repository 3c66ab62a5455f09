"""Scoring shards on Ray Data: an actor pool of ranking pipelines, one whole shard per call.

Each dataset row is one shard (its candidate rows as Arrow IPC bytes) and ``map_batches`` runs with
``batch_size=1``: Ray Data is free to bundle, split and reorder blocks, but it never splits a row, so a
request can never be scored in two pieces (the interest-score rank is a feature over the whole list).
Each actor loads the pipeline once, by version (the alias was resolved once, in the driver).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import polars as pl
import pyarrow as pa

from conf import Config
from offline.batch.inputs import TEXT_COLUMNS
from ranker.explain import explanation_columns
from ranker.pipeline import RankingPipeline

ACTOR_START_TIMEOUT_S = 600  # long enough for an autoscaler (KubeRay) to add a node for the pool


def ranked_rows(pipeline: RankingPipeline, rows: pl.DataFrame, explain: int = 0) -> pl.DataFrame:
    """Score and rank every request in ``rows`` (whole requests, in input order) with one call of the
    pipeline's batched method (one feature gather, one user-tower pass per user, one ``booster.predict``).

    rank 1 is the best candidate of its request; equal scores keep input order (a stable sort).
    ``explain`` > 0: the same rows through :meth:`RankingPipeline.explain_rows` instead, which gives the same
    scores and each row's explanation with its ``explain`` largest contributions (the columns of
    :func:`ranker.explain.explanation_columns`, after the others); 0 leaves the columns as they were.
    """
    rows = rows.sort("_row")
    if "_n" in rows.columns:
        sizes = rows.group_by("request_id").agg(pl.len().alias("got"), pl.col("_n").first())
        split = sizes.filter(pl.col("got") != pl.col("_n"))
        if split.height:
            bad = split.row(0, named=True)
            raise RuntimeError(f"request {bad['request_id']!r} reached a worker split ({bad['got']} rows)")
    keys = ["request_id", "user_id", "item_id", *(c for c in TEXT_COLUMNS if c in rows.columns)]
    explained: list[pl.Series] = []
    if explain:
        scores, explanations = pipeline.explain_rows(rows.select(keys), explain)
        explained = explanation_columns(explanations).get_columns()
    else:
        scores = np.asarray(pipeline.score_rows(rows.select(keys)), dtype=np.float64)
    return rows.select("request_id", "user_id", "item_id", "_shard").with_columns(
        pl.Series("score", scores, dtype=pl.Float64),
        pl.Series("rank", ranks_within(rows["request_id"], scores), dtype=pl.Int32),
        pl.lit(pipeline.versions.get("ranker"), dtype=pl.String).alias("ranker_version"),
        pl.lit(pipeline.versions.get("textmodel"), dtype=pl.String).alias("textmodel_version"),
        *explained,
    )


def ranks_within(requests: pl.Series, scores: np.ndarray) -> np.ndarray:
    """1-based rank of each row's score within its request, best first; ties keep row order."""
    code = requests.cast(pl.String).rank("dense").to_numpy().astype(np.int64)
    order = np.lexsort((np.arange(len(scores)), -scores, code))  # by request, then score down, then row
    sizes = np.bincount(code)[1:]
    starts = np.repeat(np.concatenate([[0], np.cumsum(sizes)[:-1]]), sizes)
    rank = np.empty(len(scores), dtype=np.int32)
    rank[order] = np.arange(len(scores)) - starts + 1
    return rank


def pack_shard(shard: int, rows: pl.DataFrame) -> dict:
    """One dataset row: the shard id and its rows as Arrow IPC bytes."""
    sink = pa.BufferOutputStream()
    table = rows.to_arrow()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return {"shard": shard, "rows": sink.getvalue().to_pybytes()}


def unpack_shard(data: bytes) -> pl.DataFrame:
    return pl.from_arrow(pa.ipc.open_stream(pa.py_buffer(data)).read_all())


class PipelineActor:
    """A Ray Data actor: ``__init__`` loads the pipeline of ranker ``version``; ``__call__`` scores shards (and
    explains the scores when ``scoring.explain`` asks)."""

    def __init__(self, cfg: Config, version: str) -> None:
        import ray

        from ranker.loading import load_configured_pipeline

        self.pipeline = load_configured_pipeline(cfg, version)  # the same loader as the API
        self.explain = cfg.scoring.explain
        self.node_id = ray.get_runtime_context().get_node_id()

    def __call__(self, batch: pa.Table) -> pa.Table:
        start = time.perf_counter()
        rows = pl.concat([unpack_shard(b) for b in batch.column("rows").to_pylist()])
        scored = ranked_rows(self.pipeline, rows, self.explain)
        # Time spent in this actor, spread over the rows: summed by the driver into worker-seconds.
        cost = (time.perf_counter() - start) / max(scored.height, 1)
        return scored.with_columns(
            pl.lit(cost, dtype=pl.Float64).alias("_cost"),
            # The Ray node that scored the shard (a dictionary column: one string per block, not per row).
            pl.lit(self.node_id, dtype=pl.Categorical).alias("_node"),
        ).to_arrow()


def run_shards(
    cfg: Config, version: str, shards: Sequence[tuple[int, pl.DataFrame]], on_shard: Callable[[int, pl.DataFrame], None]
) -> float:
    """Score ``shards`` on the running Ray with ``cfg.scoring.workers`` pipeline actors.

    Results stream back to the driver as actors finish; ``on_shard(shard, scored)`` is called once per
    shard, as soon as all of its rows have arrived (output blocks may cut or join shards); ``scored`` has a
    ``_node`` column, the id of the Ray node whose actor scored the shard. Returns the seconds the actors
    spent scoring, summed over actors.
    """
    import ray
    from ray.data import ActorPoolStrategy, DataContext

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # keep warnings, drop per-dataset INFO lines
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)  # "bars disabled": ours shows
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False  # the caller shows one bar over shards
    ctx.print_on_execution_start = False
    # Start every actor before the first shard is dispatched (Ray Data's default dispatches to the first one
    # up, which on a cluster can take every shard of a short job while the others still load); a pool that
    # the cluster cannot place then fails after this long instead of waiting forever.
    ctx.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
    expected = {k: rows.height for k, rows in shards}
    schema = pa.schema([("shard", pa.int64()), ("rows", pa.large_binary())])
    dataset = ray.data.from_arrow([pa.Table.from_pylist([pack_shard(k, rows)], schema=schema) for k, rows in shards])
    gpus = cfg.scoring.gpus_per_worker
    scored = dataset.map_batches(
        PipelineActor,
        fn_constructor_kwargs={"cfg": cfg, "version": version},
        batch_size=1,
        batch_format="pyarrow",
        compute=ActorPoolStrategy(size=cfg.scoring.workers),
        # One core per actor: a pipeline scores request-sized batches single-threaded, so throughput
        # grows with actors, not with threads per actor.
        num_cpus=1,
        num_gpus=gpus if gpus > 0 else None,
    )
    pending: dict[int, list[pl.DataFrame]] = {}
    busy = 0.0
    for part in _blocks(scored):
        busy += part["_cost"].sum()
        for (shard,), rows in part.partition_by("_shard", as_dict=True).items():
            pending.setdefault(shard, []).append(rows)
            if sum(f.height for f in pending[shard]) == expected[shard]:
                on_shard(shard, pl.concat(pending.pop(shard)))
    if pending:
        raise RuntimeError(f"Ray Data returned incomplete shards: {sorted(pending)}")
    return busy


def _blocks(dataset) -> Iterator[pl.DataFrame]:
    for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
        if batch.num_rows:
            yield pl.from_arrow(batch)
