"""``recrank serve`` end to end: a real process on a free loopback port, ready, ranking, stopped by Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from local_server import free_port

from conf import Config

pytestmark = pytest.mark.integration


def test_recrank_serve_uvicorn_ranks_and_stops_on_ctrl_c(served_world: Config, tmp_path: Path) -> None:
    profile = tmp_path / "served.yaml"
    profile.write_text(yaml.safe_dump(served_world.model_dump(mode="json")))
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "offline.cli", "serve", "--config", str(profile), "--engine", "uvicorn",
         "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server not ready in 120 s"
            time.sleep(0.3)
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
