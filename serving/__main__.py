"""``python -m serving`` (what ``recrank serve`` runs): host the ranking API until Ctrl-C.

python -m serving --config conf/demo.yaml [--engine auto|ray|uvicorn] [--host H] [--port P] [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recrank serve", description="Serve the ranking API.")
    parser.add_argument("--config", type=Path, default=None, help="profile YAML (merged over conf/default.yaml)")
    parser.add_argument("--engine", choices=["auto", "ray", "uvicorn"], help="serving.engine")
    parser.add_argument("--host", help="serving.host")
    parser.add_argument("--port", type=int, help="serving.port")
    parser.add_argument("--data", type=Path, help="data folder (data.dir)")
    parser.add_argument("--address", help="join this Ray cluster instead of starting a local Ray (ray.address)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from conf import ConfigError, load_config

    overrides = list(args.overrides)
    for flag, key in (
        ("engine", "serving.engine"),
        ("host", "serving.host"),
        ("port", "serving.port"),
        ("data", "data.dir"),
        ("address", "ray.address"),
    ):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"recrank serve: error: {exc}", file=sys.stderr)
        return 2
    from serving.hosts import choose_engine

    engine, why = choose_engine(cfg)
    print(f"engine: {engine} ({why})", flush=True)
    if engine == "uvicorn":
        from serving.hosts import run_uvicorn

        run_uvicorn(cfg)
        return 0
    return _run_ray(cfg)


def _served_versions(host: str, port: int, timeout_s: float = 60.0) -> dict[str, str] | None:
    """The served pair's versions from ``GET /readyz`` over HTTP (None when no pair loaded in time).

    Over HTTP, not a Serve handle: with ``direct_ingress`` Serve's router lives on the caller's event loop,
    and a handle used from this plain thread would break it (and the shutdown after it).
    """
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"http://{host}:{port}/readyz", timeout=5)
            if r.status_code == 200:
                return r.json()["versions"]
        except httpx.HTTPError:
            pass  # HAProxy picks up new replicas a moment after the deployment is up
        time.sleep(0.5)
    return None


def _run_ray(cfg) -> int:
    from runtime.ray_env import prepare_ray_env, prepare_serve_env

    prepare_ray_env(cfg.ray)  # before `ray` is imported
    prepare_serve_env(cfg.serving)
    from ranker.loading import read_current_snapshot
    from serving.app import curl_example, example_request
    from serving.ray_app import deploy, start_serve, stop_serve

    stop = threading.Event()

    def on_signal(*_) -> None:
        stop.set()

    # Ctrl-C sets ``stop`` by hand, from the start: with direct_ingress it otherwise killed the process without
    # shutting Serve down. SIGTERM after ``ray.init``, which installs a SIGTERM handler of its own.
    signal.signal(signal.SIGINT, on_signal)
    started = start_serve(cfg)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        deploy(cfg)
        s = cfg.serving
        print(f"serving on http://{s.host}:{s.port} (Ray Serve; OpenAPI at /docs; Ctrl-C stops)", flush=True)
        versions = None if stop.is_set() else _served_versions(s.host, s.port)
        if versions is None:
            print("not ready: no model pair loaded (see GET /readyz)", flush=True)
        else:
            auth = bool(os.environ.get(s.auth_token_env))
            print(f"models: {versions} (alias {s.model_alias})", flush=True)
            print(curl_example(s.host, s.port, example_request(read_current_snapshot(cfg.data.dir)), auth), flush=True)
        while not stop.wait(1.0):
            pass
    finally:
        print("stopping ...")
        stop_serve(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
