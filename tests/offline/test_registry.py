"""The whole pipeline on a tiny world, then the MLflow registry: round trip, promotion, rollback, pairing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from unittest import mock
from urllib.parse import urlparse

import numpy as np
import polars as pl
import pytest
import torch
from sample_data import TEXT_OVERRIDES, TINY_SYNTHETIC

from conf import load_config
from offline import ranker_stage, registry
from offline.cli import main
from offline.tracking import setup
from ranker.frame import model_matrix, split_rows
from ranker.loading import ModelPairError, load_pipeline, load_ranker_version, ranker_name, tracking_uri
from ranker.pipeline import Candidate
from ranker.training import fit_ranker

SNAPSHOT_ID = mock.ANY  # the served snapshot's content id (a hash: not a fixed value)

pytestmark = pytest.mark.integration

RANKER_OVERRIDES = [
    # Ship the combined ranker whatever validation says: these tests exercise the registered text + ranker pair
    # (on the tiny world text adds nothing); the guard itself is tested in tests/offline/test_selection.py.
    "ranker.text_guard.min_gain=-1",
    "ranker.tune={}",
    "ranker.params.n_estimators=60",
    "ranker.early_stopping_rounds=20",
    "ranker.params.min_child_samples=20",
    "evaluation.bootstrap_samples=200",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory, model_cache: Path):
    root = tmp_path_factory.mktemp("pipeline")
    args = [
        *TINY_SYNTHETIC,
        f"data.dir={root / 'd'}",
        f"textmodel.cache_dir={model_cache}",
        *TEXT_OVERRIDES,
        *RANKER_OVERRIDES,
    ]
    assert main(["pipeline", *args]) == 0
    cfg = load_config(None, args)
    return cfg, setup(cfg)


def test_pipeline_registers_the_pair_and_promotes_the_first_version(world) -> None:
    cfg, client = world
    name = ranker_name(cfg.mlflow.model_prefix)
    assert str(client.get_registered_model(name).aliases["champion"]) == "1"
    mv = client.get_model_version(name, "1")
    assert mv.tags["textmodel_version"] == "1"
    assert mv.tags["data_fingerprint"] and mv.tags["git_commit"]
    assert mv.tags["score"].startswith("pyfunc predict = the /rank score") and mv.tags["snapshot_id"]
    text_version = client.get_model_version(f"{cfg.mlflow.model_prefix}-textmodel", "1")
    assert text_version.tags["data_fingerprint"]
    # which state was exported, and the evidence, go with the text model; which ranker shipped, with the ranker
    assert text_version.tags["exported"] in {"probe", "adapted"} and text_version.tags["export_reason"]
    assert mv.tags["shipped"] == "ranker" and "ranker - lightgbm_features_only ndcg_at_10" in mv.tags["text_guard"]
    report = Path(cfg.data.dir) / "report"
    assert (report / "feature_importance.png").is_file() and (report / "metric_by_model.png").is_file()
    text = (report / "report.md").read_text()
    assert "| ranker |" in text and "| lightgbm_features_only |" in text and "| interest_score |" in text
    assert "boosted from logit(item_ctr_smoothed)" in text


def test_registry_round_trip_gives_identical_scores(world) -> None:
    cfg, client = world
    local = ranker_stage.load_ranker_run(cfg)
    test = split_rows(local.frame, "test")
    served = load_pipeline(
        client, cfg.mlflow.model_prefix, "champion", Path(cfg.data.dir), cfg.textmodel.cache_dir, torch.device("cpu")
    )
    assert served.versions == {"ranker": "1", "textmodel": "1", "snapshot": SNAPSHOT_ID}
    assert local.inputs.base_score == "item_ctr_smoothed"  # the default: boosted from item CTR's log-odds
    ctr = test["item_ctr_smoothed"].to_numpy()
    direct = np.log(ctr) - np.log1p(-ctr) + local.fit.booster.predict(model_matrix(test, local.inputs))
    # The registry's bundle over the point-in-time rows (interest recomputed from its text model) == margin +
    # booster over the training frame (interest from interest.parquet): evaluation and training agree bit for bit.
    source = ranker_stage.point_in_time(cfg, test, local.spec)
    np.testing.assert_array_equal(served.score_rows(ranker_stage.scoring_rows(test), source), direct)
    # The online path: a request scored from the snapshot + text model equals the same request scored
    # offline (features + interest scores the same way the training frame gets them).
    user = test["user_id"][0]
    items = test.filter(pl.col("user_id") == user)["item_id"].unique(maintain_order=True).to_list()[:6]
    ranked = served.rank(user, [Candidate(i) for i in items])
    assert sorted(i for i, _ in ranked) == sorted(items)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    cold = served.rank("new-user", [Candidate(items[0]), Candidate("new-item", title="The bold story of sports")])
    assert len(cold) == 2 and all(np.isfinite(s) for _, s in cold)


def _bad_run(cfg):
    """The same ranker fitted on flipped labels: reliably worse on test."""
    run = ranker_stage.load_ranker_run(cfg)
    flipped = run.frame.with_columns((1 - pl.col("clicked")).cast(pl.Int8).alias("clicked"))
    bad = fit_ranker(split_rows(flipped, "train"), split_rows(flipped, "val"), run.inputs, cfg.ranker)
    return ranker_stage.RankerRun(fit=bad, inputs=run.inputs, spec=run.spec, frame=run.frame)


def test_promotion_refused_when_worse_forced_then_better_wins_and_rollback(world) -> None:
    cfg, client = world
    name = ranker_name(cfg.mlflow.model_prefix)
    report = json.loads((Path(cfg.data.dir) / "report" / "metrics.json").read_text())
    bad_version = registry.register_ranker(cfg, _bad_run(cfg), "1", {})
    refused = registry.promote(cfg)
    assert not refused.promoted and refused.champion_after == "1" and refused.verdict == "refused"
    assert refused.reason.startswith("refused: ndcg_at_10 gain") and "upper end < margin 0.002" in refused.reason
    assert (
        refused.gain["high"] < 0 and refused.challenger_metrics["ndcg_at_10"] < refused.champion_metrics["ndcg_at_10"]
    )
    # nDCG@10 counts the test impressions with a click (the others have no ideal ranking)
    test = split_rows(ranker_stage.load_ranker_run(cfg).frame, "test")
    clicked = test.group_by("impression_id").agg(pl.col("clicked").max()).filter(pl.col("clicked") == 1).height
    assert refused.impressions == clicked and 0 < clicked < refused.champion_metrics["impressions"]
    assert f"on {refused.impressions} test impressions" in refused.reason and "lower end" in refused.rule
    assert str(client.get_registered_model(name).aliases["champion"]) == "1"
    # the champion (the pipeline's ranker) is judged on the figures its report shows: same rows, same tie-break
    reported = report["systems"]["ranker"]["metrics"]
    assert refused.champion_metrics == pytest.approx({m: reported[m] for m in refused.champion_metrics}, abs=1e-12)
    assert json.loads(client.get_model_version(name, bad_version).tags["promotion_decision"])["verdict"] == "refused"
    forced = registry.promote(cfg, force=True)
    assert forced.promoted and forced.verdict == "forced" and forced.reason.startswith("forced over 'refused'")
    assert str(client.get_registered_model(name).aliases["champion"]) == bad_version
    good_version = registry.register_ranker(cfg, ranker_stage.load_ranker_run(cfg), "1", {})
    current = registry.promote(cfg, challenger=bad_version)  # a named challenger, here the champion itself
    assert not current.promoted and current.verdict == "current" and current.champion_after == bad_version
    with pytest.raises(ModelPairError, match="--challenger 99 is not a registered version"):
        registry.promote(cfg, challenger="99")
    better = registry.promote(cfg)
    assert better.promoted and better.verdict == "promoted" and better.gain["low"] >= cfg.mlflow.promotion_margin
    assert str(client.get_registered_model(name).aliases["champion"]) == good_version
    promoted_record = client.get_model_version(name, good_version).tags["promotion_decision"]
    history = json.loads(client.get_registered_model(name).tags["champion_history"])
    assert history[-2:] == [bad_version, good_version]

    back = registry.rollback(cfg, reason="complaints from the product page")
    assert (back.from_version, back.to_version, back.reason) == (
        good_version,
        bad_version,
        "complaints from the product page",
    )
    model = client.get_registered_model(name)
    assert str(model.aliases["champion"]) == bad_version
    assert json.loads(model.tags["rollbacks"])[-1] == back.to_json() == json.loads(model.tags["last_rollback"])
    assert json.loads(model.tags["champion_history"]) == history[:-1]
    # the rollback is its own record: no version's promotion record changes
    assert client.get_model_version(name, good_version).tags["promotion_decision"] == promoted_record
    assert json.loads(client.get_model_version(name, good_version).tags["rolled_back"])["to_version"] == bad_version
    assert json.loads(model.tags["last_promotion"])["challenger"] == good_version

    # the history keeps the newest history_keep entries
    short = cfg.model_copy(deep=True)
    short.mlflow.history_keep = 2
    registry.promote(short, force=True, challenger=good_version)
    assert json.loads(client.get_registered_model(name).tags["champion_history"]) == [bad_version, good_version]


def test_ranker_pinned_to_a_missing_textmodel_fails_loudly(world) -> None:
    cfg, client = world
    name = ranker_name(cfg.mlflow.model_prefix)
    with pytest.raises(ModelPairError, match=r"textmodel .* version 99 is not available"):  # refused at once
        registry.register_ranker(cfg, ranker_stage.load_ranker_run(cfg), "99", {})
    orphan = registry.register_ranker(cfg, ranker_stage.load_ranker_run(cfg), "1", {})
    client.set_model_version_tag(name, orphan, "textmodel_version", "99")  # e.g. its text model deleted later
    client.set_registered_model_alias(name, "broken", orphan)
    with pytest.raises(ModelPairError, match=r"textmodel .* version 99 is not available"):
        load_pipeline(
            client, cfg.mlflow.model_prefix, "broken", Path(cfg.data.dir), cfg.textmodel.cache_dir, torch.device("cpu")
        )


def test_online_request_equals_the_offline_path_for_the_same_request(world) -> None:
    """Serving (snapshot features + TextScorer) == training path (point-in-time features + bulk interest
    scores) for one request placed just after the last event: the train/serve contract, end to end."""
    from features import build_offline, read_impressions, read_items
    from features.history import impression_histories
    from features.sources import PointInTimeFeatures
    from textmodel.data import Catalogue, ImpressionSet
    from textmodel.scoring import score_impressions

    cfg, client = world
    served = load_pipeline(
        client, cfg.mlflow.model_prefix, "champion", Path(cfg.data.dir), cfg.textmodel.cache_dir, torch.device("cpu")
    )
    impressions = read_impressions(cfg.data.dir).collect()
    items = read_items(cfg.data.dir).collect()
    users = served.snapshot.users.filter(pl.col("history").list.len() > 2)
    user = users["user_id"][0]
    candidates = ["i3", "i17", "i64", "i90", "i5"]
    at = served.snapshot.as_of
    probe = pl.DataFrame(
        {
            "impression_id": ["probe"] * 5,
            "user_id": [user] * 5,
            "ts": pl.Series([at] * 5).cast(impressions.schema["ts"]),
            "item_id": candidates,
            "position": pl.Series(range(5), dtype=pl.Int32),
            "clicked": pl.Series([0] * 5, dtype=pl.Int8),
        }
    )
    log = pl.concat([impressions, probe])
    feats = build_offline(log.lazy(), items.lazy(), served.spec).filter(pl.col("impression_id") == "probe").collect()
    hist = impression_histories(log.lazy(), feats.lazy(), cfg.data.history_cap).collect()
    scorer = served.text
    catalogue = Catalogue(item_ids=scorer.item_ids, texts=scorer.item_ids)
    data = ImpressionSet.build(
        feats.select("impression_id", "item_id", "clicked"), hist, catalogue, cfg.data.history_cap
    )
    offline = feats.join(items.select("item_id", "category"), on="item_id", how="left", maintain_order="left")
    online = served.score(user, [Candidate(i) for i in candidates])
    # The same rows through the point-in-time source: the same bundle method, so the same bits.
    source = PointInTimeFeatures(offline, hist, served.spec)
    rows = offline.select(pl.col("impression_id").alias("request_id"), "user_id", "item_id")
    np.testing.assert_array_equal(online, served.score_rows(rows, source))
    # And the interest score the bundle computes is the one the bulk export computes for training rows.
    bulk = score_impressions(scorer.model, scorer.vectors, data)
    np.testing.assert_array_equal(scorer.scores(served.history(user), candidates), bulk)


def test_a_ranker_version_whose_artifacts_are_gone_fails_with_a_named_error(world) -> None:
    cfg, client = world
    name = ranker_name(cfg.mlflow.model_prefix)
    version = registry.register_ranker(cfg, ranker_stage.load_ranker_run(cfg), "1", {})
    model_id = client.get_model_version(name, version).source.removeprefix("models:/")
    shutil.rmtree(urlparse(client.get_logged_model(model_id).artifact_location).path)  # e.g. a pruned artifact store
    with pytest.raises(ModelPairError, match=rf"ranker models:/{name}/{version} is not available: No such artifact"):
        load_ranker_version(client, cfg.mlflow.model_prefix, version)


def test_batched_bundle_scores_equal_the_old_per_request_path(world) -> None:
    """The oracle: the request path before the bundle (online_rows + TextScorer.scores + interest rank +
    predict, one request at a time). The batched method over many requests at once must give the same bits."""
    from features.behaviour import online_rows
    from ranker.frame import with_interest_rank
    from ranker.lambdarank import predict

    cfg, client = world
    served = load_pipeline(
        client, cfg.mlflow.model_prefix, "champion", Path(cfg.data.dir), cfg.textmodel.cache_dir, torch.device("cpu")
    )
    users = [*served.snapshot.users["user_id"].to_list()[:40], "never-seen"]
    items = served.snapshot.items["item_id"].to_list()
    rng = np.random.default_rng(0)
    requests = {
        f"r{k}": (u, list(rng.choice(items, size=int(rng.integers(1, 12)), replace=False))) for k, u in enumerate(users)
    }
    rows = pl.DataFrame(
        [(r, u, i) for r, (u, cands) in requests.items() for i in cands],
        schema=["request_id", "user_id", "item_id"],
        orient="row",
    )
    batched = served.score_rows(rows, num_threads=2)
    at = served.snapshot.as_of
    for r, (user, cands) in requests.items():
        frame = online_rows(served.snapshot, user, cands, at, served.spec)
        interest = served.text.scores(served.history(user), cands)
        frame = frame.hstack([pl.Series("interest_score", interest), pl.Series("impression_id", [r] * len(cands))])
        old = predict(served.booster, with_interest_rank(frame), served.inputs)
        np.testing.assert_array_equal(batched[(rows["request_id"] == r).to_numpy()], old)
        np.testing.assert_array_equal(served.score(user, [Candidate(i) for i in cands]), old)


def test_the_registered_pyfunc_predicts_the_rank_scores(world) -> None:
    """MLflow's own API on the registered model: one score per row, in row order, equal to the bundle's."""
    import mlflow.pyfunc

    cfg, client = world
    served = load_pipeline(
        client, cfg.mlflow.model_prefix, "champion", Path(cfg.data.dir), cfg.textmodel.cache_dir, torch.device("cpu")
    )
    model = mlflow.pyfunc.load_model(f"models:/{ranker_name(cfg.mlflow.model_prefix)}@champion")
    users = served.snapshot.users["user_id"].to_list()
    items = served.snapshot.items["item_id"].to_list()
    rows = pl.DataFrame(
        {
            "request_id": ["a", "a", "b", "a", "b", "c", "c"],
            "user_id": [users[0], users[0], users[1], users[0], users[1], "nobody", "nobody"],
            "item_id": [items[0], items[1], items[2], items[3], items[1], "brand-new", items[4]],
            "title": [None, None, None, None, None, "The bold story of sports", None],
        }
    )
    got = model.predict(rows.to_pandas())
    assert list(got.index) == list(range(rows.height))
    np.testing.assert_array_equal(got.to_numpy(), served.score_rows(rows))
    ranked = served.rank(users[0], [Candidate(items[i]) for i in (0, 1, 3)])
    want = dict(ranked)
    assert [want[i] for i in (items[0], items[1], items[3])] == got.to_numpy()[[0, 1, 3]].tolist()


FRESH = """import json, sys
from pathlib import Path
import mlflow.pyfunc
import pandas as pd
model_dir, cache, rows, out = sys.argv[1:]
model = mlflow.pyfunc.load_model(model_dir, model_config={"cache_dir": cache})
import conf, ranker, textmodel
scores = model.predict(pd.read_parquet(rows))
Path(out).write_text(json.dumps({"scores": scores.tolist(), "code": [m.__file__ for m in (conf, ranker, textmodel)]}))
"""


def _fresh_venv(requirements: Path) -> Path:
    """A virtual environment built from a registered model's ``requirements.txt`` alone (no recrank), kept under
    ~/.cache/recrank/test-venvs by the file's hash: built once per set of pins (a few minutes), then reused."""
    import hashlib
    import subprocess
    import sys

    digest = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    venv = Path.home() / ".cache" / "recrank" / "test-venvs" / digest
    python = venv / "bin" / "python"
    if not (venv / ".complete").is_file():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "-r", str(requirements)]
        subprocess.run(pip, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=1200)
        (venv / ".complete").write_text("ok\n")
    return python


