"""Process metrics in Prometheus form (``GET /metrics``), through prometheus_client.

Why a library: the text exposition format, label escaping, histogram buckets and a
thread-safe registry are well-kept there, and a Prometheus server, Grafana agent or
OpenTelemetry collector reads it as it is.

What is counted here, where it happens:

- requests and their latency by protocol (``scim``, ``api``, ``ldap``), operation and status:
  the HTTP site when a response is finished, the LDAP connection when an answer is recorded;
- authentication failures by protocol and reason;
- open LDAP connections;
- access-log commits (latency) and the records waiting for one;
- the directory's snapshot (sequence, age, build and refresh time, whether the store was
  reachable at the last look), read from the directory when scraped.

Each process has its own registry (:data:`REGISTRY`), so ``serve --workers N`` and replicas
are scraped one by one, as Prometheus expects.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

# The `_created` timestamps double every series and no dashboard reads them.
disable_created_metrics()
REGISTRY = CollectorRegistry(auto_describe=True)

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)



class _Requests:
    """Requests by protocol, operation and status, and their latency histogram, counted with
    plain integers in the event loop (every request passes here: prometheus_client's
    ``labels().inc()`` and ``observe()`` take a lock and a label look-up each, about 4
    microseconds, a twentieth of a cached LDAP search) and turned into Prometheus families
    when scraped."""

    def __init__(self) -> None:
        #: (protocol, operation, status) -> count
        self.counts: dict[tuple[str, str, str], int] = {}
        #: (protocol, operation) -> [bucket counts..., +Inf count, sum]
        self.latency: dict[tuple[str, str], list[float]] = {}

    def add(self, protocol: str, operation: str, status: str, seconds: float) -> None:
        key = (protocol, operation, status)
        self.counts[key] = self.counts.get(key, 0) + 1
        found = self.latency.get(key[:2])
        if found is None:
            found = self.latency[key[:2]] = [0.0] * (len(_LATENCY_BUCKETS) + 2)
        found[bisect.bisect_left(_LATENCY_BUCKETS, seconds)] += 1
        found[-1] += seconds

    def collect(self) -> Iterator[Any]:
        counter = CounterMetricFamily("idm_facade_requests", "Requests answered, by protocol, "
                                      "operation and status.",
                                      labels=["protocol", "operation", "status"])
        for (protocol, operation, status), count in list(self.counts.items()):
            counter.add_metric([protocol, operation, status], count)
        yield counter
        histogram = HistogramMetricFamily(
            "idm_facade_request_seconds", "Time from a request's arrival to its answer "
            "(after its access record is committed).", labels=["protocol", "operation"])
        for (protocol, operation), values in list(self.latency.items()):
            running, buckets = 0.0, []
            for bound, hits in zip((*_LATENCY_BUCKETS, float("inf")), values[:-1],
                                   strict=True):
                running += hits
                buckets.append((str(bound) if bound != float("inf") else "+Inf", running))
            histogram.add_metric([protocol, operation], buckets, values[-1])
        yield histogram

    def describe(self) -> list:
        return []


REQUESTS = _Requests()
REGISTRY.register(REQUESTS)
AUTH_FAILURES = Counter("idm_facade_auth_failures", "Refused authentications, by protocol "
                        "and reason.", ["protocol", "reason"], registry=REGISTRY)
CACHE_BYTES = Gauge("idm_facade_cache_bytes", "Bytes kept by the caches of rendered entries "
                    "(ldap_render, scim_render) and finished LDAP answers (ldap_answer), each "
                    "bounded (docs/operations.md).", ["cache"], registry=REGISTRY)
LDAP_CONNECTIONS = Gauge("idm_facade_ldap_connections", "Open LDAP connections.",
                         registry=REGISTRY)
AUDIT_COMMIT = Histogram("idm_facade_access_log_commit_seconds", "Time of one access-log "
                         "commit (a commit holds every record of a batch).",
                         buckets=_LATENCY_BUCKETS, registry=REGISTRY)
REQUEST_LINES_DROPPED = Counter("idm_facade_request_lines_dropped", "Request log lines "
                                "dropped because standard error was not read.",
                                registry=REGISTRY)
AUDIT_RECORDS = Counter("idm_facade_access_log_records", "Access records committed.",
                        registry=REGISTRY)
HTTP_INLINE = Counter("idm_facade_http_inline_requests", "HTTP requests answered in the "
                      "event loop instead of a worker thread (one account's role lookup, "
                      "a SCIM point read of users, with a recently verified token).",
                      registry=REGISTRY)


class _Sampled:
    """A collector whose values are read when scraped (from ``read()``: name -> (help,
    value))."""

    def __init__(self, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, (text, value) in self.read().items():
            family = GaugeMetricFamily(name, text)
            family.add_metric([], value)
            yield family

    def describe(self) -> list:
        return []


_sampled: dict[str, _Sampled] = {}


def sample(key: str, read: Callable[[], dict[str, tuple[str, float]]]) -> None:
    """Register (or replace) the scrape-time reader ``key`` (one per source: the directory,
    the access log)."""
    old = _sampled.pop(key, None)
    if old is not None:
        REGISTRY.unregister(old)
    found = _Sampled(read)
    _sampled[key] = found
    REGISTRY.register(found)


def exposition() -> tuple[bytes, str]:
    """The metrics in the text format, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST


