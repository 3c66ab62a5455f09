"""Batch scoring (``recrank score``) on Ray Data against the in-process ranking pipeline it wraps.

One local Ray for the module; the tiny served world (champion = version 1, tiny GPT-2 text model).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

import numpy as np
import polars as pl
import pytest
import yaml

from conf import Config, load_config
from offline.batch import score_batch
from offline.batch.staging import JOB_FILE, MANIFEST_FILE, REJECTS_FILE, open_staging, staging_dir
from offline.batch.workers import ranked_rows
from offline.cli import main
from ranker.pipeline import Candidate

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
OUTPUT_SCHEMA = {
    "request_id": pl.String,
    "user_id": pl.String,
    "item_id": pl.String,
    "score": pl.Float64,
    "rank": pl.Int32,
    "ranker_version": pl.String,
    "textmodel_version": pl.String,
}


@pytest.fixture(scope="module")
def local_ray():
    """One Ray for the module (jobs run in this process find it and leave it running)."""
    from runtime.ray_env import start_ray

    started = start_ray(load_config(None, ["ray.num_cpus=2"]).ray)
    yield
    if started:
        import ray

        ray.shutdown()


@pytest.fixture(scope="module")
def reference(served_world: Config):
    """The in-process pipeline of the champion (version 1), as serving would load it."""
    import torch

    from offline.tracking import setup
    from ranker.loading import load_pipeline_version

    cfg = served_world
    client = setup(cfg)
    return load_pipeline_version(
        client, cfg.mlflow.model_prefix, "1", cfg.data.dir, cfg.textmodel.cache_dir, torch.device("cpu")
    )


@pytest.fixture(scope="module")
def profile(served_world: Config, tmp_path_factory) -> Path:
    """The served world's config as a profile file, for the CLI."""
    path = tmp_path_factory.mktemp("profile") / "world.yaml"
    path.write_text(yaml.safe_dump(served_world.model_dump(mode="json")))
    return path


def make_requests(reference, n: int, size: int, seed: int, prefix: str) -> list[tuple[str, str, list[str]]]:
    """(request_id, user_id, item ids): known users and a few unknown ones, catalogue items."""
    rng = np.random.default_rng(seed)
    items = list(reference.text.item_ids)
    users = reference.snapshot.users["user_id"].to_list()
    out = []
    for r in range(n):
        user = f"new-user-{r}" if r % 7 == 0 else str(rng.choice(users))
        out.append((f"{prefix}{r:05d}", user, [str(i) for i in rng.choice(items, size, replace=False)]))
    return out


def long_frame(requests) -> pl.DataFrame:
    rows = [(req, user, item) for req, user, items in requests for item in items]
    return pl.DataFrame(rows, schema=["request_id", "user_id", "item_id"], orient="row")


def list_frame(requests) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "request_id": [r[0] for r in requests],
            "user_id": [r[1] for r in requests],
            "candidates": [r[2] for r in requests],
        }
    )


def expected_scores(reference, frame: pl.DataFrame) -> pl.DataFrame:
    """Scores and ranks from ``reference.score`` request by request (the oracle)."""
    out = []
    text = [c for c in ("title", "body", "category", "subcategory") if c in frame.columns]
    for req in frame.partition_by("request_id", maintain_order=True):
        cands = [Candidate(r["item_id"], **{c: r[c] for c in text}) for r in req.iter_rows(named=True)]
        scores = reference.score(req["user_id"][0], cands)
        ranks = np.empty(len(scores), dtype=np.int64)
        ranks[np.argsort(-scores, kind="stable")] = np.arange(1, len(scores) + 1)
        out.append(req.select("request_id", "item_id").with_columns(want=pl.Series(scores), want_rank=pl.Series(ranks)))
    return pl.concat(out)


def assert_matches(output: Path, want: pl.DataFrame) -> pl.DataFrame:
    got = pl.read_parquet(output / "part-*.parquet")
    assert dict(got.schema) == OUTPUT_SCHEMA
    joined = want.join(got, on=["request_id", "item_id"], how="left")
    assert joined.height == want.height == got.height
    assert joined["score"].null_count() == 0
    assert np.abs(joined["score"].to_numpy() - joined["want"].to_numpy()).max() <= 1e-12
    assert (joined["rank"].cast(pl.Int64) == joined["want_rank"]).all()
    return got


