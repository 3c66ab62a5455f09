"""Evaluation reports: ``metrics.json`` (machine-readable), ``report.md`` (a table with 95% intervals)
and ``metric_by_model.png`` (the same comparison as a plot), plus ``feature_freshness.png`` where the
ranker was evaluated under stale features (:mod:`ranker.freshness`), all written atomically."""

from __future__ import annotations

from pathlib import Path

from features.io import atomic_path, write_json_atomic
from offline.tracking import git_commit
from ranker.compare import Interval
from ranker.evaluate import EvaluationResult
from ranker.freshness import MODE_DESCRIPTIONS, REFERENCE, FreshnessResult
from ranker.metrics import METRIC_NAMES

REPORT_DIR = "report"
TABLE_METRICS = ("auc", "global_auc", "mrr", "mrr_mind", "ndcg_at_5", "ndcg_at_10")
SLICE_METRICS = ("auc", "ndcg_at_10")  # the slice tables stay compact: two metrics, their gains per reference
FRESHNESS_METRICS = ("auc", "ndcg_at_10")
FRESHNESS_PLOT = "feature_freshness.png"
_LABELS = {
    "auc": "AUC (imp-mean)",
    "global_auc": "global AUC",
    "mrr": "MRR (first hit)",
    "mrr_mind": "MRR (MIND)",
    "ndcg_at_5": "nDCG@5",
    "ndcg_at_10": "nDCG@10",
}
_SHORT = {"auc": "AUC", "ndcg_at_10": "nDCG@10", "ndcg_at_5": "nDCG@5", "mrr": "MRR", "mrr_mind": "MRR-MIND"}
_REF_SHORT = {"lightgbm_features_only": "features-only"}


def _gain(iv: Interval | None) -> str:
    return f"{iv.mean:+.4f} [{iv.low:+.3f}, {iv.high:+.3f}]" if iv else ""


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


def gains_table(result: EvaluationResult, reference: str | None = None) -> list[list[str]]:
    """Header + one row per other system: its gain over ``reference`` (default: the first) on each metric."""
    ref = reference or result.baseline
    rows = [["system", *[f"Δ {_LABELS[m]}" for m in METRIC_NAMES]]]
    for name in (n for n in result.systems if n != ref):
        rows.append([name, *[_gain(result.gains(ref, m).get(name)) if ref else "" for m in METRIC_NAMES]])
    return rows


def slice_table(result: EvaluationResult, name: str) -> list[list[str]]:
    """Header + one row per system on one slice: AUC and nDCG@10, and their gains over every reference."""
    head = ["system", *[_SHORT[m] for m in SLICE_METRICS]]
    head += [f"Δ {_SHORT[m]} vs {_REF_SHORT.get(r, r)}" for r in result.references for m in SLICE_METRICS]
    rows = [head]
    for system, res in result.systems.items():
        point = res.slice_metrics.get(name, {})
        cells = [system, *[f"{point.get(m, float('nan')):.4f}" for m in SLICE_METRICS]]
        cells += [
            "—" if system == r else _gain(result.gains(r, m, where=name).get(system))
            for r in result.references
            for m in SLICE_METRICS
        ]
        rows.append(cells)
    return rows


def freshness_table(fresh: FreshnessResult) -> list[list[str]]:
    """Header + one row per (system, mode): AUC and nDCG@10 with 95% intervals, and their gain over point-in-time."""
    rows = [["system", "features", *[_SHORT[m] for m in FRESHNESS_METRICS]]]
    rows[0] += [f"Δ {_SHORT[m]} vs {REFERENCE}" for m in FRESHNESS_METRICS]
    for system in fresh.systems:
        for mode in fresh.modes:
            cells = [system, mode]
            cells += [_interval(fresh.intervals[m][system].get(mode)) for m in FRESHNESS_METRICS]
            cells += ["—" if mode == REFERENCE else _gain(fresh.gains[m][system].get(mode)) for m in FRESHNESS_METRICS]
            rows.append(cells)
    return rows


