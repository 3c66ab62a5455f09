"""The ranking API: one FastAPI app object, hosted by Ray Serve or by uvicorn alone.

Every request goes through the in-process :class:`ranker.pipeline.RankingPipeline` of the served pair,
the same object batch scoring and the offline evaluation use, so a score is the same wherever it comes
from. Items the text model has no vector for are encoded by ``encode`` when given (the Ray Serve
encoder deployment, on a GPU when one exists) and in-process otherwise.

Client mistakes are 4xx with an ``error`` message naming the field; only server faults are 5xx.
"""

# No `from __future__ import annotations`: FastAPI reads the route annotations (built here at run time).

import functools
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException as StarletteHTTPException

from conf import ServingConfig
from ranker.explain import Explanation
from ranker.pipeline import Candidate, OnlineSnapshot, RankingRequestError, ranking_order
from serving.access import ObserveRequests, UserIds, current_request
from serving.limits import BodySizeLimit, describe_validation_errors
from serving.metrics import CONTENT_TYPE, ServiceMetrics
from serving.models import ModelHolder
from serving.schemas import (
    ErrorBody,
    Health,
    ItemExplanation,
    RankedItem,
    RankResponse,
    Readiness,
    SnapshotInfo,
    Term,
    VersionInfo,
    request_model_for,
)

# (textmodel_version, texts) -> one vector per text
Encode = Callable[[str, Sequence[str]], Awaitable[Sequence[np.ndarray]]]

ERRORS = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    413: {"model": ErrorBody, "description": "Request body larger than serving.max_body_bytes."},
    422: {"model": ErrorBody, "description": "Invalid request: the message names the field."},
    503: {"model": ErrorBody, "description": "Models not loaded yet."},
}


def _package_version() -> str:
    try:
        return version("recrank")
    except PackageNotFoundError:
        return "unknown"


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message}, headers=headers)


def auth_dependency(token: str | None) -> Callable[..., None]:
    """A dependency that requires ``Authorization: Bearer <token>`` when a token is configured."""
    bearer = HTTPBearer(auto_error=False, description="Set when the server's token variable is set.")

    def check(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]) -> None:
        if token is None:
            return
        if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    return check


def example_request(snapshot: OnlineSnapshot, n: int = 5) -> dict[str, object]:
    """A request body that works against a pipeline serving ``snapshot``: its first user and ``n`` items."""
    users = snapshot.users["user_id"]
    return {
        "user_id": users[0] if len(users) else "new-user",
        "candidates": snapshot.items["item_id"].head(n).to_list(),
        "k": 3,
    }


def curl_example(host: str, port: int, body: dict[str, object], auth: bool) -> str:
    """A copy-paste ``curl`` line for ``body`` (with the bearer header when a token is set)."""
    import json

    header = ' -H "Authorization: Bearer $RECRANK_API_TOKEN"' if auth else ""
    return f"curl -s http://{host}:{port}/rank -H 'Content-Type: application/json'{header} -d '{json.dumps(body)}'"


def item_explanation(e: Explanation) -> ItemExplanation:
    """An explanation as the API returns it (the prior as a term of its own)."""
    terms = [Term(feature=c.feature, value=c.value, contribution=c.contribution) for c in e.contributions]
    p = e.prior_term
    prior = None if p is None else Term(feature=p.feature, value=p.value, contribution=p.contribution)
    return ItemExplanation(base_value=e.base_value, prior=prior, contributions=terms, rest=e.rest)


def served_snapshot(holder: ModelHolder) -> SnapshotInfo | None:
    """The served snapshot version, its time, when it was loaded and its age now (None before a pair loads)."""
    served = holder.state.snapshot
    return None if served is None else SnapshotInfo(**served.to_json())


