"""The Ray Serve application: an ingress that ranks, and a text-encoder deployment for unseen items.

- ``RankIngress`` hosts :func:`serving.app.build_app` through ``@serve.ingress`` (built on the replica,
  after the model pair is loaded) and runs the ranking pipeline in-process: no second deployment on
  the request path of a cached-items request.
- ``TextEncoder`` encodes items missing from the embedding table, batched by total items across
  requests (``@serve.batch`` with a size function), on a GPU when one exists.

``serve run conf/serve.yaml`` imports :func:`app_builder`; ``recrank serve`` (``serving.__main__``) calls
:func:`start_serve` and :func:`deploy`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application

from conf import Config, load_config

log = logging.getLogger("recrank.serving")


def _texts_in(batch: list[tuple[str, list[str]]]) -> int:
    return sum(len(texts) for _, texts in batch)


@serve.deployment(name="TextEncoder")
class TextEncoder:
    """Encodes item texts with the text model of the version each call names (loaded on first use)."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        from ranker.loading import device_for

        self.cfg = Config.model_validate(cfg)
        enc = self.cfg.serving.encoder
        self.device = device_for(self.cfg, enc.device)
        log.warning("TextEncoder: encoding on %s", self.device)  # WARNING: Serve's replica logs show it
        self.scorers: dict[str, Any] = {}  # textmodel version -> TextScorer (the served one and the next)
        self.encode.set_max_batch_size(enc.max_batch_items)
        self.encode.set_batch_wait_timeout_s(enc.batch_wait_timeout_s)
        self._preload()

    def _preload(self) -> None:
        """Load the text model the served ranker pins now, not on the first request that needs it."""
        from ranker.loading import pair_versions, registry_client

        try:
            pinned = pair_versions(
                registry_client(self.cfg), self.cfg.mlflow.model_prefix, self.cfg.serving.model_alias
            )
        except Exception as exc:  # the ingress reports a missing pair on /readyz; encode loads on demand
            log.warning("encoder: nothing preloaded (%s)", exc)
            return
        if pinned["textmodel"]:
            self._scorer(pinned["textmodel"])

    def _scorer(self, version: str):
        if version not in self.scorers:
            from ranker.loading import load_text_scorer

            if len(self.scorers) >= 2:
                self.scorers.pop(next(iter(self.scorers)))
            self.scorers[version] = load_text_scorer(self.cfg, version, self.device)
        return self.scorers[version]

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.005, batch_size_fn=_texts_in)
    async def encode(self, batch: list[tuple[str, list[str]]]) -> list[list[np.ndarray]]:
        out: list[list[np.ndarray]] = [[] for _ in batch]
        for version in {v for v, _ in batch}:
            calls = [i for i, (v, _) in enumerate(batch) if v == version]
            flat = [t for i in calls for t in batch[i][1]]
            vectors = self._scorer(version).encode_texts(flat).float().cpu().numpy()
            start = 0
            for i in calls:
                n = len(batch[i][1])
                out[i] = list(vectors[start : start + n])
                start += n
        return out


@serve.deployment(name="RankIngress")
@serve.ingress()
class RankIngress:
    """The API; its ``encode`` sends unseen items to the encoder deployment in chunks of one batch at most."""

    def __init__(self, cfg: dict[str, Any], encoder: Any) -> None:
        from serving.access import configure_logging
        from serving.hosts import start_holder

        self.cfg = Config.model_validate(cfg)
        s = self.cfg.serving
        configure_logging(s.log_level, s.access_log)
        self.encoder = encoder
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.holder = start_holder(self.cfg, encoder_elsewhere=True)  # table + user tower: no backbone here

    async def encode(self, version: str, texts: Sequence[str]) -> list[np.ndarray]:
        size = self.cfg.serving.encoder.max_batch_items
        chunks = [list(texts[i : i + size]) for i in range(0, len(texts), size)]
        parts = await asyncio.gather(*(self.encoder.encode.remote((version, chunk)) for chunk in chunks))
        return [v for part in parts for v in part]

    def __serve_build_asgi_app__(self):
        from serving.app import build_app

        # Serve's proxy (or HAProxy) forwards the client's X-Request-ID, or one it made, and returns it itself.
        return build_app(self.cfg.serving, self.holder, self.encode, replica=self.replica, echo_request_id=False)

    def __del__(self) -> None:
        holder = getattr(self, "holder", None)
        if holder is not None:
            holder.stop()


def build_ray_app(cfg: Config) -> Application:
    """The bound application; replica counts, CPUs and GPUs from ``cfg.serving``."""
    s = cfg.serving
    gpus = 1 if s.encoder.device == "cuda" or (s.encoder.device == "auto" and _ray_has_gpu()) else 0
    plain = cfg.model_dump(mode="json")
    encoder = TextEncoder.options(
        num_replicas=s.encoder.num_replicas,
        max_ongoing_requests=max(s.max_ongoing_requests, s.encoder.max_batch_items),
        ray_actor_options={"num_cpus": 0 if gpus else 1, "num_gpus": gpus},
    ).bind(plain)
    return RankIngress.options(
        num_replicas=s.ingress_replicas,
        max_ongoing_requests=s.max_ongoing_requests,
        ray_actor_options={
            "num_cpus": s.ingress_num_cpus,
            # read when polars is imported, so it must be in the replica's environment from the start
            "runtime_env": {"env_vars": {"POLARS_MAX_THREADS": str(s.ingress_polars_threads)}},
        },
    ).bind(plain, encoder)


def _ray_has_gpu() -> bool:
    import ray

    return ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0


def app_builder(args: dict[str, Any]) -> Application:
    """For ``serve run``/``serve deploy``: ``args: {config: PROFILE.yaml, overrides: [key=value, ...]}``."""
    config = args.get("config")
    overrides = args.get("overrides") or []
    if isinstance(overrides, str):
        overrides = overrides.split()
    return build_ray_app(load_config(config, list(overrides)))


APP_NAME = "recrank"


def start_serve(cfg: Config, *, address: str | None = None) -> bool:
    """Start (or join) Ray and Serve with the configured HTTP bind and logging; True when Ray was started here."""
    from runtime.ray_env import start_ray

    started = start_ray(cfg.ray, address=address)
    serve.start(
        http_options={"host": cfg.serving.host, "port": cfg.serving.port},
        # Serve's own access lines stay off: the app writes one JSON line per request itself (serving.access_log).
        logging_config={"log_level": "WARNING", "enable_access_log": False},
    )
    return started


def deploy(cfg: Config) -> None:
    """Deploy the app (blocks until its replicas are up and have loaded the model pair)."""
    serve.run(build_ray_app(cfg), name=APP_NAME, route_prefix="/", blocking=False)


def stop_serve(started_ray: bool) -> None:
    import ray

    serve.shutdown()
    if started_ray:
        ray.shutdown()
