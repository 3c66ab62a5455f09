"""docs/results.md from the runs themselves: quality tables that cannot go stale silently.

    python bench/results_page.py data/scr_cold20.json data/scr_sci.json data/scr_ml100k.json --out docs/results.md

Each argument is a seed summary written by ``bench/pipeline_seeds.py`` (``<out>.json``: ``args`` = that command's
arguments, ``runs`` = one entry per seed). For every data set the page gets one table: each system's test
impression-mean AUC and nDCG@10 as the mean over the seeds, with the lowest and highest seed, read from each
run's ``<out>-s<seed>/report/metrics.json``; which text model was exported and which ranker shipped per seed;
the command that regenerates the runs; and where the figures came from (the git commit the report records and
the file's date, or "commit not recorded" for reports written before they recorded it).
Without ``--out`` the page goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The systems of the report, in the page's order, with what a reader calls them.
SYSTEMS: list[tuple[str, str]] = [
    ("popularity", "popularity (earlier impressions of the item)"),
    ("item_ctr", "item CTR (smoothed)"),
    ("interest_frozen", "text only, frozen backbone (`interest_frozen`, the probe)"),
    ("interest_score", "text only, as exported (`interest_score`; the probe when fine-tuning did not win)"),
    ("lightgbm_features_only", "LightGBM, behavioural features only"),
    ("ranker", "combined ranker (features + interest score)"),
]
SHIPPED = "shipped"  # the row of whichever ranker was registered, per seed
METRICS: list[tuple[str, str]] = [("auc", "test imp-AUC"), ("ndcg_at_10", "test nDCG@10")]
# What the data sets are (a name not here gets no line).
DESCRIPTIONS = {
    "ml100k": "MovieLens-100K, the embedded default (the `ml100k` protocol; item text = title, year, genres).",
    "amazon_scientific": "Amazon 2018 Industrial & Scientific (titles + ~100-word descriptions; one click in 20 "
    "items per impression; the test split is each user's last purchase). Shared evaluation data, not in this "
    "repository.",
    "amazon_scientific_cold20": "`amazon_scientific` with 20% of the products never shown before the test "
    "period: new products only text can rank at first. Shared evaluation data, not in this repository.",
}


@dataclass
class Run:
    """One seed's finished pipeline run, as its report saw it."""

    seed: int
    folder: Path
    metrics: dict[str, dict[str, float]]  # system -> metric -> value (test split)
    shipped: str
    exported_text: str | None
    impressions: int | None
    commit: str | None
    written: str  # ISO date (the report's own time, or the file's modification date)
    profile: str | None


@dataclass
class DataSet:
    """The runs of one seed summary."""

    name: str
    command: str
    runs: list[Run] = field(default_factory=list)


def read_run(folder: Path, seed: int) -> Run:
    """The figures of one run from ``folder/report/metrics.json``."""
    path = folder / "report" / "metrics.json"
    report = json.loads(path.read_text())
    context = report.get("context") or {}
    selection = report.get("selection") or {}
    metrics = {
        name: {m: system["metrics"][m] for m, _ in METRICS if m in system.get("metrics", {})}
        for name, system in report["systems"].items()
    }
    commit = context.get("git commit")
    written = context.get("written")
    if written:
        written = datetime.fromisoformat(written).astimezone(UTC).date().isoformat()
    else:  # reports written before they recorded it: the file's own date
        written = datetime.fromtimestamp(path.stat().st_mtime, UTC).date().isoformat()
    return Run(
        seed=seed,
        folder=folder,
        metrics=metrics,
        shipped=selection.get("shipped_ranker", "ranker"),
        exported_text=((selection.get("text_model") or {}).get("export") or {}).get("exported"),
        impressions=report.get("impressions"),
        commit=commit,
        written=written,
        profile=context.get("profile"),
    )


def _repo_path(path: str) -> str:
    """A path as a reader of this repository types it: relative to the root where it lies inside a checkout
    (``/somewhere/else/conf/demo.yaml`` -> ``conf/demo.yaml``)."""
    p = Path(path)
    if not p.is_absolute():
        return path
    parts = p.parts
    for top in ("conf", "data"):
        if top in parts:
            return str(Path(*parts[parts.index(top) :]))
    return path


def command_of(args: dict) -> str:
    """The ``bench/pipeline_seeds.py`` command that (re)runs the seeds of a summary."""
    cmd = ["OMP_NUM_THREADS=1", "python", "bench/pipeline_seeds.py", "--dataset", str(args["dataset"])]
    if args.get("source"):
        cmd += ["--source", _repo_path(str(args["source"]))]
    cmd += ["--out", _repo_path(str(args["out"])), "--seeds", str(args["seeds"])]
    config = _repo_path(str(args.get("config") or "conf/demo.yaml"))
    if config != "conf/demo.yaml":  # the script's default
        cmd += ["--config", config]
    if args.get("set"):
        cmd += ["--set", *[str(s) for s in args["set"]]]
    return " ".join(shlex.quote(c) if c != "OMP_NUM_THREADS=1" else c for c in cmd)


def dataset_name(args: dict) -> str:
    if args.get("source"):
        return Path(str(args["source"])).name
    return str(args["dataset"])