def _interval(iv: Interval | None) -> str:
    return f"{iv.mean:.4f} [{iv.low:.3f}, {iv.high:.3f}]" if iv else ""


def _freshness_section(fresh: FreshnessResult) -> list[str]:
    """The "Feature freshness" section: what each mode means, the table, its notes and plot."""
    snapshots = {m: len(v) for m, v in fresh.snapshots.items() if v}
    parts = [
        "## Feature freshness",
        "",
        f"The same scoring pipeline on the {fresh.split} impressions, its behavioural features as fresh as a "
        "server's. Gains are paired bootstrap intervals (95%) of (mode − point-in-time) over the same impressions.",
        "",
        *[
            f"- **{m}**: {MODE_DESCRIPTIONS[m]}" + (f" ({snapshots[m]} snapshot(s))." if m in snapshots else ".")
            for m in fresh.modes
        ],
        "",
        _markdown(freshness_table(fresh)),
        "",
        *[f"- {n}" for n in fresh.notes],
        "",
        f"![feature freshness]({FRESHNESS_PLOT})",
        "",
    ]
    return parts


def _selection_section(selection: dict) -> list[str]:
    """ "Model selection": which ranker ships and why, the text model's export decision, and the interest scores'
    impression-mean AUC per split (the score the ranker learns to trust on train and val should hold on test)."""
    parts = ["## Model selection", ""]
    guard = selection.get("text_guard")
    shipped = selection["shipped_ranker"]
    evidence = guard.get("evidence", guard.get("reason")) if guard else None
    parts.append(f"- **shipped ranker**: `{shipped}`" + (f" ({evidence})" if evidence else ""))
    text = selection.get("text_model")
    if text:
        export = text.get("export") or {}
        if export:
            parts.append(f"- **exported text model**: {export.get('exported')} ({export.get('reason')})")
        sel = text.get("selection_impressions")
        if sel:
            parts.append(
                f"- **text model selected on**: its own {sel['impressions']} latest train impressions "
                f"({sel['from'][:19]} to {sel['to'][:19]} UTC), never trained on; the ranker's validation split is "
                "not among them"
            )
        by_split = text.get("interest_auc_by_split", {})
        if by_split:
            splits = ["train", "selection", "val", "test"]
            rows = [["score", *[f"{s} AUC" for s in splits], "val − test"]]
            for column, values in by_split.items():
                label = column + (" (train rows in-sample)" if column == "interest_frozen" else "")
                if column == "interest_score" and text.get("train_interest", "").startswith("out_of_fold"):
                    label += " (train rows cross-fitted)"
                cells = [f"{values[s]:.4f}" if s in values else "—" for s in splits]
                gap = values.get("val", float("nan")) - values.get("test", float("nan"))
                rows.append([label, *cells, f"{gap:+.4f}"])
            parts += ["", "Impression-mean AUC of the interest scores by split:", "", _markdown(rows)]
    return [*parts, ""]


