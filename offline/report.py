"""Evaluation reports: ``metrics.json`` (machine-readable), ``report.md`` (a table with 95% intervals)
and ``metric_by_model.png`` (the same comparison as a plot), all written atomically."""

from __future__ import annotations

from pathlib import Path

from features.io import atomic_path, write_json_atomic
from ranker.evaluate import EvaluationResult
from ranker.metrics import METRIC_NAMES

REPORT_DIR = "report"
TABLE_METRICS = ("auc", "global_auc", "mrr", "ndcg_at_5", "ndcg_at_10")
_LABELS = {
    "auc": "AUC (imp-mean)",
    "global_auc": "global AUC",
    "mrr": "MRR",
    "ndcg_at_5": "nDCG@5",
    "ndcg_at_10": "nDCG@10",
}


def metrics_table(result: EvaluationResult) -> list[list[str]]:
    """Header + one row per system: each metric with its 95% interval where one exists."""
    rows = [["system", *[_LABELS[m] for m in TABLE_METRICS]]]
    for name, res in result.systems.items():
        cells = [name]
        for metric in TABLE_METRICS:
            iv = result.intervals.get(metric, {}).get("systems", {}).get(name)
            cells.append(f"{iv.mean:.4f} [{iv.low:.3f}, {iv.high:.3f}]" if iv else f"{res.metrics[metric]:.4f}")
        rows.append(cells)
    return rows


def gains_table(result: EvaluationResult) -> list[list[str]]:
    key = f"gain_vs_{result.baseline}"
    rows = [["system", *[f"Δ {_LABELS[m]}" for m in METRIC_NAMES]]]
    names = [n for n in result.systems if n != result.baseline]
    for name in names:
        cells = [name]
        for metric in METRIC_NAMES:
            iv = result.intervals[metric].get(key, {}).get(name)
            cells.append(f"{iv.mean:+.4f} [{iv.low:+.3f}, {iv.high:+.3f}]" if iv else "")
        rows.append(cells)
    return rows


def _markdown(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def render_markdown(result: EvaluationResult, title: str, context: dict[str, object]) -> str:
    cold_rows = [["system", *[_LABELS[m] for m in TABLE_METRICS]]]
    for name, res in result.systems.items():
        cold_rows.append([name, *[f"{res.cold_metrics.get(m, float('nan')):.4f}" for m in TABLE_METRICS]])
    parts = [
        f"# {title}",
        "",
        "\n".join(f"- **{k}**: {v}" for k, v in context.items()),
        "",
        f"## {result.split} split: {result.impressions} impressions, {result.rows} rows",
        "",
        "Impression-mean metrics with 95% paired-bootstrap intervals over impressions.",
        "",
        _markdown(metrics_table(result)),
        "",
        f"## Gain over `{result.baseline}` (paired bootstrap, 95%)",
        "",
        "An interval that excludes 0 is a gain (or loss) that resampling the test impressions does not erase.",
        "",
        _markdown(gains_table(result)),
        "",
        f"## Cold-item slice ({result.cold_rows} rows: items shown few times before the impression)",
        "",
        _markdown(cold_rows),
        "",
        "![metric by model](metric_by_model.png)",
        "",
    ]
    return "\n".join(parts)


def plot_metrics(result: EvaluationResult, path: Path) -> Path:
    """Bar chart of each metric per system with 95% interval whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result.systems)
    fig, axes = plt.subplots(1, len(METRIC_NAMES), figsize=(4 * len(METRIC_NAMES), 3.6), sharey=False)
    for ax, metric in zip(axes, METRIC_NAMES, strict=True):
        ivs = result.intervals[metric]["systems"]
        means = [ivs[n].mean for n in names]
        err = [[ivs[n].mean - ivs[n].low for n in names], [ivs[n].high - ivs[n].mean for n in names]]
        ax.bar(range(len(names)), means, yerr=err, capsize=4, color="#4c72b0")
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_title(_LABELS[metric])
        lo = min(ivs[n].low for n in names)
        ax.set_ylim(max(0.0, lo - 0.05), min(1.0, max(ivs[n].high for n in names) + 0.03))
    fig.suptitle(f"{result.split} split, {result.impressions} impressions (95% bootstrap CI)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_report(result: EvaluationResult, data_dir: str | Path, title: str, context: dict[str, object]) -> Path:
    """Write ``DIR/report/{metrics.json, report.md, metric_by_model.png}``; return the folder."""
    out = Path(data_dir) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic({"context": context, **result.to_json()}, out / "metrics.json")
    plot_metrics(result, out / "metric_by_model.png")
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_markdown(result, title, context))
    return out
