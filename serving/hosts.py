"""Model holders from config, and the standalone host (uvicorn, no Ray).

Both hosts serve the same :func:`serving.app.build_app` object; only where it runs differs.
"""

from __future__ import annotations

import logging

from conf import Config
from ranker.loading import load_configured_pipeline, ranker_fingerprint, registry_client, resolve_alias
from serving.models import ModelHolder, folder_snapshots

log = logging.getLogger("recrank.serving")


def registry_holder(cfg: Config, encoder_elsewhere: bool = False) -> ModelHolder:
    """A holder that serves ``<prefix>-ranker@<serving.model_alias>`` and the textmodel version it pins.

    ``encoder_elsewhere``: unseen items are encoded by another deployment (Ray Serve's ``TextEncoder``), so the
    pipeline loads only what it uses: the embedding table, the user tower and the tokenizer that renders item
    text, not the backbone's weights. Otherwise it encodes them itself, on ``serving.encoder.device`` (the
    serving knob, not the training one).
    """
    from ranker.loading import device_for

    alias = cfg.serving.model_alias
    device = device_for(cfg, "cpu" if encoder_elsewhere else cfg.serving.encoder.device)

    def resolve() -> str:
        return resolve_alias(registry_client(cfg), cfg.mlflow.model_prefix, alias)

    def load(version: str):
        return load_configured_pipeline(cfg, version, device, table_only=encoder_elsewhere)

    def fingerprint(version: str) -> str | None:
        return ranker_fingerprint(registry_client(cfg), cfg.mlflow.model_prefix, version)

    return ModelHolder(alias, resolve, load, folder_snapshots(cfg.data.dir, fingerprint))


def start_holder(cfg: Config, encoder_elsewhere: bool = False) -> ModelHolder:
    """Load the served pair now (a failure is logged and reported on /readyz); keep polling the alias and the
    data folder's snapshot version."""
    holder = registry_holder(cfg, encoder_elsewhere)
    if not holder.refresh():
        log.error("no model pair loaded yet: %s (serving 503 until one loads)", holder.state.reload_error)
    holder.start_polling(cfg.serving.reload_interval_s, cfg.serving.snapshot_refresh_s)
    return holder


def choose_engine(cfg: Config, gpu: bool | None = None) -> tuple[str, str]:
    """``(engine, why)`` for ``serving.engine``; ``auto`` picks Ray Serve only where it pays.

    Ray Serve pays for a cluster (``ray.address``), for several ingress replicas and for a GPU (the encoder
    deployment takes it). On one machine with one replica it only adds its proxy hop: measured on 2 cores it
    held 50-60 req/s where uvicorn held 150 with the same app. ``gpu``: whether a CUDA device is visible
    (asked of torch when None).
    """
    s = cfg.serving
    if s.engine != "auto":
        return s.engine, f"serving.engine={s.engine}"
    if cfg.ray.address:
        return "ray", f"auto: joining the Ray cluster at {cfg.ray.address}"
    if s.ingress_replicas > 1:
        return "ray", f"auto: {s.ingress_replicas} ingress replicas"
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    if gpu:
        return "ray", "auto: a CUDA GPU for the encoder deployment"
    return "uvicorn", "auto: one machine, one replica, no GPU (Ray Serve's proxy would cost most of the CPU)"


def run_uvicorn(cfg: Config) -> None:
    """Serve the API with uvicorn alone until interrupted (one process: for single small machines)."""
    import torch
    import uvicorn

    from serving.access import configure_logging
    from serving.app import build_app

    configure_logging(cfg.serving.log_level, cfg.serving.access_log)

    # Request-sized work: extra intra-op threads only spin (they doubled CPU per request here). Ray does
    # the same for its replicas (OMP_NUM_THREADS=1); LightGBM already predicts on one thread.
    torch.set_num_threads(1)
    holder = start_holder(cfg)
    app = build_app(cfg.serving, holder)
    announce(cfg, holder, "uvicorn")
    try:
        uvicorn.run(
            app,
            host=cfg.serving.host,
            port=cfg.serving.port,
            access_log=False,  # uvicorn's own access lines: the app writes a JSON one itself (serving.access_log)
            log_level="warning",
            timeout_graceful_shutdown=5,
        )
    finally:
        holder.stop()


def announce(cfg: Config, holder: ModelHolder, engine: str) -> None:
    """Print where the API listens, the served versions and a ready ``curl`` line."""
    import os

    from serving.app import curl_example, example_request

    s = cfg.serving
    print(f"serving on http://{s.host}:{s.port} ({engine}; OpenAPI at /docs; Ctrl-C stops)", flush=True)
    if holder.current is None:
        print(f"not ready: {holder.state.reload_error}", flush=True)
        return
    print(f"models: {holder.state.versions} (alias {holder.state.alias})", flush=True)
    body = example_request(holder.current.snapshot)
    print(curl_example(s.host, s.port, body, bool(os.environ.get(s.auth_token_env))), flush=True)
