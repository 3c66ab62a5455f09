"""The ``recrank`` command line. The only place that parses argv; everything below it takes a Config.

Every command takes ``--config PROFILE.yaml`` and trailing dotted overrides (``data.history_cap=20``).
Errors in input data or config end with one line on stderr naming what is wrong and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

console = Console(stderr=False)
if not console.is_terminal:  # logs and CI: wide enough for the metrics table on one line per system
    console.width = max(console.width, 140)
err_console = Console(stderr=True)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, default=None, help="profile YAML (merged over conf/default.yaml)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="dotted config overrides")


class _IntermixedParser(argparse.ArgumentParser):
    """A sub-command parser whose options may sit between its positionals and the trailing overrides.

    Plain argparse fills every positional at their first run (``IN OUT``), so ``key=value`` after an
    option would be rejected; intermixed parsing collects them. It cannot hold sub-parsers of its own.
    """

    def parse_known_args(self, args=None, namespace=None):
        if getattr(self, "_intermixed", False):  # the intermixed parse calls back in here
            return super().parse_known_args(args, namespace)
        self._intermixed = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixed = False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recrank", description="Text-aware ranking for product-page carousels.")
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="canonical datasets").add_subparsers(dest="action", required=True)
    prep = data.add_parser("prepare", help="write items/impressions/split for a dataset")
    prep.add_argument("--dataset", choices=["ml100k", "mind", "synthetic", "canonical"])
    prep.add_argument("--out", type=Path, help="output folder (data.dir)")
    prep.add_argument("--source", type=Path, help="input folder for mind / canonical")
    for name in ("users", "items", "impressions", "seed"):
        prep.add_argument(f"--{name}", type=int, help=f"synthetic: {name}")
    _common(prep)

    def command(group: argparse._SubParsersAction, name: str, text: str) -> argparse.ArgumentParser:
        """A sub-command over one data folder: ``--data DIR``, ``--config`` and overrides."""
        cmd = group.add_parser(name, help=text)
        cmd.add_argument("--data", type=Path, help="data folder (data.dir)")
        _common(cmd)
        return cmd

    feats = sub.add_parser("features", help="behavioural features").add_subparsers(dest="action", required=True)
    command(feats, "build", "point-in-time features + online snapshot")
    events = sub.add_parser("events", help="new events into a data folder").add_subparsers(dest="action", required=True)
    append = events.add_parser("append", help="append impressions (and new items); update features and snapshot")
    append.__class__ = _IntermixedParser  # `events append FILE --items NEW key=value`
    append.add_argument("events", type=Path, help="parquet of new impression rows (the canonical schema)")
    append.add_argument("--data", type=Path, help="data folder (data.dir)")
    append.add_argument("--items", dest="items_file", type=Path, help="parquet of new catalogue items")
    append.add_argument(
        "--skip-existing", action="store_true", help="skip impressions/items already present (idempotent re-runs)"
    )
    _common(append)  # after the positional: the overrides take what is left
    tm = sub.add_parser("textmodel", help="the GPT encoder").add_subparsers(dest="action", required=True)
    tm_train = command(tm, "train", "fine-tune on click labels; save the model and interest scores")
    tm_train.add_argument(
        "--warm-start",
        metavar="champion|VERSION",
        help="start from a registered text model: the one the champion ranker pins, or a textmodel version "
        "(textmodel.train.warm_start)",
    )
    tm_train.add_argument(
        "--since", metavar="TIME", help="train only on train impressions at or after TIME, UTC (textmodel.train.since)"
    )
    tm_train.add_argument(
        "--workers", type=int, help="data-parallel workers on Ray Train; 1 = in this process (textmodel.train.workers)"
    )
    tm_train.add_argument(
        "--resume",
        metavar="RUN",
        help="continue this Ray Train run after its driver stopped (textmodel.train.distributed.resume)",
    )
    tm_train.add_argument(
        "--address", help="Ray cluster to train on: its GCS address HEAD_IP:6379, or auto on a node (ray.address)"
    )
    command(tm, "embed", "re-encode the catalogue with the saved model; rewrite interest scores")
    rk = sub.add_parser("ranker", help="the LambdaRank ranker").add_subparsers(dest="action", required=True)
    command(rk, "train", "fit LambdaRank (tuned on validation) and write the evaluation report")
    command(sub, "register", "log and register the trained text model and ranker in MLflow")
    promote = command(sub, "promote", "move champion to a challenger (default: the newest ranker) if it wins on test")
    promote.add_argument("--force", action="store_true", help="promote even if the challenger does not win")
    promote.add_argument("--challenger", metavar="VERSION", help="the ranker version to judge (default: the newest)")
    command(sub, "rollback", "move champion back to the previous champion").add_argument(
        "--reason", help="why (recorded with who and when on the registered model)"
    )
    command(sub, "evaluate", "evaluate systems on a split and write the report").add_argument(
        "--split", choices=["val", "test"], default="test"
    )
    command(sub, "pipeline", "prepare -> features -> textmodel -> ranker -> evaluate -> register -> promote")
    command(sub, "replay", "replay the data's last days as production: serve, append, gate, retrain").add_argument(
        "--days", type=int, help="days replayed (replay.days)"
    )
    sub.add_parser("serve", help="serve the ranking API (runs python -m serving; see `recrank serve --help`)")
    score = sub.add_parser("score", help="batch-score a parquet of (user, candidates) requests on Ray Data")
    score.__class__ = _IntermixedParser  # `score IN OUT --workers 2 key=value`: options between positionals
    score.add_argument("input", type=Path, help="parquet file or folder: long (one row per candidate) or list format")
    score.add_argument("output", type=Path, help="output parquet folder (replaced only when the job succeeds)")
    score.add_argument("--data", type=Path, help="data folder (data.dir)")
    score.add_argument("--model-alias", help="registry alias to score with (scoring.model_alias)")
    score.add_argument(
        "--address", help="Ray cluster to join: its GCS address HEAD_IP:6379, or auto on a node (ray.address)"
    )
    score.add_argument("--workers", type=int, help="pipeline actors (scoring.workers)")
    score.add_argument("--skip-bad-rows", action="store_true", help="write bad rows to OUTPUT/_rejects.parquet")
    score.add_argument(
        "--explain",
        type=int,
        metavar="N",
        help="add each score's explanation: base_value, prior, its N largest contributions, rest (scoring.explain)",
    )
    _common(score)  # after the positionals: the overrides take what is left
    return parser


def _flag_overrides(args: argparse.Namespace) -> list[str]:
    """Command-line flags are sugar for config overrides, applied after the user's own."""
    out = []
    for flag, key in (
        ("dataset", "data.dataset"),
        ("out", "data.dir"),
        ("data", "data.dir"),
        ("source", "data.source"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            out.append(f"{key}={value}")
    for name in ("users", "items", "impressions", "seed"):
        value = getattr(args, name, None)
        if value is not None:
            out.append(f"data.synthetic.{name}={value}")
    if args.command == "textmodel" and args.action == "train":
        for flag, key in (
            ("warm_start", "textmodel.train.warm_start"),
            ("since", "textmodel.train.since"),
            ("workers", "textmodel.train.workers"),
            ("address", "ray.address"),
            ("resume", "textmodel.train.distributed.resume"),
        ):
            value = getattr(args, flag)
            if value is not None:
                out.append(f"{key}={value}")
    if args.command == "score":
        for flag, key in (
            ("model_alias", "scoring.model_alias"),
            ("workers", "scoring.workers"),
            ("address", "ray.address"),
            ("explain", "scoring.explain"),
        ):
            value = getattr(args, flag)
            if value is not None:
                out.append(f"{key}={value}")
    return out


def print_metrics(result) -> None:
    from offline.report import metrics_table

    rows = metrics_table(result)
    table = Table(title=f"{result.split} split: {result.impressions} impressions, {result.rows} rows (95% CI)")
    for head in rows[0]:
        table.add_column(head)
    for row in rows[1:]:
        table.add_row(*row)
    console.print(table)


def print_training(summary: dict) -> None:
    table = Table(title=f"text model: {summary['model_dir']}")
    for head in ("epoch", "phase", "train loss", "selection AUC", "selection AUC (text part)", "steps", "seconds"):
        table.add_column(head)
    for e in summary["train"]["epochs"]:
        text = e.get("val_text")
        table.add_row(
            str(e["epoch"]),
            e.get("phase", ""),
            f"{e['train_loss']:.4f}",
            f"{e['val_metric']:.4f}",
            "" if text is None else f"{text:.4f}",
            str(e["steps"]),
            f"{e['seconds']:.1f}",
        )
    console.print(table)
    train = summary["train"]
    if "best_phase" in train:
        console.print(
            f"best epoch {train['best_epoch']} ({train['best_phase']}); best selection AUC by phase "
            f"{train['best_by_phase']}"
        )
    export = summary.get("export")
    if export:
        console.print(f"exported: {export['exported']} ({export['reason']})", markup=False, highlight=False)
    aucs = summary["impression_auc"]
    test = f"  test {aucs['test']:.4f}" if "test" in aucs else ""
    selection = f"  selection {aucs['selection']:.4f}" if "selection" in aucs else ""
    console.print(
        f"impression-mean AUC: train {aucs['train']:.4f}{selection}  val {aucs['val']:.4f}{test}  "
        f"({summary['total_seconds']:.0f} s total, lower-layer cache {summary['cache_seconds']:.0f} s, "
        f"{summary['train']['seconds_per_step']:.2f} s/step)"
    )
    dist = summary.get("distributed")
    if dist:
        cache = dist["cache"]
        console.print(
            f"Ray Train: {dist['workers']} workers on {len(dist['nodes'])} node(s), {dist['attempts']} attempt(s)"
            f"{' (resumed from step ' + str(dist['resumed_from_step']) + ')' if dist['resumed_from_step'] else ''}; "
            f"lower-layer cache {cache['mb']} MB in {cache['shards']} shards ({cache['mode']}); run {dist['run']}"
        )


def _timed(label: str, fn: Callable[[], object]) -> object:
    start = time.perf_counter()
    with console.status(f"[bold]{label}[/bold] ..."):
        out = fn()
    console.print(f"[green]✓[/green] {label} ({time.perf_counter() - start:.1f} s)")
    return out


def run(args: argparse.Namespace) -> int:
    from conf import load_config

    cfg = load_config(args.config, [*args.overrides, *_flag_overrides(args)])
    from offline import stages

    if args.command == "data":
        summary = stages.prepare(cfg)
        console.print_json(data=summary.to_json())
    elif args.command == "features":
        console.print_json(data=_timed("features", lambda: stages.features(cfg)))
    elif args.command == "events":
        summary = _timed("append", lambda: stages.append(cfg, args.events, args.items_file, args.skip_existing))
        console.print_json(data=summary.to_json())
    elif args.command == "textmodel":
        from offline import textmodel_stage

        if args.action == "train":
            summary = textmodel_stage.train_textmodel(cfg)
            print_training(summary)
        else:
            console.print_json(data=textmodel_stage.embed_textmodel(cfg))
    elif args.command == "ranker":
        from offline import ranker_stage

        run = _timed("ranker", lambda: ranker_stage.train_ranker(cfg))
        result, out = ranker_stage.evaluate_run(cfg, run)
        print_metrics(result)
        print_shipped(run)
        console.print(f"report: {out}/report.md")
    elif args.command == "evaluate":
        from offline import ranker_stage

        if (Path(cfg.data.dir) / ranker_stage.RANKER_DIR / "ranker.json").is_file():
            result, out = ranker_stage.evaluate_run(cfg, ranker_stage.load_ranker_run(cfg), split=args.split)
        else:
            result, out = stages.evaluate_baselines(cfg, split=args.split)
        print_metrics(result)
        console.print(f"report: {out}/report.md")
    elif args.command == "register":
        print_versions(cfg, register(cfg))
    elif args.command == "promote":
        from offline import registry

        print_decision(registry.promote(cfg, force=args.force, challenger=args.challenger))
    elif args.command == "rollback":
        from offline import registry

        back = registry.rollback(cfg, reason=args.reason)
        console.print(
            f"[yellow]rolled back[/yellow]: champion {back.from_version} -> {back.to_version} ({back.reason})"
        )
    elif args.command == "pipeline":
        run_pipeline(cfg)
    elif args.command == "replay":
        from offline.replay import replay

        state, out = replay(cfg, args.days)
        console.print(f"replayed {len(state.done)} day(s); report: {out}/report.md")
    elif args.command == "score":
        from offline.batch import score_batch

        print_scoring(score_batch(cfg, args.input, args.output, skip_bad_rows=args.skip_bad_rows))
    return 0


def register(cfg, metrics: dict[str, float] | None = None) -> dict[str, str]:
    from offline import ranker_stage, registry
    from offline.textmodel_stage import model_dir
    from offline.tracking import setup

    setup(cfg)
    run = ranker_stage.load_ranker_run(cfg)
    if metrics is None:
        result, _ = ranker_stage.evaluate_run(cfg, run)
        metrics = result.systems[run.shipped_system].metrics
    shipped = run.shipped()  # the features-only ranker when the combined one did not beat it on validation
    text_version = registry.register_textmodel(cfg, model_dir(cfg)) if shipped.inputs.uses_text else None
    ranker_version = registry.register_ranker(cfg, shipped, text_version, metrics)
    return {"textmodel": text_version or "-", "ranker": ranker_version}


def print_shipped(run) -> None:
    """Which ranker `register` will log: the combined one, or features-only when text did not earn its place."""
    if run.guard is not None:
        console.print(f"shipped ranker: {run.guard.reason}", markup=False, highlight=False)


def print_versions(cfg, versions: dict[str, str]) -> None:
    from offline.tracking import ui_command

    prefix = cfg.mlflow.model_prefix
    if versions["textmodel"] == "-":
        console.print(f"registered {prefix}-ranker version {versions['ranker']} (features only: no text model)")
    else:
        console.print(
            f"registered {prefix}-textmodel version {versions['textmodel']}, "
            f"{prefix}-ranker version {versions['ranker']} (pins textmodel {versions['textmodel']})"
        )
    console.print(f"MLflow UI: {ui_command(cfg)}")


def print_decision(decision) -> None:
    verb = "[green]promoted[/green]" if decision.promoted else "[yellow]kept[/yellow]"
    console.print(
        f"{verb}: champion {decision.champion_before} -> {decision.champion_after} "
        f"(challenger {decision.challenger}): {decision.reason}"
    )


def print_scoring(summary) -> None:
    versions = summary.versions
    table = Table(title=f"batch scoring -> {summary.output}")
    for head in ("rows", "requests", "rows/s", "rejects", "workers", "nodes", "shards (reused)", "models", "seconds"):
        table.add_column(head)
    table.add_row(
        f"{summary.rows:,}",
        f"{summary.requests:,}",
        f"{summary.rows_per_s:,.0f}",
        f"{summary.rejects:,}",
        str(summary.workers),
        ", ".join(f"{n[:8]} ({len(v['shards'])})" for n, v in sorted(summary.nodes.items())) or "-",
        f"{summary.shards} ({summary.shards_reused})",
        f"ranker {versions['ranker']} + textmodel {versions.get('textmodel') or '-'} (@{summary.model_alias})",
        f"{summary.seconds:.1f}",
    )
    console.print(table)


def run_pipeline(cfg) -> None:
    """prepare -> features -> textmodel -> ranker -> evaluate -> register -> promote."""
    from offline import ranker_stage, registry, stages, textmodel_stage

    summary = stages.prepare(cfg)
    console.print(
        f"[green]✓[/green] prepare {summary.dataset}: {summary.impression_rows} rows, "
        f"{summary.impressions} impressions, {summary.items} items, CTR {summary.ctr:.3f}"
    )
    _timed("features", lambda: stages.features(cfg))
    if cfg.ranker.use_text:
        console.print("[bold]textmodel[/bold] (progress bars on a terminal) ...")
        print_training(textmodel_stage.train_textmodel(cfg))
    run = _timed("ranker", lambda: ranker_stage.train_ranker(cfg))
    result, out = _timed("evaluate", lambda: ranker_stage.evaluate_run(cfg, run))
    print_metrics(result)
    print_shipped(run)
    console.print(f"report: {out}/report.md, {out}/metrics.json")
    versions = _timed("register", lambda: register(cfg, result.systems[run.shipped_system].metrics))
    print_versions(cfg, versions)
    print_decision(_timed("promote", lambda: registry.promote(cfg)))


def exec_serving(args: Sequence[str]) -> None:
    """``recrank serve``: replace this process with ``python -m serving`` (offline never imports serving;
    exec keeps Ctrl-C and SIGTERM going straight to the server)."""
    import os

    os.execv(sys.executable, [sys.executable, "-m", "serving", *args])


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["serve"]:  # its options belong to python -m serving, not to this parser
        exec_serving(argv[1:])
    args = build_parser().parse_args(argv)
    from conf import ConfigError
    from features.schema import DataValidationError
    from features.store import StoreLockedError
    from offline.train_runs import DistributedTrainError
    from ranker.loading import ModelPairError

    known = (ConfigError, DataValidationError, FileNotFoundError, ValueError, ModelPairError, StoreLockedError)
    try:
        return run(args)
    except (*known, DistributedTrainError) as exc:
        err_console.print(f"recrank: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("recrank: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
