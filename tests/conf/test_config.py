from pathlib import Path

import pytest
import yaml

from conf import CONF_DIR, Config, ConfigError, load_config

PROFILES = sorted(p for p in CONF_DIR.glob("*.yaml") if p.name != "serve.yaml")


@pytest.mark.parametrize("path", PROFILES, ids=lambda p: p.name)
def test_every_profile_parses(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.profile == path.stem  # each profile names itself, and the name is recorded with artifacts


def test_profiles_exist() -> None:
    assert {p.name for p in PROFILES} >= {"default.yaml", "demo.yaml", "quality.yaml"}


def test_default_yaml_sets_every_field() -> None:
    """default.yaml is the one source of values: the schema has no defaults to drift from it."""
    raw = yaml.safe_load((CONF_DIR / "default.yaml").read_text())
    assert Config.model_validate(raw) == load_config(None)


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


def test_a_text_model_config_saved_before_later_fields_still_loads() -> None:
    """Artifacts keep the config they were trained with; fields added later take the behaviour of that time."""
    from conf import TextModelConfig

    saved = load_config(None).textmodel.model_dump(mode="json")
    del saved["train"]["offset_feature"], saved["train"]["oof_scheme"]
    del saved["train"]["fine_tune_head_lr"], saved["train"]["adversarial"], saved["lower_dtype"], saved["prompt"]
    del saved["standardize"]
    old = TextModelConfig.model_validate(saved)
    assert old.standardize is False  # projected the raw pooled vectors
    assert old.train.offset_feature is None and old.train.oof_scheme == "impressions"
    # Saved before #13: towers trained at lr in the second phase, float32 lower layers, no adversarial loss.
    assert old.train.fine_tune_head_lr is None and old.lower_dtype == "float32" and old.prompt is None
    assert old.train.adversarial.method == "none"
    current = load_config(None).textmodel
    assert current.train.offset_feature == "item_ctr_smoothed" and current.train.oof_scheme == "time"
    assert current.standardize is True
    assert current.train.fine_tune_head_lr == 0.0 and current.lower_dtype == "auto"
