"""Schema fuzzing: Schemathesis generates valid and invalid requests from the app's own OpenAPI schema;
no request may produce a 5xx (client input is never a server error).

Driven through Hypothesis directly (Schemathesis' pytest plugin does not load under this pytest).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.generation import GenerationMode

from conf import Config
from serving.app import build_app
from serving.models import ModelHolder

pytestmark = pytest.mark.integration

EXAMPLES = 100  # per operation and generation mode


def test_no_input_produces_a_server_error(served_world: Config, holder: ModelHolder) -> None:
    cfg = served_world.serving.model_copy(update={"max_candidates": 30, "max_text_chars": 200})
    schema = schemathesis.openapi.from_asgi("/openapi.json", build_app(cfg, holder))
    calls: dict[str, list[int]] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            fuzz(operation, mode, calls.setdefault(f"{operation.label} {mode.value}", []))
    rank = calls["POST /rank positive"] + calls["POST /rank negative"]
    assert len(rank) >= EXAMPLES  # the fuzzer really exercised /rank
    assert any(s == 200 for s in rank) and any(400 <= s < 500 for s in rank)
    assert all(s < 500 for statuses in calls.values() for s in statuses)
    print({k: f"{len(v)} cases, statuses {sorted(set(v))}" for k, v in calls.items()})  # shown with -s


def fuzz(operation, mode: GenerationMode, statuses: list[int]) -> None:
    """Call ``operation`` with up to EXAMPLES generated cases, recording every status code."""

    @given(case=operation.as_strategy(generation_mode=mode))
    # derandomize: the same cases every run (a random draw could miss every 200 or every 4xx and flake)
    @settings(
        max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
    )
    def call(case) -> None:
        response = case.call()
        statuses.append(response.status_code)
        assert response.status_code < 500, (case.body, response.text)

    try:
        call()
    except Unsatisfiable:
        if mode is not GenerationMode.NEGATIVE:
            raise  # an operation without inputs (GET /healthz) has no invalid input to generate
