"""``recrank replay``: the last N days of a data set, run as production would run them.

Set-up (once): the replay gets its own data folder and registry (``replay.dir``). It holds the events
before the window; products first shown inside the window are held back and arrive with their first day.
The cut-offs put the last ``replay.val_days`` before the window in validation; both models are trained,
registered and the ranker made champion, and the snapshot at the window's start is kept as the
**frozen** snapshot (what a server never refreshed would read all along).

Then, day by day:

1. **serve** the day: the champion scores the day's impressions, each a request at its own time, twice
   through the one scoring path (:meth:`ranker.pipeline.RankingPipeline.score_rows`): from the snapshot
   refreshed up to the day before (**refreshed**) and from the frozen one (**frozen**);
2. **append** the day's events (``recrank events append``, new products with them): features and snapshot;
3. **gate**: a pending challenger has now every day since its cut-off, which neither model trained on; the
   cut-offs make those days the test split and the promotion gate (``recrank promote --challenger``) judges
   it; "not enough evidence" keeps it pending for the next day's gate, on one more day;
4. **retrain** every ``replay.retrain_every_days``: the cut-offs move to the day's end, the text model is
   warm-started from the champion's (``textmodel.train.warm_start=champion``, on the days since its
   parent's cut-off) and the ranker refit; both are registered: the challenger of the next day's gate.

``replay/state.json`` is rewritten (atomically) after each day, so a killed replay resumes at the first
day not done (the append skips what was already committed). The report (``report.md`` + ``replay.png``) is
written at the end: per day, the champion's metrics with frozen vs refreshed features and each decision.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import polars as pl

from conf import Config
from features.io import write_json_atomic
from offline.gate import INSUFFICIENT
from runtime.progress import progress as show_progress
from runtime.progress import say

STATE_FILE = "state.json"
FROZEN_DIR = "frozen_snapshot"
DAYS_DIR = "days"


@dataclass
class ReplayState:
    """What ``state.json`` holds: the window, what each day did, and the challenger awaiting its gate."""

    window: list[str]  # the replayed days (ISO dates, UTC)
    done: list[str] = field(default_factory=list)
    daily: list[dict[str, object]] = field(default_factory=list)
    decisions: list[dict[str, object]] = field(default_factory=list)
    trainings: list[dict[str, object]] = field(default_factory=list)
    pending: str | None = None  # ranker version trained, not decided yet
    pending_since: str | None = None  # its training cut-off: its gate pools every day from there
    parent_cutoff: str | None = None  # val_start of the champion's training: a warm start trains from there

    @classmethod
    def read(cls, folder: Path) -> ReplayState | None:
        path = folder / STATE_FILE
        return cls(**json.loads(path.read_text())) if path.is_file() else None

    def write(self, folder: Path) -> None:
        write_json_atomic(self.__dict__, folder / STATE_FILE)


def replay_dir(cfg: Config) -> Path:
    return Path(cfg.replay.dir) if cfg.replay.dir else Path(f"{Path(cfg.data.dir).resolve()}-replay")


def _midnight(ts: datetime) -> datetime:
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


def _replay_config(cfg: Config, folder: Path) -> Config:
    """``cfg`` pointed at the replay's folder; the registry lives there too unless a server is configured."""
    out = cfg.model_copy(deep=True)
    out.data.dir = folder / "data"
    return out


def set_up(cfg: Config, folder: Path, days: int, progress: bool = True) -> ReplayState:
    """The replay's data folder: history before the window, the window's days as files, models trained."""
    from features import prepare_dataset, read_impressions, read_items
    from features.split import TimeSplit, write_split

    impressions = read_impressions(cfg.data.dir).collect()
    items = read_items(cfg.data.dir).collect()
    start = _midnight(impressions["ts"].max()) - timedelta(days=days - 1)
    window = [(start + timedelta(days=i)).date().isoformat() for i in range(days)]
    base = impressions.filter(pl.col("ts") < start)
    if base.is_empty():
        raise ValueError(f"{cfg.data.dir}: no events before the replay window starting {start.date()}")
    first_shown = impressions.group_by("item_id").agg(pl.col("ts").min().alias("_first"))
    held = items.join(first_shown.filter(pl.col("_first") >= start), on="item_id", how="semi")
    source = folder / "source"
    source.mkdir(parents=True, exist_ok=True)
    items.join(held, on="item_id", how="anti").write_parquet(source / "items.parquet")
    base.write_parquet(source / "impressions.parquet")
    _write_days(folder / DAYS_DIR, impressions.filter(pl.col("ts") >= start), held, first_shown, window)
    rcfg = _replay_config(cfg, folder)
    rcfg.data.dataset, rcfg.data.source = "canonical", source
    prepare_dataset(rcfg.data, progress=False)
    split = TimeSplit(val_start=start - timedelta(days=cfg.replay.val_days), test_start=start)
    write_split(rcfg.data.dir, split)
    from offline import stages

    stages.features(rcfg)
    from features.store import snapshot_dir

    shutil.copytree(snapshot_dir(rcfg.data.dir), folder / FROZEN_DIR, dirs_exist_ok=True)
    state = ReplayState(window=window, parent_cutoff=split.val_start.isoformat())
    version, _ = _train_and_register(rcfg, warm_start=False, since=None, progress=progress)
    from offline import registry

    decision = registry.promote(rcfg, force=True)
    state.trainings.append({"day": None, "ranker": version, "warm_start": False})
    state.decisions.append({"day": None, "challenger": version, "promoted": decision.promoted, "reason": "set-up"})
    return state


