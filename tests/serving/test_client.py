"""serving.client: retries on 503 with back-off, one-line errors, the bearer token, and a real server."""

from __future__ import annotations

import httpx
import pytest

from conf import Config
from ranker.pipeline import Candidate
from serving.app import build_app
from serving.client import ApiError, RankClient
from serving.models import ModelHolder

RANKED = {"user_id": "u", "items": [{"item_id": "a", "score": 0.5, "rank": 1}], "cold_start_user": False,
          "encoded_items": 0, "versions": {"ranker": "2"}}  # fmt: skip


def _client(answers: list[tuple[int, dict]], seen: list[httpx.Request], **kwargs) -> RankClient:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body = answers[min(len(seen), len(answers)) - 1]
        return httpx.Response(status, json=body, headers={"X-Request-ID": "req-7"})

    return RankClient("http://api", transport=httpx.MockTransport(handle), backoff_s=0.001, **kwargs)


def test_a_503_is_retried_with_back_off_then_answered() -> None:
    seen: list[httpx.Request] = []
    unavailable = (503, {"error": "models are not loaded yet"})
    with _client([unavailable, unavailable, (200, RANKED)], seen, token="s3cret") as api:
        ranked = api.rank("u", ["a", {"item_id": "b", "title": "new"}], k=1, request_id="req-7")
    assert [i.item_id for i in ranked.items] == ["a"] and ranked.versions == {"ranker": "2"}
    assert len(seen) == 3
    assert all(r.headers["Authorization"] == "Bearer s3cret" and r.headers["X-Request-ID"] == "req-7" for r in seen)
    assert seen[0].read() == b'{"user_id":"u","candidates":["a",{"item_id":"b","title":"new"}],"k":1}'


def test_retries_end_and_other_errors_are_not_retried() -> None:
    seen: list[httpx.Request] = []
    api = _client([(503, {"error": "models are not loaded yet"})], seen, retries=2)
    with api, pytest.raises(ApiError) as err:
        api.rank("u", ["a"])
    assert len(seen) == 3 and err.value.status == 503
    assert str(err.value) == "HTTP 503: models are not loaded yet (request req-7)"
    seen.clear()
    api = _client([(422, {"error": "candidates: list should have at least 1 item"})], seen)
    with api, pytest.raises(ApiError, match=r"^HTTP 422: candidates: list should have at least 1 item"):
        api.rank("u", [])
    assert len(seen) == 1


def test_the_client_against_a_real_server(served_world: Config, holder: ModelHolder, serve_app) -> None:
    items = holder.current.snapshot.items["item_id"].to_list()[:5]
    user = holder.current.snapshot.users["user_id"][0]
    with serve_app(build_app(served_world.serving, holder)) as url, RankClient(url) as api:
        assert api.health() and api.ready().ready
        ranked = api.rank(user, items, k=3)
        assert [i.rank for i in ranked.items] == [1, 2, 3]
        want = holder.current.rank(user, [Candidate(i) for i in items], 3)
        assert [(i.item_id, i.score) for i in ranked.items] == [(i, s) for i, s in want]
        assert api.version().models == ranked.versions
        explained = api.rank(user, items, k=3, explain=True, request_id="client-1")
        assert [(i.item_id, i.score) for i in explained.items] == [(i, s) for i, s in want]
        for item in explained.items:
            e = item.explanation
            parts = e.base_value + e.prior.contribution + sum(t.contribution for t in e.contributions) + e.rest
            assert parts == pytest.approx(item.score, abs=1e-9)
            assert len(e.contributions) == served_world.serving.explain_top
