"""Text-model definitions saved before a field existed: the value that makes them run as they were trained.

The schema has no defaults: ``conf/default.yaml`` sets every field, so a new field cannot silently take a value
nobody chose. A text model saves its definition (``textmodel.json`` ``config``) with the definition version it
was saved under (``config_version``; none before versioning began: 0). Loading an older one fills each field
added since with the value that reproduces the old behaviour (``standardize: false`` for models trained before
the standardisation existed, not today's ``true``), then validates it like any config.

Adding a field to ``TextModelConfig``: set it in ``default.yaml``, append it here with the next version and
the value models saved before it behave as, and bump :data:`TEXTMODEL_CONFIG_VERSION`.
"""

from __future__ import annotations

import copy

# (version that added the field, dotted path under the text-model definition, the value older models run as).
TEXTMODEL_ADDED: tuple[tuple[int, str, object], ...] = (
    # Fields added before the definition was versioned (all older models are version 0).
    (1, "prompt", None),  # the old join of the item's text fields
    (1, "standardize", False),
    (1, "similarity", "cosine"),
    (1, "peft.side_width", 64),
    (1, "train.fine_tune_head_lr", None),  # the towers trained at lr in the second phase
    (1, "train.probe_patience", None),
    (1, "train.offset_feature", None),
    (1, "train.adversarial", {"method": "none", "epsilon": 0.01, "steps": 3}),
    (1, "train.live_history", None),
    (1, "train.held_in_impressions", 1000),
    (1, "train.memory_refresh_steps", None),
    (1, "train.oof_scheme", "impressions"),
    (1, "train.selection_fraction", 0.1),
    (1, "train.export_guard", {"metric": "auc", "min_gain": 0.0}),
    (1, "train.workers", 1),
    (
        1,
        "train.distributed",
        {"checkpoint_every_steps": None, "max_failures": 2, "shared_cache": "auto", "storage": None, "resume": None},
    ),
    (1, "train.warm_start", None),
    (1, "train.since", None),
    (2, "train.fine_tune_from", "probe"),
)
TEXTMODEL_CONFIG_VERSION = max(version for version, _, _ in TEXTMODEL_ADDED)


def upgrade_textmodel(definition: dict, saved_version: int) -> dict:
    """A copy of a saved text-model definition with every field added after ``saved_version`` filled in (where
    it is missing) with the value older models ran as."""
    out = copy.deepcopy(definition)
    for version, path, value in TEXTMODEL_ADDED:
        if version <= saved_version:
            continue
        *parents, leaf = path.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node.setdefault(leaf, copy.deepcopy(value))
    return out
