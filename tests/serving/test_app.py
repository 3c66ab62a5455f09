"""The FastAPI app without Ray: scores equal the pipeline's, every client mistake is a named 4xx, auth,
readiness, and a reload under traffic that drops nothing."""

from __future__ import annotations

import dataclasses
import threading
import time
from unittest import mock

import httpx
import polars as pl
import pytest
from fastapi.testclient import TestClient

from conf import Config
from ranker.pipeline import Candidate
from serving.app import build_app, curl_example, example_request
from serving.models import ModelHolder

SNAPSHOT_ID = mock.ANY  # the served snapshot's content id (a hash: not a fixed value)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(served_world: Config, holder: ModelHolder) -> TestClient:
    cfg = served_world.serving.model_copy(
        update={"max_candidates": 20, "max_text_chars": 300, "max_body_bytes": 20_000}
    )
    return TestClient(build_app(cfg, holder))


def known(holder: ModelHolder, n: int) -> tuple[str, list[str]]:
    snap = holder.current.snapshot
    user = next(u for u in snap.users["user_id"].to_list() if holder.current.history(u))
    return user, snap.items["item_id"].head(n).to_list()


def test_rank_scores_equal_the_pipeline(client: TestClient, holder: ModelHolder) -> None:
    user, items = known(holder, 8)
    new = {"item_id": "brand-new", "title": "A story about sports and finance", "category": "c1"}
    r = client.post("/rank", json={"user_id": user, "candidates": [*items, new]})
    assert r.status_code == 200, r.text
    body = r.json()
    expected = holder.current.score(user, [*(Candidate(i) for i in items), Candidate(**new)])
    got = {x["item_id"]: x["score"] for x in body["items"]}
    assert [got[i] for i in [*items, "brand-new"]] == expected.tolist()  # the same floats, not just close
    assert [x["rank"] for x in body["items"]] == list(range(1, 10))
    assert [x["score"] for x in body["items"]] == sorted(expected.tolist(), reverse=True)
    assert body["versions"] == {"ranker": "1", "textmodel": "1", "snapshot": SNAPSHOT_ID}
    assert body["encoded_items"] == 1 and body["cold_start_user"] is False
    assert r.headers["server-timing"].startswith("rank;dur=")


def test_explanations_add_up_to_the_scores(served_world: Config, holder: ModelHolder) -> None:
    """``explain: true`` returns the same ranking, and per item terms that sum to its score exactly."""
    user, items = known(holder, 8)
    new = {"item_id": "brand-new", "title": "A story about sports and finance", "category": "c1"}
    body = {"user_id": user, "candidates": [*items, new]}
    every = {"explain_top": 50, "explain_items": 50}  # every feature of every item
    wide = TestClient(build_app(served_world.serving.model_copy(update=every), holder))
    plain = wide.post("/rank", json=body).json()
    explained = wide.post("/rank", json={**body, "explain": True}).json()
    assert all("explanation" not in item for item in plain["items"])  # off by default, not even a null
    assert [(i["item_id"], i["score"]) for i in explained["items"]] == [
        (i["item_id"], i["score"]) for i in plain["items"]
    ]
    features = set(holder.current.inputs.features)
    for item in explained["items"]:
        e = item["explanation"]
        total = e["base_value"] + e["prior"]["contribution"] + sum(t["contribution"] for t in e["contributions"])
        assert total + e["rest"] == pytest.approx(item["score"], abs=1e-9)
        assert {t["feature"] for t in e["contributions"]} == features and e["rest"] == 0.0  # all of them listed
        assert e["prior"]["feature"] == f"prior: logit({holder.current.inputs.base_score})"
        sizes = [abs(t["contribution"]) for t in e["contributions"]]
        assert sizes == sorted(sizes, reverse=True)
    interest = {i["item_id"]: next(t for t in i["explanation"]["contributions"] if t["feature"] == "interest_score")
                for i in explained["items"]}  # fmt: skip
    frame = holder.current.ranking_frame(holder.current.request_rows(user, [Candidate(i) for i in items]))
    assert interest[items[0]]["value"] == frame["interest_score"][0]  # the value the ranker read

    top3 = TestClient(build_app(served_world.serving.model_copy(update={"explain_top": 3, "explain_items": 2}), holder))
    short = top3.post("/rank", json={**body, "explain": True, "k": 4}).json()["items"]
    assert len(short) == 4 and all(len(i["explanation"]["contributions"]) == 3 for i in short[:2])
    assert [i["item_id"] for i in short] == [i["item_id"] for i in plain["items"][:4]]
    assert all("explanation" not in i for i in short[2:])  # only the best explain_items are explained
    short = short[:2]
    for item in short:  # the other features are folded into rest: still the score
        e = item["explanation"]
        total = e["base_value"] + e["prior"]["contribution"] + sum(t["contribution"] for t in e["contributions"])
        assert total + e["rest"] == pytest.approx(item["score"], abs=1e-9)


