"""Benchmark: batch scoring with the batched bundle method, against a floor, the old per-request path and Ray.

    python bench/scoring.py [--rows 2400000] [--request-size 20] [--known-share 0.1] [--workers 1,2]
                            [--shard-requests N] [--old-requests 2000] [--config conf/demo.yaml] [key=value ...]

Needs a data folder with a registered champion (default ``data/ml100k`` of ``conf/demo.yaml``); without one it
names the command that makes one (``recrank pipeline --config conf/demo.yaml data.dir=data/ml100k``) and exits
with status 2. ``make bench-scoring`` runs it with the Makefile's profile and data folder.

The bench world
    ``--rows`` candidate rows in requests of ``--request-size`` distinct items drawn from the items that are both
    in the text model's embedding table and in the online snapshot (so nothing needs encoding from text),
    written once into ``data/bench/`` (the file name carries the shape, the seed, the snapshot and the text
    model). The goal needs many distinct users (at least 100k, where ml100k's snapshot has 943), so a share
    ``--known-share`` of the requests comes from the snapshot's users (their histories and counts) and every
    other request from a new synthetic id (``cold-<n>``, one per request): a cold-start user, whom the
    pipeline gives an empty history and zero counts, which still costs one user-tower pass per distinct user.
    The defaults give 120,000 requests and about 109,000 distinct users. ``--request-size 100`` gives the
    shape of the earlier figures (24k rows/s busy per worker); at least 100k distinct users then needs
    ``--rows`` of 11M or more.

What one run measures, all on one core (``torch.set_num_threads(1)``, ``num_threads=1`` for LightGBM and
``POLARS_MAX_THREADS=1`` unless set in the environment; the children and their Ray actors inherit it)
    1. floor: the model matrix of every bench row is built once (features, interest score and rank,
       ``ranker.frame.model_matrix``: the frame the new path builds, replicated step by step here, and held
       equal to it: margin + ``booster.predict`` over it must give the new path's scores bit for bit); then
       one ``booster.predict(X, num_threads=1)`` over all rows plus the interest score's gather and float64
       dot products for the same rows (item vectors: ``pipeline.text.vectors``; user vectors:
       ``pipeline.text.head.user_vectors`` of every distinct user, precomputed: only gather + dot is timed).
       The build's stages (feature gather, interest scores, rank, matrix) are timed too, for orientation.
    2. old path: the request path before the bundle, request by request over ``--old-requests`` requests
       sampled from the world (``features.behaviour.online_rows``, ``TextScorer.scores`` of the user's
       history, interest rank, ``ranker.lambdarank.predict``): the oracle of
       ``tests/offline/test_registry.py::test_batched_bundle_scores_equal_the_old_per_request_path``.
    3. new path in process: ``pipeline.score_rows(chunk, num_threads=1)`` over all rows, in chunks of
       ``--shard-requests`` whole requests (the batch job's shards); its scores of the sampled requests must
       equal the old path's (``np.array_equal``: printed, and the exit status is 1 when they do not).
    4. the batch job (the library call behind ``recrank score``), with each worker count, each in a fresh
       child process that starts its own local Ray: busy rows/s per worker (rows / seconds the actors spend
       in scoring calls, summed over actors), busy throughput (that x workers) and its ratio to 1 worker;
       end to end (rows / the whole call) and over the scoring phase (Ray start to last part); start-up apart
       (the scoring phase less the busy seconds per worker: Ray and actor start-up, scheduling, the tail);
       and the peak RSS summed over the child's process tree (driver + Ray processes + actors; shared pages
       such as the object store count once per process that maps them, so it over-states).
    5. ratios: new / floor, new / old, busy per worker / floor, and the issue's goals (#14) as pass / FAIL
       lines: busy per worker >= 5 x 24k, >= 0.5 x floor; 2 workers >= 1.8 x one; >= 1M rows; >= 100k users.

A quick check on a tiny world (a champion in minutes; its figures say nothing about ml100k): ``recrank pipeline``
with the overrides of ``tests/sample_data.py`` (``TINY_SYNTHETIC``, ``TEXT_OVERRIDES``) and
``data.dir=/tmp/benchdata/d textmodel.cache_dir=/tmp/benchdata/models``, then
``python bench/scoring.py --config '' --rows 200000 --shard-requests 1000 --out /tmp/benchdata/scoring.json
data.dir=/tmp/benchdata/d textmodel.cache_dir=/tmp/benchdata/models textmodel.backbone=tiny-gpt2
textmodel.train.device=cpu data.history_cap=8``.

Prints a short table and writes ``bench/results/scoring.json``. The in-process pipeline is loaded table-only
(the embedding table and the user tower, no backbone weights: every bench item has a vector); the actors load
theirs as ``recrank score`` does.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

os.environ.setdefault("POLARS_MAX_THREADS", "1")  # one core per worker, here and in the children (before polars)

import numpy as np
import polars as pl
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import Config, load_config  # noqa: E402
from features.store import snapshot_dir  # noqa: E402

TODAY_BUSY = 24_000  # busy rows/s per worker before #14 (README, 100-item requests)
GOALS = {"busy_x_today": 5.0, "busy_x_floor": 0.5, "two_workers_x_one": 1.8, "rows": 1_000_000, "users": 100_000}
DOT_CHUNK = 65_536

CHILD = """
import json, sys, time
from pathlib import Path
start = time.perf_counter()
from conf import load_config
from offline.batch import score_batch
cfg = load_config(sys.argv[1] or None, json.loads(sys.argv[2]))
summary = score_batch(cfg, Path(sys.argv[3]), Path(sys.argv[4]), progress=False)
print(json.dumps({**summary.to_json(), "process_seconds": time.perf_counter() - start}))
"""


def shown(path: str | Path) -> str:
    """``path`` relative to the repository when it lies inside it (as a command would name it)."""
    path = Path(path)
    with contextlib.suppress(ValueError):
        return str(path.resolve().relative_to(ROOT))
    return str(path)


def load_champion(cfg: Config, config: str | None, overrides: list[str]):
    """The champion's pipeline, table-only, on CPU; without a champion, the command that makes one, and exit 2."""
    import torch

    from ranker.loading import ModelPairError, load_configured_pipeline, registry_client, resolve_alias

    given = [o for o in overrides if not o.startswith(("scoring.", "data.dir="))]
    make = " ".join(
        [
            "recrank pipeline",
            *(["--config", shown(config)] if config else []),
            f"data.dir={shown(cfg.data.dir)}",
            *given,
        ]
    )
    data = Path(cfg.data.dir)
    store_is_local = not (os.environ.get("MLFLOW_TRACKING_URI") or cfg.mlflow.tracking_uri)
    no_registry = store_is_local and not (data / "mlflow" / "mlflow.db").is_file()
    if not (snapshot_dir(data) / "online_meta.json").is_file() or no_registry:
        print(f"no trained data folder with a registry at {shown(data)}: run `{make}` first", file=sys.stderr)
        raise SystemExit(2)
    try:
        version = resolve_alias(registry_client(cfg), cfg.mlflow.model_prefix, cfg.scoring.model_alias)
    except ModelPairError as exc:
        print(f"{exc}\nno {cfg.scoring.model_alias} to benchmark: run `{make}` first", file=sys.stderr)
        raise SystemExit(2) from None
    return load_configured_pipeline(cfg, version, torch.device("cpu"), table_only=True)


