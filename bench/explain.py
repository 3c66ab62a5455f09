"""Same-run p50 of one ``/rank``-sized request in process: ``RankingPipeline.rank`` against ``explain``.

    python bench/explain.py [--data data/scr_ml100k-s0 data/scr_cold20-s0] [--config conf/demo.yaml] [--requests 400]
                            [--top 5] [--best 5]

``explain`` as the API runs it: the top ``--top`` features of the ``--best`` highest-scored items (0 = every
item; ``serving.explain_top`` / ``serving.explain_items``).

Needs data folders with a registered champion. Per folder: requests of 100 cached candidates for random snapshot
users (fixed seed); ``rank``, ``explain`` and LightGBM's TreeSHAP alone (``booster.predict(X, pred_contrib=True)``
on all 100 rows of the request's prepared matrix: what explaining every item would cost) timed request by request,
interleaved (the order rotates: a shared machine drifts), one thread. Checks on every request that explain's
scores are ``score``'s floats and that each explanation adds up to its score. Prints p50s and the ratio (goal:
explain p50 within 2x of rank p50); writes ``bench/results/explain.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import load_config  # noqa: E402
from ranker.frame import model_matrix  # noqa: E402
from ranker.loading import load_pipeline, registry_client  # noqa: E402
from ranker.pipeline import Candidate  # noqa: E402

GOAL = 2.0


def _ms(times: list[float]) -> dict[str, float]:
    return {"p50_ms": 1e3 * float(np.median(times)), "p90_ms": 1e3 * float(np.percentile(times, 90))}


def bench_folder(data: str, config: str, n_requests: int, size: int, top: int, seed: int, best: int | None) -> dict:
    cfg = load_config(config, [f"data.dir={data}"])
    # the read-only client (no experiment set-up): a benchmark writes nothing into the data folder's store
    p = load_pipeline(
        registry_client(cfg),
        cfg.mlflow.model_prefix,
        "champion",
        Path(cfg.data.dir),
        cfg.textmodel.cache_dir,
        torch.device("cpu"),
    )
    users = p.snapshot.users["user_id"].to_list()
    items = [i for i in p.snapshot.items["item_id"].to_list() if p.text is None or i in p.text.index]
    rng = np.random.default_rng(seed)
    reqs = [
        (users[int(rng.integers(len(users)))], [Candidate(str(i)) for i in rng.choice(items, size, replace=False)])
        for _ in range(n_requests)
    ]
    # each request's booster matrix, prepared outside the timing: TreeSHAP alone is timed on it
    matrices = [model_matrix(p.ranking_frame(p.request_rows(u, c)), p.inputs) for u, c in reqs]
    calls = {
        "rank": lambda k: p.rank(*reqs[k]),
        "explain": lambda k: p.explain(*reqs[k], top, best=best),
        "treeshap": lambda k: p.booster.predict(matrices[k], pred_contrib=True, num_threads=1),
    }
    for k in range(10):  # warm-up: first-call costs (caches, lazily built indices) are not the p50
        for call in calls.values():
            call(k)
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for k in range(len(reqs)):
        for name in names[k % 3 :] + names[: k % 3]:  # the order rotates: a shared machine drifts
            t0 = time.perf_counter()
            calls[name](k)
            times[name].append(time.perf_counter() - t0)
    same, worst = True, 0.0
    for user, cands in reqs:
        scores, explanations = p.explain(user, cands, top, best=best)
        same = same and np.array_equal(scores, p.score(user, cands))
        same = same and all(e.score == scores[i] for i, e in explanations.items())
        for e in explanations.values():
            total = e.base_value + e.prior + sum(c.contribution for c in e.contributions) + e.rest
            worst = max(worst, abs(total - e.score))
    out: dict = {k: _ms(v) for k, v in times.items()}
    model = p.booster.dump_model()["tree_info"]
    out["ranker"] = {
        "version": p.versions.get("ranker"),
        "trees": len(model),
        "leaves_per_tree": float(np.mean([t["num_leaves"] for t in model])),
        "features": len(p.inputs.features),
        "uses_text": p.inputs.uses_text,
    }
    out["explain_over_rank_p50"] = out["explain"]["p50_ms"] / out["rank"]["p50_ms"]
    out["treeshap_over_rank_p50"] = out["treeshap"]["p50_ms"] / out["rank"]["p50_ms"]
    out["goal_met"] = out["explain_over_rank_p50"] <= GOAL
    out["same_scores"] = bool(same)
    out["max_sum_error"] = worst
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["data/scr_ml100k-s0", "data/scr_cold20-s0"])
    parser.add_argument("--config", default=str(ROOT / "conf" / "demo.yaml"))
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--top", type=int, default=5, help="features per explained item (serving.explain_top)")
    parser.add_argument(
        "--best", type=int, default=5, help="items explained, the best by score (serving.explain_items; 0 = all)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {
        d: bench_folder(d, args.config, args.requests, args.candidates, args.top, args.seed, args.best or None)
        for d in args.data
    }
    print(
        f"{args.requests} requests x {args.candidates} cached candidates, explain top={args.top} of the best "
        f"{args.best or 'all'}, one thread "
        f"(goal: explain p50 <= {GOAL:g}x rank p50)"
    )
    head = ("data", "trees x leaves", "rank p50", "explain p50", "x rank", "treeshap p50", "goal", "same", "max err")
    widths = (22, 14, 10, 12, 7, 13, 5, 5, 8)
    print("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for data, r in results.items():
        cells = (
            Path(data).name,
            f"{r['ranker']['trees']} x {r['ranker']['leaves_per_tree']:g}",
            f"{r['rank']['p50_ms']:.2f} ms",
            f"{r['explain']['p50_ms']:.2f} ms",
            f"{r['explain_over_rank_p50']:.2f}",
            f"{r['treeshap']['p50_ms']:.2f} ms",
            "yes" if r["goal_met"] else "no",
            "yes" if r["same_scores"] else "NO",
            f"{r['max_sum_error']:.0e}",
        )
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)))
    meta = {
        "requests": args.requests,
        "candidates": args.candidates,
        "top": args.top,
        "best": args.best,
        "seed": args.seed,
    }
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "explain.json").write_text(json.dumps({**meta, "results": results}, indent=2) + "\n")
    return 0 if all(r["same_scores"] and r["max_sum_error"] <= 1e-9 for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
