"""Entry points: the recrank CLI, the end-to-end pipeline, reports."""

__all__: list[str] = []
