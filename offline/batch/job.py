"""One batch-scoring job (``recrank score``): read, check, shard, score on Ray Data, verify, move into place.

1. Read the input (long or list layout) and find bad rows; the "unknown item without text" check asks a
   pipeline loaded in the driver (on CPU, only for the check, then dropped).
2. Resolve ``<prefix>-ranker@alias`` once: every actor loads that version and the textmodel it pins, so an
   alias moving during the job cannot mix models.
3. Cut the requests (in order of first appearance) into shards of ``scoring.shard_requests`` whole requests;
   reuse the finished parts of an interrupted run of the same job (:mod:`offline.batch.staging`).
4. Score the remaining shards on Ray Data (:mod:`offline.batch.workers`; with ``scoring.explain`` N, also
   each score's explanation, its N largest contributions), write each as a part file.
5. Check rows and coverage, write ``_manifest.json`` (and ``_rejects.parquet``), move the folder into place.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import polars as pl

from conf import Config
from features.build import ONLINE_FILES
from features.schema import DataValidationError
from features.store import snapshot_dir
from offline.batch import inputs, staging
from offline.batch.workers import run_shards

JOB_FORMAT = 1


@dataclass
class ScoreSummary:
    """What a scoring job did (also the content of ``_manifest.json``, less ``output``).

    ``seconds`` is the whole call; ``seconds_scoring`` runs from Ray start-up to the last part written and
    ``rows_per_s`` is the rows scored by this run over it; ``worker_seconds`` is the time the actors spent
    in scoring calls, summed over actors (rows / worker_seconds = one actor's rate while busy).
    ``nodes`` maps each Ray node id that scored shards (in this run or the one resumed) to its shards and
    rows: on a cluster it shows where the work ran.
    """

    output: str
    rows: int
    requests: int
    rejects: int
    shards: int
    shards_reused: int
    workers: int
    model_alias: str
    versions: dict[str, str | None]
    seconds: float
    seconds_scoring: float
    rows_per_s: float
    worker_seconds: float
    nodes: dict[str, dict] = field(default_factory=dict)
    job: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)


def _absolute(cfg: Config) -> Config:
    """A copy of ``cfg`` with absolute paths: actors may start in another working directory."""
    cfg = cfg.model_copy(deep=True)
    cfg.data.dir = Path(cfg.data.dir).resolve()
    cfg.textmodel.cache_dir = Path(cfg.textmodel.cache_dir).resolve()
    return cfg


def _snapshot_fingerprint(data_dir: Path) -> list[dict]:
    """The online snapshot feeds the features: a rebuilt snapshot is a different job."""
    folder = snapshot_dir(data_dir)
    return inputs.fingerprint([folder / f for f in ONLINE_FILES if (folder / f).is_file()])


def _check_paths(source: Path, output: Path) -> None:
    source, output = source.resolve(), output.resolve()
    if output == source or output in source.parents or source in output.parents:
        raise ValueError(f"{output}: OUTPUT must not be, contain or lie inside INPUT ({source})")


def _shards(rows: pl.DataFrame, shard_requests: int) -> pl.DataFrame:
    """Number requests by first appearance and cut them into shards of whole requests."""
    first = pl.col("_row").min().over("request_id")
    rows = rows.with_columns(
        ((first.rank("dense") - 1) // shard_requests).cast(pl.Int64).alias("_shard"),
        pl.len().over("request_id").alias("_n"),
    )
    # Text columns that are empty everywhere (list input, catalogue items) need not travel to the actors.
    empty = [c for c in inputs.TEXT_COLUMNS if rows[c].null_count() == rows.height]
    return rows.drop(*empty, "_file").sort("_shard", "_row")


def score_batch(
    cfg: Config,
    source: Path,
    output: Path,
    *,
    skip_bad_rows: bool = False,
    progress: bool = True,
) -> ScoreSummary:
    """Score every candidate row of ``source`` into the parquet folder ``output`` (see the module docstring).

    Starts a local Ray through :func:`runtime.ray_env.start_ray` (or joins ``cfg.ray.address``) when shards
    are left to score, and shuts it down again if this call started it.
    """
    import torch

    from ranker.loading import load_configured_pipeline, pair_versions, registry_client, tracking_uri
    from runtime.ray_env import start_ray

    start = time.perf_counter()
    source, output = Path(source), Path(output)
    cfg = _absolute(cfg)
    files = inputs.input_files(source)
    _check_paths(source, output)
    frame = inputs.read_input(files)
    versions = pair_versions(registry_client(cfg), cfg.mlflow.model_prefix, cfg.scoring.model_alias)
    # Only a pipeline knows which items it has vectors for and which text it reads: ask one (on CPU), without
    # the backbone's weights (the table and the tokenizer answer both questions).
    pipeline = load_configured_pipeline(cfg, versions["ranker"], torch.device("cpu"), table_only=True)
    checked = inputs.check_rows(frame, files, pipeline, skip_bad_rows)
    del pipeline, frame
    gc.collect()
    rows = _shards(checked.rows, cfg.scoring.shard_requests)
    if rows.height == 0:
        raise DataValidationError(source, None, f"no row left to score ({checked.rejects.height} rejected)")
    shard_rows = dict(rows.group_by("_shard").len().iter_rows())
    job = {
        "format": JOB_FORMAT,
        "input": inputs.fingerprint(files),
        "snapshot": _snapshot_fingerprint(cfg.data.dir),
        "tracking_uri": tracking_uri(cfg),
        "model_prefix": cfg.mlflow.model_prefix,
        "versions": versions,
        "shard_requests": cfg.scoring.shard_requests,
        "shards": len(shard_rows),
        "rows": rows.height,
        "rejects": checked.rejects.height,
        # parts with and without explanations have other columns: never mixed (absent when off, as before it existed)
        **({"explain": cfg.scoring.explain} if cfg.scoring.explain else {}),
    }
    stage = staging.staging_dir(output)
    done = staging.open_staging(stage, job, shard_rows)
    todo = [(k, part) for (k,), part in rows.partition_by("_shard", as_dict=True).items() if k not in done]
    scoring_start = time.perf_counter()
    busy = 0.0
    if todo:
        started = start_ray(cfg.ray)
        bar = _progress(len(shard_rows), len(done), progress)
        try:
            if cfg.ray.address is None:
                _check_local_resources(cfg)

            def write(shard: int, scored: pl.DataFrame) -> None:
                staging.write_part(stage, shard, scored, scored["_node"][0])
                bar.update(1)

            busy = run_shards(cfg, versions["ranker"], sorted(todo, key=lambda t: t[0]), write)
        except BaseException:
            staging.drop_if_empty(stage)  # a job that failed before its first part leaves nothing behind
            raise
        finally:
            bar.close()
            if started:
                import ray

                ray.shutdown()
    scoring_seconds = time.perf_counter() - scoring_start
    staging.check_parts(stage, rows, versions)
    scored_rows = sum(part.height for _, part in todo)
    summary = ScoreSummary(
        output=str(output),
        rows=rows.height,
        requests=rows["request_id"].n_unique(),
        rejects=checked.rejects.height,
        shards=len(shard_rows),
        shards_reused=len(done),
        workers=cfg.scoring.workers,
        model_alias=cfg.scoring.model_alias,
        versions=versions,
        seconds=0.0,
        seconds_scoring=scoring_seconds,
        rows_per_s=scored_rows / scoring_seconds if scored_rows else 0.0,
        worker_seconds=busy,
        nodes=staging.part_nodes(stage),
        job=job,
    )
    summary.seconds = time.perf_counter() - start
    manifest = {k: v for k, v in summary.to_json().items() if k != "output"}
    staging.finalise(stage, output, manifest, checked.rejects)
    return summary


def _check_local_resources(cfg: Config) -> None:
    """An actor pool larger than a local Ray can place would wait forever: say so instead."""
    import ray

    have = ray.cluster_resources()
    workers, gpus = cfg.scoring.workers, cfg.scoring.workers * cfg.scoring.gpus_per_worker
    if have.get("CPU", 0) < workers:
        raise ValueError(
            f"scoring.workers={workers} needs {workers} CPUs (one per actor); the local Ray has "
            f"{have.get('CPU', 0):g} (ray.num_cpus)"
        )
    if gpus > have.get("GPU", 0):
        raise ValueError(
            f"scoring.workers x scoring.gpus_per_worker = {gpus:g} GPUs; the local Ray has {have.get('GPU', 0):g}"
        )


def _progress(total: int, done: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=done, unit="shard", desc="scoring", disable=not enabled, dynamic_ncols=True)