@pytest.mark.slow
def test_the_registered_champion_loads_in_a_fresh_environment(world, tmp_path: Path) -> None:
    """The champion's own files (downloaded from the registry), a venv built from its requirements.txt only, no
    recrank checkout on the path, no data folder, an empty backbone cache (the tiny GPT-2 is rebuilt and checked
    against its saved sha256): MLflow's load + predict give the scores the API gives."""
    import subprocess

    import mlflow.artifacts

    cfg, client = world
    name = ranker_name(cfg.mlflow.model_prefix)
    model_dir = Path(mlflow.artifacts.download_artifacts(f"models:/{name}@champion", dst_path=str(tmp_path / "m")))
    assert sorted(p.name for p in (model_dir / "code").iterdir()) == [
        "conf",
        "features",
        "ranker",
        "runtime",
        "textmodel",
    ]
    python = _fresh_venv(model_dir / "requirements.txt")
    served = load_pipeline(
        client, cfg.mlflow.model_prefix, "champion", Path(cfg.data.dir), cfg.textmodel.cache_dir, torch.device("cpu")
    )
    users = served.snapshot.users["user_id"].to_list()
    items = served.snapshot.items["item_id"].to_list()
    rows = pl.DataFrame(
        {
            "request_id": ["a", "a", "b", "c", "c"],
            "user_id": [users[0], users[0], users[1], "nobody", "nobody"],
            "item_id": [items[0], items[1], items[2], "brand-new", items[4]],
            "title": [None, None, None, "The bold story of sports", None],
        }
    )
    rows.write_parquet(tmp_path / "rows.parquet")
    out, cache = tmp_path / "out.json", tmp_path / "empty-cache"
    cache.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "OMP_NUM_THREADS": "1"}  # no PYTHONPATH, no venv
    args = [str(python), "-I", "-c", FRESH, str(model_dir), str(cache), str(tmp_path / "rows.parquet"), str(out)]
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert all(path.startswith(str(model_dir / "code")) for path in result["code"])  # the model's own code
    assert (cache / "tiny-gpt2-seed0").is_dir()  # the backbone was rebuilt here
    np.testing.assert_array_equal(np.array(result["scores"]), served.score_rows(rows))
    ranked = dict(served.rank(users[0], [Candidate(items[0]), Candidate(items[1])]))
    assert [ranked[items[0]], ranked[items[1]]] == result["scores"][:2]


