"""The text model as an MLflow pyfunc: ``load_context`` loads, ``predict`` computes.

The logged model carries the trained folder (adapters, towers, item-embedding table) and what rebuilds its
backbone on any machine (``backbone/``: the SmolLM2 GGUF, 98 MB, converted at load; a local model folder as it
is; nothing for the tiny GPT-2, built from a fixed config), checked against the saved sha256 before use; with
the recrank code (``code/``) and pinned requirements it loads in a fresh environment.
``model_config={"cache_dir": ...}`` at load time says where converted backbones live (default: the registering
machine's cache when it exists here, else ``~/.cache/recrank/models``).

Input: a frame with ``history`` (space-separated item ids, oldest first), ``item_id`` and, needed only for
items missing from the embedding table, their text fields (any of ``title``, ``body``, ``category``,
``subcategory``: rendered with the model's saved prompt, as its catalogue was) or an already rendered
``text`` (used as given). Output: the interest score per row.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

ARTIFACT_KEY, BACKBONE_KEY = "textmodel", "backbone"


def model_cache(config: dict) -> Path:
    """Where a loaded pyfunc keeps converted backbones: ``model_config["cache_dir"]`` when that folder exists on
    this machine, else the user's cache (the registering machine's path means nothing elsewhere)."""
    configured = config.get("cache_dir")
    if configured and Path(configured).is_dir():
        return Path(configured)
    return Path.home() / ".cache" / "recrank" / "models"


def packed_backbone(context) -> Path | None:
    path = context.artifacts.get(BACKBONE_KEY)
    return Path(path) if path else None


class TextModelPyfunc(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        from textmodel.artifact import load_text_model
        from textmodel.model import resolve_device
        from textmodel.scoring import TextScorer

        config = context.model_config or {}
        device = resolve_device(config.get("device", "auto"))
        loaded = load_text_model(
            Path(context.artifacts[ARTIFACT_KEY]), model_cache(config), device, packed_backbone=packed_backbone(context)
        )
        self.scorer = TextScorer(loaded, device)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.Series:
        from conf.prompt import TEMPLATE_FIELDS

        out = []
        has_text = "text" in model_input.columns
        fields = [f for f in TEMPLATE_FIELDS if f in model_input.columns]
        for history, group in model_input.groupby("history", sort=False):
            texts = dict(zip(group["item_id"], group["text"], strict=True)) if has_text else {}
            texts = {k: v for k, v in texts.items() if isinstance(v, str) and v}
            texts.update(self._rendered(group, fields, texts))
            scores = self.scorer.scores(str(history).split(), group["item_id"].tolist(), texts)
            out.append(pd.Series(scores, index=group.index))
        return pd.concat(out).reindex(model_input.index).rename("interest_score")

    def _rendered(self, group: pd.DataFrame, fields: list[str], given: dict[str, str]) -> dict[str, str]:
        """``item_id -> text`` rendered from the fields of rows whose items have no vector and no given text."""
        if not fields:
            return {}
        new = group[~group["item_id"].isin(self.scorer.index) & ~group["item_id"].isin(given)]
        items = {
            i: {f: v if isinstance(v, str) else None for f, v in zip(fields, row, strict=True)}
            for i, row in zip(new["item_id"], new[fields].itertuples(index=False), strict=True)
        }
        items = {i: item for i, item in items.items() if self.scorer.item_text.has_text(item)}
        return dict(zip(items, self.scorer.render(list(items.values())), strict=True))
