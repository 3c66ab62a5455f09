"""Point-in-time state: for every row, counts of the events of its key strictly before its time.

One mechanism serves offline features and the online snapshot. The input is a stream of rows sorted
by time; each row is either a logged *event* (``_e = 1``) or a *probe* (``_e = 0``: a question "what was
the state at this time?" that must not count itself). Offline, every impression row is an event and
asks about itself; for the snapshot, one probe per user / item is appended just after the last event.

Per key, the rows are put in time order with one stable sort on an integer key code, and the counts
come from running sums: a row's "before" value is the running sum just before the first row of its
*tie group* (same key, same instant) minus the running sum at the start of its key. Rows at the same
instant therefore never see each other, which is what "strictly before ts" means. Windows
``[t - w, t)`` find the first row at or after ``t - w`` with a merge (as-of join) over a composite
(key, time) integer. Everything is vectorised; the result is aligned row for row with the input.
"""

from __future__ import annotations

from collections.abc import Sequence

import polars as pl

T = "_t"  # event time as integer microseconds since the epoch
EVENT = "_e"  # 1 for a logged event, 0 for a probe
_US_PER_DAY = 86_400 * 1_000_000
_INT64_MAX = 2**63 - 1


def encode_time(ts: str = "ts") -> pl.Expr:
    return pl.col(ts).dt.epoch("us").alias(T)


def key_code(*columns: str, alias: str) -> pl.Expr:
    """A dense-ish integer code for one or more string columns (sorting ints is far cheaper than strings)."""
    codes = [pl.col(c).cast(pl.Categorical).to_physical().cast(pl.UInt64) for c in columns]
    expr = codes[0]
    for code in codes[1:]:
        expr = expr * pl.lit(1 << 32, dtype=pl.UInt64) + code
    return expr.alias(alias)


def entity_state(
    frame: pl.LazyFrame,
    key: str | None,
    prefix: str,
    windows_days: Sequence[int] = (),
    last_click: bool = False,
    time_bounds: tuple[int, int] | None = None,
) -> pl.LazyFrame:
    """State of each row's ``key`` before the row's time, aligned row for row with ``frame``.

    ``frame`` has ``key`` (an integer code; ``None`` for one global key), ``_t``, ``clicked`` and ``_e``, and
    is sorted by ``_t``. Returns ``{prefix}_impressions_before``, ``{prefix}_clicks_before``,
    ``{prefix}_clicks_{w}d`` per window and, with ``last_click``, ``{prefix}_last_click_t`` (µs, null if none).
    ``time_bounds`` (min, max of ``_t``) is needed for windows.
    """
    i = pl.int_range(pl.len(), dtype=pl.Int64)
    e = pl.col(EVENT).cast(pl.Int64)
    c = pl.col("clicked").cast(pl.Int64) * e
    rows = frame.select(*([key] if key else []), T, c.alias("_c"), e.alias("_ev")).with_row_index("_r")
    if key:
        rows = rows.sort(key, maintain_order=True)  # stable: time order within each key survives
        new_key = (pl.col(key) != pl.col(key).shift(1)).fill_null(True)
    else:
        new_key = i == 0
    new_tie = new_key | (pl.col(T) != pl.col(T).shift(1)).fill_null(True)
    rows = rows.with_columns(
        i.alias("_i"),
        (pl.col("_ev").cum_sum() - pl.col("_ev")).alias("_xn"),  # events strictly before this row
        (pl.col("_c").cum_sum() - pl.col("_c")).alias("_xc"),  # clicks strictly before this row
        new_key.alias("_nk"),
        new_tie.alias("_nt"),
    ).with_columns(
        pl.when("_nk").then("_i").forward_fill().alias("_ks"),  # first row of this key
        pl.when("_nt").then("_i").forward_fill().alias("_ts"),  # first row of this (key, instant)
    )
    at_tie = pl.col("_xc").gather(pl.col("_ts"))
    out = [
        (pl.col("_xn").gather(pl.col("_ts")) - pl.col("_xn").gather(pl.col("_ks"))).alias(
            f"{prefix}_impressions_before"
        ),
        (at_tie - pl.col("_xc").gather(pl.col("_ks"))).alias(f"{prefix}_clicks_before"),
    ]
    if windows_days:
        rows, first_in_window = _window_starts(rows, key, windows_days, time_bounds)
        out += [
            (at_tie - pl.col("_xc").gather(first_in_window[d])).alias(f"{prefix}_clicks_{d}d") for d in windows_days
        ]
    if last_click:
        # Index of the last clicked row strictly before this row's tie group, if it belongs to the same key.
        last = pl.when(pl.col("_c") > 0).then("_i").forward_fill().shift(1).gather(pl.col("_ts"))
        last = pl.when(last >= pl.col("_ks")).then(last)
        out.append(pl.col(T).gather(last).alias(f"{prefix}_last_click_t"))
    names = [expr.meta.output_name() for expr in out]
    return rows.with_columns(out).sort("_r").select(names)


def _window_starts(
    rows: pl.LazyFrame, key: str | None, windows_days: Sequence[int], time_bounds: tuple[int, int] | None
) -> tuple[pl.LazyFrame, dict[int, pl.Expr]]:
    """For each window, the index of the first row of the same key at or after ``t - w``.

    Rows are sorted by (key, t); with ``k`` the dense index of the key (0, 1, ... in sorted order),
    ``z = k * span + (t - t_min)`` is sorted, and so is the query ``k * span + max(t - w - t_min, 0)``.
    A forward as-of join of two sorted integer columns is a linear merge (~4x faster than a binary search
    per row). Callers check with :func:`check_composite_fits` that (number of keys) x span fits 64 bits.
    """
    if time_bounds is None:
        raise ValueError("windows need the time bounds of the frame")
    t_min, t_max = time_bounds
    span = t_max - t_min + 1
    dense = (pl.col("_nk").cast(pl.Int64).cum_sum() - 1) if key else pl.lit(0, dtype=pl.Int64)
    rows = rows.with_columns(dense.alias("_kd")).with_columns((pl.col("_kd") * span + (pl.col(T) - t_min)).alias("_z"))
    targets = rows.select(pl.col("_z").alias("_zr"), pl.col("_i").alias("_j"))
    starts = {}
    for days in windows_days:
        lower = pl.max_horizontal(pl.col(T) - days * _US_PER_DAY - t_min, pl.lit(0, dtype=pl.Int64))
        rows = (
            rows.with_columns((pl.col("_kd") * span + lower).alias("_q"))
            .join_asof(targets, left_on="_q", right_on="_zr", strategy="forward", check_sortedness=False)
            .rename({"_j": f"_j{days}"})
            .drop("_q")
        )
        starts[days] = pl.col(f"_j{days}")
    return rows, starts


def check_composite_fits(n_keys: int, time_bounds: tuple[int, int]) -> None:
    """Windows use a (key, time) composite integer; refuse inputs where it would overflow int64
    rather than silently coarsen the windows."""
    span = time_bounds[1] - time_bounds[0] + 1
    if n_keys * span >= _INT64_MAX:
        raise ValueError(
            f"windowed features: {n_keys} keys x a {span / _US_PER_DAY:.0f}-day span do not fit a 64-bit "
            "composite key; shorten the time range or drop features.click_windows_days"
        )