def test_k_and_cold_start_user(client: TestClient, holder: ModelHolder) -> None:
    _, items = known(holder, 6)
    body = client.post("/rank", json={"user_id": "never-seen", "candidates": items, "k": 2}).json()
    assert len(body["items"]) == 2 and body["cold_start_user"] is True
    full = holder.current.rank("never-seen", [Candidate(i) for i in items])
    assert [(x["item_id"], x["score"]) for x in body["items"]] == full[:2]


def test_an_unknown_item_with_every_field_scores_as_its_catalogue_twin(
    client: TestClient, holder: ModelHolder, served_world: Config
) -> None:
    """A request item carrying a catalogue item's fields (subcategory included) gets the catalogue's text,
    rendered by the same function with the model's saved prompt, and so the catalogue's vector and score."""
    from features import read_items
    from textmodel.data import Catalogue

    pipeline = holder.current
    user, items = known(holder, 6)
    source, others = items[0], items[1:]
    catalogue_items = read_items(served_world.data.dir).collect()
    row = catalogue_items.filter(pl.col("item_id") == source).row(0, named=True)
    twin = {"item_id": "twin", **{f: row[f] for f in ("title", "body", "category", "subcategory")}}
    catalogue = Catalogue.from_items(catalogue_items, pipeline.text.item_text)
    assert pipeline.texts_needed([Candidate(**twin)]) == {"twin": catalogue.texts[catalogue.item_ids.index(source)]}

    r = client.post("/rank", json={"user_id": user, "candidates": [*others, twin]})
    assert r.status_code == 200, r.text
    assert r.json()["encoded_items"] == 1
    got = {x["item_id"]: x["score"] for x in r.json()["items"]}
    table_vector = pipeline.text.vectors[pipeline.text.index[source]].cpu().numpy()  # encoded at export
    via_catalogue = pipeline.score(user, [*map(Candidate, others), Candidate(**twin)], vectors={"twin": table_vector})
    assert [got[i] for i in [*others, "twin"]] == pytest.approx(via_catalogue.tolist(), abs=1e-6)

    # The subcategory reaches the text model: the served prompt reads it (the catalogue's are all empty).
    lab = {**twin, "subcategory": "lab gear"}
    # 1 token a byte and max_tokens 32: the subcategory keeps what the title leaves (the title stays whole).
    assert len(row["title"]) <= 30
    assert pipeline.texts_needed([Candidate(**lab)]) == {"twin": f"{row['title']}\nlab gear"[:32]}
    r = client.post("/rank", json={"user_id": user, "candidates": [*others, lab]})
    assert r.status_code == 200, r.text
    pair = [Candidate(**twin), Candidate(**{**lab, "item_id": "lab"})]
    interest = pipeline.text.scores(pipeline.history(user), ["twin", "lab"], pipeline.texts_needed(pair))
    assert interest[0] != pytest.approx(interest[1], abs=1e-4)


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ("{not json", 422, "malformed JSON"),
        ("[]", 422, "body: Input should be a valid dictionary"),
        ('{"user_id": 7, "candidates": ["x"]}', 422, "body.user_id: Input should be a valid string"),
        ('{"user_id": "u", "candidates": []}', 422, "body.candidates: List should have at least 1 item"),
        ('{"user_id": "u", "candidates": "abc"}', 422, "body.candidates: Input should be a valid list"),
        ('{"user_id": "u", "candidates": ["a"], "k": 0}', 422, "body.k: Input should be greater than or equal to 1"),
        ('{"user_id": "u", "candidates": ["a"], "limit": 3}', 422, "body.limit: Extra inputs are not permitted"),
        ('{"user_id": "", "candidates": ["a"]}', 422, "body.user_id: String should have at least 1 character"),
        ('{"candidates": ["a"]}', 422, "body.user_id: Field required"),
    ],
)
def test_malformed_requests_are_named_422s(client: TestClient, payload: str, status: int, message: str) -> None:
    r = client.post("/rank", content=payload, headers={"content-type": "application/json"})
    assert r.status_code == status and message in r.json()["error"], r.text


