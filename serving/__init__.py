"""The ranking API: one FastAPI app (``serving.app``) hosted by Ray Serve (``serving.ray_app``) or uvicorn
(``serving.hosts``), over the registry's champion pair (``serving.models``). ``python -m serving`` runs it.

``serving.ray_app`` is not imported here: importing Ray must wait until the entry point has set Ray's
environment (``runtime.ray_env.prepare_ray_env``).
"""

from serving.app import build_app, curl_example, example_request
from serving.hosts import registry_holder, run_uvicorn, start_holder
from serving.models import ModelHolder, ModelState

__all__ = [
    "ModelHolder",
    "ModelState",
    "build_app",
    "curl_example",
    "example_request",
    "registry_holder",
    "run_uvicorn",
    "start_holder",
]
