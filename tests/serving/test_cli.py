"""``recrank serve`` end to end: a real process on a free loopback port, ready, ranking, stopped by Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from local_server import free_port

from conf import Config
from features import read_snapshot

pytestmark = pytest.mark.integration


def start_serve(world: Config, tmp_path: Path, engine: str, *overrides: str) -> tuple[subprocess.Popen, int]:
    """``recrank serve`` on a free loopback port over ``world``, in its own process group (output piped)."""
    profile = tmp_path / "served.yaml"
    profile.write_text(yaml.safe_dump(world.model_dump(mode="json")))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "offline.cli", "serve", "--config", str(profile), "--engine", engine,
         "--port", str(port), *overrides],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    return proc, port


def wait_ready(proc: subprocess.Popen, url: str, limit_s: float = 120) -> None:
    """Until ``url/readyz`` answers 200; fails with the server's output if it exits or takes over ``limit_s``."""
    deadline = time.monotonic() + limit_s
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"server not ready in {limit_s:g} s"
        time.sleep(0.3)


def test_recrank_serve_uvicorn_ranks_and_stops_on_ctrl_c(served_world: Config, tmp_path: Path) -> None:
    proc, port = start_serve(served_world, tmp_path, "uvicorn")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        body = httpx.get(f"{url}/openapi.json").json()
        assert "/rank" in body["paths"]
        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert f"serving on http://127.0.0.1:{port}" in out
    assert f"curl -s http://127.0.0.1:{port}/rank" in out  # the ready example


def test_recrank_serve_auto_picks_uvicorn_here_and_logs_json(served_world: Config, tmp_path: Path) -> None:
    """On a machine without a GPU, one replica and no cluster, ``auto`` hosts with uvicorn; each request
    leaves one JSON access line carrying its id."""
    import json

    proc, port = start_serve(served_world, tmp_path, "auto")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(proc, url)
        snapshot = read_snapshot(served_world.data.dir)
        items = snapshot.items["item_id"].head(3).to_list()
        r = httpx.post(f"{url}/rank", json={"user_id": "someone", "candidates": items}, headers={"X-Request-ID": "q-9"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "q-9"
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "engine: uvicorn (auto: one machine" in out
    access = [json.loads(line) for line in out.splitlines() if line.startswith("{") and '"recrank.access"' in line]
    ranked = [a for a in access if a.get("request_id") == "q-9"]
    assert len(ranked) == 1 and ranked[0]["route"] == "/rank" and ranked[0]["candidates"] == 3
    assert "someone" not in out  # no user id in the logs by default


def test_recrank_serve_ray_direct_ingress_ranks_and_stops_on_ctrl_c(served_world: Config, tmp_path: Path) -> None:
    """Ray Serve's throughput-optimised mode: HAProxy on the port, each replica's own HTTP server behind it."""
    proc, port = start_serve(served_world, tmp_path, "ray", "serving.direct_ingress=true")
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any(line.startswith("curl -s") for line in lines):  # the driver has announced the example
            assert proc.poll() is None, "".join(lines)
            assert time.monotonic() < deadline, "no curl example in 180 s"
            time.sleep(0.5)
        snapshot = read_snapshot(served_world.data.dir)
        user, items = snapshot.users["user_id"][0], snapshot.items["item_id"].head(3).to_list()
        ranked = httpx.post(
            f"{url}/rank", json={"user_id": user, "candidates": items}, headers={"X-Request-ID": "di-1"}, timeout=10
        )
        assert ranked.status_code == 200, ranked.text
        assert sorted(i["item_id"] for i in ranked.json()["items"]) == sorted(items)
        assert ranked.headers.get_list("x-request-id") == ["di-1"]  # HAProxy and the replica: one id, the client's
        assert "recrank_http_requests_total" in httpx.get(f"{url}/metrics", timeout=10).text
        bad = httpx.post(f"{url}/rank", json={"user_id": user, "candidates": []}, timeout=10)
        assert bad.status_code == 422, bad.text
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)  # replicas drain for 30 s in this mode
        reader.join(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert f"curl -s http://127.0.0.1:{port}/rank" in out
    assert "stopping ..." in out
