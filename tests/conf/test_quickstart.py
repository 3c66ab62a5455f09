"""conf/quickstart.yaml: the README's first run, every stage on MovieLens-100K in minutes with the tiny GPT-2."""

from __future__ import annotations

import re
from pathlib import Path

from conf import CONF_DIR, load_config

ROOT = Path(__file__).resolve().parents[2]


def test_the_quickstart_profile_validates_and_uses_the_tiny_backbone() -> None:
    cfg = load_config(CONF_DIR / "quickstart.yaml")
    assert cfg.profile == "quickstart"
    assert cfg.textmodel.backbone == "tiny-gpt2"  # built from a config: nothing to convert or download
    assert cfg.data.dataset == "ml100k"  # the embedded default
    assert cfg.textmodel.train.device == "cpu"
    # small enough to stay a quickstart
    assert cfg.textmodel.train.epochs <= 2 and cfg.textmodel.train.max_steps_per_epoch is not None
    assert all(len(values) == 1 for values in cfg.ranker.tune.values())


def test_the_readme_runs_it_through_the_makefile_variables() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^PROFILE \?=", makefile, re.M) and re.search(r"^DATA +\?=", makefile, re.M)
    assert "make run PROFILE=conf/quickstart.yaml DATA=data/quickstart" in (ROOT / "README.md").read_text()