def _markdown(rows: list[list[str]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in body]
    return "\n".join(lines)


def _slice_section(result: EvaluationResult, name: str) -> list[str]:
    sl = result.slices[name]
    parts = [f"### `{name}`: {sl.description}", ""]
    if not sl.available:
        return [*parts, "Not computed: the evaluation was not given the data to decide it (see notes).", ""]
    kept = "rows" if sl.keeps == "rows" else "whole impressions"
    size = (
        f"{sl.rows_matching} rows match ({kept}); {sl.rows} rows in {sl.impressions} impressions count "
        f"({sl.impressions_with_auc} with an AUC)."
    )
    if not sl.impressions:
        return [*parts, size + " Empty on this split: no metrics.", ""]
    return [*parts, size, "", _markdown(slice_table(result, name)), ""]


def render_markdown(result: EvaluationResult, title: str, context: dict[str, object]) -> str:
    parts = [
        f"# {title}",
        "",
        "\n".join(f"- **{k}**: {v}" for k, v in context.items()),
        "",
        f"## {result.split} split: {result.impressions} impressions, {result.rows} rows",
        "",
        "Impression-mean metrics with 95% paired-bootstrap intervals over impressions. MRR (first hit) is 1 / rank "
        "of the top clicked item; MRR (MIND) averages 1 / rank over all clicked items (microsoft-recommenders' "
        "`mrr_score`); they differ only on impressions with several clicks.",
        "",
        _markdown(metrics_table(result)),
        "",
    ]
    for ref in result.references:
        parts += [
            f"## Gain over `{ref}` (paired bootstrap, 95%)",
            "",
            "An interval that excludes 0 is a gain (or loss) that resampling the test impressions does not erase.",
            "",
            _markdown(gains_table(result, ref)),
            "",
        ]
    if result.slices:
        parts += [
            "## Slices: where behaviour is thin",
            "",
            "Item slices keep, within each impression, only the slice's candidates, and count the impressions "
            "where both a click and a non-click remain. User slices keep whole impressions. Gains are paired "
            "bootstrap intervals (95%) over the slice's impressions.",
            "",
        ]
        for name in result.slices:
            parts += _slice_section(result, name)
    if result.selection is not None:
        parts += _selection_section(result.selection)
    if result.freshness is not None:
        parts += _freshness_section(result.freshness)
    if result.notes:
        parts += ["## Notes", "", *[f"- {n}" for n in result.notes], ""]
    parts += ["![metric by model](metric_by_model.png)", ""]
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


def plot_freshness(fresh: FreshnessResult, path: Path) -> Path:
    """Grouped bars: each system's AUC and nDCG@10 under each freshness mode, with 95% interval whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    systems, modes = fresh.systems, fresh.modes
    width = 0.8 / len(modes)
    colours = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    fig, axes = plt.subplots(1, len(FRESHNESS_METRICS), figsize=(5 * len(FRESHNESS_METRICS), 3.6))
    for ax, metric in zip(axes, FRESHNESS_METRICS, strict=True):
        lows, highs = [], []
        for k, mode in enumerate(modes):
            ivs = [fresh.intervals[metric][s][mode] for s in systems]
            err = [[iv.mean - iv.low for iv in ivs], [iv.high - iv.mean for iv in ivs]]
            xs = [i + (k - (len(modes) - 1) / 2) * width for i in range(len(systems))]
            ax.bar(xs, [iv.mean for iv in ivs], width, yerr=err, capsize=3, label=mode, color=colours[k % 4])
            lows += [iv.low for iv in ivs]
            highs += [iv.high for iv in ivs]
        ax.set_xticks(range(len(systems)), systems, rotation=20, ha="right")
        ax.set_title(_LABELS[metric])
        ax.set_ylim(max(0.0, min(lows) - 0.05), min(1.0, max(highs) + 0.03))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{fresh.split} split: features as evaluated vs as served (95% bootstrap CI)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path


def write_report(result: EvaluationResult, data_dir: str | Path, title: str, context: dict[str, object]) -> Path:
    """Write ``DIR/report/{metrics.json, report.md, metric_by_model.png}`` (and ``feature_freshness.png`` when
    the result carries a freshness comparison); return the folder."""
    out = Path(data_dir) / REPORT_DIR
    out.mkdir(parents=True, exist_ok=True)
    # Where the figures came from: a results page quoting them names the commit (and the file's date). No
    # wall-clock field: two runs of the same config write the same bytes (tests/offline/test_reproducible.py).
    context = {**context, "git commit": git_commit()}
    write_json_atomic({"context": context, **result.to_json()}, out / "metrics.json")
    plot_metrics(result, out / "metric_by_model.png")
    if result.freshness is not None:
        plot_freshness(result.freshness, out / FRESHNESS_PLOT)
    else:  # a plot left by an earlier run would describe another evaluation
        (out / FRESHNESS_PLOT).unlink(missing_ok=True)
    with atomic_path(out / "report.md") as tmp:
        tmp.write_text(render_markdown(result, title, context))
    return out
