"""Starting Ray from a Config: one place for the settings that keep a local Ray private and small.

Serving and batch scoring both start Ray; they must not import each other, so the start-up lives here,
beside the config it reads. Called only from entry points (``recrank serve``, ``recrank score``, tests).

What a default ``ray.init()`` does on a small machine, and what is changed:
- some Ray processes listen on all interfaces: a local Ray is started with the configured host
  (loopback) as its node address, and ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps Ray from swapping
  it for the external address;
- the object store takes 30% of RAM: capped by ``ray.object_store_mb``;
- the dashboard, usage statistics and token auth start extra processes/files for a single-user local
  Ray: off. A cluster (``ray.address``) keeps whatever its operator configured.
"""

from __future__ import annotations

import os

from conf.schema import RayConfig, ServingConfig

LOCAL_RAY_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_DEDUP_LOGS": "1",
}


def prepare_ray_env(cfg: RayConfig, address: str | None = None) -> None:
    """Set the local-Ray environment. Call it before anything imports ``ray``: some of these are read at
    import time (an entry point that imports ``ray.serve`` first would leave Ray listening on all interfaces).
    """
    if (address if address is not None else cfg.address) is None:
        for key, value in LOCAL_RAY_ENV.items():
            os.environ.setdefault(key, value)


DIRECT_INGRESS_ENV = {  # Ray 2.60: read by Serve's processes when they start (module constants)
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
}


def prepare_serve_env(cfg: ServingConfig) -> None:
    """Set Ray Serve's ingress mode from ``cfg.direct_ingress``; before ``ray`` is imported and Ray is started.

    Serve reads these flags as module constants in the driver and in every Serve process, so they cannot
    change once Ray runs; a Ray cluster started by someone else needs them in its own environment.
    """
    if cfg.direct_ingress:
        for key, value in DIRECT_INGRESS_ENV.items():
            os.environ.setdefault(key, value)


def start_ray(cfg: RayConfig, *, address: str | None = None, log_to_driver: bool = False) -> bool:
    """Connect to ``address`` (or ``cfg.address``) or start a local Ray; returns True when this call started it.

    Ray keeps one connection per process: when one is already up it is reused and False is returned,
    so a caller only shuts down what it started.
    """
    target = address if address is not None else cfg.address
    prepare_ray_env(cfg, address)
    import ray

    if ray.is_initialized():
        return False
    if target is None:
        ray.init(
            num_cpus=cfg.num_cpus,
            object_store_memory=cfg.object_store_mb * 1024 * 1024,
            include_dashboard=False,
            _node_ip_address=cfg.host,
            log_to_driver=log_to_driver,
            configure_logging=True,
            logging_level="WARNING",
        )
    else:
        ray.init(address=target, log_to_driver=log_to_driver, logging_level="WARNING")
    return True
