"""``python -m serving`` (what ``recrank serve`` runs): host the ranking API until Ctrl-C.

python -m serving --config conf/demo.yaml [--engine ray|uvicorn] [--host H] [--port P] [key.sub=value ...]
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recrank serve", description="Serve the ranking API.")
    parser.add_argument("--config", type=Path, default=None, help="profile YAML (merged over conf/default.yaml)")
    parser.add_argument("--engine", choices=["ray", "uvicorn"], help="serving.engine")
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
    if cfg.serving.engine == "uvicorn":
        from serving.hosts import run_uvicorn

        run_uvicorn(cfg)
        return 0
    return _run_ray(cfg)


def _run_ray(cfg) -> int:
    from conf.runtime import prepare_ray_env

    prepare_ray_env(cfg.ray)  # before `ray` is imported
    from ray import serve

    from serving.app import curl_example
    from serving.ray_app import APP_NAME, deploy, start_serve, stop_serve

    started = start_serve(cfg)
    try:
        deploy(cfg)
        s = cfg.serving
        print(f"serving on http://{s.host}:{s.port} (Ray Serve; OpenAPI at /docs; Ctrl-C stops)", flush=True)
        example = serve.get_app_handle(APP_NAME).example.remote().result()
        if example is None:
            print("not ready: no model pair loaded (see GET /readyz)", flush=True)
        else:
            auth = bool(os.environ.get(s.auth_token_env))
            print(f"models: {example['versions']} (alias {s.model_alias})", flush=True)
            print(curl_example(s.host, s.port, example["body"], auth), flush=True)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while not stop.wait(1.0):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        print("stopping ...")
        stop_serve(started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
