import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from conf import CONF_DIR, Config, ConfigError, load_config

PROFILES = sorted(p for p in CONF_DIR.glob("*.yaml") if p.name != "serve.yaml")


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_profile_parses(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.profile == path.stem  # each profile names itself, and the name is recorded with artifacts


def test_profiles_exist() -> None:
    assert {p.name for p in PROFILES} >= {"default.yaml", "demo.yaml", "quality.yaml"}


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, FieldInfo]]:
    """Every field of the schema, nested sections walked, as (dotted path, field)."""
    out = []
    for name, field in model.model_fields.items():
        out.append((prefix + name, field))
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out += _fields(field.annotation, f"{prefix}{name}.")
    return out


def _has(tree: dict, path: str) -> bool:
    for key in path.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return False
        tree = tree[key]
    return True


def test_default_yaml_sets_every_field_and_the_schema_has_no_defaults() -> None:
    """default.yaml is the one source of values: every field of the schema is set there, and no field has a
    default of its own to drift from it (old text models get theirs from conf.migrations)."""
    raw = yaml.safe_load((CONF_DIR / "default.yaml").read_text())
    fields = _fields(Config)
    assert len(fields) > 150  # the walk reaches the nested sections
    assert [path for path, _ in fields if not _has(raw, path)] == []
    assert [path for path, field in fields if not field.is_required()] == []


def test_a_field_missing_from_default_yaml_is_named(tmp_path: Path, monkeypatch) -> None:
    import conf.loader as loader

    raw = yaml.safe_load((CONF_DIR / "default.yaml").read_text())
    del raw["textmodel"]["train"]["held_in_impressions"]
    partial = tmp_path / "default.yaml"
    partial.write_text(yaml.safe_dump(raw))
    monkeypatch.setattr(loader, "DEFAULT_PATH", partial)
    with pytest.raises(ConfigError, match=r"missing key 'textmodel\.train\.held_in_impressions'"):
        load_config(None)


def test_every_text_model_field_added_since_the_first_saved_models_has_a_migration() -> None:
    """A text-model definition saved before versioning (only the fields every version had) upgrades to a valid
    config, with the values old models ran as, not today's defaults."""
    from conf import TextModelConfig
    from conf.migrations import TEXTMODEL_ADDED, TEXTMODEL_CONFIG_VERSION, upgrade_textmodel

    current = load_config(None).textmodel.model_dump(mode="json")
    added = {path for _, path, _ in TEXTMODEL_ADDED}
    old = json.loads(json.dumps(current))
    for path in added:
        *parents, leaf = path.split(".")
        node = old
        for key in parents:
            node = node[key]
        del node[leaf]
    upgraded = TextModelConfig.model_validate(upgrade_textmodel(old, 0))
    assert upgraded.standardize is False and current["standardize"] is True  # the old behaviour, not today's
    assert upgraded.train.oof_scheme == "impressions" and upgraded.train.fine_tune_from == "probe"
    assert upgraded.train.export_guard.metric == "auc" and upgraded.peft.side_width == 64
    # a definition saved under the current version is left as it is
    assert upgrade_textmodel(current, TEXTMODEL_CONFIG_VERSION) == current
    # only the fields added after version 1 are filled for a version-1 model
    partial = {k: v for k, v in json.loads(json.dumps(current)).items()}
    del partial["train"]["fine_tune_from"], partial["standardize"]
    upgraded_v1 = upgrade_textmodel(partial, 1)
    assert upgraded_v1["train"]["fine_tune_from"] == "probe" and "standardize" not in upgraded_v1


def test_unknown_key_in_yaml_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("profile: bad\nfeatures:\n  ctr_prior_strenght: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: unknown key 'features\.ctr_prior_strenght'"):
        load_config(bad)


def test_unknown_override_is_named() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'data\.synthetic\.userz'"):
        load_config(None, ["data.synthetic.userz=3"])
    with pytest.raises(ConfigError, match="unknown key 'nosuch'"):
        load_config(None, ["nosuch.key=1"])


def test_overrides_are_typed_and_win() -> None:
    cfg = load_config(CONF_DIR / "demo.yaml", ["data.history_cap=7", "features.click_windows_days=[2, 3]"])
    assert cfg.data.history_cap == 7
    assert cfg.features.click_windows_days == [2, 3]
    assert cfg.profile == "demo"


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.history_cap=0", "data.history_cap"),
        ("data.dataset=movielens", "data.dataset"),
        ("data.synthetic.slate_min=20", "slate_max"),
        ("features.click_windows_days=[1, 1]", "click_windows_days"),
        ("data.val_fraction=0.6", "val_fraction"),
        ("history_cap", "expected key.sub=value"),
    ],
)
def test_invalid_values_name_the_field(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override, "data.test_fraction=0.5"] if "val_fraction" in override else [override])


def test_a_text_model_config_saved_before_later_fields_still_loads(tmp_path: Path) -> None:
    """Artifacts keep the config they were trained with; fields added later take the behaviour of that time
    (through the artifact loader: conf.migrations, then this machine's runtime knobs)."""
    from textmodel.artifact import saved_config

    saved = load_config(None).textmodel.model_dump(mode="json")
    del saved["train"]["offset_feature"], saved["train"]["oof_scheme"]
    del saved["train"]["fine_tune_head_lr"], saved["train"]["adversarial"], saved["lower_dtype"], saved["prompt"]
    del saved["standardize"]
    old = saved_config(tmp_path, {"config": saved})  # no config_version: saved before versioning
    assert old.standardize is False  # projected the raw pooled vectors
    assert old.train.offset_feature is None and old.train.oof_scheme == "impressions"
    # Saved before the towers were kept fixed: they trained at lr in the second phase; no adversarial loss.
    assert old.train.fine_tune_head_lr is None and old.prompt is None
    assert old.train.adversarial.method == "none"
    assert old.lower_dtype == "auto"  # a runtime knob: this machine's, whatever the saving machine ran
    current = load_config(None).textmodel
    assert current.train.offset_feature == "item_ctr_smoothed" and current.train.oof_scheme == "time"
    assert current.standardize is True
    assert current.train.fine_tune_head_lr == 0.0 and current.lower_dtype == "auto"