def test_request_limits_and_model_errors(client: TestClient, holder: ModelHolder) -> None:
    user, items = known(holder, 3)
    cases = [
        ({"user_id": user, "candidates": [f"i{n}" for n in range(21)]}, 422, "at most 20 items"),
        ({"user_id": user, "candidates": [items[0], items[1], items[0]]}, 422, "candidates[2]: duplicate item_id"),
        ({"user_id": user, "candidates": [items[0], "mystery"]}, 422, "item 'mystery' is unknown to the model"),
        ({"user_id": user, "candidates": [{"item_id": "n", "title": "x" * 301}]}, 422, "at most 300 characters"),
        ({"user_id": user, "candidates": [{"item_id": "n", "title": "  "}]}, 422, "has no text"),
        ({"user_id": "u" * 201, "candidates": items}, 422, "body.user_id: String should have at most 200"),
    ]
    for payload, status, message in cases:
        r = client.post("/rank", json=payload)
        assert r.status_code == status and message in r.json()["error"], (payload, r.text)
    big = client.post(
        "/rank", content=b'{"user_id": "' + b"u" * 30_000 + b'"}', headers={"content-type": "application/json"}
    )
    assert big.status_code == 413 and "serving.max_body_bytes" in big.json()["error"]


def test_health_readiness_version_docs(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["versions"]["ranker"] == "1"
    assert client.get("/version").json()["models"] == {"ranker": "1", "textmodel": "1", "snapshot": SNAPSHOT_ID}
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()["components"]["schemas"]["RankRequest"]
    assert schema["properties"]["candidates"]["maxItems"] == 20  # the configured limit is in the schema


def test_bearer_token(served_world: Config, holder: ModelHolder, monkeypatch) -> None:
    monkeypatch.setenv(served_world.serving.auth_token_env, "s3cret")
    app = TestClient(build_app(served_world.serving, holder))
    _, items = known(holder, 2)
    body = {"user_id": "u", "candidates": items}
    assert app.post("/rank", json=body).status_code == 401
    assert app.post("/rank", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert app.post("/rank", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert app.get("/healthz").status_code == 200  # probes stay open


def test_not_ready_before_a_pair_loads(served_world: Config) -> None:
    def resolve() -> str:
        raise RuntimeError("registry unreachable")

    holder = ModelHolder("champion", resolve, lambda v: None)
    assert holder.refresh() is False
    app = TestClient(build_app(served_world.serving, holder))
    ready = app.get("/readyz")
    assert ready.status_code == 503 and "registry unreachable" in ready.json()["reload_error"]
    r = app.post("/rank", json={"user_id": "u", "candidates": ["a"]})
    assert r.status_code == 503 and "not loaded" in r.json()["error"]


def test_examples_for_people(holder: ModelHolder) -> None:
    body = example_request(holder.current.snapshot)
    assert len(body["candidates"]) == 5 and holder.current.knows_user(body["user_id"])
    line = curl_example("127.0.0.1", 8000, body, auth=True)
    assert line.startswith("curl -s http://127.0.0.1:8000/rank") and "Bearer $RECRANK_API_TOKEN" in line


def test_reload_under_traffic_drops_nothing(served_world: Config, holder: ModelHolder, serve_app) -> None:
    """The alias moves 1 -> 2 (a slow load) -> 3 (a failed load) while clients keep ranking."""
    base = holder.current
    target = {"version": "1"}

    def load(version: str):
        time.sleep(0.5)  # requests keep arriving while the new pair loads
        if version == "3":
            raise RuntimeError("weights of version 3 are corrupt")
        return dataclasses.replace(base, versions={**base.versions, "ranker": version})

    reloading = ModelHolder("champion", lambda: target["version"], load)
    assert reloading.refresh()
    user, items = known(holder, 10)
    seen: list[tuple[int, str]] = []
    stop = threading.Event()

    with serve_app(build_app(served_world.serving, reloading)) as url:

        def traffic() -> None:
            with httpx.Client(base_url=url, timeout=10) as http:
                while not stop.is_set():
                    r = http.post("/rank", json={"user_id": user, "candidates": items})
                    seen.append((r.status_code, r.json().get("versions", {}).get("ranker", "?")))

        clients = [threading.Thread(target=traffic) for _ in range(3)]
        for t in clients:
            t.start()
        time.sleep(0.3)
        target["version"] = "2"
        assert reloading.refresh()
        time.sleep(0.3)
        target["version"] = "3"
        assert reloading.refresh() is False
        time.sleep(0.3)
        stop.set()
        for t in clients:
            t.join()
        ready = httpx.get(f"{url}/readyz").json()

    statuses = {s for s, _ in seen}
    versions = [v for _, v in seen]
    assert statuses == {200}, seen
    assert "1" in versions and "2" in versions and "3" not in versions
    after_swap = versions[versions.index("2") :]
    assert after_swap.count("1") <= len(clients)  # only requests already in flight at the swap finish on "1"
    assert versions[-1] == "2"
    assert ready["versions"]["ranker"] == "2" and "version 3 are corrupt" in ready["reload_error"]
