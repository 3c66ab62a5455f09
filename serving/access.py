"""Request ids, structured (JSON) logs and one access line per request.

:class:`ObserveRequests` wraps the whole app (outermost, so a 413 or a 401 is counted and logged too). For
each HTTP request it

- answers a server fault (an exception out of the app) with a 500 ``{"error": "internal error"}`` and logs
  its traceback with the request's id; nothing else about the fault reaches the client;
- takes the client's ``X-Request-ID`` (when it is 1-128 printable ASCII characters without spaces) or makes
  one, returns it on the response, and makes it the request id of every log line written while the request
  runs (a context variable, copied into worker threads by ``run_in_threadpool``);
- counts it in the metrics (route template, method, status, latency);
- writes one JSON access line on the ``recrank.access`` logger: route, status, latency, and for ``/rank``
  what the route recorded (candidates, encoded items, cold-start user, the versions that answered).

**Personal data**: a user id may identify a person. Access lines carry no request body, and the user id
only as ``serving.log_user_id`` says: ``omit`` (the default), ``hash`` (a salted SHA-256 prefix: the same user
gives the same hash, so a request can be followed without the id; the salt comes from the environment
variable ``serving.log_salt_env`` and should be kept secret), or ``plain``.
"""

from __future__ import annotations

import atexit
import contextvars
import hashlib
import json
import logging
import queue
import re
import sys
import time
import uuid
from dataclasses import dataclass, field
from logging.handlers import QueueHandler, QueueListener
from typing import Any, Literal

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving.metrics import ServiceMetrics

REQUEST_ID_HEADER = "x-request-id"
_VALID_ID = re.compile(r"[!-~]{1,128}")  # printable ASCII, no spaces: safe to echo and to log
UNMATCHED_ROUTE = "other"

access_log = logging.getLogger("recrank.access")
fault_log = logging.getLogger("recrank.serving")


@dataclass
class RequestInfo:
    """What one request's log lines and access line carry; the ``/rank`` route adds to ``fields``."""

    request_id: str
    fields: dict[str, Any] = field(default_factory=dict)


_current: contextvars.ContextVar[RequestInfo | None] = contextvars.ContextVar("recrank_request", default=None)


def current_request() -> RequestInfo | None:
    """The request being served in this context (None outside a request)."""
    return _current.get()


def request_id_of(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's ``X-Request-ID`` when it is safe to echo and log, else a new one (32 hex digits)."""
    for key, value in headers:
        if key == b"x-request-id":
            text = value.decode("latin-1")
            if _VALID_ID.fullmatch(text):
                return text
            break
    return uuid.uuid4().hex


@dataclass(frozen=True)
class UserIds:
    """How a user id appears in access lines: ``omit``, ``hash`` (salted SHA-256, 16 hex digits) or ``plain``."""

    mode: Literal["omit", "hash", "plain"] = "omit"
    salt: str = ""

    def __call__(self, user_id: str) -> str | None:
        if self.mode == "plain":
            return user_id
        if self.mode == "hash":
            return hashlib.sha256((self.salt + "\0" + user_id).encode()).hexdigest()[:16]
        return None


class ObserveRequests:
    """Pure ASGI middleware (no per-request task or body copy): request id, metrics, access line."""

    def __init__(
        self,
        app: ASGIApp,
        metrics: ServiceMetrics | None,
        log_access: bool,
        echo_request_id: bool = True,
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.log_access = log_access
        # Ray Serve's proxy already returns the id it forwarded in the request: a second header would repeat it.
        self.echo_request_id = echo_request_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        info = RequestInfo(request_id_of(scope["headers"]))
        token = _current.set(info)
        status = 0  # 0 until the response starts

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if self.echo_request_id:
                    MutableHeaders(scope=message).append("X-Request-ID", info.request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception as exc:  # a server fault, logged here while the request's id is still current
            fault_log.error("unhandled error", exc_info=exc)
            if status == 0:  # nothing sent yet: the client gets a 500 that names its request
                body = b'{"error":"internal error"}'
                await send_with_id(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
                    }
                )
                await send({"type": "http.response.body", "body": body})
            status = 500
        finally:
            seconds = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", UNMATCHED_ROUTE)
            if self.metrics is not None:
                self.metrics.request(route, scope["method"], status, seconds)
            if self.log_access and access_log.isEnabledFor(logging.INFO):
                fields = {
                    "method": scope["method"],
                    "route": route,
                    "status": status,
                    "latency_ms": round(seconds * 1e3, 3),
                    **info.fields,
                }
                # makeRecord + handle, not info(): no caller lookup (a stack walk) for a line whose origin is known
                access_log.handle(
                    access_log.makeRecord(access_log.name, logging.INFO, __file__, 0, "access", (), None,
                                          extra={"fields": fields})
                )  # fmt: skip
            _current.reset(token)


class JsonLines(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the request id (when in a request), any
    ``fields`` passed in ``extra``, and the exception's traceback text."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)  # stamped when the record was queued (see _Stamped)
        if request_id is None:
            info = _current.get()
            request_id = None if info is None else info.request_id
        if request_id is not None:
            out["request_id"] = request_id
        out.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


JsonLines.converter = time.gmtime  # timestamps in UTC, as the trailing Z says


class _Stamped(QueueHandler):
    """Queues records for the writer thread as they are, each stamped with the id of the request it was logged
    in (the writer thread has no request context). ``QueueHandler.prepare`` would format the message here,
    on the request's own thread: the work this handler exists to move off it."""

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        info = _current.get()
        if info is not None and not hasattr(record, "request_id"):
            record.request_id = info.request_id
        return record


_listener: QueueListener | None = None


def configure_logging(level: str, access: bool, json_lines: bool = True) -> None:
    """Send recrank's log records (``recrank.*``) to stderr as JSON lines at ``level``; access lines at INFO
    when ``access``. Called by the hosts at start (the edge), idempotent: a second call replaces the handler.

    Records are formatted and written by a writer thread (``QueueHandler`` -> ``QueueListener``): a request's
    event loop only queues its access line (~microseconds) and goes on, while the ~20-50 us of formatting and
    the write happen when the loop waits. The queue is drained at exit.
    """
    global _listener
    root = logging.getLogger("recrank")
    for handler in [h for h in root.handlers if getattr(h, "_recrank", False)]:
        root.removeHandler(handler)
    if _listener is not None:
        _listener.stop()  # writes what is queued
    stream = logging.StreamHandler(sys.stderr)
    stream.setFormatter(JsonLines() if json_lines else logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    records: queue.SimpleQueue = queue.SimpleQueue()
    _listener = QueueListener(records, stream)
    _listener.start()
    handler = _Stamped(records)
    handler._recrank = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False  # one line per record, not one more from the root logger's handlers
    access_log.setLevel(logging.INFO if access else logging.WARNING)


@atexit.register
def _drain() -> None:
    if _listener is not None:
        _listener.stop()
