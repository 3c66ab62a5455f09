"""The staging folder of a scoring job: part files per shard, resumption, the final checks and the move.

Layout, next to OUTPUT while the job runs::

    OUTPUT.partial/_job.json           what the parts were computed from (input fingerprint, models, shards)
    OUTPUT.partial/part-00000.parquet  one shard's scored rows, written through a temporary file + rename;
                                       its parquet key-value metadata ``recrank.node_id`` names the Ray node
                                       that scored it (the columns stay the output schema)

A part file exists only when its shard is complete, so after a crash the same command finds the finished
shards and scores only the rest. A staging folder made for a different job (another input, other model
versions, another shard size) is removed and the job starts over: parts of two jobs are never mixed.
The folder becomes OUTPUT only after the checks in :func:`finalise` pass; OUTPUT is replaced only then.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl

from features.io import atomic_path, replace_path, write_json_atomic, write_parquet_atomic
from ranker.explain import EXPLANATION_COLUMNS

JOB_FILE = "_job.json"
MANIFEST_FILE = "_manifest.json"
REJECTS_FILE = "_rejects.parquet"
OUTPUT_COLUMNS = ("request_id", "user_id", "item_id", "score", "rank", "ranker_version", "textmodel_version")
# and, with ``scoring.explain``, after them: base_value, prior, explanation, rest (ranker.explain)
NODE_KEY = "recrank.node_id"  # parquet key-value metadata of a part: the Ray node that scored it


class ScoringCheckError(ValueError):
    """The scored parts do not match the input (missing, extra or duplicated rows): nothing was moved."""


def staging_dir(output: Path) -> Path:
    return output.with_name(output.name + ".partial")


def part_path(staging: Path, shard: int) -> Path:
    return staging / f"part-{shard:05d}.parquet"


def _part_rows(path: Path) -> int | None:
    try:
        return pl.scan_parquet(path).select(pl.len()).collect().item()
    except Exception:  # unreadable: score the shard again
        return None


def open_staging(staging: Path, job: dict, shard_rows: dict[int, int]) -> set[int]:
    """Prepare ``staging`` for ``job``; return the shards whose parts are already complete (to reuse)."""
    job_path = staging / JOB_FILE
    previous = None
    if job_path.is_file():
        try:
            previous = json.loads(job_path.read_text())
        except (OSError, json.JSONDecodeError):
            previous = None
    if staging.exists() and previous != job:
        shutil.rmtree(staging)
    staging.mkdir(parents=True, exist_ok=True)
    for leftover in staging.glob(".*.tmp"):  # temporary files of a write interrupted by the crash
        shutil.rmtree(leftover, ignore_errors=True)
    if previous != job:
        write_json_atomic(job, job_path)
        return set()
    done = set()
    for path in staging.glob("part-*.parquet"):
        shard = int(path.stem.split("-")[1])
        if shard in shard_rows and _part_rows(path) == shard_rows[shard]:
            done.add(shard)
        else:
            path.unlink()
    return done


def drop_if_empty(staging: Path) -> None:
    """Remove a staging folder that holds no finished part (nothing there worth resuming)."""
    if staging.is_dir() and not any(staging.glob("part-*.parquet")):
        shutil.rmtree(staging)


def write_part(staging: Path, shard: int, scored: pl.DataFrame, node_id: str | None = None) -> Path:
    """Write one shard's part (the output columns, and the explanation's when ``scored`` has them); ``node_id``
    goes into the file's metadata, so a part keeps its provenance through a resumed job without a column that
    readers of the output would see."""
    path = part_path(staging, shard)
    columns = [*OUTPUT_COLUMNS, *(c for c in EXPLANATION_COLUMNS if c in scored.columns)]
    with atomic_path(path) as tmp:
        scored.select(columns).write_parquet(
            tmp, compression="zstd", statistics=True, metadata={NODE_KEY: node_id} if node_id else None
        )
    return path


def part_nodes(staging: Path) -> dict[str, dict]:
    """``{node id: {"shards": [...], "rows": n}}`` over the parts in ``staging`` (footers only); parts
    written without a node id are left out."""
    out: dict[str, dict] = {}
    for path in sorted(staging.glob("part-*.parquet")):
        node = pl.read_parquet_metadata(path).get(NODE_KEY)
        if node is not None:
            entry = out.setdefault(node, {"shards": [], "rows": 0})
            entry["shards"].append(int(path.stem.split("-")[1]))
            entry["rows"] += _part_rows(path) or 0
    return out


def check_parts(staging: Path, expected: pl.DataFrame, versions: dict[str, str | None]) -> pl.DataFrame:
    """Check the parts against the rows that should have been scored; return (request_id, item_id) counts.

    Row counts equal, every (request_id, item_id) exactly once, every request covered, and every row
    scored by the resolved model versions. The error names the first mismatch and its size.
    """
    parts = sorted(staging.glob("part-*.parquet"))
    got = (
        pl.scan_parquet(parts).select("request_id", "item_id", "ranker_version", "textmodel_version").collect()
        if parts
        else pl.DataFrame(
            schema=dict.fromkeys(("request_id", "item_id", "ranker_version", "textmodel_version"), pl.String)
        )
    )
    keys = expected.select("request_id", "item_id")
    dup = got.select("request_id", "item_id").is_duplicated().sum()
    missing = keys.join(got, on=["request_id", "item_id"], how="anti")
    extra = got.join(keys, on=["request_id", "item_id"], how="anti")
    where = f"{staging}: "
    if dup:
        raise ScoringCheckError(f"{where}{dup} output rows repeat a (request_id, item_id)")
    if missing.height:
        n_req = missing["request_id"].n_unique()
        raise ScoringCheckError(f"{where}{missing.height} input rows ({n_req} requests) have no score")
    if extra.height:
        raise ScoringCheckError(f"{where}{extra.height} output rows match no input row")
    if got.height != keys.height:
        raise ScoringCheckError(f"{where}{got.height} output rows for {keys.height} input rows")
    wrong = got.filter(
        (pl.col("ranker_version") != versions.get("ranker"))
        | pl.col("textmodel_version").ne_missing(versions.get("textmodel"))
    )
    if wrong.height:
        raise ScoringCheckError(f"{where}{wrong.height} rows were scored by other model versions than {versions}")
    return got


def finalise(staging: Path, output: Path, manifest: dict, rejects: pl.DataFrame) -> None:
    """Write the rejects and the manifest into ``staging``, then move it into place as ``output``."""
    if rejects.height:
        write_parquet_atomic(rejects, staging / REJECTS_FILE)
    write_json_atomic(manifest, staging / MANIFEST_FILE)
    (staging / JOB_FILE).unlink()
    replace_path(staging, output)
