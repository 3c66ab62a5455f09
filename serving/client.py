"""A small Python client of the ranking API, for integrators, the benchmarks and the tests.

    from serving.client import RankClient

    with RankClient("http://127.0.0.1:8000", token="...") as api:
        ranked = api.rank("user-1", ["item-9", {"item_id": "new-1", "title": "A new lamp"}], k=10)
        ranked.items[0].item_id, ranked.versions

Every call has a timeout. A 503 (models not loaded yet, or a replica starting) and a connection error are
retried with exponential back-off (``retries`` times, ``backoff_s`` doubling); any other error status raises
:class:`ApiError` at once with the server's one-line message. The bearer token, when the server requires one,
is sent on every call (``/healthz`` and ``/readyz`` need none).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from serving.schemas import RankResponse, Readiness, VersionInfo

RETRIED_STATUS = frozenset({503})


class ApiError(RuntimeError):
    """The server answered with an error status: ``status`` and its one-line ``message``."""

    def __init__(self, status: int, message: str, request_id: str | None = None) -> None:
        self.status, self.message, self.request_id = status, message, request_id
        super().__init__(f"HTTP {status}: {message}" + (f" (request {request_id})" if request_id else ""))


@dataclass
class RankClient:
    """The ranking API at ``base_url``."""

    base_url: str
    token: str | None = None
    timeout_s: float = 5.0
    retries: int = 3
    backoff_s: float = 0.2
    transport: httpx.BaseTransport | None = None  # httpx's own (tests pass a mock one)
    _http: httpx.Client = field(init=False, repr=False)

    def __post_init__(self) -> None:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(
            base_url=self.base_url.rstrip("/"), timeout=self.timeout_s, headers=headers, transport=self.transport
        )

    def __enter__(self) -> RankClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def rank(
        self,
        user_id: str,
        candidates: Sequence[str | dict[str, Any]],
        k: int | None = None,
        request_id: str | None = None,
        explain: bool = False,
    ) -> RankResponse:
        """Rank ``candidates`` (item ids, or ``{"item_id": ..., "title": ...}`` for items the text model must
        encode) for ``user_id``; the top ``k`` when given. ``request_id`` is sent as ``X-Request-ID`` (the
        server's logs carry it); ``explain``: each item comes with its ``explanation``."""
        headers = {"X-Request-ID": request_id} if request_id else None
        body = rank_body(user_id, candidates, k, explain)
        return RankResponse.model_validate(self._call("POST", "/rank", json=body, headers=headers).json())

    def health(self) -> bool:
        """The process is up (``/healthz``)."""
        return self._call("GET", "/healthz", retry=False).status_code == 200

    def ready(self) -> Readiness:
        """``/readyz``, 503 included (not retried: readiness is the answer)."""
        response = self._http.get("/readyz")
        if response.status_code not in (200, 503):
            raise _error(response)
        return Readiness.model_validate(response.json())

    def version(self) -> VersionInfo:
        return VersionInfo.model_validate(self._call("GET", "/version").json())

    def _call(self, method: str, path: str, retry: bool = True, **kwargs: Any) -> httpx.Response:
        attempts = 1 + (self.retries if retry else 0)
        for attempt in range(attempts):
            last = attempt == attempts - 1
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if last:
                    raise
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRIED_STATUS or last:
                    raise _error(response)
            time.sleep(self.backoff_s * 2**attempt)
        raise AssertionError("unreachable")  # pragma: no cover


def rank_body(
    user_id: str, candidates: Sequence[str | dict[str, Any]], k: int | None = None, explain: bool = False
) -> dict[str, Any]:
    """The JSON body of ``POST /rank`` (what :meth:`RankClient.rank` sends; load generators send it as bytes)."""
    body: dict[str, Any] = {"user_id": user_id, "candidates": list(candidates)}
    if k is not None:
        body["k"] = k
    if explain:
        body["explain"] = True
    return body


def _error(response: httpx.Response) -> ApiError:
    try:
        message = str(response.json().get("error", response.text))
    except ValueError:
        message = response.text
    return ApiError(response.status_code, message, response.headers.get("X-Request-ID"))
