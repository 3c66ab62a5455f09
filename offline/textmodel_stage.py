"""``recrank textmodel train|embed``: wire data, backbone, trainer and artifact together.

The entry point supplies what the library leaves open: the validation metric (from ``ranker``), the
paths, and the progress display.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from conf import Config
from features import read_features, read_impressions, read_items, read_manifest
from features.history import impression_histories
from features.io import write_parquet_atomic
from ranker.metrics import impression_auc
from runtime.progress import say
from runtime.ray_env import start_ray

if TYPE_CHECKING:  # torch and transformers load only when a text-model command runs
    from textmodel.backbone import BackboneIdentity
    from textmodel.continual import Parent
    from textmodel.data import ImpressionSet
    from textmodel.prompt import ItemText

INTEREST_FILE = "interest.parquet"
FROZEN_COLUMN = "interest_frozen"  # the frozen-backbone head's score, beside interest_score (report only)
TEXTMODEL_DIR = "textmodel"


def model_dir(cfg: Config) -> Path:
    return Path(cfg.data.dir) / TEXTMODEL_DIR


def text_inputs(cfg: Config, text: ItemText):
    """The catalogue (texts rendered by ``text``: the prompt, tokenizer and budget of the text model that reads
    them) and the train/val/test impression sets of ``cfg.data.dir``."""
    from textmodel.data import load_sets

    d = cfg.data.dir
    items = read_items(d).collect()
    features = read_features(d).collect()
    histories = impression_histories(read_impressions(d), features.lazy(), cfg.data.history_cap).collect()
    offset = cfg.textmodel.train.offset_feature
    return load_sets(items, features, histories, text, cfg.data.history_cap, offset)


def warm_start_parent(cfg: Config, identity: BackboneIdentity) -> Parent | None:
    """The registered text model ``textmodel.train.warm_start`` names, checked against ``cfg`` (None: off).

    ``champion`` is the textmodel version that ``<prefix>-ranker@champion`` pins (the pair being served), a
    number is that textmodel version. Resolved once, by version: an alias moving mid-run changes nothing.
    """
    spec = cfg.textmodel.train.warm_start
    if spec is None:
        return None
    from ranker.loading import pair_versions, ranker_name, registry_client, textmodel_folder
    from textmodel.continual import WarmStartError, load_parent

    _check_registry_exists(cfg)
    client, prefix = registry_client(cfg), cfg.mlflow.model_prefix
    version = spec
    if spec == "champion":
        version = pair_versions(client, prefix, "champion")["textmodel"]
        if version is None:
            raise WarmStartError(f"warm start from champion: {ranker_name(prefix)}@champion pins no text model")
    return load_parent(textmodel_folder(client, prefix, version), cfg.textmodel, identity, version)


def _check_registry_exists(cfg: Config) -> None:
    """A warm start reads the registry: the embedded one must exist (opening it would create an empty one)."""
    import os

    from textmodel.continual import WarmStartError

    db = Path(cfg.data.dir) / "mlflow" / "mlflow.db"
    if not (os.environ.get("MLFLOW_TRACKING_URI") or cfg.mlflow.tracking_uri or db.is_file()):
        raise WarmStartError(f"warm start: no model registry at {db} (register a text model first)")


def _lineage(cfg: Config, parent: Parent | None, trained_on: ImpressionSet, train: ImpressionSet) -> dict[str, object]:
    """What the model was started from and trained on, saved with it (and the parent tagged at registration)."""
    since = cfg.textmodel.train.since
    warm = None
    if parent is not None:
        warm = {
            "from": cfg.textmodel.train.warm_start,
            "parent_version": parent.version,
            "parent_data_fingerprint": parent.meta.get("data_fingerprint"),
            "parent_impression_auc": parent.meta.get("impression_auc"),
        }
    return {
        "parent_version": None if parent is None else parent.version,
        "warm_start": warm,
        "train_window": {
            "since": None if since is None else since.isoformat(),
            "impressions": len(trained_on.impression_ids),
            "rows": trained_on.num_rows,
            "split_rows": train.num_rows,
        },
    }


def train_textmodel(cfg: Config, progress: bool = True) -> dict[str, object]:
    """Train on the train split (from ``textmodel.train.since`` on) less its latest impressions, which select
    the model (early stopping, the export guard, the cross-fitted heads); save the artifact and the interest
    scores. The validation split is never shown to the text model: it stays the ranker's, unbiased.
    Warm-started from a registered parent when configured: the parent is checked before anything is built or
    written."""
    from textmodel.backbone import load_backbone
    from textmodel.continual import train_window
    from textmodel.data import selection_split
    from textmodel.model import build_text_model, resolve_device
    from textmodel.prompt import ItemText
    from textmodel.train import ClickTrainer

    tm = cfg.textmodel
    started = time.perf_counter()
    device = resolve_device(tm.train.device)
    backbone = load_backbone(tm.backbone, tm.cache_dir)  # first: its tokenizer fits the item texts to max_tokens
    parent = warm_start_parent(cfg, backbone.identity)
    catalogue, sets = text_inputs(cfg, ItemText.from_config(tm, backbone.tokenizer))
    # every split is still scored below; the selection part is the latest of the (windowed) train impressions
    trained_on, selection = selection_split(train_window(sets["train"], tm.train.since), tm.train.selection_fraction)
    total_steps = _total_steps(cfg, trained_on)
    model, encoder = build_text_model(tm, backbone, catalogue, device, total_steps=total_steps)
    trainer = ClickTrainer(model, encoder, tm.train, device, impression_auc)
    towers = {id(p) for p in model.tower_parameters()}
    # Cross-fitted heads start from fresh towers even when warm-started: the parent's have seen later clicks.
    init_towers = {n: p.detach().clone() for n, p in model.named_parameters() if id(p) in towers}
    if parent is not None:
        trainer.warm_start(parent.weights, parent.trainer_state)
    distributed: dict[str, object] = {}
    # workers > 1: Ray Train (joined at ray.address or started here, shut down at the end when started here:
    # the driver reads the shared lower-layer cache from Ray's object store until the artifact is saved).
    ray_started = tm.train.workers > 1 and start_ray(cfg.ray)
    try:
        t0 = time.perf_counter()
        if tm.train.workers > 1:
            from offline.textmodel_ray import train_on_ray  # imports ray: after start_ray set its environment
            from textmodel.results import TrainResult

            run = train_on_ray(cfg, backbone, encoder, trained_on, selection, parent, total_steps, progress)
            trainer.restore(run.weights)
            trainer.probe_state = run.probe_state
            result, cache_seconds, distributed = TrainResult.from_json(run.result), run.cache.seconds, run.summary()
        else:
            encoder.build_cache(progress=progress)
            cache_seconds = time.perf_counter() - t0
            result = trainer.fit(trained_on, selection, progress=progress)
        t = _Training(backbone, catalogue, sets, trained_on, selection, model, encoder, trainer, parent, init_towers)
        run_info = {"cache_seconds": cache_seconds, "distributed": distributed or None}
        return _finish(cfg, t, result, run_info, started, progress)
    finally:
        if ray_started:
            import ray

            ray.shutdown()


@dataclass
class _Training:
    """What one text-model training run built, for the steps after the fit."""

    backbone: Any
    catalogue: Any
    sets: dict[str, ImpressionSet]
    trained_on: ImpressionSet
    selection: ImpressionSet  # the latest train impressions, never trained on: what selects the model
    model: Any
    encoder: Any
    trainer: Any
    parent: Parent | None
    init_towers: dict[str, Any]


def _finish(
    cfg: Config, t: _Training, result, run_info: dict[str, object], started: float, progress: bool
) -> dict[str, object]:
    """Pick what is exported (the export guard), score every split with it and with the frozen-backbone head
    (``interest_frozen``), cross-fit the train rows, save the artifact and the scores."""
    from textmodel.artifact import embedding_table, save_text_model
    from textmodel.scoring import interest_frame, score_impressions, scored_frame

    tm = cfg.textmodel
    model, encoder, trainer, sets = t.model, t.encoder, t.trainer, t.sets
    export = export_decision(cfg, t, result, progress)
    memory = encoder.encode_all(progress=progress)
    scored = {**sets, "selection": t.selection}
    metrics = {
        split: impression_auc(scored_frame(data, score_impressions(model, memory, data)))
        for split, data in scored.items()
    }
    frames = {split: interest_frame(model, memory, data) for split, data in sets.items()}
    frozen = _frozen_scores(t, sets, memory, progress)
    if frozen is not None:
        frames = {split: frame.hstack([frozen[split]]) for split, frame in frames.items()}
    cross_fit: dict[str, object] = {"train_interest": "in_sample", "oof_seconds": 0.0}
    if tm.train.oof_folds > 1:
        from textmodel.crossfit import CrossFitter

        t0 = time.perf_counter()
        oof = CrossFitter(trainer).scores(
            sets["train"], t.selection, tm.train.oof_folds, t.init_towers, tm.train.oof_scheme, progress
        )
        # Rows no head could score honestly (the first time block) get no score: the ranker does not fit on them.
        frames["train"] = frames["train"].with_columns(pl.Series("interest_score", oof).fill_nan(None))
        metrics["train_out_of_fold"] = impression_auc(
            scored_frame(sets["train"], oof).filter(pl.col("score").is_not_nan())
        )
        cross_fit = {
            "train_interest": f"out_of_fold({tm.train.oof_folds}, {tm.train.oof_scheme})",
            "oof_seconds": time.perf_counter() - t0,
            "train_rows_without_score": int(np.isnan(oof).sum()),
        }
    extra = {
        "history_cap": cfg.data.history_cap,
        "data_fingerprint": read_manifest(cfg.data.dir).get("fingerprint"),
        "profile": cfg.profile,
        "train": result.to_json(),
        "impression_auc": metrics,
        "selection": _selection_summary(t.selection),
        "export": export,
        **run_info,
        # Trained as a residual over this behavioural logit (weight learned); the interest score is the text part.
        "offset_feature": tm.train.offset_feature,
        "offset_weight": float(trainer.offset_weight.detach()) if tm.train.offset_feature else None,
        "trainer_state": trainer.own_state(),  # what a warm start from this model resumes besides the weights
        **_lineage(cfg, t.parent, t.trained_on, sets["train"]),
        **cross_fit,
        "total_seconds": time.perf_counter() - started,
    }
    out = save_text_model(
        model_dir(cfg), model, tm, t.backbone.identity, embedding_table(t.catalogue.item_ids, memory), extra
    )
    write_parquet_atomic(pl.concat(list(frames.values())), Path(cfg.data.dir) / INTEREST_FILE)
    return {"model_dir": str(out), **extra}


def export_decision(cfg: Config, t: _Training, result, progress: bool = False) -> dict[str, object]:
    """Which trained state is exported, and why; that state is left loaded in the model.

    The adapted model (the fine-tuning phase's best epoch) is exported only when it beats the probe (the head
    over the untouched backbone, of the same run) on the selection impressions by ``textmodel.train.
    export_guard``: a fine-tuned encoder that is not better than its own frozen baseline beyond the noise of
    the set it is judged on is not shipped. Without a probe (a warm start) the trained state is exported.
    """
    from ranker.guard import decide
    from textmodel.scoring import score_impressions, scored_frame

    trainer, model, encoder = t.trainer, t.model, t.encoder
    if trainer.probe_state is None:
        return {"exported": "trained", "reason": "warm-started: no probe of this run to compare with"}
    if trainer.frozen:  # a head over the frozen backbone: nothing adapted to judge (its best head is loaded)
        return {"exported": "probe", "reason": "no adapters trained"}
    if result.best_phase != "fine-tune":
        trainer.restore(trainer.probe_state)
        return {"exported": "probe", "reason": f"no fine-tuning epoch ({result.best_phase})"}
    adapted = trainer.trainable_state()
    frame = t.selection.row_keys.with_columns(pl.Series("clicked", t.selection.row_label))
    scored = {"selection": t.selection, **t.sets}

    def auc_by_split(memory) -> dict[str, float]:
        """The loaded towers over ``memory``: impression-mean AUC on every split (for the record)."""
        return {s: impression_auc(scored_frame(d, score_impressions(model, memory, d))) for s, d in scored.items()}

    # Each candidate is scored with its own towers (they differ when fine_tune_head_lr > 0).
    adapted_memory = encoder.encode_all(progress=progress)
    adapted_scores = score_impressions(model, adapted_memory, t.selection)
    candidates = {"adapted": auc_by_split(adapted_memory)}
    trainer.restore(trainer.probe_state)
    probe_memory = encoder.encode_all(progress=progress)
    probe_scores = score_impressions(model, probe_memory, t.selection)
    candidates["probe"] = auc_by_split(probe_memory)
    ev = cfg.evaluation
    decision = decide(
        frame,
        adapted_scores,
        probe_scores,
        cfg.textmodel.train.export_guard,
        ev.bootstrap_samples,
        ev.seed,
        names=("adapted", "probe"),
        on="selection",
    )
    if decision.accepted:
        trainer.restore(adapted)
    say(f"text model export: {decision.reason}", progress)
    # candidates_auc: what each choice scores on every split, for the record; only the selection decided
    return {
        "exported": decision.chosen,
        "reason": decision.evidence,
        "guard": decision.to_json(),
        "candidates_auc": candidates,
    }


def _frozen_scores(t: _Training, sets: dict[str, ImpressionSet], memory, progress: bool) -> dict[str, pl.Series] | None:
    """``interest_frozen`` for every row of every split: the probe's scores (the frozen-backbone head), which
    the report compares the exported model with. In-sample on train rows (the ranker never reads it). None
    when the run had no probe (a warm start)."""
    import torch

    from textmodel.scoring import score_impressions

    trainer = t.trainer
    if trainer.probe_state is None:
        return None
    exported_state = trainer.trainable_state()
    if all(torch.equal(w.to(exported_state[n].device), exported_state[n]) for n, w in trainer.probe_state.items()):
        exported_state = None  # the probe is what is exported: its vectors are ``memory``
    else:
        trainer.restore(trainer.probe_state)
        memory = t.encoder.encode_all(progress=progress)
    out = {
        split: pl.Series(FROZEN_COLUMN, score_impressions(t.model, memory, data), dtype=pl.Float64)
        for split, data in sets.items()
    }
    if exported_state is not None:
        trainer.restore(exported_state)
    return out


def _selection_summary(selection: ImpressionSet) -> dict[str, object]:
    """The selection impressions, as recorded with the model: how many, and the time range they cover."""
    ts = selection.impression_ts
    first, last = (np.datetime64(int(v), "us").astype(str) + "Z" for v in (ts.min(), ts.max()))
    return {"impressions": len(selection.impression_ids), "rows": selection.num_rows, "from": first, "to": last}


def _total_steps(cfg: Config, train) -> int:
    from textmodel.data import sample_examples

    t = cfg.textmodel.train
    n = len(sample_examples(train, t.objective, t.negatives, np.random.default_rng(t.seed)))
    per_epoch = -(-n // t.batch_size)
    if t.max_steps_per_epoch is not None:
        per_epoch = min(per_epoch, t.max_steps_per_epoch)
    return per_epoch * t.epochs


def embed_textmodel(cfg: Config, progress: bool = True) -> dict[str, object]:
    """Re-encode the whole catalogue with a saved model (new items included) and rewrite the interest scores."""
    import torch

    from textmodel.artifact import EMBEDDINGS_FILE, TextRuntime, embedding_table, load_text_model
    from textmodel.model import resolve_device
    from textmodel.scoring import TextScorer, interest_frame

    device = resolve_device(cfg.textmodel.train.device)
    loaded = load_text_model(model_dir(cfg), cfg.textmodel.cache_dir, device, TextRuntime.from_config(cfg.textmodel))
    scorer = TextScorer(loaded, device)
    catalogue, sets = text_inputs(cfg, scorer.item_text)  # the saved model's prompt, not the current config's
    t0 = time.perf_counter()
    with torch.no_grad():
        memory = scorer.encode_texts(catalogue.texts)
    seconds = time.perf_counter() - t0
    write_parquet_atomic(embedding_table(catalogue.item_ids, memory), model_dir(cfg) / EMBEDDINGS_FILE)
    frames = {split: interest_frame(loaded.model, memory, data) for split, data in sets.items()}
    path = Path(cfg.data.dir) / INTEREST_FILE
    previous = pl.read_parquet(path) if path.is_file() else None
    keys = ["impression_id", "item_id"]
    if str(loaded.meta.get("train_interest", "")).startswith("out_of_fold"):
        # Cross-fitted train-row scores cannot be recomputed from the final model: keep the trained ones.
        kept = previous.select(*keys, "interest_score")
        frames["train"] = frames["train"].select(keys).join(kept, on=keys, how="left", maintain_order="left")
    interest = pl.concat(list(frames.values()))
    if previous is not None and FROZEN_COLUMN in previous.columns:
        # The probe is not saved with the model: its scores are kept as they were.
        frozen = previous.select(*keys, FROZEN_COLUMN)
        interest = interest.join(frozen, on=keys, how="left", maintain_order="left")
    write_parquet_atomic(interest, Path(cfg.data.dir) / INTEREST_FILE)
    return {"items": len(catalogue.item_ids), "items_per_s": len(catalogue.item_ids) / seconds, "rows": interest.height}