def _write_days(out: Path, events: pl.DataFrame, held: pl.DataFrame, first: pl.DataFrame, window: list[str]) -> None:
    """One events file per day; the products first shown that day beside it (they arrive with it)."""
    out.mkdir(parents=True, exist_ok=True)
    day = pl.col("ts").dt.date().cast(pl.String)
    for date in window:
        events.filter(day == date).write_parquet(out / f"{date}.parquet")
        firsts = first.filter(pl.col("_first").dt.date().cast(pl.String) == date)
        new = held.join(firsts, on="item_id", how="semi")
        if new.height:
            new.write_parquet(out / f"{date}-items.parquet")


def _train_and_register(cfg: Config, warm_start: bool, since: str | None, progress: bool = True) -> tuple[str, bool]:
    """Train the text model (when the ranker reads it) and the ranker on the folder's cut-offs; register what
    ships (the text model only with a ranker that reads it: the features-only ranker ships when the combined
    one does not beat it on validation). Returns the ranker version and whether the text model was warm-started
    (only from a champion that pins one)."""
    from offline import ranker_stage, registry, textmodel_stage
    from offline.textmodel_stage import model_dir
    from offline.tracking import setup

    warm = False
    if cfg.ranker.use_text:
        warm = warm_start and _champion_text_version(cfg) is not None
        tcfg = cfg.model_copy(deep=True)
        tcfg.textmodel.train.warm_start = "champion" if warm else None
        tcfg.textmodel.train.since = datetime.fromisoformat(since) if (warm and since) else None
        textmodel_stage.train_textmodel(tcfg, progress=progress)
    run = ranker_stage.train_ranker(cfg).shipped()
    setup(cfg)
    text_version = registry.register_textmodel(cfg, model_dir(cfg)) if run.inputs.uses_text else None
    return registry.register_ranker(cfg, run, text_version, {}), warm


def _champion_text_version(cfg: Config) -> str | None:
    """The textmodel version the champion ranker pins (None: no champion yet, or a features-only one)."""
    from offline.tracking import setup
    from ranker.loading import ModelPairError, pair_versions

    try:
        return pair_versions(setup(cfg), cfg.mlflow.model_prefix, "champion")["textmodel"]
    except ModelPairError:  # no champion yet
        return None


# ---- one day ---------------------------------------------------------------------------------------------


def _day_rows(folder: Path, date: str, catalogue: pl.DataFrame) -> pl.DataFrame:
    """The day's impressions as scoring rows, each a request at its own ``ts``, with the items' text."""
    events = pl.read_parquet(folder / DAYS_DIR / f"{date}.parquet")
    new = folder / DAYS_DIR / f"{date}-items.parquet"
    items = pl.concat([catalogue, pl.read_parquet(new)]) if new.is_file() else catalogue
    text = items.select("item_id", "title", "body", "category", "subcategory")
    return (
        events.sort("ts", "impression_id", "position")
        .join(text, on="item_id", how="left", maintain_order="left")
        .select(
            pl.col("impression_id").alias("request_id"),
            "user_id",
            "item_id",
            "ts",
            "clicked",
            "title",
            "body",
            "category",
            "subcategory",
        )
    )


def _metrics(rows: pl.DataFrame, scores) -> tuple[dict[str, float], pl.DataFrame]:
    from ranker.metrics import per_group_metrics, summarize

    frame = rows.select(pl.col("request_id").alias("impression_id"), "clicked").with_columns(pl.Series("score", scores))
    per = per_group_metrics(frame)
    return summarize(per), per


def serve_day(cfg: Config, folder: Path, date: str) -> tuple[dict[str, object], dict[str, pl.DataFrame]]:
    """The champion on the day's impressions, from the refreshed and from the frozen snapshot."""
    from features import read_items, read_snapshot
    from features.sources import SnapshotFeatures
    from ranker.loading import load_configured_pipeline, registry_client, resolve_alias

    champion = resolve_alias(registry_client(cfg), cfg.mlflow.model_prefix, "champion")
    pipeline = load_configured_pipeline(cfg, champion)
    rows = _day_rows(folder, date, read_items(cfg.data.dir).collect())
    out: dict[str, object] = {"day": date, "champion": champion, "impressions": rows["request_id"].n_unique()}
    per: dict[str, pl.DataFrame] = {}
    for mode, snapshot in (("refreshed", pipeline.snapshot), ("frozen", read_snapshot(folder / FROZEN_DIR))):
        source = SnapshotFeatures(snapshot, pipeline.spec)
        metrics, per[mode] = _metrics(rows, pipeline.score_rows(rows, source=source))
        out[mode] = {k: metrics[k] for k in ("auc", "ndcg_at_10", "mrr")}
        out[f"{mode}_snapshot_as_of"] = snapshot.as_of.isoformat()
    return out, per


