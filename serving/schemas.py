"""HTTP request and response bodies of the ranking API.

The request models are built from the serving config (:func:`request_model_for`), so the limits a client
must respect (candidate count, id and text lengths) are in the OpenAPI schema itself, where client
generators and fuzzers see them, and pydantic enforces them before any model code runs.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, create_model

from conf import ServingConfig
from conf.prompt import TEMPLATE_FIELDS


class Term(BaseModel):
    feature: str = Field(description="A ranker input (or the prior: 'prior: logit(<column>)').")
    value: float | str | None = Field(
        description="The value the ranker read: a number, a category's name, null where missing. For the prior, "
        "the probability it is the logit of."
    )
    contribution: float = Field(description="Its exact share of the score (TreeSHAP; the ranker's margin units).")


class ItemExplanation(BaseModel):
    """Why an item scored what it did: ``base_value + prior.contribution + sum(contributions) + rest == score``."""

    base_value: float = Field(description="The trees' expected value: the same for every item.")
    prior: Term | None = Field(
        description="The score the trees start from (logit of the item's smoothed CTR), null for a ranker "
        "boosted from zero."
    )
    contributions: list[Term] = Field(description="The largest contributions by absolute value, largest first.")
    rest: float = Field(description="The sum of the other features' contributions.")


class RankedItem(BaseModel):
    item_id: str
    score: float = Field(description="Ranker score: higher ranks first; comparable within one response.")
    rank: int = Field(description="1 = best.")
    explanation: ItemExplanation | None = Field(
        default=None,
        description='Present only when the request asked for it ("explain": true), on the first '
        "serving.explain_items items of the ranking.",
    )


class RankResponse(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "196",
                    "items": [
                        {"item_id": "302", "score": 0.41, "rank": 1},
                        {"item_id": "242", "score": 0.12, "rank": 2},
                        {"item_id": "51", "score": -0.33, "rank": 3},
                    ],
                    "cold_start_user": False,
                    "encoded_items": 0,
                    "versions": {"ranker": "3", "textmodel": "2", "snapshot": "83083ae19250a3e5"},
                }
            ]
        }
    )

    user_id: str
    items: list[RankedItem] = Field(description="Candidates sorted by score (the top k when k is given).")
    cold_start_user: bool = Field(description="True when the user has no events: scored by the cold-start path.")
    encoded_items: int = Field(description="Candidates encoded from their text (not in the embedding table).")
    versions: dict[str, str] = Field(
        description="Versions used for this response: ranker, textmodel and the snapshot its features came from."
    )


class Health(BaseModel):
    status: str


class SnapshotInfo(BaseModel):
    id: str | None = Field(description="The served snapshot version (its content id; null for a legacy one).")
    as_of: str = Field(description="Just after the snapshot's last event (UTC, ISO 8601).")
    loaded_at: str = Field(description="When this server started serving it (UTC, ISO 8601).")
    age_s: float = Field(description="Seconds from as_of to now: how stale the served features are.")


class Readiness(BaseModel):
    ready: bool
    versions: dict[str, str]
    alias: str
    loaded_at: str | None = Field(description="When the served pair was loaded (UTC, ISO 8601).")
    last_check: str | None = Field(description="When the registry alias was last polled.")
    reload_error: str | None = Field(description="Why the last load failed (the previous pair keeps serving).")
    snapshot: SnapshotInfo | None = Field(default=None, description="The served snapshot version (null before a pair).")
    snapshot_check: str | None = Field(default=None, description="When the data folder was last polled for one.")
    snapshot_error: str | None = Field(
        default=None, description="Why the newest snapshot version is not served (the previous one keeps serving)."
    )


class VersionInfo(BaseModel):
    recrank: str
    alias: str
    models: dict[str, str] = Field(description="The served versions: ranker, textmodel and snapshot.")
    snapshot: SnapshotInfo | None = Field(default=None, description="The served snapshot version (null before a pair).")


class ErrorBody(BaseModel):
    error: str = Field(description="What is wrong with the request, naming the field.")


EXAMPLES = [
    {"user_id": "196", "candidates": ["242", "302", "377", "51", "346"], "k": 3},
    {
        "user_id": "new-visitor",
        "candidates": ["242", {"item_id": "sku-9", "title": "Desk lamp, brass", "category": "Lighting"}],
        "explain": True,
    },
]


def request_model_for(cfg: ServingConfig) -> type[BaseModel]:
    """``RankRequest`` (with its ``CandidateIn`` items) with the configured limits as schema constraints."""
    ident = Annotated[str, StringConstraints(min_length=1, max_length=cfg.max_id_chars)]
    text = Annotated[str, StringConstraints(max_length=cfg.max_text_chars)]
    strict = ConfigDict(extra="forbid", str_strip_whitespace=False)
    candidate = create_model(
        "CandidateIn",
        __config__=strict,
        __doc__="An item with its text fields: needed only for items the model has not seen, which it reads "
        "through its prompt template (any of title, body, category, subcategory).",
        item_id=(ident, ...),
        **{f: (text | None, None) for f in TEMPLATE_FIELDS},
    )
    request = create_model(
        "RankRequest",
        __config__=ConfigDict(extra="forbid", str_strip_whitespace=False, json_schema_extra={"examples": EXAMPLES}),
        __doc__="Rank candidates for a user: ids of known items, or objects with text for new items.",
        user_id=(ident, ...),
        candidates=(
            Annotated[list[ident | candidate], Field(min_length=1, max_length=cfg.max_candidates)],  # type: ignore[valid-type]
            ...,
        ),
        k=(Annotated[int | None, Field(ge=1, le=cfg.max_candidates)], None),
        explain=(
            bool,
            Field(
                default=False,
                description=f"Explain the first {cfg.explain_items} items of the ranking: each one's top "
                f"{cfg.explain_top} feature contributions (exact TreeSHAP from LightGBM), the base value and the "
                "prior, summing to its score.",
            ),
        ),
    )
    return request
