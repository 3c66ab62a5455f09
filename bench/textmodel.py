"""Benchmarks of the text model on this machine.

    python bench/textmodel.py [--part encode,step,quality] [--config conf/demo.yaml] [key=value ...]

(a) encode: item-encoding throughput of the export path (tokenize, lower + adapted upper layers, length
    buckets, projection) against a plain transformers forward of the same backbone over the same texts
    in fixed batches (the floor). Goal: ratio >= 0.9.
(b) step: training-step time with the lower-layer cache against without it, same batches, same model.
    Goal: >= 3x faster with 4 trainable top layers of 30.
(c) quality: impression-mean AUC and nDCG@10 on the ml100k validation and test splits of the fine-tuned
    interest score against the untrained backbone (mean-pooled cosine), a trained projection over frozen
    mean-pooled vectors, smoothed item CTR and popularity. Goal: fine-tuned >= 0.66 test AUC.

Prints tables and writes ``bench/results/textmodel.json``. (c) trains two models (~15 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
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
from features import read_features  # noqa: E402
from offline.textmodel_stage import text_inputs  # noqa: E402
from ranker.metrics import (  # noqa: E402
    impression_auc,
    per_group_metrics,
    summarize,
)
from textmodel.backbone import load_backbone  # noqa: E402
from textmodel.data import batches, sample_examples  # noqa: E402
from textmodel.layers import SplitBackbone  # noqa: E402
from textmodel.model import build_text_model  # noqa: E402
from textmodel.prompt import ItemText  # noqa: E402
from textmodel.towers import pool  # noqa: E402
from textmodel.train import ClickTrainer  # noqa: E402


def bench_encode(cfg: Config, n_items: int) -> dict[str, float]:
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    catalogue, _ = text_inputs(cfg, ItemText.from_config(cfg.textmodel, backbone.tokenizer))
    texts = catalogue.texts[:n_items]
    tok = backbone.tokenizer
    batch = 64
    with torch.no_grad():
        backbone.model(**tok(texts[:8], padding=True, return_tensors="pt"))  # warm-up
        t = time.perf_counter()
        for i in range(0, len(texts), batch):
            enc = tok(
                texts[i : i + batch],
                truncation=True,
                max_length=cfg.textmodel.max_tokens,
                padding=True,
                return_tensors="pt",
            )
            backbone.model(**enc)
        floor = time.perf_counter() - t
    from textmodel.encoder import ItemEncoder, Tokenized

    model, _ = build_text_model(cfg.textmodel, backbone, catalogue, torch.device("cpu"))
    model.eval()
    t = time.perf_counter()
    tokens = Tokenized.from_texts(tok, texts, cfg.textmodel.max_tokens)
    ItemEncoder(model.items, tokens, cfg.textmodel.train.encode_batch_tokens, torch.device("cpu")).encode_all()
    ours = time.perf_counter() - t
    return {
        "items": len(texts),
        "floor_items_per_s": len(texts) / floor,
        "export_items_per_s": len(texts) / ours,
        "ratio": floor / ours,
    }


def bench_step(cfg: Config, steps: int) -> dict[str, float]:
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    catalogue, sets = text_inputs(cfg, ItemText.from_config(cfg.textmodel, backbone.tokenizer))
    model, encoder = build_text_model(cfg.textmodel, backbone, catalogue, torch.device("cpu"))
    trainer = ClickTrainer(model, encoder, cfg.textmodel.train, torch.device("cpu"), impression_auc)
    rng = np.random.default_rng(0)
    t = cfg.textmodel.train
    examples = sample_examples(sets["train"], t.objective, t.negatives, rng)
    fixed = list(batches(sets["train"], examples, t.batch_size, rng, steps + 1))
    memory = torch.randn(len(catalogue.item_ids), cfg.textmodel.dim)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)

    def run() -> float:
        model.train()
        times = []
        for batch in fixed:
            t0 = time.perf_counter()
            loss = trainer.loss(batch, memory)
            loss.backward()
            opt.step()
            opt.zero_grad()
            times.append(time.perf_counter() - t0)
        return float(np.median(times[1:]))  # the first step warms up

    uncached = run()
    t0 = time.perf_counter()
    encoder.build_cache(progress=False)
    cache_s = time.perf_counter() - t0
    cached = run()
    return {
        "batch_size": t.batch_size,
        "negatives": t.negatives,
        "trainable_top_layers": cfg.textmodel.trainable_top_layers,
        "layers": backbone.identity.num_layers,
        "step_s_uncached": uncached,
        "step_s_cached": cached,
        "speedup": uncached / cached,
        "cache_build_s": cache_s,
        "items": len(catalogue.item_ids),
    }


def _metrics(frame: pl.DataFrame, score: str) -> dict[str, float]:
    m = summarize(per_group_metrics(frame.rename({score: "score"}).select("impression_id", "clicked", "score")))
    return {"auc": m["auc"], "ndcg_at_10": m["ndcg_at_10"]}


def _untrained_cosine(cfg: Config) -> pl.DataFrame:
    """Zero-shot: mean-pooled final hidden states; user = mean of history vectors; cosine. No training."""
    backbone = load_backbone(cfg.textmodel.backbone, cfg.textmodel.cache_dir)
    catalogue, sets = text_inputs(cfg, ItemText.from_config(cfg.textmodel, backbone.tokenizer))
    split = SplitBackbone(backbone.model, 0)
    tok = backbone.tokenizer
    vecs = []
    with torch.no_grad():
        for i in range(0, len(catalogue.texts), 64):
            enc = tok(
                catalogue.texts[i : i + 64],
                truncation=True,
                max_length=cfg.textmodel.max_tokens,
                padding=True,
                return_tensors="pt",
            )
            vecs.append(pool(split.lower(enc["input_ids"], enc["attention_mask"]), enc["attention_mask"], "mean"))
    items = torch.nn.functional.normalize(torch.cat(vecs), dim=-1)
    out = []
    for data in sets.values():
        hist = torch.from_numpy(data.history)
        mask = (hist >= 0).float().unsqueeze(-1)
        users = (items[hist.clamp(min=0)] * mask).sum(1) / mask.sum(1).clamp(min=1)
        users = torch.nn.functional.normalize(users, dim=-1)  # zero for users with no history: score 0
        s = (users[torch.from_numpy(data.row_impression)] * items[torch.from_numpy(data.row_item)]).sum(-1)
        out.append(data.row_keys.with_columns(pl.Series("zero_shot", s.double().numpy())))
    return pl.concat(out)


def bench_quality(cfg: Config, overrides: list[str], config_path: Path, reuse_fine_tuned: bool) -> dict[str, object]:
    """Train the frozen-vector projection (and the fine-tuned model unless ``reuse_fine_tuned``: then the
    model already in ``DIR/textmodel`` is the fine-tuned one) and compare every system on val and test."""
    import shutil
    import tempfile

    from offline.textmodel_stage import INTEREST_FILE, TEXTMODEL_DIR, train_textmodel

    d = Path(cfg.data.dir)
    results: dict[str, object] = {}
    frames = {}
    backup = Path(tempfile.mkdtemp(prefix="bench-textmodel-"))
    if reuse_fine_tuned:
        shutil.copytree(d / TEXTMODEL_DIR, backup / TEXTMODEL_DIR)
        shutil.copy2(d / INTEREST_FILE, backup / INTEREST_FILE)
        meta = json.loads((d / TEXTMODEL_DIR / "textmodel.json").read_text())
        results["fine_tuned_train"] = {
            "seconds": meta["total_seconds"],
            "epochs": meta["train"]["epochs"],
            "seconds_per_step": meta["train"]["seconds_per_step"],
            "config": meta["config"],
            "reused": True,
        }
        frames["fine_tuned"] = pl.read_parquet(d / INTEREST_FILE).rename({"interest_score": "fine_tuned"})
    runs = {"frozen_projection": ["textmodel.trainable_top_layers=0", "textmodel.pooling=mean"]}
    if not reuse_fine_tuned:
        runs["fine_tuned"] = []
    for name, extra in runs.items():
        run_cfg = load_config(config_path, [*overrides, *extra])
        summary = train_textmodel(run_cfg)
        results[f"{name}_train"] = {
            "seconds": summary["total_seconds"],
            "epochs": summary["train"]["epochs"],
            "seconds_per_step": summary["train"]["seconds_per_step"],
        }
        frames[name] = pl.read_parquet(d / INTEREST_FILE).rename({"interest_score": name})
    if reuse_fine_tuned:  # put the fine-tuned model back where the pipeline expects it
        shutil.rmtree(d / TEXTMODEL_DIR)
        shutil.copytree(backup / TEXTMODEL_DIR, d / TEXTMODEL_DIR)
        shutil.copy2(backup / INTEREST_FILE, d / INTEREST_FILE)
    shutil.rmtree(backup, ignore_errors=True)
    feats = read_features(d).collect()
    frame = feats.select("impression_id", "item_id", "clicked", "split", "item_ctr_smoothed", "item_impressions_before")
    for f in [*frames.values(), _untrained_cosine(cfg)]:
        frame = frame.join(f, on=["impression_id", "item_id"], how="left")
    systems = {
        "fine_tuned": "fine_tuned",
        "frozen_projection": "frozen_projection",
        "untrained_cosine": "zero_shot",
        "item_ctr": "item_ctr_smoothed",
        "popularity": "item_impressions_before",
    }
    for split in ("val", "test"):
        part = frame.filter(pl.col("split") == split)
        results[split] = {
            name: _metrics(part.with_columns(pl.col(col).cast(pl.Float64)), col) for name, col in systems.items()
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", default="encode,step,quality")
    parser.add_argument("--config", type=Path, default=ROOT / "conf/demo.yaml")
    parser.add_argument("--items", type=int, default=512, help="items for the encoding benchmark")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/results/textmodel.json")
    parser.add_argument(
        "--reuse-fine-tuned",
        action="store_true",
        help="take the fine-tuned model from DIR/textmodel instead of training it again",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    overrides = [f"data.dir={ROOT / 'data/ml100k'}", *args.overrides]
    cfg = load_config(args.config, overrides)
    results: dict[str, object] = {
        "config": str(args.config),
        "overrides": overrides,
        "torch_threads": torch.get_num_threads(),
    }
    parts = args.part.split(",")
    if "encode" in parts:
        r = results["encode"] = bench_encode(cfg, args.items)
        print(
            f"\n(a) encode {r['items']} items: export path {r['export_items_per_s']:.1f} items/s, plain forward "
            f"{r['floor_items_per_s']:.1f} items/s, ratio {r['ratio']:.2f} (goal >= 0.9)"
        )
    if "step" in parts:
        r = results["step"] = bench_step(cfg, args.steps)
        print(
            f"\n(b) training step, batch {r['batch_size']} x {1 + r['negatives']} candidates, "
            f"{r['trainable_top_layers']}/{r['layers']} layers trainable: uncached {r['step_s_uncached']:.2f} s, "
            f"cached {r['step_s_cached']:.2f} s, speedup {r['speedup']:.1f}x (goal >= 3x); "
            f"cache build {r['cache_build_s']:.0f} s for {r['items']} items"
        )
    if "quality" in parts:
        r = results["quality"] = bench_quality(cfg, overrides, args.config, args.reuse_fine_tuned)
        print("\n(c) impression-mean AUC / nDCG@10 on ml100k")
        print(f"{'system':<20}{'val AUC':>9}{'val nDCG@10':>13}{'test AUC':>10}{'test nDCG@10':>14}")
        for name in r["test"]:
            v, t = r["val"][name], r["test"][name]
            print(f"{name:<20}{v['auc']:>9.4f}{v['ndcg_at_10']:>13.4f}{t['auc']:>10.4f}{t['ndcg_at_10']:>14.4f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
