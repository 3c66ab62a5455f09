"""Typed configuration: the schema, the YAML profiles beside it, and the loader."""

from conf.loader import CONF_DIR, ConfigError, load_config
from conf.schema import (
    AdversarialConfig,
    Config,
    DataConfig,
    EvaluationConfig,
    FeaturesConfig,
    GuardConfig,
    LightGBMParams,
    MlflowConfig,
    PeftConfig,
    RankerConfig,
    RayConfig,
    ScoringConfig,
    ServingConfig,
    SyntheticConfig,
    TextModelConfig,
    TrainConfig,
)

__all__ = [
    "CONF_DIR",
    "AdversarialConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvaluationConfig",
    "FeaturesConfig",
    "GuardConfig",
    "LightGBMParams",
    "MlflowConfig",
    "PeftConfig",
    "RankerConfig",
    "RayConfig",
    "ScoringConfig",
    "ServingConfig",
    "SyntheticConfig",
    "TextModelConfig",
    "TrainConfig",
    "load_config",
]
