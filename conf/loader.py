"""Load a :class:`~conf.schema.Config` from YAML profiles and dotted command-line overrides.

Layering (last wins): ``default.yaml`` -> the chosen profile -> ``key.sub=value`` overrides.
Called once at the edge (the CLI, a test, a benchmark) and passed down explicitly.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from conf.schema import Config

CONF_DIR = Path(__file__).resolve().parent
DEFAULT_PATH = CONF_DIR / "default.yaml"


class ConfigError(ValueError):
    """A configuration file or override is wrong; the message names the file and the key."""


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``update`` merged in; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into its key path and a YAML-typed value (``3`` -> int, ``[1,7]`` -> list)."""
    key, sep, raw = text.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML: {exc}") from None
    return key.split("."), value


def _apply_override(data: dict[str, Any], path: list[str], value: Any, text: str) -> None:
    node = data
    for depth, part in enumerate(path[:-1]):
        child = node.get(part)
        if not isinstance(child, dict):
            where = ".".join(path[: depth + 1])
            raise ConfigError(f"override {text!r}: unknown key {where!r}")
        node = child
    node[path[-1]] = value


def _format_errors(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"{source}: unknown key {key!r}")
        elif err["type"] == "missing":
            lines.append(f"{source}: missing key {key!r}")
        else:
            lines.append(f"{source}: {key}: {err['msg']} (got {err.get('input')!r})")
    return "; ".join(lines)


def load_config(path: str | Path | None = None, overrides: Iterable[str] = ()) -> Config:
    """Load ``default.yaml``, merge the profile at ``path`` (if any) and the dotted overrides, validate."""
    data = _read_yaml(DEFAULT_PATH)
    source = str(DEFAULT_PATH)
    if path is not None and Path(path).resolve() != DEFAULT_PATH:
        data = deep_merge(data, _read_yaml(Path(path)))
        source = str(path)
    overrides = list(overrides)
    for text in overrides:
        keys, value = parse_override(text)
        _apply_override(data, keys, value, text)
    if overrides:
        source += " + overrides"
    try:
        return Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None
