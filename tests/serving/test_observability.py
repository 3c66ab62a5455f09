"""What an operator sees: Prometheus metrics counted after real traffic, request ids end to end, one JSON
access line per request (no user id unless asked), and ``auto`` choosing the engine that pays."""

from __future__ import annotations

import hashlib
import json
import logging
import re

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conf import Config
from serving.access import JsonLines, UserIds, access_log
from serving.app import build_app
from serving.client import ApiError, RankClient
from serving.hosts import choose_engine
from serving.models import ModelHolder

pytestmark = pytest.mark.integration


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``(name, sorted labels) -> value`` of every sample in a Prometheus text exposition."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(parsed: dict, name: str, **labels: str) -> float:
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


class Lines(logging.Handler):
    """The access logger's records, formatted as the hosts format them."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonLines())
        self.lines: list[dict] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


@pytest.fixture
def access_lines():
    handler = Lines()
    level = access_log.level
    access_log.addHandler(handler)
    access_log.setLevel(logging.INFO)
    yield handler.lines
    access_log.removeHandler(handler)
    access_log.setLevel(level)


def users_and_items(holder: ModelHolder, n: int) -> tuple[str, list[str]]:
    snap = holder.current.snapshot
    user = next(u for u in snap.users["user_id"].to_list() if holder.current.history(u))
    return user, snap.items["item_id"].head(n).to_list()


def test_metrics_count_real_traffic(served_world: Config, holder: ModelHolder, serve_app) -> None:
    user, items = users_and_items(holder, 7)
    new = {"item_id": "brand-new", "title": "A story about sports and finance", "category": "c1"}
    with serve_app(build_app(served_world.serving, holder)) as url, RankClient(url, retries=0) as api:
        for _ in range(3):
            api.rank(user, items)
        api.rank("never-seen", [*items, new], k=2)  # a cold user and one encoded item
        with pytest.raises(ApiError) as bad:
            api.rank(user, [items[0], items[0]])  # a duplicate: 422
        assert bad.value.status == 422
        api.health()
        import httpx

        assert httpx.get(f"{url}/no/such/path").status_code == 404
        scrape = httpx.get(f"{url}/metrics")
    assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
    m = samples(scrape.text)
    assert value(m, "recrank_http_requests_total", route="/rank", method="POST", status="200") == 4
    assert value(m, "recrank_http_requests_total", route="/rank", method="POST", status="422") == 1
    assert value(m, "recrank_http_requests_total", route="/healthz", method="GET", status="200") == 1
    assert value(m, "recrank_http_requests_total", route="other", method="GET", status="404") == 1  # not its path
    assert value(m, "recrank_http_request_duration_seconds_count", route="/rank", method="POST") == 5
    assert value(m, "recrank_rank_candidates_count") == 4
    assert value(m, "recrank_rank_candidates_sum") == 3 * 7 + 8
    assert value(m, "recrank_rank_encoded_items_total") == 1
    assert value(m, "recrank_rank_cold_start_users_total") == 1
    for stage in ("features", "text", "booster"):
        assert value(m, "recrank_rank_stage_seconds_count", stage=stage) == 4
    versions = holder.state.versions
    info = dict(
        ranker=versions["ranker"], textmodel=versions["textmodel"], snapshot=versions["snapshot"], alias="champion"
    )
    assert value(m, "recrank_served_model_info", **info) == 1
    assert value(m, "recrank_ready") == 1
    age = value(m, "recrank_snapshot_age_seconds")
    assert abs(age - holder.state.snapshot.age_s()) < 60


def test_a_failed_reload_is_counted(served_world: Config, holder: ModelHolder) -> None:
    from fastapi.testclient import TestClient

    target = {"version": "1"}

    def load(version: str):
        if version == "2":
            raise RuntimeError("weights of version 2 are corrupt")
        return holder.current

    reloading = ModelHolder("champion", lambda: target["version"], load)
    assert reloading.refresh()
    target["version"] = "2"
    assert reloading.refresh() is False
    m = samples(TestClient(build_app(served_world.serving, reloading)).get("/metrics").text)
    assert value(m, "recrank_model_loads_total", result="ok") == 1
    assert value(m, "recrank_model_loads_total", result="failed") == 1
    assert value(m, "recrank_snapshot_swaps_total", result="failed") == 0
    assert value(m, "recrank_ready") == 1  # the old pair keeps serving


def test_metrics_can_be_turned_off(served_world: Config, holder: ModelHolder) -> None:
    from fastapi.testclient import TestClient

    cfg = served_world.serving.model_copy(update={"metrics": False})
    assert TestClient(build_app(cfg, holder)).get("/metrics").status_code == 404


def test_request_ids_and_access_lines(served_world: Config, holder: ModelHolder, serve_app, access_lines) -> None:
    user, items = users_and_items(holder, 5)
    with serve_app(build_app(served_world.serving, holder)) as url, RankClient(url, retries=0) as api:
        import httpx

        sent = httpx.post(f"{url}/rank", json={"user_id": user, "candidates": items}, headers={"X-Request-ID": "abc-1"})
        made = httpx.post(f"{url}/rank", json={"user_id": user, "candidates": items})
        unsafe = httpx.post(
            f"{url}/rank", json={"user_id": user, "candidates": items}, headers={"X-Request-ID": "a b\tc"}
        )
        with pytest.raises(ApiError) as bad:
            api.rank(user, [], request_id="bad-1")
    assert sent.headers["x-request-id"] == "abc-1"
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["x-request-id"])
    assert re.fullmatch(r"[0-9a-f]{32}", unsafe.headers["x-request-id"])  # never echoed into logs as sent
    assert bad.value.request_id == "bad-1" and bad.value.status == 422

    by_id = {line["request_id"]: line for line in access_lines}
    line = by_id["abc-1"]
    assert line["logger"] == "recrank.access" and line["msg"] == "access"
    assert line["route"] == "/rank" and line["method"] == "POST" and line["status"] == 200
    assert line["candidates"] == 5 and line["encoded_items"] == 0 and line["cold_start_user"] is False
    assert line["versions"] == holder.state.versions and line["latency_ms"] > 0
    assert "user" not in line and user not in json.dumps(line)  # no user id by default
    assert by_id[made.headers["x-request-id"]]["status"] == 200
    failed = by_id["bad-1"]
    assert failed["status"] == 422 and "candidates" not in failed  # no ranking happened


def test_user_ids_hashed_when_asked(served_world: Config, holder: ModelHolder, access_lines, monkeypatch) -> None:
    from fastapi.testclient import TestClient

    monkeypatch.setenv("RECRANK_LOG_SALT", "pepper")
    user, items = users_and_items(holder, 3)
    cfg = served_world.serving.model_copy(update={"log_user_id": "hash"})
    TestClient(build_app(cfg, holder)).post("/rank", json={"user_id": user, "candidates": items})
    expected = hashlib.sha256(f"pepper\0{user}".encode()).hexdigest()[:16]
    assert access_lines[-1]["user"] == expected == UserIds("hash", "pepper")(user)
    assert UserIds("plain")(user) == user and UserIds()(user) is None


def test_log_lines_in_a_request_carry_its_id(served_world: Config, holder: ModelHolder) -> None:
    """A server fault is logged with the id of the request that hit it (and answered 500 with that id)."""
    from fastapi.testclient import TestClient

    class Broken:
        versions = holder.current.versions

        def texts_needed(self, candidates):
            raise ZeroDivisionError("boom")

    broken = ModelHolder("champion", lambda: "1", lambda v: Broken())
    broken.current = Broken()
    handler = Lines()
    logger = logging.getLogger("recrank.serving")
    logger.addHandler(handler)
    try:
        r = TestClient(build_app(served_world.serving, broken), raise_server_exceptions=False).post(
            "/rank", json={"user_id": "u", "candidates": ["a"]}, headers={"X-Request-ID": "fault-7"}
        )
    finally:
        logger.removeHandler(handler)
    assert r.status_code == 500 and r.json() == {"error": "internal error"}
    fault = next(line for line in handler.lines if line["msg"] == "unhandled error")
    assert fault["request_id"] == "fault-7" and "ZeroDivisionError: boom" in fault["exc"]


def test_auto_engine_picks_ray_only_where_it_pays(served_world: Config) -> None:
    def cfg(**serving) -> Config:
        return served_world.model_copy(
            update={"serving": served_world.serving.model_copy(update={"engine": "auto", **serving})}
        )

    assert choose_engine(cfg(), gpu=False)[0] == "uvicorn"
    assert choose_engine(cfg(), gpu=True)[0] == "ray"
    assert choose_engine(cfg(ingress_replicas=2), gpu=False)[0] == "ray"
    clustered = cfg().model_copy(update={"ray": served_world.ray.model_copy(update={"address": "10.0.0.1:6379"})})
    assert choose_engine(clustered, gpu=False)[0] == "ray"
    assert choose_engine(cfg(engine="ray"), gpu=False) == ("ray", "serving.engine=ray")
