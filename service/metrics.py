"""Prometheus metrics, read from the database at scrape time (so every replica agrees).

- ``splatpack_jobs{status}``: jobs by status (gauge, every status present). Triggers on
  ``jobs`` keep the counts in ``job_status_counts`` (``infra.models.JobStatusCount``,
  migration 0003) as jobs are inserted, change status or are deleted, so a scrape
  sums at most 80 rows however many jobs exist
- ``splatpack_queue_depth``: queued jobs not asked to cancel (gauge)
- ``splatpack_gop_encode_seconds``: histogram of ``job_gops.encode_seconds``, every GOP
  encode since the database was created. A trigger keeps it per bucket in
  ``gop_encode_seconds_buckets`` (``infra.models.GopEncodeSecondsBucket``), so a
  scrape reads 13 rows however many GOPs exist; the counts never go down
  (deleting a job does not take its observations back), as Prometheus expects
- ``splatpack_metrics_db_up``: 1 when the database answered this scrape
- ``splatpack_http_requests_total{method,route,status}`` and
  ``splatpack_http_request_duration_seconds{method,route}``: this API process's requests
  by route template (``/v1/jobs/{job_id}``, never the concrete path, so the label set
  stays small; ``unmatched`` for paths no route took), kept in memory per process
  (:class:`HttpMetrics`, fed by ``service.middleware.RequestMetricsMiddleware``)

Job counts are totals over all tenants; ``/metrics`` is for the operator (loopback or
``metrics_token``, ``service/routers/health.py``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from infra.models import GopEncodeSecondsBucket, Job, JobStatus, JobStatusCount

_log = logging.getLogger(__name__)


class JobsCollector(Collector):
    """Collects job and GOP metrics with a few aggregate queries per scrape."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "splatpack_metrics_db_up", "1 when the database answered this scrape"
        )
        try:
            with self.session_factory() as session:
                by_status: dict[JobStatus, int] = {
                    row[0]: int(row[1])
                    for row in session.execute(
                        select(JobStatusCount.status, func.sum(JobStatusCount.jobs)).group_by(
                            JobStatusCount.status
                        )
                    )
                }
                queued = session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
                )
                bucket_rows = [
                    (le, observations, seconds_sum)
                    for le, observations, seconds_sum in session.execute(
                        select(
                            GopEncodeSecondsBucket.le,
                            GopEncodeSecondsBucket.observations,
                            GopEncodeSecondsBucket.seconds_sum,
                        ).order_by(GopEncodeSecondsBucket.le)
                    )
                ]
        except Exception:
            _log.exception("metrics: the database did not answer")
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up

        jobs = GaugeMetricFamily("splatpack_jobs", "Jobs by status", labels=["status"])
        for job_status in JobStatus:
            jobs.add_metric([job_status.value], int(by_status.get(job_status, 0)))
        yield jobs

        depth = GaugeMetricFamily("splatpack_queue_depth", "Queued jobs waiting for a runner")
        depth.add_metric([], int(queued or 0))
        yield depth

        buckets, total = cumulative_buckets(bucket_rows)
        histogram = HistogramMetricFamily(
            "splatpack_gop_encode_seconds", "Seconds to encode one GOP (from job_gops)"
        )
        histogram.add_metric([], buckets=buckets, sum_value=total)
        yield histogram


def cumulative_buckets(
    rows: Iterable[tuple[float, int, float]],
) -> tuple[list[tuple[str, float]], float]:
    """Prometheus buckets (``le`` label, cumulative count) and the sum, from per-bucket rows
    sorted by upper bound; the ``+Inf`` bucket is always there."""
    buckets: list[tuple[str, float]] = []
    running, total = 0, 0.0
    for le, observations, seconds_sum in rows:
        running += int(observations)
        total += float(seconds_sum)
        buckets.append(("+Inf" if math.isinf(le) else str(float(le)), running))
    if not buckets or buckets[-1][0] != "+Inf":
        buckets.append(("+Inf", running))
    return buckets, total


HTTP_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HttpMetrics:
    """Request counts and latencies by method and route template, in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "splatpack_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=registry,
        )
        self.seconds = Histogram(
            "splatpack_http_request_duration_seconds",
            "Seconds from request start to the end of the response, by route template",
            ["method", "route"],
            buckets=HTTP_SECONDS_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.seconds.labels(method, route).observe(seconds)


def make_registry(session_factory: sessionmaker[Session]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(session_factory))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
