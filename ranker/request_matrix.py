"""A request's model matrix gathered by row from the snapshot's features already converted, once per entity.

What a request at the snapshot's own time over items the snapshot knows (the API's common request) would
otherwise do per request is build the feature rows from the snapshot's feature table
(:class:`features.snapshot_table.SnapshotFeatureTable`: ~20 polars calls), append the interest score and its rank
(~10 more) and convert the frame with :func:`ranker.frame.model_matrix` (a Series call per column): fixed costs
several times the booster's own. Here :func:`~ranker.frame.model_matrix` runs once over each side of the table
(its ``items``, ``users`` and ``pairs`` frames: every item, every user, every (user, category) row), and a
request's matrix is those float64 rows gathered by the table's own row positions
(:meth:`~features.snapshot_table.SnapshotFeatureTable.positions`), the request's position and size, and the
interest score and its rank written into their columns.

Why the bits are the same as the general path's (:meth:`ranker.pipeline.RankingPipeline.ranking_frame`, then
:func:`ranker.lambdarank.predict`): every feature value is still derived only by ``derive``'s expressions, once
per entity, through the table the general path gathers from, and converted only by ``model_matrix``'s code, which
is element-wise (a numeric value widened to float64, a category to its index in the saved vocabulary, a null to
NaN), so converting a side's column and then gathering rows gives the floats that gathering and then converting
gives. The base-score probabilities are gathered as float64 the same way, and the margin is computed from them
per request by :func:`~ranker.frame.base_margin`'s own arithmetic on the same array; the interest rank is
:func:`~ranker.frame.with_interest_rank`'s numpy path for one impression. ``tests/ranker/test_request_matrix.py``
holds the two paths equal bit for bit, every user.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.snapshot_table import SnapshotFeatureTable
from ranker.frame import RankerInputs, _float64, logit, model_matrix

SIDES = ("item", "user", "pair")


@dataclass(frozen=True)
class SideColumns:
    """One side's model-matrix columns: where they go in the request's matrix, and their values by entity row."""

    at: np.ndarray  # column positions in ``inputs.features`` order
    values: np.ndarray  # (entity rows, len(at)) float64, model_matrix's conversion of the side's frame


@dataclass(frozen=True)
class RequestMatrix:
    """The booster's inputs of a one-request frame, from the table's sides converted once (see the module)."""

    table: SnapshotFeatureTable
    inputs: RankerInputs
    sides: dict[str, SideColumns]
    request: dict[str, int]  # position, impression_size -> column
    text: dict[str, int]  # interest_score, interest_rank -> column
    base: tuple[str, np.ndarray] | None  # (side, the base-score column as float64 by entity row)

    @classmethod
    def build(cls, table: SnapshotFeatureTable, inputs: RankerInputs) -> RequestMatrix | None:
        """The converted sides of ``table`` for a ranker over ``inputs``; None when an input (or the base score)
        is not a column of the table, the request or the text model (such a ranker takes the general path)."""
        frames = {"item": table.items, "user": table.users, "pair": table.pairs}
        columns: dict[str, list[tuple[int, str]]] = {side: [] for side in (*SIDES, "request", "text")}
        for at, name in enumerate(inputs.features):
            side = "text" if name in ("interest_score", "interest_rank") else table.sides.get(name)
            if side not in columns or (side in SIDES and name not in frames[side].columns):
                return None
            columns[side].append((at, name))
        sides = {}
        for side in SIDES:
            names = [name for _, name in columns[side]]
            categorical = tuple(c for c in names if c in inputs.categorical)
            part = RankerInputs(
                features=tuple(names), categorical=categorical, vocab={c: inputs.vocab[c] for c in categorical}
            )
            sides[side] = SideColumns(
                np.array([at for at, _ in columns[side]], dtype=np.int64), model_matrix(frames[side], part)
            )
        base = None
        if inputs.base_score is not None:
            side = table.sides.get(inputs.base_score)
            if side not in SIDES or inputs.base_score not in frames[side].columns:
                return None
            base = (side, _float64(frames[side].get_column(inputs.base_score)))
        return cls(
            table=table,
            inputs=inputs,
            sides=sides,
            request={name: at for at, name in columns["request"]},
            text={name: at for at, name in columns["text"]},
            base=base,
        )

    def matrix(self, rows: dict[str, np.ndarray]) -> np.ndarray:
        """(n, features) float64: each side's columns gathered at ``rows[side]`` (entity rows of the table, as
        :meth:`SnapshotFeatureTable.positions` gives them), ``position`` and ``impression_size`` of one request;
        the text columns are left for :meth:`set_text`."""
        n = len(rows["item"])
        x = np.empty((n, len(self.inputs.features)), dtype=np.float64)
        for side, columns in self.sides.items():
            if len(columns.at):
                x[:, columns.at] = columns.values[rows[side]]
        if "position" in self.request:
            x[:, self.request["position"]] = np.arange(n, dtype=np.int32)
        if "impression_size" in self.request:
            x[:, self.request["impression_size"]] = n
        return x

    def set_text(self, x: np.ndarray, score: np.ndarray, rank: np.ndarray) -> None:
        """Write the interest score and its rank into ``x``'s columns (those the ranker reads)."""
        if "interest_score" in self.text:
            x[:, self.text["interest_score"]] = score
        if "interest_rank" in self.text:
            x[:, self.text["interest_rank"]] = rank

    def probabilities(self, rows: dict[str, np.ndarray]) -> np.ndarray | None:
        """The base-score column of the rows (what the margin is the logit of); None without a base score."""
        if self.base is None:
            return None
        side, values = self.base
        return values[rows[side]]

    def margin(self, rows: dict[str, np.ndarray]) -> np.ndarray | None:
        """:func:`ranker.frame.base_margin` of the rows: zeros without a base score; None when a probability lies
        outside (0, 1) (the general path then raises base_margin's error, naming the row)."""
        if self.base is None:
            return np.zeros(len(rows["item"]))
        side, values = self.base
        p = values[rows[side]]
        if len(p) and not (p.min() > 0 and p.max() < 1):
            return None
        return logit(p)
