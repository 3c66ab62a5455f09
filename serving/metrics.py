"""Prometheus metrics of the ranking API, served at ``GET /metrics`` by the app itself (both engines).

Each app owns its own :class:`prometheus_client.CollectorRegistry` (no process-global state: two apps in one
process, as in the tests, never share a counter). Two kinds of series:

- **per request**, updated by :class:`serving.access.ObserveRequests` and the ``/rank`` route: request count and
  latency by route, method and status; candidates per ranking, items encoded from text, cold-start users, and
  the time a ranking spends in its stages (features, text model, booster);
- **the served state**, read from the :class:`serving.models.ModelHolder` at scrape time (so never stale):
  readiness, the served versions (an info-style gauge), the snapshot's age, and the counts of model loads and
  snapshot swaps, succeeded and failed.

Route labels are route *templates* (``/rank``), and every path no route matches counts as ``other``: a scanner
probing random paths cannot grow the number of series.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from serving.models import ModelHolder

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Request latencies of a ~2-10 ms service, with room for encoding unseen items (~0.3 s on CPU) and overload.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.05, 0.1, 0.5, 1.0, 5.0)
CANDIDATE_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000)
STAGES = ("features", "text", "booster")


class ServiceMetrics:
    """The API's metrics in a registry of their own; :meth:`render` is the ``/metrics`` body."""

    def __init__(self, holder: ModelHolder, replica: str | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        # Ray Serve: several replicas answer behind one port; the label keeps their series apart.
        self._extra = {"replica": replica} if replica else {}

        def metric(kind: type, name: str, doc: str, labels: tuple[str, ...] = (), **kw: object):
            return kind(name, doc, [*labels, *self._extra], registry=self.registry, **kw)

        self.requests = metric(
            Counter,
            "recrank_http_requests",
            "HTTP requests answered, by route template, method and status.",
            ("route", "method", "status"),
        )
        self.latency = metric(
            Histogram,
            "recrank_http_request_duration_seconds",
            "Time from the request's arrival at the app to its last response byte, by route template and method.",
            ("route", "method"),
            buckets=LATENCY_BUCKETS,
        )
        self.candidates = metric(
            Histogram, "recrank_rank_candidates", "Candidates per ranked request.", buckets=CANDIDATE_BUCKETS
        )
        self.encoded = metric(
            Counter, "recrank_rank_encoded_items", "Candidates encoded from their text (not in the embedding table)."
        )
        self.cold_users = metric(
            Counter, "recrank_rank_cold_start_users", "Ranked requests for users with no events (the cold-start path)."
        )
        self.stage = metric(
            Histogram,
            "recrank_rank_stage_seconds",
            "Time a ranking spends in each stage: features (snapshot gather and derive), text (interest scores, "
            "encoding included), booster (model matrix and prediction).",
            ("stage",),
            buckets=STAGE_BUCKETS,
        )
        self.registry.register(_ServedState(holder, self._extra))
        self._children: dict[tuple[int, tuple[str, ...]], object] = {}

    def _child(self, metric, *labels: str):
        """The series of ``metric`` for ``labels`` (and this replica's label), looked up once per label set:
        ``labels()`` validates and locks on every call, a few microseconds a request for nothing."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            values = (*labels, *self._extra.values())
            child = self._children[key] = metric.labels(*values) if values else metric
        return child

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self._child(self.requests, route, method, str(status)).inc()
        self._child(self.latency, route, method).observe(seconds)

    def ranking(self, candidates: int, encoded: int, cold_user: bool, stages: dict[str, float]) -> None:
        """One answered ranking: its size, its encoded items, whether its user was cold, its stage times (s)."""
        self._child(self.candidates).observe(candidates)
        if encoded:
            self._child(self.encoded).inc(encoded)
        if cold_user:
            self._child(self.cold_users).inc()
        for stage, seconds in stages.items():
            self._child(self.stage, stage).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ServedState(Collector):
    """Series read from the holder at each scrape: what is served, since when, and how its refreshes went."""

    def __init__(self, holder: ModelHolder, labels: dict[str, str]) -> None:
        self.holder = holder
        self.labels = labels

    def _gauge(self, name: str, doc: str, value: float, **extra: str) -> GaugeMetricFamily:
        keys = [*extra, *self.labels]
        g = GaugeMetricFamily(name, doc, labels=keys)
        g.add_metric([*extra.values(), *self.labels.values()], value)
        return g

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily]:
        s = self.holder.state
        yield self._gauge(
            "recrank_ready", "1 when a model pair is loaded and requests are ranked.", float(self.holder.ready)
        )
        if s.versions:
            yield self._gauge(
                "recrank_served_model_info",
                "The served versions (value 1): ranker, the textmodel it pins, the snapshot and the alias.",
                1.0,
                ranker=s.versions.get("ranker", ""),
                textmodel=s.versions.get("textmodel", ""),
                snapshot=s.versions.get("snapshot", ""),
                alias=s.alias,
            )
        if s.snapshot is not None:
            yield self._gauge(
                "recrank_snapshot_age_seconds",
                "Seconds from the served snapshot's last event to now: how stale the served features are.",
                s.snapshot.age_s(),
            )
            yield self._gauge(
                "recrank_snapshot_loaded_timestamp_seconds",
                "When the served snapshot was loaded (Unix time).",
                s.snapshot.loaded_at.timestamp(),
            )
        for name, doc, counts in (
            ("recrank_model_loads", "Loads of a model pair (the first, then each alias move), by result.", s.loads),
            ("recrank_snapshot_swaps", "Swaps to a new snapshot version, by result.", s.snapshot_swaps),
        ):
            c = CounterMetricFamily(name, doc, labels=["result", *self.labels])
            for result in ("ok", "failed"):
                c.add_metric([result, *self.labels.values()], counts.get(result, 0))
            yield c