@pytest.fixture(scope="module")
def scored(served_world: Config, reference, local_ray, tmp_path_factory):
    """One job over a folder holding a long-format file (with an unknown item that has a title) and a
    list-format file, with two workers and several shards."""
    root = tmp_path_factory.mktemp("scored")
    source = root / "in"
    source.mkdir()
    long = long_frame(make_requests(reference, 40, 6, seed=1, prefix="L"))
    new_item = pl.DataFrame(
        {"request_id": ["L-new"] * 3, "user_id": [reference.snapshot.users["user_id"][0]] * 3},
    ).with_columns(
        item_id=pl.Series([reference.text.item_ids[0], "brand-new-item", reference.text.item_ids[1]]),
        title=pl.Series([None, "A brand new item nobody has seen", None]),
        category=pl.Series([None, "c1", None]),
        subcategory=pl.Series([None, "lab gear", None]),
    )
    long = pl.concat([long, new_item], how="diagonal")
    long.write_parquet(source / "a-long.parquet")
    lists = make_requests(reference, 30, 5, seed=2, prefix="T")
    list_frame(lists).write_parquet(source / "b-list.parquet")
    cfg = served_world.model_copy(deep=True)
    cfg.scoring.workers = 2
    cfg.scoring.shard_requests = 8
    t = time.perf_counter()
    summary = score_batch(cfg, source, root / "out", progress=False)
    seconds = time.perf_counter() - t
    want = pl.concat([expected_scores(reference, long), expected_scores(reference, long_frame(lists))])
    return summary, root / "out", want, seconds


def test_batch_scores_equal_in_process_pipeline_scores(scored, reference) -> None:
    _, out, want, _ = scored
    assert reference.needs_text("brand-new-item")
    got = assert_matches(out, want)
    assert got.filter(pl.col("item_id") == "brand-new-item").height == 1
    assert set(got["ranker_version"]) == {"1"} and set(got["textmodel_version"]) == {"1"}
    assert got.filter(pl.col("request_id").str.starts_with("T")).height == 30 * 5  # the list-format file


def test_batch_scores_equal_api_scores(scored, served_world: Config) -> None:
    """The same requests through ``POST /rank`` (the API app over the champion) give the batch job's scores."""
    from fastapi.testclient import TestClient

    from serving.app import build_app
    from serving.hosts import registry_holder

    _, out, _, _ = scored
    got = pl.read_parquet(out / "part-*.parquet")
    holder = registry_holder(served_world)
    assert holder.refresh()
    api = TestClient(build_app(served_world.serving, holder))
    titles = {
        "brand-new-item": {
            "item_id": "brand-new-item",
            "title": "A brand new item nobody has seen",
            "category": "c1",
            "subcategory": "lab gear",
        }
    }
    for request_id in ["L-new", "L00001", "L00007", "T00003"]:
        req = got.filter(pl.col("request_id") == request_id)
        body = {"user_id": req["user_id"][0], "candidates": [titles.get(i, i) for i in req["item_id"].to_list()]}
        answer = api.post("/rank", json=body)
        assert answer.status_code == 200, answer.text
        served = {x["item_id"]: (x["score"], x["rank"]) for x in answer.json()["items"]}
        batch = dict(
            zip(req["item_id"].to_list(), zip(req["score"].to_list(), req["rank"].to_list(), strict=True), strict=True)
        )
        assert served == batch  # the same floats and ranks: one pipeline behind both