@pytest.mark.slow
def test_mlflow_models_serve_answers_with_the_bundle_scores(world, tmp_path: Path) -> None:
    """`mlflow models serve --env-manager local` on the registered ranker (MLflow's own server, loopback only)."""
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    cfg, client = world
    served = load_pipeline(
        client, cfg.mlflow.model_prefix, "champion", Path(cfg.data.dir), cfg.textmodel.cache_dir, torch.device("cpu")
    )
    user = served.snapshot.users["user_id"][0]
    items = served.snapshot.items["item_id"].to_list()[:3]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",  # MLflow execs the venv's uvicorn
        "MLFLOW_TRACKING_URI": tracking_uri(cfg),
        "OMP_NUM_THREADS": "1",
    }
    uri = f"models:/{ranker_name(cfg.mlflow.model_prefix)}@champion"
    cmd = [str(bin_dir / "mlflow"), "models", "serve", "-m", uri, "--env-manager", "local", "-h", "127.0.0.1"]
    log = (tmp_path / "serve.log").open("w")
    # Its own session: MLflow execs uvicorn in a grandchild, so the whole group is ended by our child's id.
    proc = subprocess.Popen(
        [*cmd, "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
                time.sleep(1)
        body = {
            "dataframe_split": {
                "columns": ["request_id", "user_id", "item_id"],
                "data": [["a", user, i] for i in items],
            }
        }
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        got = [p["score"] for p in json.loads(urllib.request.urlopen(request, timeout=60).read())["predictions"]]
        assert got == served.score(user, [Candidate(i) for i in items]).tolist()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group of our own child (MLflow + its uvicorn)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