def build_app(
    cfg: ServingConfig,
    holder: ModelHolder,
    encode: Encode | None = None,
    *,
    replica: str | None = None,
    echo_request_id: bool = True,
) -> FastAPI:
    """The API over ``holder``'s current pipeline. The bearer token (``cfg.auth_token_env``) and the log salt
    (``cfg.log_salt_env``) are read from the environment now.

    ``replica``: a label that keeps this app's metric series apart from its siblings' behind one port (Ray
    Serve replicas); ``echo_request_id``: return ``X-Request-ID`` (off where a proxy in front already does).
    """
    token = os.environ.get(cfg.auth_token_env) or None
    user_ids = UserIds(cfg.log_user_id, os.environ.get(cfg.log_salt_env, ""))
    request_model = request_model_for(cfg)
    app = FastAPI(
        title="recrank",
        version=_package_version(),
        description="Ranks a product page's candidate items for one user.",
    )
    metrics = ServiceMetrics(holder, replica) if cfg.metrics else None
    app.add_middleware(BodySizeLimit, max_bytes=cfg.max_body_bytes)
    # Added last, so outermost: every answer (401, 413, 422 included) is counted, logged and carries its id.
    app.add_middleware(ObserveRequests, metrics=metrics, log_access=cfg.access_log, echo_request_id=echo_request_id)
    authorised = [Depends(auth_dependency(token))]

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return _error(422, describe_validation_errors(exc.errors()))

    @app.exception_handler(RankingRequestError)
    async def unrankable(_: Request, exc: RankingRequestError) -> JSONResponse:
        return _error(422, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), getattr(exc, "headers", None))

    @app.get("/healthz", response_model=Health, summary="The process is up")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, summary="Models loaded")
    async def readyz() -> JSONResponse:
        s = holder.state
        body = Readiness(
            ready=holder.ready,
            versions=s.versions,
            alias=s.alias,
            loaded_at=s.loaded_at,
            last_check=s.last_check,
            reload_error=s.reload_error,
            snapshot=served_snapshot(holder),
            snapshot_check=s.snapshot_check,
            snapshot_error=s.snapshot_error,
        )
        return JSONResponse(status_code=200 if holder.ready else 503, content=body.model_dump())

    @app.get(
        "/version",
        response_model=VersionInfo,
        dependencies=authorised,
        responses={401: ERRORS[401]},
        summary="Served versions",
    )
    async def version_info() -> VersionInfo:
        s = holder.state
        return VersionInfo(recrank=app.version, alias=s.alias, models=s.versions, snapshot=served_snapshot(holder))

    @app.post(
        "/rank",
        response_model=RankResponse,
        dependencies=authorised,
        responses=ERRORS,
        response_model_exclude_none=True,  # no "explanation": null on every item of a plain ranking
        summary="Rank candidates for a user",
    )
    async def rank(body: request_model, response: Response) -> RankResponse:  # type: ignore[valid-type]
        started = time.perf_counter()
        pipeline = holder.current  # held for the whole request: a reload never swaps models under it
        if pipeline is None:
            raise HTTPException(503, "models are not loaded yet")
        candidates = [Candidate(c) if isinstance(c, str) else Candidate(**c.model_dump()) for c in body.candidates]
        texts = pipeline.texts_needed(candidates)  # RankingRequestError (422) for unknown items without text
        stages: dict[str, float] = {}
        explanations: dict[str, ItemExplanation] = {}
        if body.explain:  # the same scores, taken apart: TreeSHAP over the same ranking frame
            vectors = None
            if texts and encode is not None:
                encoded = await encode(pipeline.versions["textmodel"], list(texts.values()))
                vectors = dict(zip(texts, encoded, strict=True))
            best = min(cfg.explain_items, body.k or cfg.explain_items)
            explain = functools.partial(
                pipeline.explain, body.user_id, candidates, cfg.explain_top, vectors=vectors, best=best
            )
            scores, why = await run_in_threadpool(explain) if texts and encode is None else explain()
            ranked = [(candidates[i].item_id, float(scores[i])) for i in ranking_order(scores, body.k)]
            explanations = {candidates[i].item_id: item_explanation(e) for i, e in why.items()}
        elif texts and encode is not None:
            encoding = time.perf_counter()
            vectors = await encode(pipeline.versions["textmodel"], list(texts.values()))
            encoding = time.perf_counter() - encoding
            ranked = pipeline.rank(
                body.user_id, candidates, body.k, vectors=dict(zip(texts, vectors, strict=True)), timings=stages
            )
            stages["text"] = stages.get("text", 0.0) + encoding  # the encoder deployment's part of the text stage
        elif texts:  # in-process encoding takes long: keep the event loop free for other requests
            ranked = await run_in_threadpool(pipeline.rank, body.user_id, candidates, body.k, timings=stages)
        else:  # ~ms of CPU: cheaper inline than a thread hop
            ranked = pipeline.rank(body.user_id, candidates, body.k, timings=stages)
        # Time in the pipeline (features, text model, booster), apart from HTTP and the host's routing.
        response.headers["Server-Timing"] = f"rank;dur={(time.perf_counter() - started) * 1e3:.2f}"
        cold = not pipeline.knows_user(body.user_id)
        if metrics is not None:
            metrics.ranking(len(candidates), len(texts), cold, stages)
        info = current_request()
        if info is not None:  # the access line's part of this ranking: no ids but the (hashed) user's
            user = user_ids(body.user_id)
            info.fields.update(
                {
                    **({"user": user} if user is not None else {}),
                    "candidates": len(candidates),
                    "k": body.k,
                    "explain": body.explain,
                    "encoded_items": len(texts),
                    "cold_start_user": cold,
                    "versions": pipeline.versions,
                }
            )
        return RankResponse(
            user_id=body.user_id,
            items=[
                RankedItem(item_id=i, score=s, rank=r, explanation=explanations.get(i))
                for r, (i, s) in enumerate(ranked, start=1)
            ],
            cold_start_user=cold,
            encoded_items=len(texts),
            versions=dict(pipeline.versions),
        )

    if metrics is not None:

        @app.get(
            "/metrics",
            response_class=Response,
            responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text format."}},
            summary="Prometheus metrics",
        )
        async def prometheus() -> Response:
            return Response(metrics.render(), media_type=CONTENT_TYPE)

    app.state.holder = holder
    return app
