"""Serving fixtures: the served pair of the tiny world, and a real uvicorn server in a thread."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from local_server import ThreadServer

from conf import Config
from serving.hosts import registry_holder
from serving.models import ModelHolder


@pytest.fixture(scope="module")
def holder(served_world: Config) -> ModelHolder:
    h = registry_holder(served_world)
    assert h.refresh() and h.ready
    return h


@pytest.fixture
def serve_app() -> Iterator[type[ThreadServer]]:
    yield ThreadServer
