"""Same-run p50 of one ``/rank``-sized request in process: the old per-request path against the bundle's.

    python bench/rank_paths.py [--data data/ml100k] [--config conf/demo.yaml] [--requests 600]

Needs a data folder with a registered champion. Requests of 100 cached candidates for random snapshot users;
the old path (``online_rows`` + ``TextScorer.scores`` + interest rank + ``predict``, the oracle of
``tests/offline/test_registry.py``) and ``RankingPipeline.score`` are timed in two interleaved halves (a shared
machine drifts), one thread. Prints p50/p90 and whether both give the same bits; writes
``bench/results/rank_paths.json``.
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

from conf import load_config  # noqa: E402
from features.behaviour import online_rows  # noqa: E402
from offline.tracking import setup  # noqa: E402
from ranker.frame import with_interest_rank  # noqa: E402
from ranker.lambdarank import predict  # noqa: E402
from ranker.loading import load_pipeline  # noqa: E402
from ranker.pipeline import Candidate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/ml100k")
    parser.add_argument("--config", default=str(ROOT / "conf" / "demo.yaml"))
    parser.add_argument("--requests", type=int, default=600)
    args = parser.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(args.config, [f"data.dir={args.data}"])
    client = setup(cfg)
    p = load_pipeline(
        client, cfg.mlflow.model_prefix, "champion", Path(cfg.data.dir), cfg.textmodel.cache_dir, torch.device("cpu")
    )
    users = p.snapshot.users["user_id"].to_list()
    items = [i for i in p.snapshot.items["item_id"].to_list() if i in p.text.index]
    rng = np.random.default_rng(0)
    reqs = [
        (users[int(rng.integers(len(users)))], list(rng.choice(items, 100, replace=False)))
        for _ in range(args.requests)
    ]

    def old(user: str, cands: list[str]) -> np.ndarray:
        frame = online_rows(p.snapshot, user, cands, p.snapshot.as_of, p.spec)
        interest = p.text.scores(p.history(user), cands)
        frame = frame.hstack([pl.Series("interest_score", interest), pl.Series("impression_id", ["r"] * len(cands))])
        return predict(p.booster, with_interest_rank(frame), p.inputs)

    built = {id(c): [Candidate(i) for i in c] for _, c in reqs}  # the API parses candidates before either path

    def new(user: str, cands: list[str]) -> np.ndarray:
        return p.score(user, built[id(cands)])

    half = len(reqs) // 2
    times: dict[str, list[float]] = {"old": [], "new": []}
    for part in (reqs[:half], reqs[half:]):
        for name, fn in (("old", old), ("new", new)):
            for user, cands in part:
                t0 = time.perf_counter()
                fn(user, cands)
                times[name].append(time.perf_counter() - t0)
    same = all(np.array_equal(old(u, c), new(u, c)) for u, c in reqs[:50])
    out = {
        k: {"p50_ms": 1e3 * float(np.median(v)), "p90_ms": 1e3 * float(np.percentile(v, 90))} for k, v in times.items()
    }
    out["new_over_old_p50"] = out["new"]["p50_ms"] / out["old"]["p50_ms"]
    out["bit_identical_50_requests"] = same
    for k in ("old", "new"):
        print(f"{k:4s} p50 {out[k]['p50_ms']:.2f} ms  p90 {out[k]['p90_ms']:.2f} ms")
    print(f"new / old p50 {out['new_over_old_p50']:.3f}; same bits: {same}")
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "rank_paths.json").write_text(json.dumps(out, indent=2) + "\n")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
