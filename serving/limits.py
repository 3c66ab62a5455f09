"""Request limits the schema cannot express: body size, and readable validation messages."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodySizeLimit:
    """Answer 413 to a body over ``max_bytes``, by ``Content-Length`` or while streaming a chunked body.

    Pure ASGI (not ``BaseHTTPMiddleware``) so it adds no task or copy per request.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None:
            try:
                too_big = int(declared) > self.max_bytes
            except ValueError:
                await _reject(send, 400, "Content-Length is not a number")
                return
            if too_big:
                await _reject(send, 413, f"request body over {self.max_bytes} bytes (serving.max_body_bytes)")
                return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge as exc:  # raised outside FastAPI's handlers (e.g. while draining the body)
            await _reject(send, 413, exc.detail)


class _TooLarge(HTTPException):
    """Raised from inside the body read: FastAPI passes HTTPExceptions through its body parsing unchanged."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body over {max_bytes} bytes (serving.max_body_bytes)")


async def _reject(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def describe_validation_errors(errors: Sequence[dict[str, Any]], limit: int = 3) -> str:
    """``"body.candidates[3].item_id: String should have at most 200 characters; ..."`` from pydantic errors."""
    parts = []
    for err in errors[:limit]:
        if err.get("type") == "json_invalid":
            ctx = err.get("ctx") or {}
            parts.append(f"malformed JSON: {ctx.get('error', 'cannot parse the body')}")
            continue
        where = ""
        for key in err.get("loc", ()):
            if isinstance(key, int):
                where += f"[{key}]"
            elif key in ("str", "constrained-str") or "CandidateIn" in str(key):
                continue  # union branch names add nothing for a reader
            else:
                where += f".{key}" if where else str(key)
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    more = len(errors) - limit
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
