"""A seeded generator of realistic-looking impression logs for scale and load tests.

Shape: Zipf item popularity that drifts over time (the popular set rotates), per-user category
interests, a position bias and an overall CTR near ``target_ctr``. Impressions are generated in
chunks of ``chunk_impressions`` with one RNG per chunk, so memory is bounded and the same config
always gives identical tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from conf import SyntheticConfig
from features.adapters.base import SourceTables
from features.schema import UTC_DATETIME

START = datetime(2024, 1, 1, tzinfo=UTC)
_TOPICS = [
    "sports",
    "politics",
    "music",
    "movies",
    "travel",
    "food",
    "science",
    "health",
    "finance",
    "tech",
    "autos",
    "fashion",
    "gaming",
    "books",
    "weather",
    "pets",
    "garden",
    "history",
    "art",
    "education",
]
_ADJECTIVES = [
    "quiet",
    "bold",
    "bright",
    "hidden",
    "modern",
    "classic",
    "wild",
    "tiny",
    "grand",
    "swift",
    "golden",
    "silent",
    "urban",
    "rural",
    "secret",
    "daily",
    "global",
    "local",
    "rapid",
    "gentle",
]
_NOUNS = [
    "guide",
    "story",
    "review",
    "report",
    "journey",
    "secret",
    "plan",
    "moment",
    "idea",
    "change",
    "market",
    "season",
    "trend",
    "lesson",
    "choice",
    "debate",
    "record",
    "signal",
    "voice",
    "future",
]
# Click model weights (logit scale): category match matters most, then item quality, then position.
_FAV_BONUS, _SECOND_BONUS, _QUALITY_SCALE, _POSITION_DECAY = 1.6, 0.8, 0.5, 0.08


def _category_name(k: int) -> str:
    base = _TOPICS[k % len(_TOPICS)]
    return base if k < len(_TOPICS) else f"{base}-{k // len(_TOPICS)}"


class SyntheticWorld:
    """The fixed part of the world (items, users, popularity) drawn once from the seed."""

    def __init__(self, cfg: SyntheticConfig) -> None:
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)
        self.item_category = rng.integers(cfg.categories, size=cfg.items)
        self.item_quality = rng.normal(0.0, 1.0, size=cfg.items).astype(np.float32)
        self.rank_to_item = rng.permutation(cfg.items)
        rank_weights = 1.0 / np.arange(1, cfg.items + 1) ** cfg.zipf_exponent
        self.rank_cdf = np.cumsum(rank_weights) / rank_weights.sum()
        self.user_fav = rng.integers(cfg.categories, size=cfg.users)
        self.user_second = rng.integers(cfg.categories, size=cfg.users)
        user_weights = 1.0 / np.arange(1, cfg.users + 1) ** 0.8
        self.user_cdf = np.cumsum(user_weights[rng.permutation(cfg.users)])
        self.user_cdf /= self.user_cdf[-1]
        self.item_words = (rng.integers(len(_ADJECTIVES), size=cfg.items), rng.integers(len(_NOUNS), size=cfg.items))
        self.published_offset_s = rng.uniform(0, 365 * 86400, size=cfg.items)
        self.published_null = rng.random(cfg.items) < 0.05
        self.base_logit = self._calibrate(rng)

    def _logits(self, users: np.ndarray, items: np.ndarray, positions: np.ndarray) -> np.ndarray:
        cat = self.item_category[items]
        return (
            _FAV_BONUS * (cat == self.user_fav[users])
            + _SECOND_BONUS * (cat == self.user_second[users])
            + _QUALITY_SCALE * self.item_quality[items]
            - _POSITION_DECAY * positions
        )

    def _calibrate(self, rng: np.random.Generator) -> float:
        """Find the base logit giving ``target_ctr`` on a pilot sample (bisection; deterministic)."""
        n = 20000
        users = np.searchsorted(self.user_cdf, rng.random(n))
        items = self.rank_to_item[np.searchsorted(self.rank_cdf, rng.random(n))]
        positions = rng.integers(self.cfg.slate_min, self.cfg.slate_max + 1, size=n) // 2
        z = self._logits(users, items, positions)
        lo, hi = -20.0, 5.0
        for _ in range(60):
            mid = (lo + hi) / 2
            if (1 / (1 + np.exp(-(z + mid)))).mean() < self.cfg.target_ctr:
                lo = mid
            else:
                hi = mid
        return (lo + hi) / 2

    def items_frame(self) -> pl.DataFrame:
        adj, noun = self.item_words
        cats = np.array([_category_name(k) for k in range(self.cfg.categories)])
        published = [
            None if null else START - timedelta(seconds=float(off))
            for off, null in zip(self.published_offset_s, self.published_null, strict=True)
        ]
        ids = np.arange(self.cfg.items)
        return pl.DataFrame(
            {
                "item_id": [f"i{j}" for j in ids],
                "title": [
                    f"The {_ADJECTIVES[a]} {_NOUNS[b]} of {cats[c]}"
                    for a, b, c in zip(adj, noun, self.item_category, strict=True)
                ],
                "body": [""] * self.cfg.items,
                "category": cats[self.item_category].tolist(),
                "subcategory": [""] * self.cfg.items,
                "published_at": pl.Series(published, dtype=UTC_DATETIME),
            }
        )

    def chunk(self, index: int) -> pl.DataFrame:
        """Impressions ``[index * chunk, (index + 1) * chunk)``: consecutive, time-ordered slices of the range."""
        cfg = self.cfg
        first = index * cfg.chunk_impressions
        n = min(cfg.chunk_impressions, cfg.impressions - first)
        rng = np.random.default_rng([cfg.seed, index + 1])
        span_s = cfg.days * 86400.0
        lo, hi = first / cfg.impressions, (first + n) / cfg.impressions
        frac = np.sort(rng.uniform(lo, hi, size=n))  # (n,) time as a fraction of the range
        users = np.searchsorted(self.user_cdf, rng.random(n))
        sizes = rng.integers(cfg.slate_min, cfg.slate_max + 1, size=n)
        row_imp = np.repeat(np.arange(n), sizes)  # (rows,) impression index of each row
        # Drift: the popularity ranking rotates through the catalogue once per simulated range.
        shift = (frac[row_imp] * cfg.items * 0.5).astype(np.int64)
        ranks = np.searchsorted(self.rank_cdf, rng.random(row_imp.size))
        items = self.rank_to_item[(ranks + shift) % cfg.items]
        frame = pl.DataFrame({"imp": row_imp.astype(np.int64), "item": items.astype(np.int64)})
        frame = frame.unique(["imp", "item"], keep="first", maintain_order=True)  # an item shows once per slate
        row_imp, items = frame["imp"].to_numpy(), frame["item"].to_numpy()
        positions = frame.select(pl.int_range(pl.len()).over("imp")).to_series().to_numpy()
        p = 1 / (1 + np.exp(-(self.base_logit + self._logits(users[row_imp], items, positions))))
        clicked = (rng.random(p.size) < p).astype(np.int8)
        ts_us = (START.timestamp() + frac * span_s) * 1e6
        return pl.DataFrame(
            {
                "impression_id": pl.Series(first + row_imp, dtype=pl.Int64),
                "user_id": pl.Series(users[row_imp], dtype=pl.Int64),
                "ts": pl.Series(ts_us.astype(np.int64)[row_imp]),
                "item_id": pl.Series(items, dtype=pl.Int64),
                "position": pl.Series(positions, dtype=pl.Int32),
                "clicked": pl.Series(clicked),
            }
        ).select(
            (pl.lit("s") + pl.col("impression_id").cast(pl.String)).alias("impression_id"),
            (pl.lit("u") + pl.col("user_id").cast(pl.String)).alias("user_id"),
            pl.col("ts").cast(pl.Datetime("us")).dt.replace_time_zone("UTC"),
            (pl.lit("i") + pl.col("item_id").cast(pl.String)).alias("item_id"),
            "position",
            "clicked",
        )

    def chunks(self) -> Iterator[pl.DataFrame]:
        count = -(-self.cfg.impressions // self.cfg.chunk_impressions)
        for index in range(count):
            yield self.chunk(index)


def load_synthetic(cfg: SyntheticConfig) -> SourceTables:
    world = SyntheticWorld(cfg)
    return SourceTables(
        items=world.items_frame(),
        impression_chunks=world.chunks(),
        items_file="<synthetic items>",
        impressions_file="<synthetic impressions>",
        info={"seed": cfg.seed, "base_logit": round(world.base_logit, 4)},
    )
