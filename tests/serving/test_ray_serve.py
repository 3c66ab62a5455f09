"""The Ray Serve application on a random loopback port: ranks (cached items in the ingress, unseen items
through the batched encoder deployment), answers client mistakes with 4xx, binds to loopback, shuts down."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from unittest import mock

import httpx
import numpy as np
import psutil
import pytest
from local_server import free_port

from conf import Config
from ranker.pipeline import Candidate
from runtime.ray_env import prepare_ray_env
from serving.models import ModelHolder

SNAPSHOT_ID = mock.ANY  # the served snapshot's content id (a hash: not a fixed value)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(served_world: Config) -> Iterator[tuple[str, Config]]:
    cfg = served_world.model_copy(deep=True)
    cfg.serving.port = free_port()
    cfg.serving.reload_interval_s = 0
    cfg.ray.num_cpus = 2
    prepare_ray_env(cfg.ray)
    from serving.ray_app import deploy, start_serve, stop_serve

    started = start_serve(cfg)
    try:
        deploy(cfg)
        yield f"http://127.0.0.1:{cfg.serving.port}", cfg
    finally:
        stop_serve(started)


def test_rank_through_ray_serve_equals_the_pipeline(served, holder: ModelHolder) -> None:
    url, _ = served
    snap = holder.current.snapshot
    user = next(u for u in snap.users["user_id"].to_list() if holder.current.history(u))
    items = snap.items["item_id"].head(12).to_list()
    new = [{"item_id": f"new-{i}", "title": t} for i, t in enumerate(["Sports night", "Markets fall", "Tennis"])]
    with httpx.Client(base_url=url, timeout=30) as http:
        assert http.get("/readyz").json()["ready"]
        cached = http.post("/rank", json={"user_id": user, "candidates": items}).json()
        mixed = http.post("/rank", json={"user_id": user, "candidates": [*items[:5], *new]}).json()
        served_snapshot = http.get("/version").json()["snapshot"]
    want = holder.current.score(user, [Candidate(i) for i in items])
    got = {x["item_id"]: x["score"] for x in cached["items"]}
    assert [got[i] for i in items] == want.tolist()  # identical floats: the same pipeline in the ingress
    assert cached["versions"] == {"ranker": "1", "textmodel": "1", "snapshot": SNAPSHOT_ID}
    assert cached["encoded_items"] == 0
    # The ingress reports the snapshot version it serves (and follows the data folder's: serving.snapshot_refresh_s).
    assert served_snapshot["id"] == cached["versions"]["snapshot"] == holder.current.versions["snapshot"]
    assert served_snapshot["as_of"] == holder.current.snapshot.as_of.isoformat()
    # Unseen items are encoded by the encoder deployment in a batch with other texts: padding differs from
    # encoding them here, so equal to float32 rounding, not bit for bit.
    local = holder.current.score(user, [*(Candidate(i) for i in items[:5]), *(Candidate(**n) for n in new)])
    got = {x["item_id"]: x["score"] for x in mixed["items"]}
    order = [*items[:5], *(n["item_id"] for n in new)]
    np.testing.assert_allclose([got[i] for i in order], local, rtol=0, atol=1e-5)
    assert mixed["encoded_items"] == 3


def test_client_mistakes_are_4xx_under_ray_serve(served) -> None:
    url, cfg = served
    with httpx.Client(base_url=url, timeout=30) as http:
        cases = [
            (b"{oops", "malformed JSON"),
            (b'{"user_id": "u", "candidates": []}', "at least 1 item"),
            (b'{"user_id": "u", "candidates": ["a", "a"]}', "duplicate item_id"),
            (b'{"user_id": "u", "candidates": ["no-such-item"]}', "unknown to the model"),
        ]
        for body, message in cases:
            r = http.post("/rank", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422 and message in r.json()["error"], r.text
        big = http.post("/rank", content=b"x" * (cfg.serving.max_body_bytes + 1))
        assert big.status_code == 413
        assert http.get("/readyz").status_code == 200  # nothing above hurt the replica


def test_request_ids_and_metrics_under_ray_serve(served, holder: ModelHolder) -> None:
    """The proxy's request id is the app's (one header, the client's when given); /metrics is the replica's."""
    url, _ = served
    snap = holder.current.snapshot
    items = snap.items["item_id"].head(4).to_list()
    with httpx.Client(base_url=url, timeout=30) as http:
        sent = http.post("/rank", json={"user_id": "u", "candidates": items}, headers={"X-Request-ID": "ray-1"})
        made = http.post("/rank", json={"user_id": "u", "candidates": items})
        scrape = http.get("/metrics")
    assert sent.headers.get_list("x-request-id") == ["ray-1"]
    assert len(made.headers.get_list("x-request-id")) == 1 and made.headers["x-request-id"]
    assert scrape.status_code == 200
    lines = [line for line in scrape.text.splitlines() if line.startswith("recrank_http_requests_total{")]
    rank_ok = [line for line in lines if 'route="/rank"' in line and 'status="200"' in line]
    assert len(rank_ok) == 1 and 'replica="' in rank_ok[0]  # one replica here; its series carry its id
    assert float(rank_ok[0].rsplit(" ", 1)[1]) >= 2
    assert 'recrank_served_model_info{alias="champion"' in scrape.text


def test_ray_listens_on_loopback_only(served) -> None:
    """Every listening socket of this test's Ray processes is on loopback, except the inter-deployment
    gRPC port that Ray 2.60 hard-codes to [::]:0 in each Serve replica (no setting exists; README)."""
    ray_procs = psutil.Process().children(recursive=True)  # the local Ray this test module started
    exposed = []
    for proc in ray_procs:
        try:
            name, conns = proc.name(), proc.net_connections(kind="inet")
        except (psutil.AccessDenied, psutil.NoSuchProcess):
            continue
        exposed += [(name, c.laddr) for c in conns if c.status == psutil.CONN_LISTEN and not _loopback(c.laddr.ip)]
    assert len(ray_procs) >= 5
    assert all(name.startswith("ray::ServeReplica") for name, _ in exposed), exposed


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    return (getattr(addr, "ipv4_mapped", None) or addr).is_loopback
