"""The API's OpenAPI document as served at ``/openapi.json``, exported for readers and client generators.

    python -m serving.openapi docs/openapi.json [--config conf/demo.yaml]

Built from :func:`serving.app.build_app` with the profile's serving settings (the limits a client must respect
are in the schema) and no models loaded: the document depends on the code and the settings only. A test
regenerates it from ``conf/default.yaml`` and fails when ``docs/openapi.json`` differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from conf import ServingConfig, load_config
from serving.app import build_app
from serving.models import ModelHolder


def _unloaded() -> str:
    raise RuntimeError("not loaded")  # pragma: no cover - never called: nothing is served


def openapi_document(cfg: ServingConfig) -> dict:
    """The OpenAPI document of the app under ``cfg`` (no models needed)."""
    holder = ModelHolder(cfg.model_alias, _unloaded, lambda version: None)
    return build_app(cfg, holder).openapi()


def render(cfg: ServingConfig) -> str:
    return json.dumps(openapi_document(cfg), indent=2, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.openapi", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="where to write the JSON document")
    parser.add_argument("--config", type=Path, default=None, help="profile YAML (default: conf/default.yaml)")
    args = parser.parse_args(argv)
    args.out.write_text(render(load_config(args.config).serving))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
