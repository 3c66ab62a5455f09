"""The configuration reference in docs/ is the schema's own descriptions and default.yaml's values."""

from __future__ import annotations

from pathlib import Path

from conf.reference import render
from conf.schema import Config

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _leaf_keys(model, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and hasattr(annotation, "model_fields"):
            keys += _leaf_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(f"{prefix}{name}")
    return keys


def test_reference_pages_are_up_to_date() -> None:
    for file, text in render().items():
        on_disk = (DOCS / file).read_text()
        assert on_disk == text, f"docs/{file} is out of date: run `python -m conf.reference docs/`"


def test_every_setting_is_documented_once_with_its_default() -> None:
    pages = "".join(render().values())
    rows = [line for line in pages.splitlines() if line.startswith("| `")]
    documented = [line.split("`")[1] for line in rows]
    assert sorted(documented) == sorted(_leaf_keys(Config))  # every leaf once, nothing else
    serving_port = next(line for line in rows if line.startswith("| `serving.port` "))
    assert serving_port.split(" | ")[1:3] == ["int", "`8000`"] and "HTTP port" in serving_port
    method = next(line for line in rows if line.startswith("| `textmodel.peft.method` "))
    assert "lora \\| adalora" in method and "`side`" not in method.split(" | ")[1]