def make_input(pipeline, folder: Path, rows: int, size: int, known_share: float, seed: int) -> tuple[Path, dict]:
    """The bench world's long-format rows (written once per shape) and what it is made of."""
    items = pipeline.snapshot.items["item_id"].cast(pl.String).to_list()
    if pipeline.text is not None:
        table = set(pipeline.text.item_ids)
        items = [i for i in items if i in table]
    if len(items) < size:
        raise SystemExit(f"--request-size {size}: the snapshot and the embedding table share only {len(items)} items")
    known = pipeline.snapshot.users["user_id"].cast(pl.String).to_list()
    lineage = [pipeline.versions.get("snapshot"), pipeline.versions.get("textmodel"), len(items), len(known)]
    key = json.dumps([rows, size, known_share, seed, *lineage])
    path = folder / f"scoring-{rows}x{size}-{hashlib.sha256(key.encode()).hexdigest()[:10]}.parquet"
    if not path.is_file():
        rng = np.random.default_rng(seed)
        items_a, known_a = np.asarray(items, dtype=object), np.asarray(known, dtype=object)
        n_req = -(-rows // size)
        frames = []
        for start in range(0, n_req, 2000):
            n = min(2000, n_req - start)
            picks = np.argpartition(rng.random((n, len(items))), size - 1, axis=1)[:, :size]  # without replacement
            who = np.asarray([f"cold-{start + i:08d}" for i in range(n)], dtype=object)
            warm = rng.random(n) < known_share
            who[warm] = known_a[rng.integers(0, len(known_a), int(warm.sum()))]
            frames.append(
                pl.DataFrame(
                    {
                        "request_id": np.repeat([f"r{start + i:08d}" for i in range(n)], size),
                        "user_id": np.repeat(who.astype(str), size),
                        "item_id": items_a[picks].ravel().astype(str),
                    }
                )
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        pl.concat(frames).head(rows).write_parquet(tmp)
        tmp.rename(path)
    frame = pl.read_parquet(path, columns=["request_id", "user_id"])
    users = frame["user_id"].unique()
    cold = int(users.str.starts_with("cold-").sum())
    world = {
        "rows": frame.height,
        "requests": frame["request_id"].n_unique(),
        "request_size": size,
        "items": len(items),
        "distinct_users": users.len(),
        "snapshot_users_in_world": users.len() - cold,
        "snapshot_users": len(known),
        "cold_start_users": cold,
        "known_share": known_share,
        "users_note": (
            "requests come mostly from new synthetic ids (cold-<n>, one per request: cold-start users with an "
            "empty history and zero counts, one user-tower pass each) plus the snapshot's own users"
        ),
    }
    return path, world


def chunks(rows: pl.DataFrame, shard_requests: int) -> list[pl.DataFrame]:
    """Whole requests in order of first appearance, ``shard_requests`` a chunk (the batch job's shards)."""
    order = rows.select(pl.col("request_id").unique(maintain_order=True)).with_row_index("_req")
    keyed = rows.join(order, on="request_id", how="left", maintain_order="left").with_row_index("_row")
    keyed = keyed.sort("_req", "_row").with_columns((pl.col("_req") // shard_requests).alias("_chunk"))
    return [part.drop("_req", "_row", "_chunk") for part in keyed.partition_by("_chunk", maintain_order=True)]


def new_path(pipeline, parts: list[pl.DataFrame]) -> tuple[dict, np.ndarray]:
    """``pipeline.score_rows`` chunk by chunk, one thread: (timing, the scores in the chunks' row order)."""
    pipeline.score_rows(parts[0].head(1), num_threads=1)  # warm-up (lazy indexes, first-call costs)
    out, rows = [], 0
    start = time.perf_counter()
    for part in parts:
        out.append(np.asarray(pipeline.score_rows(part, num_threads=1)))
        rows += part.height
    seconds = time.perf_counter() - start
    passes = sum(p["user_id"].n_unique() for p in parts)  # one user-tower pass per distinct user of a chunk
    timing = {"rows": rows, "chunks": len(parts), "user_tower_passes": passes, "seconds": seconds}
    return {**timing, "rows_per_s": rows / seconds}, np.concatenate(out)


def old_path(pipeline, requests: list[pl.DataFrame]) -> tuple[dict, list[np.ndarray]]:
    """The per-request path before the bundle, one request at a time (the test's oracle), one thread."""
    from features.behaviour import online_rows
    from ranker.frame import GROUP, with_interest_rank
    from ranker.lambdarank import predict

    snapshot, spec, uses_text = pipeline.snapshot, pipeline.spec, pipeline.inputs.uses_text

    def score(rid: str, user: str, items: list[str]) -> np.ndarray:
        frame = online_rows(snapshot, user, items, snapshot.as_of, spec)
        if uses_text:
            interest = pipeline.text.scores(pipeline.history(user), items)
            n = len(items)
            frame = frame.hstack([pl.Series("interest_score", interest), pl.Series(GROUP, [rid] * n)])
            frame = with_interest_rank(frame)
        return predict(pipeline.booster, frame, pipeline.inputs)

    keys = [(r["request_id"][0], r["user_id"][0], r["item_id"].to_list()) for r in requests]
    score(*keys[0])  # warm-up
    out, rows = [], 0
    start = time.perf_counter()
    for key in keys:
        out.append(score(*key))
        rows += len(key[2])
    seconds = time.perf_counter() - start
    return {"requests": len(keys), "rows": rows, "seconds": seconds, "rows_per_s": rows / seconds}, out


def model_inputs(pipeline, parts: list[pl.DataFrame]) -> dict:
    """The new path's frame, replicated step by step per chunk, as (X, base margin, interest), stages timed."""
    from ranker.frame import GROUP, base_margin, model_matrix, with_interest_rank

    source, inputs = pipeline.online, pipeline.inputs
    stages = dict.fromkeys(("features", "interest", "rank", "matrix"), 0.0)
    xs, margins, interests = [], [], []
    for part in parts:
        t0 = time.perf_counter()
        frame = source.features(part)
        t1 = t2 = time.perf_counter()
        if inputs.uses_text:
            histories, group = source.histories(part)
            interest = pipeline.text.scores_rows(histories, group, part["item_id"].to_list())
            t2 = time.perf_counter()
            frame = with_interest_rank(
                frame.hstack([pl.Series("interest_score", interest), part["request_id"].alias(GROUP)])
            )
            interests.append(interest)
        t3 = time.perf_counter()
        xs.append(model_matrix(frame, inputs))
        margins.append(base_margin(frame, inputs))
        t4 = time.perf_counter()
        for name, seconds in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
            stages[name] += seconds
    x = np.concatenate(xs)
    del xs
    return {
        "x": x,
        "margin": np.concatenate(margins),
        "interest": np.concatenate(interests) if interests else None,
        "stages_seconds": stages,
    }


def vector_rows(pipeline, rows: pl.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
    """Untimed set-up of the floor's dot products: user vectors of every distinct user (the user tower, float64),
    the item table in float64, each row's user and item index, and the score scale."""
    text = pipeline.text
    codes: dict[str, int] = {}
    users = rows["user_id"].to_list()
    row_user = np.fromiter((codes.setdefault(u, len(codes)) for u in users), np.int64, len(users))
    history = text.history_matrix([pipeline.history(u) for u in codes])
    user_vectors = text.head.user_vectors(history).cpu().numpy()
    item_vectors = text.vectors.detach().cpu().double().numpy()
    index = text.index
    row_item = np.fromiter((index[i] for i in rows["item_id"].to_list()), np.int64, rows.height)
    return user_vectors, item_vectors, row_user, row_item, float(text.head.scale)


def floor(pipeline, rows: pl.DataFrame, built: dict) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """One ``booster.predict(X, num_threads=1)`` over all rows + gather and float64 dot products for them."""
    x = built["x"]
    pipeline.booster.predict(x[:1000], num_threads=1)  # warm-up
    start = time.perf_counter()
    trees = pipeline.booster.predict(x, num_threads=1)
    predict_s = time.perf_counter() - start
    dot, dot_s = None, 0.0
    if pipeline.inputs.uses_text:
        users, items, row_user, row_item, scale = vector_rows(pipeline, rows)
        dot = np.empty(len(row_user))
        start = time.perf_counter()
        for s in range(0, len(row_user), DOT_CHUNK):
            e = s + DOT_CHUNK
            dot[s:e] = np.einsum("ij,ij->i", users[row_user[s:e]], items[row_item[s:e]])
        dot *= scale
        dot_s = time.perf_counter() - start
    n = x.shape[0]
    out = {
        "rows": n,
        "features": x.shape[1],
        "trees": pipeline.booster.num_trees(),
        "predict_seconds": predict_s,
        "dot_seconds": dot_s,
        "seconds": predict_s + dot_s,
        "rows_per_s": n / (predict_s + dot_s),
        "predict_rows_per_s": n / predict_s,
        "dot_rows_per_s": n / dot_s if dot_s else None,
    }
    return out, trees, dot


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # a process may end between listing and reading
            total += p.memory_info().rss
    return total


def run_job(config: str | None, overrides: list[str], source: Path, out: Path) -> dict:
    """One batch job in a fresh child process; its summary plus the peak RSS of its process tree."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", CHILD, str(config) if config else "", json.dumps(overrides), str(source), str(out)]
    child = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc, peak, stop = psutil.Process(child.pid), [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], tree_rss(proc))
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = child.communicate()
    stop.set()
    sampler.join()
    if child.returncode != 0:
        raise SystemExit(f"scoring job failed ({child.returncode}):\n{stderr[-3000:]}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary.update(peak_rss_gib=peak[0] / 2**30)
    return summary


def in_process(pipeline, source: Path, shard_requests: int, old_requests: int, seed: int) -> dict:
    """Steps 1-3 (and the equality checks) in this process, one thread."""
    import torch

    torch.set_num_threads(1)
    rows = pl.read_parquet(source, columns=["request_id", "user_id", "item_id"])
    parts = chunks(rows, shard_requests)
    rows = pl.concat(parts)  # the chunks' row order: every array below is in it

    new, scores = new_path(pipeline, parts)

    ids = rows["request_id"].unique(maintain_order=True)
    rng = np.random.default_rng(seed + 1)
    sample = ids.gather(np.sort(rng.choice(len(ids), size=min(old_requests, len(ids)), replace=False)))
    picked = rows.with_columns(pl.Series("_new", scores)).filter(pl.col("request_id").is_in(sample.implode()))
    requests = picked.partition_by("request_id", maintain_order=True)
    old, old_scores = old_path(pipeline, requests)
    equal = all(np.array_equal(r["_new"].to_numpy(), o) for r, o in zip(requests, old_scores, strict=True))
    sampled_users = picked["user_id"].unique()
    old.update(
        scores_equal_new_path=equal,
        cold_start_requests=int(sum(r["user_id"][0].startswith("cold-") for r in requests)),
        distinct_users=sampled_users.len(),
    )
    del requests, old_scores, picked

    built = model_inputs(pipeline, parts)
    del parts
    base, trees, dot = floor(pipeline, rows, built)
    base.update(
        matrix_reproduces_new_path=bool(np.array_equal(built["margin"] + trees, scores)),
        build_stages_seconds=built["stages_seconds"],
        build_rows_per_s=rows.height / sum(built["stages_seconds"].values()),
    )
    if dot is not None:
        base["dot_max_abs_diff_to_interest"] = float(np.max(np.abs(dot - built["interest"])))
    return {"floor": base, "old": old, "new": new}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=2_400_000)
    parser.add_argument("--request-size", type=int, default=20)
    parser.add_argument("--known-share", type=float, default=0.1, help="share of requests from snapshot users")
    parser.add_argument("--workers", default="1,2", help="worker counts to run, comma-separated ('' for none)")
    parser.add_argument(
        "--shard-requests", type=int, default=None, help="requests per shard and chunk (default: 100k rows' worth)"
    )
    parser.add_argument("--old-requests", type=int, default=2000, help="requests timed on the old path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--config", default="conf/demo.yaml", help="profile ('' for conf/default.yaml alone)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/scoring.json")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = parser.parse_args()
    config = str(ROOT / args.config) if args.config and not Path(args.config).is_absolute() else (args.config or None)
    cfg = load_config(config, args.overrides)
    cfg.data.dir = (ROOT / cfg.data.dir) if not Path(cfg.data.dir).is_absolute() else Path(cfg.data.dir)
    shard_requests = args.shard_requests or max(1, 100_000 // args.request_size)
    started = time.perf_counter()

    pipeline = load_champion(cfg, config, args.overrides)
    source, world = make_input(pipeline, ROOT / "data/bench", args.rows, args.request_size, args.known_share, args.seed)
    print(f"input: {shown(source)} ({world['rows']:,} rows, {world['distinct_users']:,} users)", flush=True)
    measured = in_process(pipeline, source, shard_requests, args.old_requests, args.seed)
    versions = dict(pipeline.versions)
    del pipeline
    gc.collect()
    base, old, new = measured["floor"], measured["old"], measured["new"]

    runs = {}
    for workers in [int(w) for w in args.workers.split(",") if w.strip()]:
        overrides = [*args.overrides, f"scoring.workers={workers}", f"scoring.shard_requests={shard_requests}"]
        out = ROOT / f"data/bench/scoring-out-{workers}w"
        res = run_job(config, overrides, source, out)
        shutil.rmtree(out, ignore_errors=True)
        busy = res["rows"] / res["worker_seconds"]
        res.update(
            busy_rows_per_s_per_worker=busy,
            busy_rows_per_s=busy * workers,
            busy_per_worker_x_floor=busy / base["rows_per_s"],
            startup_seconds=res["seconds_scoring"] - res["worker_seconds"] / workers,
            driver_seconds=res["seconds"] - res["seconds_scoring"],
            end_to_end_rows_per_s=res["rows"] / res["seconds"],
            scoring_rows_per_s_per_worker=res["rows_per_s"] / workers,
        )
        res.pop("job", None)
        runs[workers] = res

    ratios = {
        "new_x_floor": new["rows_per_s"] / base["rows_per_s"],
        "new_x_old": new["rows_per_s"] / old["rows_per_s"],
    }
    if 1 in runs:
        ratios["busy_per_worker_x_floor"] = runs[1]["busy_per_worker_x_floor"]
        ratios["busy_per_worker_x_today"] = runs[1]["busy_rows_per_s_per_worker"] / TODAY_BUSY
        if 2 in runs:
            ratios["busy_2_workers_x_1"] = runs[2]["busy_rows_per_s"] / runs[1]["busy_rows_per_s"]
    goals = {
        f"busy per worker >= {GOALS['busy_x_today']:g} x today's {TODAY_BUSY:,} rows/s": (
            ratios.get("busy_per_worker_x_today", 0) >= GOALS["busy_x_today"] if 1 in runs else None
        ),
        f"busy per worker >= {GOALS['busy_x_floor']:g} x floor": (
            ratios.get("busy_per_worker_x_floor", 0) >= GOALS["busy_x_floor"] if 1 in runs else None
        ),
        f"busy, 2 workers >= {GOALS['two_workers_x_one']:g} x one": (
            ratios["busy_2_workers_x_1"] >= GOALS["two_workers_x_one"] if "busy_2_workers_x_1" in ratios else None
        ),
        f"floor over >= {GOALS['rows']:,} rows": base["rows"] >= GOALS["rows"],
        f">= {GOALS['users']:,} distinct users": world["distinct_users"] >= GOALS["users"],
        "new path == old path (sampled requests)": old["scores_equal_new_path"],
        "floor matrix reproduces the new path": base["matrix_reproduces_new_path"],
    }
    summary = {
        "world": world,
        "shard_requests": shard_requests,
        "floor": base,
        "old_path": old,
        "new_path": new,
        "runs": runs,
        "ratios": ratios,
        "goals": goals,
        "versions": versions,
        "threads": {"torch": 1, "lightgbm": 1, "polars": pl.thread_pool_size()},
        "bench_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "bench_seconds": time.perf_counter() - started,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "config": args.config,
        "overrides": args.overrides,
        "data_dir": shown(cfg.data.dir),
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    report(summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {shown(args.out)}")
    return 0 if old["scores_equal_new_path"] and base["matrix_reproduces_new_path"] else 1


def report(s: dict) -> None:
    w, base, old, new = s["world"], s["floor"], s["old_path"], s["new_path"]
    print(
        f"\nbatch scoring on one core per worker: {w['rows']:,} rows, {w['requests']:,} requests x {w['request_size']}"
        f" items ({w['items']:,} in the world), {w['distinct_users']:,} distinct users ({w['cold_start_users']:,}"
        f" cold-start ids, {w['snapshot_users_in_world']:,} of the snapshot's {w['snapshot_users']:,});"
        f" {s['shard_requests']:,} requests a shard\n"
    )
    f = base["rows_per_s"]
    print(f"{'in process, 1 thread':<44}{'rows':>11}{'seconds':>9}{'rows/s':>12}{'x floor':>9}")
    lines = [
        ("floor: predict + gather/dot", base["rows"], base["seconds"], base["rows_per_s"]),
        (
            f"  booster.predict ({base['trees']} trees)",
            base["rows"],
            base["predict_seconds"],
            base["predict_rows_per_s"],
        ),
    ]
    if base["dot_rows_per_s"]:
        lines.append(("  gather + float64 dot", base["rows"], base["dot_seconds"], base["dot_rows_per_s"]))
    lines += [
        (f"old path, per request ({old['requests']:,} requests)", old["rows"], old["seconds"], old["rows_per_s"]),
        ("new path, score_rows by shard", new["rows"], new["seconds"], new["rows_per_s"]),
    ]
    for name, rows, seconds, rate in lines:
        print(f"{name:<44}{rows:>11,}{seconds:>9.2f}{rate:>12,.0f}{rate / f:>9.3f}")
    stages = ", ".join(f"{k} {v:.2f}" for k, v in base["build_stages_seconds"].items())
    print(f"  (the new path's frame, built apart for the floor: {stages} s)")
    if s["runs"]:
        print(
            f"\n{'recrank score (child process, local Ray)':<44}{'busy/s/wkr':>11}{'x floor':>9}{'busy/s':>12}"
            f"{'e2e s':>8}{'e2e/s':>10}{'start s':>9}{'peak GiB':>9}"
        )
        for workers, r in s["runs"].items():
            print(
                f"{f'{workers} worker' + ('s' if workers > 1 else ''):<44}{r['busy_rows_per_s_per_worker']:>11,.0f}"
                f"{r['busy_per_worker_x_floor']:>9.3f}{r['busy_rows_per_s']:>12,.0f}{r['seconds']:>8.1f}"
                f"{r['end_to_end_rows_per_s']:>10,.0f}{r['startup_seconds']:>9.1f}{r['peak_rss_gib']:>9.2f}"
            )
    print("\n" + ", ".join(f"{k} {v:.3f}" for k, v in s["ratios"].items()))
    for goal, ok in s["goals"].items():
        print(f"  {'n/a ' if ok is None else ('pass' if ok else 'FAIL')}  {goal}")


if __name__ == "__main__":
    sys.exit(main())