def test_rows_coverage_and_manifest(scored) -> None:
    summary, out, want, seconds = scored
    got = pl.read_parquet(out / "part-*.parquet")
    assert got.height == want.height == 40 * 6 + 3 + 30 * 5
    assert got.select("request_id", "item_id").is_unique().all()
    assert got["request_id"].n_unique() == 40 + 1 + 30
    per_request = got.group_by("request_id").agg(pl.col("rank").sort())
    assert all(r == list(range(1, len(r) + 1)) for r in per_request["rank"].to_list())
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["rows"] == got.height and manifest["requests"] == 71 and manifest["rejects"] == 0
    assert manifest["versions"] == {"ranker": "1", "textmodel": "1"}
    assert manifest["shards"] == len(list(out.glob("part-*.parquet"))) == -(-71 // 8)
    assert manifest["shards_reused"] == 0 and manifest["workers"] == 2
    assert 0 < manifest["seconds"] <= seconds and manifest["job"]["shard_requests"] == 8
    assert not staging_dir(out).exists() and not (out / JOB_FILE).exists() and not (out / REJECTS_FILE).exists()
    assert summary.rows == got.height


def test_long_input_carries_every_text_field_to_the_pipeline(reference, tmp_path: Path) -> None:
    """The long layout's text columns include subcategory; unknown items are judged and scored through the
    pipeline's own text rules (the served prompt reads title, subcategory and body, not category)."""
    from offline.batch.inputs import check_rows, read_input

    user, known = reference.snapshot.users["user_id"][0], reference.text.item_ids[0]
    frame = pl.DataFrame(
        {
            "request_id": ["r"] * 4,
            "user_id": [user] * 4,
            "item_id": [known, "new-a", "new-b", "new-c"],
            "title": [None, "A new thing", None, None],
            "category": [None, "c1", None, "c2"],
            "subcategory": [None, "lab gear", "only a subcategory", None],
        }
    )
    path = tmp_path / "in.parquet"
    frame.write_parquet(path)
    rows = read_input([path])
    assert rows["subcategory"].to_list() == [None, "lab gear", "only a subcategory", None]
    checked = check_rows(rows, [path], reference, skip_bad=True)
    assert checked.rejects.select("item_id", "reason").rows() == [("new-c", "unknown item without text")]
    scored = ranked_rows(reference, checked.rows.with_columns(_shard=pl.lit(0)))
    want = reference.score(
        user,
        [
            Candidate(known),
            Candidate("new-a", title="A new thing", category="c1", subcategory="lab gear"),
            Candidate("new-b", subcategory="only a subcategory"),
        ],
    )
    assert scored["item_id"].to_list() == [known, "new-a", "new-b"]
    assert scored["score"].to_list() == want.tolist()  # the same floats
    assert reference.texts_needed([Candidate("new-b", subcategory="only a subcategory")]) == {
        "new-b": "only a subcategory"
    }


EXPLANATION_SCHEMA = {
    "base_value": pl.Float64,
    "prior": pl.Float64,
    "explanation": pl.List(pl.Struct({"feature": pl.String, "value": pl.String, "contribution": pl.Float64})),
    "rest": pl.Float64,
}


def explained_total(frame: pl.DataFrame) -> np.ndarray:
    """base_value + prior + the listed contributions + rest, row for row: what the score should be."""
    listed = frame["explanation"].list.eval(pl.element().struct.field("contribution")).list.sum()
    return (frame["base_value"] + frame["prior"] + listed + frame["rest"]).to_numpy()


def test_explained_rows_keep_their_scores_and_add_up(reference) -> None:
    """In process: ``explain`` adds the explanation columns after the others and changes no score or rank."""
    rows = long_frame(make_requests(reference, 6, 5, seed=4, prefix="E")).with_columns(
        _row=pl.int_range(pl.len()), _shard=pl.lit(0)
    )
    plain, explained = ranked_rows(reference, rows), ranked_rows(reference, rows, explain=2)
    assert explained.columns == [*plain.columns, *EXPLANATION_SCHEMA]
    assert explained.select(plain.columns).equals(plain)  # the same floats and ranks
    assert np.abs(explained_total(explained) - explained["score"].to_numpy()).max() <= 1e-9
    assert explained["explanation"].list.len().to_list() == [2] * rows.height


def test_batch_explain_adds_columns_only_when_asked(scored, reference, profile, local_ray, tmp_path) -> None:
    """``recrank score --explain 3``: the scores of the run without it, plus explanation columns summing to each
    score; the run without it (the module's job) has the plain output schema."""
    _, plain_out, _, _ = scored
    assert dict(pl.read_parquet(plain_out / "part-*.parquet").schema) == OUTPUT_SCHEMA
    requests = make_requests(reference, 12, 5, seed=5, prefix="X")
    source = tmp_path / "explain.parquet"
    list_frame(requests).write_parquet(source)
    out = tmp_path / "out"
    assert main(["score", str(source), str(out), "--config", str(profile), "--explain", "3"]) == 0
    got = pl.read_parquet(out / "part-*.parquet")
    assert dict(got.schema) == {**OUTPUT_SCHEMA, **EXPLANATION_SCHEMA}
    assert np.abs(explained_total(got) - got["score"].to_numpy()).max() <= 1e-9
    assert got["explanation"].list.len().to_list() == [3] * got.height
    want = expected_scores(reference, long_frame(requests))
    joined = want.join(got, on=["request_id", "item_id"])
    assert joined.height == want.height
    assert np.abs(joined["score"].to_numpy() - joined["want"].to_numpy()).max() <= 1e-12  # as the plain job
    assert json.loads((out / MANIFEST_FILE).read_text())["job"]["explain"] == 3


def test_ranks_break_ties_by_input_order() -> None:
    class Fixed:
        versions: ClassVar[dict[str, str]] = {"ranker": "7"}

        def score_rows(self, rows):
            return np.array([0.5, 0.9, 0.5, 0.9, 0.1, 0.2, 0.2, 0.7])[: rows.height]

    # two requests, interleaved in the file, listed out of order (_row says the input order)
    rows = pl.DataFrame(
        {
            "request_id": ["a", "a", "a", "a", "a", "b", "b", "b"],
            "user_id": ["u"] * 8,
            "item_id": list("vwxyzpqr"),
            "_row": [0, 1, 2, 3, 4, 5, 6, 7],
            "_shard": 0,
        }
    )[[0, 5, 1, 6, 2, 7, 3, 4]]
    out = ranked_rows(Fixed(), rows)
    assert out["item_id"].to_list() == list("vwxyzpqr")  # back in input order
    assert out["rank"].to_list() == [3, 1, 4, 2, 5, 2, 3, 1]
    assert out["ranker_version"].to_list() == ["7"] * 8 and out["textmodel_version"].null_count() == 8


def test_a_different_job_starts_over(tmp_path: Path) -> None:
    stage = tmp_path / "out.partial"
    assert open_staging(stage, {"shard_requests": 2}, {0: 3}) == set()
    pl.DataFrame({"x": [1, 2, 3]}).write_parquet(stage / "part-00000.parquet")
    assert open_staging(stage, {"shard_requests": 2}, {0: 3}) == {0}  # same job: reused
    assert open_staging(stage, {"shard_requests": 2}, {0: 4}) == set()  # wrong row count: scored again
    pl.DataFrame({"x": [1, 2, 3]}).write_parquet(stage / "part-00000.parquet")
    assert open_staging(stage, {"shard_requests": 5}, {0: 3}) == set()  # another job: starts over
    assert not (stage / "part-00000.parquet").exists()


def test_crash_then_resume_reuses_finished_parts(served_world, reference, profile, local_ray, tmp_path: Path) -> None:
    """Kill a running ``recrank score`` (driver + its local Ray), then run the same command again."""
    requests = make_requests(reference, 800, 4, seed=3, prefix="C")
    source = tmp_path / "crash.parquet"
    list_frame(requests).write_parquet(source)
    out = tmp_path / "out"
    stage = staging_dir(out)
    args = ["score", str(source), str(out), "--config", str(profile), "scoring.shard_requests=5"]
    cmd = [sys.executable, "-m", "offline.cli", *args, "ray.num_cpus=2"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    log = tmp_path / "first-run.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 120
        while not list(stage.glob("part-*.parquet")):
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "no part file after 120 s"
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started
        proc.wait()
        _wait_group_gone(proc.pid)
    parts = {p.name: p.stat().st_mtime_ns for p in stage.glob("part-*.parquet")}
    assert 0 < len(parts) < 160 and not out.exists()

    assert main(args) == 0  # the same command again (in this process: its Ray is already up)
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["shards"] == 160 and manifest["shards_reused"] == len(parts)
    for name, mtime in parts.items():
        assert (out / name).stat().st_mtime_ns == mtime, name  # reused, not rewritten
    assert not stage.exists()
    assert_matches(out, expected_scores(reference, long_frame(requests)))  # no duplicates, nothing missing


def _wait_group_gone(pgid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of group {pgid} still alive")


def _bad_inputs(reference) -> dict[str, tuple[pl.DataFrame, str]]:
    users = reference.snapshot.users["user_id"].to_list()
    items = list(reference.text.item_ids)
    good = long_frame([("g1", users[0], items[:4]), ("g2", users[1], items[4:7])])
    return {
        "missing": (good.drop("item_id"), "column 'item_id': missing column"),
        "null_ids": (
            good.with_columns(user_id=pl.when(pl.col("request_id") == "g2").then(None).otherwise("user_id")),
            "column 'user_id': 3 bad rows: null user_id",
        ),
        "duplicates": (
            pl.concat([good, good.head(2)]),
            "column 'item_id': 2 bad rows: duplicate (request_id, item_id)",
        ),
        "unknown": (
            pl.concat([good, pl.DataFrame({"request_id": ["g1"], "user_id": [users[0]], "item_id": ["nope"]})]),
            "column 'item_id': 1 bad row: unknown item without text",
        ),
        "empty": (good.head(0), "empty input: no rows"),
    }


def test_bad_input_exits_2_naming_column_and_count(served_world, reference, profile, tmp_path: Path, capsys) -> None:
    for name, (frame, message) in _bad_inputs(reference).items():
        source = tmp_path / f"{name}.parquet"
        frame.write_parquet(source)
        out = tmp_path / f"out-{name}"
        assert main(["score", str(source), str(out), "--config", str(profile)]) == 2, name
        err = capsys.readouterr().err
        assert message in err and f"{name}.parquet" in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not out.exists() and not staging_dir(out).exists(), name
    truncated = tmp_path / "truncated.parquet"
    _bad_inputs(reference)["missing"][0].write_parquet(truncated)
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    assert main(["score", str(truncated), str(tmp_path / "out-t"), "--config", str(profile)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"recrank: error: {truncated}: not a readable parquet file (") and len(err.splitlines()) == 1


def test_skip_bad_rows_writes_rejects_and_scores_the_rest(served_world, reference, profile, local_ray, tmp_path):
    users = reference.snapshot.users["user_id"].to_list()
    items = list(reference.text.item_ids)
    good = long_frame([("g1", users[0], items[:4]), ("g2", users[1], items[4:7])])
    bad = pl.DataFrame(
        {
            "request_id": ["g1", "g2", None, "g3", "g4", "g4"],
            "user_id": [users[0], users[1], users[2], users[2], users[3], users[4]],
            "item_id": [items[0], "nope", items[1], None, items[2], items[3]],
        }
    )
    source = tmp_path / "mixed.parquet"
    pl.concat([good, bad]).write_parquet(source)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("replaced only at the end")
    assert main(["score", str(source), str(out), "--config", str(profile), "--skip-bad-rows"]) == 0
    rejects = pl.read_parquet(out / REJECTS_FILE)
    assert sorted(rejects["reason"].to_list()) == sorted(
        [
            "duplicate (request_id, item_id)",
            "unknown item without text",
            "null request_id",
            "null item_id",
            "request_id with more than one user_id",
            "request_id with more than one user_id",
        ]
    )
    assert set(rejects["file"]) == {str(source)}
    assert_matches(out, expected_scores(reference, good))  # g3 and g4 lost every row: no output rows
    manifest = json.loads((out / MANIFEST_FILE).read_text())
    assert manifest["rejects"] == 6 and manifest["rows"] == 7 and manifest["requests"] == 2
    assert not (out / "stale.txt").exists()
