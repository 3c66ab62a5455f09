"""Ray Serve ranking API (issue 5)."""

__all__: list[str] = []