def directory_reader(directory: Any, audit: Any = None) -> Callable[[], dict]:
    """What the scrape reads from the directory (and the access log's queue)."""
    def read() -> dict[str, tuple[str, float]]:
        snapshot = directory.snapshot
        now = time.time()
        values = {
            "idm_facade_snapshot_seq": ("Change-log position the served snapshot includes.",
                                        float(snapshot.seq)),
            "idm_facade_snapshot_entries": ("Entries in the served snapshot.",
                                            float(len(snapshot))),
            "idm_facade_snapshot_build_seconds": ("Time of the last full snapshot build.",
                                                  float(directory.last_build_seconds)),
            "idm_facade_snapshot_refresh_seconds": ("Time of the last refresh (incremental "
                                                    "or full).",
                                                    float(directory.last_refresh_seconds)),
            "idm_facade_snapshot_age_seconds": ("Seconds since the store was last seen to "
                                                "match the served snapshot (how stale it "
                                                "may be).", now - directory.checked_at),
            "idm_facade_store_up": ("1 when the store answered the last look for changes, "
                                    "else 0.", 0.0 if directory.store_problem else 1.0),
        }
        queued = getattr(audit, "queued", None)
        if callable(queued):
            values["idm_facade_access_log_queue"] = ("Access records waiting for a commit.",
                                                     float(queued()))
        return values

    return read


def provisioning_reader(provisioner: Any) -> Callable[[], dict]:
    """What the scrape reads of one provisioning target (held, pending, lag, failing)."""
    name = provisioner.target.name.replace("-", "_").replace(".", "_")

    def read() -> dict[str, tuple[str, float]]:
        status = provisioner.status()
        prefix = f"idm_facade_provisioning_{name}"
        return {
            f"{prefix}_held": ("Resources the target was last confirmed to hold.",
                               float(status["held"])),
            f"{prefix}_pending": ("Deliveries waiting to be sent.", float(status["pending"])),
            f"{prefix}_lag_seconds": ("Age of the oldest waiting delivery.",
                                      float(status["lag_seconds"])),
            f"{prefix}_failing": ("1 while deliveries fail (see provisioning status).",
                                  1.0 if status["last_error"] else 0.0),
        }

    return read


def feed_reader(engine: Any, feed: str) -> Callable[[], dict]:
    """What the scrape reads of one change feed: its newest cursor (how far it has got) and
    the oldest it still keeps (readers behind that get 410), and the events kept."""
    from store import feed as feed_store

    name = feed.replace("-", "_").replace(".", "_")

    def read() -> dict[str, tuple[str, float]]:
        with engine.connect() as conn:
            head = feed_store.head(conn, feed)
        prefix = f"idm_facade_feed_{name}"
        return {
            f"{prefix}_latest": ("The newest cursor the feed gave out.", float(head.last)),
            f"{prefix}_oldest": ("Cursors up to this one are pruned (readers get 410).",
                                 float(head.pruned)),
            f"{prefix}_events": ("Events the feed keeps.", float(head.last - head.pruned)),
        }

    return read