def read_summary(path: Path, root: Path = ROOT) -> DataSet:
    """A seed summary and the runs it names (``<out>-s<seed>``, relative to ``root`` unless absolute)."""
    summary = json.loads(Path(path).read_text())
    args = summary["args"]
    out = Path(str(args["out"]))
    out = out if out.is_absolute() else root / out
    seeds = sorted(int(s) for s in summary["runs"])
    runs = [read_run(Path(f"{out}-s{seed}"), seed) for seed in seeds]
    return DataSet(name=dataset_name(args), command=command_of(args), runs=runs)


def _value(run: Run, system: str, metric: str) -> float | None:
    name = run.shipped if system == SHIPPED else system
    return run.metrics.get(name, {}).get(metric)


def system_stats(runs: list[Run], system: str, metric: str) -> tuple[float, float, float, int] | None:
    """Mean, min, max and count of a system's metric over the runs that have it."""
    values = [v for v in (_value(r, system, metric) for r in runs) if v is not None]
    if not values:
        return None
    return sum(values) / len(values), min(values), max(values), len(values)


def _cell(stats: tuple[float, float, float, int] | None) -> str:
    if stats is None:
        return "—"
    mean, low, high, n = stats
    if n == 1:
        return f"{mean:.4f}"
    if f"{low:.4f}" == f"{high:.4f}":
        return f"{mean:.4f} (every seed)"
    return f"{mean:.4f} ({low:.4f}–{high:.4f})"


def _provenance(runs: list[Run]) -> str:
    """Where the figures came from, one clause per distinct (commit, date)."""
    groups: dict[tuple[str | None, str], list[int]] = {}
    for r in runs:
        groups.setdefault((r.commit, r.written), []).append(r.seed)
    parts = []
    for (commit, written), seeds in groups.items():
        who = f"seed {seeds[0]}" if len(seeds) == 1 else "seeds " + ", ".join(map(str, seeds))
        where = (
            f"commit `{commit[:10]}`, written {written}"
            if commit
            else f"commit not recorded, report file dated {written}"
        )
        parts.append(f"{who}: {where}")
    return "; ".join(parts)


def dataset_section(ds: DataSet) -> str:
    """One data set's table and its notes, in markdown."""
    runs = ds.runs
    n = len(runs)
    impressions = {r.impressions for r in runs if r.impressions is not None}
    head = f"## `{ds.name}`\n\n"
    facts = [f"{n} seed{'s' if n != 1 else ''} ({', '.join(str(r.seed) for r in runs)})"]
    if len(impressions) == 1:
        facts.append(f"{impressions.pop():,} test impressions")
    profiles = {r.profile for r in runs if r.profile}
    if profiles:
        facts.append("profile " + ", ".join(sorted(profiles)))
    spread = "Mean over the seeds, lowest–highest seed in brackets." if n > 1 else "One seed: no spread to read."
    about = DESCRIPTIONS.get(ds.name)
    lines = [head + (about + "\n\n" if about else "") + "; ".join(facts) + f". {spread}\n"]
    cols = ["system"] + [f"{label}, mean (min–max)" for _, label in METRICS]
    lines.append("| " + " | ".join(cols) + " |")
    lines.append("|" + "---|" * len(cols))
    for system, label in [*SYSTEMS, (SHIPPED, "**shipped** (the ranker registered at each seed)")]:
        cells = [_cell(system_stats(runs, system, m)) for m, _ in METRICS]
        if all(c == "—" for c in cells):
            continue
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "Per seed: "
        + "; ".join(f"seed {r.seed} shipped `{r.shipped}`, text model exported: {r.exported_text or '—'}" for r in runs)
        + "."
    )
    lines.append("")
    lines.append(f"Runs: `{ds.command}`.")
    lines.append("")
    lines.append(f"From: {_provenance(runs)}.")
    return "\n".join(lines) + "\n"


def render(datasets: list[DataSet], command: str) -> str:
    """The whole page."""
    intro = f"""# Results: ranking quality per data set

Generated by

    {command}

from the runs' `report/metrics.json` and the seed summaries that `bench/pipeline_seeds.py` writes; do not edit
by hand: rerun the runs (the command under each table), then this page. Figures are on the test split of each
data set (the last 10% of its time range): impression-mean AUC and nDCG@10. "Text only, as exported" is the
text model the run shipped: the fine-tuned encoder when it beat its probe on the text model's own selection
impressions, else the probe itself (then both text rows are equal). The combined ranker is registered only when
it beats the features-only ranker on validation; the "shipped" row is whichever was. Why these rules, and
per-seed intervals: [model-selection.md](model-selection.md) and [fine-tuning.md](fine-tuning.md). The Amazon
folders are the shared evaluation data (not in this repository).
"""
    return intro + "\n" + "\n".join(dataset_section(ds) for ds in datasets)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("summaries", nargs="+", help="seed summaries written by bench/pipeline_seeds.py")
    parser.add_argument("--out", help="write the page here (default: stdout)")
    args = parser.parse_args(argv)
    command = " ".join(
        ["python bench/results_page.py", *args.summaries, *(["--out", args.out] if args.out else ["> docs/results.md"])]
    )
    page = render([read_summary(Path(s)) for s in args.summaries], command)
    if args.out:
        Path(args.out).write_text(page)
    else:
        sys.stdout.write(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
