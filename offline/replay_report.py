"""The replay's report: per day, the champion with frozen vs refreshed features, and each promotion decision.

``report.md`` (tables), ``replay.json`` (the figures) and ``replay.png`` (AUC per day, both feature modes,
promotions marked). Over the whole window the gap refreshed - frozen carries a paired bootstrap interval
over impressions (one day of ``ml100k`` holds ~12 test impressions: a day's figure alone is noise).
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from features.io import atomic_path, write_json_atomic
from ranker.compare import paired_bootstrap

METRICS = ("auc", "ndcg_at_10")


def _window_gaps(folder: Path, samples: int = 1000) -> dict[str, dict[str, object]]:
    """Impression means over the window per mode and the paired interval of refreshed - frozen."""
    files = sorted((folder / "daily").glob("*.parquet"))
    if not files:
        return {}
    per = pl.concat([pl.read_parquet(f) for f in files])
    by_mode = {m: per.filter(pl.col("mode") == m).drop("mode") for m in ("refreshed", "frozen")}
    out = {}
    for metric in METRICS:
        systems, gains = paired_bootstrap(by_mode, metric, samples, seed=0, baseline="frozen")
        out[metric] = {
            "refreshed": systems["refreshed"].to_json(),
            "frozen": systems["frozen"].to_json(),
            "refreshed_minus_frozen": gains["refreshed"].to_json(),
        }
    out["impressions"] = by_mode["refreshed"].height
    return out


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _table(head: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def _plot(state, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    days = [d["day"] for d in state.daily]
    fig, ax = plt.subplots(figsize=(max(6, len(days) * 0.8), 3.6))
    for mode, style in (("refreshed", "-o"), ("frozen", "--s")):
        ax.plot(range(len(days)), [d[mode]["auc"] for d in state.daily], style, label=f"{mode} features")
    for decision in state.decisions:
        if decision["day"] in days:
            x = days.index(decision["day"])
            color = "#2a9d8f" if decision["promoted"] else "#999999"
            ax.axvline(x, color=color, lw=1, ls=":")
            ax.annotate(
                "promoted" if decision["promoted"] else "kept",
                (x, ax.get_ylim()[1]),
                fontsize=7,
                color=color,
                ha="center",
                va="top",
            )
    ax.set_xticks(range(len(days)), days, rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("champion impression AUC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_replay_report(state, folder: Path) -> Path:
    """Write ``report.md``, ``replay.json`` and ``replay.png`` into ``folder``; return ``folder``."""
    window = _window_gaps(folder)
    daily = [
        [
            d["day"],
            d["impressions"],
            d["champion"],
            d["refreshed"]["auc"],
            d["frozen"]["auc"],
            d["refreshed"]["auc"] - d["frozen"]["auc"],
            d["refreshed"]["ndcg_at_10"],
            d["frozen"]["ndcg_at_10"],
        ]
        for d in state.daily
    ]
    decisions = [
        [
            d["day"] or "set-up",
            d["challenger"],
            d.get("champion_before", "-"),
            "promoted" if d["promoted"] else d.get("verdict") or "kept",
            d["reason"],
        ]
        for d in state.decisions
    ]
    lines = [
        "# recrank replay",
        "",
        f"Days {state.window[0]} .. {state.window[-1]}: each day the champion served the day's impressions from the "
        "snapshot refreshed up to the day before (**refreshed**) and from the snapshot of the window's start "
        "(**frozen**, a server never refreshed); then the day was appended, a pending challenger judged on "
        "every day since its cut-off (neither model trained on them; 'not enough evidence' keeps it pending) and, "
        "on schedule, a new challenger trained.",
        "",
        "## Per day",
        "",
        *_table(
            [
                "day",
                "impressions",
                "champion",
                "AUC refreshed",
                "AUC frozen",
                "refreshed - frozen",
                "nDCG@10 refreshed",
                "nDCG@10 frozen",
            ],
            daily,
        ),
        "",
    ]
    if window:
        lines += ["## Whole window (impression means, paired 95% bootstrap)", ""]
        rows = [
            [
                m,
                str(_iv(window[m]["refreshed"])),
                str(_iv(window[m]["frozen"])),
                str(_iv(window[m]["refreshed_minus_frozen"])),
            ]
            for m in METRICS
        ]
        lines += [
            *_table(["metric", "refreshed", "frozen", "refreshed - frozen"], rows),
            "",
            f"{window['impressions']} impressions.",
            "",
        ]
    lines += ["## Promotion decisions", "", *_table(["day", "challenger", "champion", "decision", "reason"], decisions)]
    lines += ["", "![AUC per day](replay.png)", ""]
    with atomic_path(folder / "report.md") as tmp:
        tmp.write_text("\n".join(lines) + "\n")
    write_json_atomic(
        {"window": window, "daily": state.daily, "decisions": state.decisions, "trainings": state.trainings},
        folder / "replay.json",
    )
    if state.daily:
        _plot(state, folder / "replay.png")
    return folder


def _iv(raw: dict[str, float]) -> str:
    return f"{raw['mean']:.4f} [{raw['low']:.4f}, {raw['high']:.4f}]"