def _append_day(cfg: Config, folder: Path, date: str) -> dict[str, object]:
    from offline import stages

    items = folder / DAYS_DIR / f"{date}-items.parquet"
    events = folder / DAYS_DIR / f"{date}.parquet"
    summary = stages.append(cfg, events, items if items.is_file() else None, skip_existing=True)
    return summary.to_json()


def _set_cutoffs(cfg: Config, test_start: datetime) -> None:
    from features.split import TimeSplit, write_split

    write_split(
        cfg.data.dir, TimeSplit(val_start=test_start - timedelta(days=cfg.replay.val_days), test_start=test_start)
    )


def run_day(cfg: Config, folder: Path, state: ReplayState, index: int, progress: bool = True) -> None:
    """Serve, append, gate, retrain (see the module docstring) for ``state.window[index]``."""
    from offline import registry

    date = state.window[index]
    day_start = datetime.fromisoformat(f"{date}T00:00:00+00:00")
    served, per = serve_day(cfg, folder, date)
    (folder / "daily").mkdir(exist_ok=True)
    frames = [frame.with_columns(pl.lit(mode).alias("mode")) for mode, frame in per.items()]
    pl.concat(frames).write_parquet(folder / "daily" / f"{date}.parquet")  # per impression: the report's bootstrap
    served["append"] = _append_day(cfg, folder, date)
    if state.pending is not None:
        # test = every day since the challenger's cut-off (unseen by both models), this one included: a day of
        # 12-40 impressions rarely decides alone, so an undecided challenger is judged again on more days.
        since = datetime.fromisoformat(state.pending_since) if state.pending_since else day_start
        _set_cutoffs(cfg, since)
        decision = registry.promote(cfg, challenger=state.pending)
        state.decisions.append(
            {
                "day": date,
                "challenger": decision.challenger,
                "champion_before": decision.champion_before,
                "champion_after": decision.champion_after,
                "promoted": decision.promoted,
                "verdict": decision.verdict,
                "impressions": decision.impressions,
                "since": since.isoformat(),
                "reason": decision.reason,
                "challenger_metrics": decision.challenger_metrics,
                "champion_metrics": decision.champion_metrics,
            }
        )
        if decision.verdict != INSUFFICIENT:
            state.pending, state.pending_since = None, None
    last_day = index == len(state.window) - 1
    if (index + 1) % cfg.replay.retrain_every_days == 0 and not last_day:
        cutoff = day_start + timedelta(days=1)
        _set_cutoffs(cfg, cutoff)
        say(f"replay {date}: training a challenger (cut-off {cutoff.date()})", progress)
        version, warm = _train_and_register(cfg, cfg.replay.warm_start, state.parent_cutoff, progress)
        state.trainings.append(
            {
                "day": date,
                "ranker": version,
                "warm_start": warm,
                "cutoff": cutoff.isoformat(),
                "since": state.parent_cutoff,
            }
        )
        if state.pending is not None:  # never decided: the new challenger, trained on more days, replaces it
            state.decisions.append(
                {
                    "day": date,
                    "challenger": state.pending,
                    "promoted": False,
                    "verdict": "superseded",
                    "reason": f"superseded by version {version} before the evidence decided",
                }
            )
        state.pending, state.pending_since = version, cutoff.isoformat()
        state.parent_cutoff = (cutoff - timedelta(days=cfg.replay.val_days)).isoformat()
    state.daily.append(served)
    state.done.append(date)


def replay(cfg: Config, days: int | None = None, progress: bool = True) -> tuple[ReplayState, Path]:
    """Run (or resume) the replay of ``cfg``'s data set; return its state and the report folder."""
    from offline.replay_report import write_replay_report

    folder = replay_dir(cfg)
    days = days or cfg.replay.days
    state = ReplayState.read(folder)
    if state is not None and len(state.window) != days:
        raise ValueError(f"{folder}: a replay of {len(state.window)} days is there; remove it to replay {days}")
    if state is None:
        folder.mkdir(parents=True, exist_ok=True)
        say(f"replay set-up in {folder}: history before the last {days} days, both models trained", progress)
        state = set_up(cfg, folder, days, progress)
        state.write(folder)
    rcfg = _replay_config(cfg, folder)
    todo = [i for i, date in enumerate(state.window) if date not in state.done]
    for index in show_progress(todo, desc="replay days", enabled=progress):
        run_day(rcfg, folder, state, index, progress)
        state.write(folder)
        day = state.daily[-1]
        say(
            f"replay {day['day']}: champion {day['champion']} AUC refreshed {day['refreshed']['auc']:.4f} "
            f"frozen {day['frozen']['auc']:.4f}; "
            + (f"gate: {state.decisions[-1]['reason']}" if state.decisions[-1]["day"] == day["day"] else "no gate"),
            progress,
        )
    return state, write_replay_report(state, folder)
