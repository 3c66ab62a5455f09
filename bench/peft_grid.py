"""Does fine-tuning pay? PEFT methods against the frozen-backbone head at the same optimiser-step budget.

    python bench/peft_grid.py --data data/cold20 --part timing [--tokens 32,64,128]
    python bench/peft_grid.py --data data/cold20 --part grid --variants frozen lora ia3 \\
        side:trainable_top_layers=8,train.negatives=19 --seeds 0 [--set k=v ...]

timing: for each token budget, the lower-layer cache (items/s, seconds, memory) and the training step of the
    adapted top layers (seconds/step), against a plain forward of the same backbone over the same texts.
grid: each variant trains with ``ClickTrainer.fit`` on the same data, prompt, tokens, negatives and schedule:
    the same probe phase, then ``epochs x max_steps_per_epoch`` steps of either the head alone over the frozen
    backbone (``frozen``) or adapters + head (a PEFT method). Reported: validation (what selection may look at)
    and test impression-mean AUC / nDCG@10 of the **exported interest score** (the text part the ranker reads;
    every model is trained and selected on the train split as the pipeline does: its latest impressions select),
    and the paired 95% bootstrap interval of each variant's test gain over ``frozen`` for the same seed.

Variants are ``NAME`` (a PEFT method, or ``frozen``) or ``NAME:key=value,key=value`` (config overrides under
``textmodel.``). Each run's test scores go to ``bench/results/peft_grid/`` so later comparisons are paired.
Writes ``bench/results/peft_grid.json`` (appends runs; a rerun of the same variant and seed replaces its row).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import Config, load_config  # noqa: E402
from offline.textmodel_stage import text_inputs  # noqa: E402
from ranker.compare import paired_bootstrap  # noqa: E402
from ranker.metrics import impression_auc, per_impression_metrics, score_metrics  # noqa: E402
from textmodel.backbone import load_backbone  # noqa: E402
from textmodel.data import batches, sample_examples, selection_split  # noqa: E402
from textmodel.model import build_text_model  # noqa: E402
from textmodel.prompt import ItemText  # noqa: E402
from textmodel.scoring import score_impressions  # noqa: E402
from textmodel.train import ClickTrainer  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def parse_variant(spec: str) -> tuple[str, list[str]]:
    """``lora:peft.r=16,trainable_top_layers=4`` -> ("lora:...", overrides under textmodel.)."""
    name, _, rest = spec.partition(":")
    overrides = [f"textmodel.{kv}" for kv in rest.split(",") if kv]
    if name == "frozen":
        overrides.insert(0, "textmodel.trainable_top_layers=0")
    else:
        overrides.insert(0, f"textmodel.peft.method={name}")
    return spec, overrides


def variant_config(base: list[str], args, overrides: list[str], seed: int) -> Config:
    return load_config(args.config, [*base, *overrides, f"textmodel.train.seed={seed}"])


def bench_timing(cfg: Config, token_budgets: list[int], steps: int) -> list[dict[str, float]]:
    """Cache build and step time per token budget (LoRA on the configured top layers)."""
    out = []
    for tokens in token_budgets:
        c = cfg.model_copy(deep=True)
        c.textmodel.max_tokens = tokens
        backbone = load_backbone(c.textmodel.backbone, c.textmodel.cache_dir)
        catalogue, sets = text_inputs(c, ItemText.from_config(c.textmodel, backbone.tokenizer))
        model, encoder = build_text_model(c.textmodel, backbone, catalogue, torch.device("cpu"))
        t0 = time.perf_counter()
        encoder.build_cache(progress=False)
        cache_s = time.perf_counter() - t0
        n_tokens = int(encoder.tokens.lengths.sum())
        trainer = ClickTrainer(model, encoder, c.textmodel.train, torch.device("cpu"), impression_auc)
        trainer._memory = encoder.encode_all()
        t = c.textmodel.train
        ex = sample_examples(sets["train"], t.objective, t.negatives, np.random.default_rng(0))
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=t.lr)
        times = []
        model.train()
        for batch in batches(sets["train"], ex, t.batch_size, np.random.default_rng(1), steps + 1):
            s0 = time.perf_counter()
            trainer.loss(batch, trainer._memory).backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - s0)
        model.eval()
        t0 = time.perf_counter()
        encoder.encode_all()
        encode_s = time.perf_counter() - t0
        row = {
            "max_tokens": tokens,
            "items": len(catalogue.item_ids),
            "mean_tokens": n_tokens / len(catalogue.item_ids),
            "truncated_share": float((encoder.tokens.lengths >= tokens).float().mean()),
            "cache_seconds": cache_s,
            "cache_items_per_s": len(catalogue.item_ids) / cache_s,
            "cache_mb": encoder.cache.nbytes / 2**20,
            "step_seconds": float(np.median(times[1:])),
            "encode_all_top_seconds": encode_s,
        }
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def run_variant(cfg: Config, cache: dict, probes: dict, progress: bool) -> tuple[dict[str, object], pl.DataFrame]:
    """Train one variant; returns its summary and its scores on the val and test rows."""
    tm = cfg.textmodel
    started = time.perf_counter()
    backbone = load_backbone(tm.backbone, tm.cache_dir)  # fresh: PEFT injects adapters into the modules
    catalogue, sets = text_inputs(cfg, ItemText.from_config(tm, backbone.tokenizer))
    fit, selection = selection_split(sets["train"], tm.train.selection_fraction)  # as the pipeline selects
    model, encoder = build_text_model(tm, backbone, catalogue, torch.device("cpu"))
    key = (tm.max_tokens, tm.trainable_top_layers, tm.peft.method == "side", tuple(catalogue.texts[:3]))
    if key in cache:
        encoder.cache = cache[key]
    else:
        encoder.build_cache(progress=progress)
        cache.clear()
        cache[key] = encoder.cache
    trainer = ClickTrainer(model, encoder, tm.train, torch.device("cpu"), impression_auc)
    # Zero-initialised adapters (all but prefix tuning) leave the backbone's output unchanged, so their probe
    # phase is the same computation (same seed, same vectors): run it once and start each from a copy.
    t = tm.train
    probe_key = (key, t.seed, t.negatives, t.batch_size, t.probe_epochs, t.head_lr, t.offset_feature, t.objective)
    shares_probe = tm.peft.method != "prefix" or tm.trainable_top_layers == 0
    if shares_probe and probe_key in probes:
        state, probed, rng, memory = probes[probe_key]
        trainer.restore(state)
        trainer._best_state, trainer._memory = trainer.trainable_state(), memory
        trainer._rng, result = copy.deepcopy(rng), copy.deepcopy(probed)
    else:
        result = trainer.probe(fit, selection, progress=progress)
        if shares_probe:
            probes[probe_key] = (
                trainer.trainable_state(),
                copy.deepcopy(result),
                copy.deepcopy(trainer._rng),
                trainer._memory,
            )
    probe_frames = _scores(trainer._memory, model, sets)
    result = trainer.fine_tune(fit, selection, result, progress=progress)
    frames = _scores(encoder.encode_all(), model, sets)
    summary = {}
    for split in ("val", "test"):
        for prefix, frame in (("", frames), ("probe_", probe_frames)):
            part = frame.filter(pl.col("split") == split)
            m = score_metrics(part, part["score"])
            summary[f"{prefix}{split}_auc"], summary[f"{prefix}{split}_ndcg10"] = m["auc"], m["ndcg_at_10"]
    test = frames.filter(pl.col("split") == "test")
    summary["test_gain_vs_own_probe"] = paired_vs(test, probe_frames.filter(pl.col("split") == "test"))
    summary.update(
        best_phase=result.best_phase,
        best_by_phase=result.best_by_phase,
        best_val_selection=result.best_val_metric,
        epochs=[
            {k: e.__dict__[k] for k in ("phase", "val_metric", "val_text", "train_loss", "held_in_loss", "seconds")}
            for e in result.epochs
        ],
        fine_tune_steps=trainer._fine_steps,
        seconds_per_step=result.seconds_per_step,
        trainable_params=sum(p.numel() for p in model.adapter_parameters()),
        seconds=time.perf_counter() - started,
    )
    return summary, frames


def _scores(memory: torch.Tensor, model, sets) -> pl.DataFrame:
    """The exported interest score (text part) of every val and test row, from item vectors ``memory``."""
    frames = []
    for split in ("val", "test"):
        data = sets[split]
        frames.append(
            data.row_keys.with_columns(
                pl.Series("clicked", data.row_label, dtype=pl.Int8),
                pl.Series("score", score_impressions(model, memory, data)),
                pl.lit(split).alias("split"),
            )
        )
    return pl.concat(frames)


def paired_vs(frame: pl.DataFrame, ref: pl.DataFrame, samples: int = 1000) -> dict[str, list[float]]:
    """Paired bootstrap of the test gain of ``frame`` over ``ref`` (same rows), AUC and nDCG@10."""
    out = {}
    a = per_impression_metrics(frame, frame["score"])
    b = per_impression_metrics(ref.select(frame.columns), ref["score"])
    for metric in ("auc", "ndcg_at_10"):
        iv = paired_bootstrap({"variant": a, "ref": b}, metric, samples, 0, baseline="ref")[1]["variant"]
        out[metric] = [iv.mean, iv.low, iv.high]
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True)
    parser.add_argument("--config", default=str(ROOT / "conf" / "demo.yaml"))
    parser.add_argument("--part", choices=["timing", "grid"], default="grid")
    parser.add_argument("--tokens", default="32,64,128")
    parser.add_argument("--timing-steps", type=int, default=5)
    parser.add_argument(
        "--variants", nargs="+", default=["frozen", "lora"], help="NAME or NAME:k=v,k=v (space-separated)"
    )
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", nargs="*", default=[], help="config overrides for every variant")
    parser.add_argument("--tag", default="", help="suffix of the result rows and score files")
    args = parser.parse_args()
    base = [f"data.dir={args.data}", *args.set]
    RESULTS.mkdir(parents=True, exist_ok=True)
    if args.part == "timing":
        rows = bench_timing(load_config(args.config, base), [int(t) for t in args.tokens.split(",")], args.timing_steps)
        (RESULTS / f"peft_timing{args.tag}.json").write_text(json.dumps({"set": args.set, "rows": rows}, indent=2))
        return 0
    out_json = RESULTS / "peft_grid.json"
    runs = json.loads(out_json.read_text()) if out_json.is_file() else {}
    score_dir = RESULTS / "peft_grid"
    score_dir.mkdir(exist_ok=True)
    cache: dict = {}
    probes: dict = {}
    for seed in [int(s) for s in args.seeds.split(",")]:
        for spec in args.variants:
            name, overrides = parse_variant(spec)
            cfg = variant_config(base, args, overrides, seed)
            print(f"== {name} seed {seed}: {' '.join(overrides)}", flush=True)
            summary, scores = run_variant(cfg, cache, probes, progress=True)
            key = f"{Path(args.data).name}|{name}{args.tag}|seed{seed}"
            path = score_dir / (
                key.replace("|", "__").replace(":", "_").replace(",", "_").replace("=", "-") + ".parquet"
            )
            scores.write_parquet(path)
            frozen_key = f"{Path(args.data).name}|frozen{args.tag}|seed{seed}"
            if name != "frozen" and frozen_key in runs:
                ref = pl.read_parquet(runs[frozen_key]["scores"]).filter(pl.col("split") == "test")
                summary["test_gain_vs_frozen"] = paired_vs(scores.filter(pl.col("split") == "test"), ref)
            summary.update(scores=str(path), overrides=overrides, seed=seed, set=args.set)
            runs[key] = summary
            out_json.write_text(json.dumps(runs, indent=2, default=str))
            print(
                f"{key}: val {summary['val_auc']:.4f}/{summary['val_ndcg10']:.4f} test {summary['test_auc']:.4f}/"
                f"{summary['test_ndcg10']:.4f} phase {summary['best_phase']} {summary['seconds']:.0f}s "
                f"{summary.get('test_gain_vs_frozen', '')}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
