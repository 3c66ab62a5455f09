"""The ranking API: one FastAPI app (``serving.app``) hosted by Ray Serve (``serving.ray_app``) or uvicorn
(``serving.hosts``), over the registry's champion pair (``serving.models``); ``python -m serving`` runs it.
``serving.client`` is its Python client.

Only the client is imported here: an integrator's ``from serving.client import RankClient`` must not load the
ranking stack (torch, LightGBM, polars: ~1.8 s), and importing Ray must wait until an entry point has set
Ray's environment (``runtime.ray_env.prepare_ray_env``). The server's parts are imported from their modules.
"""

from serving.client import ApiError, RankClient, rank_body

__all__ = ["ApiError", "RankClient", "rank_body"]
