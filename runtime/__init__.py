"""What every long-running entry point needs from its process, apart from configuration: progress lines
(:mod:`runtime.progress`) and a Ray started on loopback with its environment set first (:mod:`runtime.ray_env`).

Below every other package but ``conf``: features, the text model, the ranker, serving and the offline jobs all
report progress, and three of them start or join Ray.
"""

from runtime.progress import progress, say
from runtime.ray_env import prepare_ray_env, prepare_serve_env, start_ray

__all__ = ["prepare_ray_env", "prepare_serve_env", "progress", "say", "start_ray"]
