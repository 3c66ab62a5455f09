"""docs/openapi.json is the document the app serves (with the default settings): regenerated, it must not differ."""

from __future__ import annotations

import json
from pathlib import Path

from conf import load_config
from serving.openapi import openapi_document, render

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_exported_openapi_is_up_to_date() -> None:
    cfg = load_config(None).serving
    assert (DOCS / "openapi.json").read_text() == render(cfg), "run `python -m serving.openapi docs/openapi.json`"


def test_the_document_carries_limits_examples_and_every_route() -> None:
    cfg = load_config(None, ["serving.max_candidates=77"]).serving
    doc = openapi_document(cfg)
    assert set(doc["paths"]) == {"/rank", "/healthz", "/readyz", "/version", "/metrics"}
    request = doc["components"]["schemas"]["RankRequest"]
    assert request["properties"]["candidates"]["maxItems"] == 77
    assert request["examples"][0]["k"] == 3 and request["examples"][1]["explain"] is True
    assert "explanation" in doc["components"]["schemas"]["RankedItem"]["properties"]
    assert json.loads(render(cfg)) == doc
