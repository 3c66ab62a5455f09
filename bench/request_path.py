"""Same-run p50 of one API-sized request in process, ``RankingPipeline.rank``, against its floor.

    OMP_NUM_THREADS=1 python bench/request_path.py [--data data/scr_ml100k-s0 data/scr_cold20-s0]
                                                   [--config conf/demo.yaml] [--requests 600] [--seed 0]

Needs data folders with a registered champion. For each ``--data`` folder: the champion pipeline (loaded as
the API loads it), ``--requests`` requests of 100 candidates for random snapshot users (a fixed seed), every
candidate in the snapshot and, for a ranker that reads the interest score, in the text model's embedding table
(nothing is encoded from text). Timed on one thread, interleaved request by request (a shared machine drifts;
which goes first alternates), after a warm-up pass:

* ``rank``: ``pipeline.rank(user_id, candidates)``, the whole request as the API runs it in process, for a user
  the pipeline has served before (building the floor's inputs warms its cache of user vectors);
* ``first``: the same for a user's first request (the same parts, no cache: the user tower runs every time);
* ``floor``: the work no request can skip: ``booster.predict(X, num_threads=1)`` on that request's model matrix
  ``X``, built beforehand by the pipeline itself, plus, when the ranker reads the interest score, the gather of
  the 100 item vectors from the text model's table (ids to rows, then rows) and their float64 dot products with
  the user's vector (computed beforehand). A features-only ranker's floor is the booster alone.

Prints p50/p90 of each, ``rank`` p50 / floor p50 and whether the goals hold (``rank`` p50 <= 2 ms and within 2x
of the floor), ``first``'s p50, and a digest of every request's scores (sha256 of their bytes): equal digests
before and after a change to the request path mean bit-identical scores. Writes ``bench/results/request_path.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from conf import load_config  # noqa: E402
from offline.tracking import setup  # noqa: E402
from ranker.frame import model_matrix  # noqa: E402
from ranker.loading import load_pipeline  # noqa: E402
from ranker.pipeline import Candidate  # noqa: E402

GOAL_MS, GOAL_RATIO, WARMUP = 2.0, 2.0, 50


def measure(data: str, config: str, n_requests: int, seed: int) -> dict[str, object]:
    """Timings of ``rank`` and its floor over the requests of one data folder's champion (see the docstring)."""
    cfg = load_config(config, [f"data.dir={data}"])
    client = setup(cfg)
    p = load_pipeline(
        client, cfg.mlflow.model_prefix, "champion", Path(cfg.data.dir), cfg.textmodel.cache_dir, torch.device("cpu")
    )
    uses_text = p.inputs.uses_text
    users = p.snapshot.users["user_id"].to_list()
    items = [i for i in p.snapshot.items["item_id"].to_list() if not uses_text or i in p.text.index]
    rng = np.random.default_rng(seed)
    requests = [
        (users[int(rng.integers(len(users)))], [Candidate(i) for i in rng.choice(items, 100, replace=False)])
        for _ in range(n_requests)
    ]
    # What the floor starts from: the request's model matrix, the user's vector (both built by the pipeline).
    matrices = [model_matrix(p.ranking_frame(p.request_rows(u, c)), p.inputs) for u, c in requests]
    if uses_text:
        table, index = p.text.head.vectors.numpy(), p.text.index
        scale = float(p.text.head.scale)
        user_vectors = {u: p.text.user_vectors([p.history(u)])[0].numpy() for u, _ in requests}

    def floor(user: str, candidates: list[Candidate], x: np.ndarray) -> None:
        p.booster.predict(x, num_threads=1)
        if uses_text:
            rows = np.fromiter((index[c.item_id] for c in candidates), np.int64, len(candidates))
            scale * (table[rows] @ user_vectors[user])

    first = dataclasses.replace(p, user_cache_size=0)  # the same parts, every user vector recomputed
    for (user, candidates), x in zip(requests[:WARMUP], matrices, strict=False):
        p.rank(user, candidates)
        first.rank(user, candidates)
        floor(user, candidates, x)
    times: dict[str, list[float]] = {"rank": [], "floor": [], "first": []}
    digest = hashlib.sha256()
    for r, ((user, candidates), x) in enumerate(zip(requests, matrices, strict=True)):
        calls = [("rank", p.rank, (user, candidates)), ("floor", floor, (user, candidates, x))]
        calls = [*(calls if r % 2 == 0 else calls[::-1]), ("first", first.rank, (user, candidates))]
        for name, fn, args in calls:
            t0 = time.perf_counter()
            fn(*args)
            times[name].append(time.perf_counter() - t0)
        digest.update(np.asarray(p.score(user, candidates), dtype=np.float64).tobytes())
    out: dict[str, object] = {"data": data, "versions": p.versions, "uses_text": uses_text, "requests": n_requests}
    for name, ts in times.items():
        out[name] = {"p50_ms": 1e3 * float(np.median(ts)), "p90_ms": 1e3 * float(np.percentile(ts, 90))}
    ratio = out["rank"]["p50_ms"] / out["floor"]["p50_ms"]
    out["rank_over_floor_p50"] = ratio
    out["goal_p50_le_2ms"] = out["rank"]["p50_ms"] <= GOAL_MS
    out["goal_within_2x_floor"] = ratio <= GOAL_RATIO
    out["scores_sha256"] = digest.hexdigest()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", nargs="+", default=["data/scr_ml100k-s0", "data/scr_cold20-s0"])
    parser.add_argument("--config", default=str(ROOT / "conf" / "demo.yaml"))
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [measure(data, args.config, args.requests, args.seed) for data in args.data]
    header = f"{'data':16s} {'rank p50':>9s} {'p90':>6s} {'floor p50':>10s} {'p90':>6s} {'ratio':>6s}"
    print(f"{header}  <=2ms  <=2x  {'first p50':>9s}  scores")
    for res in results:
        rank, floor = res["rank"], res["floor"]
        print(
            f"{Path(res['data']).name:16s} {rank['p50_ms']:9.2f} {rank['p90_ms']:6.2f} {floor['p50_ms']:10.2f} "
            f"{floor['p90_ms']:6.2f} {res['rank_over_floor_p50']:6.2f}  {'yes' if res['goal_p50_le_2ms'] else 'NO':5s}"
            f"  {'yes' if res['goal_within_2x_floor'] else 'NO':4s}  {res['first']['p50_ms']:9.2f}"
            f"  {res['scores_sha256'][:12]}"
        )
    print("(ms; floor: booster.predict on the prebuilt matrix + item-vector gather and dot products when text;")
    print(" first: a user's first request, its user vector not cached)")
    (ROOT / "bench" / "results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench" / "results" / "request_path.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
