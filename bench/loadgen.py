"""A small HTTP load generator for the serving benchmark (loopback only, bounded in count and time).

- closed loop: ``concurrency`` clients, each sends its next request when the last one answers;
- open loop: requests are *scheduled* at a fixed rate whatever the server does, and latency counts from the
  scheduled time (no coordinated omission: a stalled server shows up as latency, not as a lower rate).

aiohttp with one connection pool and per-request timeouts (not task cancellation): cheaper per request than
httpx on 2 cores, so the client steals less CPU from the server it measures.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import aiohttp
import numpy as np

JSON = {"content-type": "application/json"}


@dataclass
class LoadResult:
    mode: str
    target: str
    offered_rps: float | None
    concurrency: int | None
    seconds: float
    sent: int
    ok: int
    errors: int
    achieved_rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    app_p50_ms: float
    statuses: dict[str, int]

    def to_json(self) -> dict:
        return asdict(self)


def _summary(mode, target, rate, conc, seconds, latencies, statuses) -> LoadResult:
    ok_lat = np.array([lat for lat, s in zip(latencies, statuses, strict=True) if s == 200]) * 1e3
    counts: dict[str, int] = {}
    for s in statuses:
        counts[str(s)] = counts.get(str(s), 0) + 1
    ok = int((np.array(statuses) == 200).sum()) if statuses else 0

    def pct(q: float) -> float:
        return float(np.percentile(ok_lat, q)) if len(ok_lat) else float("nan")

    return LoadResult(
        mode=mode,
        target=target,
        offered_rps=rate,
        concurrency=conc,
        seconds=seconds,
        sent=len(statuses),
        ok=ok,
        errors=len(statuses) - ok,
        achieved_rps=ok / seconds,
        p50_ms=pct(50),
        p95_ms=pct(95),
        p99_ms=pct(99),
        max_ms=float(ok_lat.max()) if len(ok_lat) else float("nan"),
        app_p50_ms=float(np.median(APP_MS)) if APP_MS else float("nan"),
        statuses=counts,
    )


APP_MS: list[float] = []  # Server-Timing "rank;dur=" of answered requests: the time inside the pipeline


async def _send(session: aiohttp.ClientSession, method: str, url: str, body: bytes | None) -> int:
    try:
        async with session.request(method, url, data=body, headers=JSON if body else None) as r:
            await r.read()
            timing = r.headers.get("Server-Timing", "")
            if timing.startswith("rank;dur="):
                APP_MS.append(float(timing[len("rank;dur=") :]))
            return r.status
    except (TimeoutError, aiohttp.ClientError):
        return -1  # timeout or connection error


def _session(timeout_s: float, limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit), timeout=aiohttp.ClientTimeout(total=timeout_s)
    )


async def _open_loop(url, method, bodies, rate, seconds, timeout_s) -> LoadResult:
    n = max(1, int(rate * seconds))
    latencies = [0.0] * n
    statuses = [0] * n
    async with _session(timeout_s, limit=512) as session:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05

        async def one(i: int) -> None:
            scheduled = t0 + i / rate
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            statuses[i] = await _send(session, method, url, bodies[i % len(bodies)] if bodies else None)
            latencies[i] = loop.time() - scheduled

        await asyncio.gather(*(one(i) for i in range(n)))
    return _summary("open", url, rate, None, seconds, latencies, statuses)


async def _closed_loop(url, method, bodies, concurrency, seconds, timeout_s) -> LoadResult:
    latencies: list[float] = []
    statuses: list[int] = []
    async with _session(timeout_s, limit=concurrency) as session:
        end = time.perf_counter() + seconds

        async def client(k: int) -> None:
            i = k
            while time.perf_counter() < end:
                start = time.perf_counter()
                status = await _send(session, method, url, bodies[i % len(bodies)] if bodies else None)
                latencies.append(time.perf_counter() - start)
                statuses.append(status)
                i += concurrency

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(concurrency)))
        elapsed = time.perf_counter() - start
    return _summary("closed", url, None, concurrency, elapsed, latencies, statuses)


def open_loop(
    url: str, rate: float, seconds: float, bodies: Sequence[bytes] = (), method: str = "POST", timeout_s: float = 2.0
) -> LoadResult:
    APP_MS.clear()
    return asyncio.run(_open_loop(url, method, list(bodies), rate, seconds, timeout_s))


def closed_loop(
    url: str,
    concurrency: int,
    seconds: float,
    bodies: Sequence[bytes] = (),
    method: str = "POST",
    timeout_s: float = 2.0,
) -> LoadResult:
    APP_MS.clear()
    return asyncio.run(_closed_loop(url, method, list(bodies), concurrency, seconds, timeout_s))
