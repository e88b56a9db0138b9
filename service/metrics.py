"""Prometheus metrics, read from the database at scrape time (so every replica agrees).

- ``splatpack_jobs{status}``: jobs by status (gauge, every status present)
- ``splatpack_queue_depth``: queued jobs not asked to cancel (gauge)
- ``splatpack_gop_encode_seconds``: histogram of ``job_gops.encode_seconds``
- ``splatpack_metrics_db_up``: 1 when the database answered this scrape
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from infra.models import Job, JobGop, JobStatus

_log = logging.getLogger(__name__)

GOP_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


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
                        select(Job.status, func.count()).group_by(Job.status)
                    )
                }
                queued = session.scalar(
                    select(func.count())
                    .select_from(Job)
                    .where(Job.status == JobStatus.queued, Job.cancel_requested.is_(False))
                )
                seconds = JobGop.encode_seconds
                bucket_counts = session.execute(
                    select(
                        *(func.count().filter(seconds <= bound) for bound in GOP_SECONDS_BUCKETS),
                        func.count(seconds),
                        func.coalesce(func.sum(seconds), 0.0),
                    )
                ).one()
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

        *cumulative, count, total = bucket_counts
        buckets = [
            (str(bound), int(c)) for bound, c in zip(GOP_SECONDS_BUCKETS, cumulative, strict=True)
        ]
        buckets.append(("+Inf", int(count)))
        histogram = HistogramMetricFamily(
            "splatpack_gop_encode_seconds", "Seconds to encode one GOP (from job_gops)"
        )
        histogram.add_metric([], buckets=buckets, sum_value=float(total))
        yield histogram


def make_registry(session_factory: sessionmaker[Session]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobsCollector(session_factory))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
