"""Small, hand-written inputs shared by tests: a tiny synthetic shape and a MIND-format folder."""

from __future__ import annotations

from pathlib import Path

TINY_SYNTHETIC = [
    "data.dataset=synthetic",
    "data.synthetic.users=300",
    "data.synthetic.items=120",
    "data.synthetic.impressions=2500",
    "data.synthetic.categories=6",
    "data.synthetic.slate_min=3",
    "data.synthetic.slate_max=8",
    "data.synthetic.days=12",
    "data.synthetic.chunk_impressions=700",
    "data.synthetic.target_ctr=0.15",
]


# A tiny text model that trains in seconds on the tiny synthetic world.
TEXT_OVERRIDES = [
    "textmodel.backbone=tiny-gpt2",
    # Labels would eat the tiny byte-level budget (1 token a byte): catalogue texts stay the bare titles of the
    # synthetic world (its bodies and subcategories are empty), while request items may carry every field.
    'textmodel.prompt="{title}\\n{subcategory}\\n{body}"',
    "textmodel.trainable_top_layers=1",
    "textmodel.dim=16",
    "textmodel.train.batch_size=8",
    "textmodel.train.max_steps_per_epoch=4",
    "textmodel.train.epochs=2",
    "textmodel.train.warmup_steps=1",
    "textmodel.train.lr=0.01",
    "textmodel.train.head_lr=0.01",
    "textmodel.train.device=cpu",
    "textmodel.peft.r=4",
    "textmodel.peft.prefix_tokens=2",
    "data.history_cap=8",
]


NEWS = [
    ["N1", "sports", "football", "Local team wins the cup", "A late goal decides it.", "", "[]", "[]"],
    ["N2", "finance", "markets", "Stocks rally on rate cut", "", "", "[]", "[]"],
    ["N3", "sports", "tennis", "Young star takes the title", "Straight sets.", "", "[]", "[]"],
    ["N4", "news", "world", "Summit ends with a deal", "Leaders agree.", "", "[]", "[]"],
    ["N5", "finance", "crypto", "Coins slide again", "Volatility returns.", "", "[]", "[]"],
]
BEHAVIORS = [
    ["1", "U1", "11/11/2019 9:05:58 AM", "N1 N2", "N3-1 N4-0 N5-0"],
    ["2", "U2", "11/11/2019 10:15:00 AM", "", "N1-0 N2-1"],
    ["3", "U1", "11/12/2019 1:00:00 PM", "N1 N2", "N4-0 N5-1 N2-0"],
    ["4", "U3", "11/13/2019 11:59:59 PM", "N4", "N1-1 N3-0"],
]


def write_mind(folder: Path, news: list[list[str]] | None = None, behaviors: list[list[str]] | None = None) -> Path:
    """Write a MIND-format folder (tab-separated, no header) and return it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "news.tsv").write_text("\n".join("\t".join(r) for r in (news if news is not None else NEWS)) + "\n")
    rows = behaviors if behaviors is not None else BEHAVIORS
    (folder / "behaviors.tsv").write_text("\n".join("\t".join(r) for r in rows) + "\n")
    return folder
