"""Prometheus metrics of orch's jobs, computed from the job records in Redis at each scrape.

Nothing is counted in the workers: the job records are the source of truth (they survive worker restarts
and are shared by every worker), so a scrape reads the most recent ``max_jobs`` records of the job index
and derives every figure from them. ``orch metrics`` serves them on ``/metrics``.

Metrics (all computed over the jobs read):

- ``orch_jobs{kind,status}`` gauge: jobs per kind (copy, move, rename) and status (queued, running,
  succeeded, failed, cancelled); every known pair is present, with 0 when there is none.
- ``orch_running_transfers`` gauge: running jobs whose current step is the data transfer.
- ``orch_transfer_rate_bytes_per_second`` gauge: the summed rate of those transfers.
- ``orch_transferred_bytes_total`` counter: ``bytes_done`` summed over the jobs. Job records are not
  deleted, so it only grows, unless more than ``max_jobs`` jobs exist and old ones leave the window
  (Prometheus' ``rate()`` treats a drop as a counter reset).
- ``orch_wire_bytes_total``, ``orch_payload_bytes_total`` counters: what finished transfers received
  over the wire, and what that carried before compression (where the target measured it);
  ``orch_throttled_seconds_total``: how long bandwidth limits held them back;
  ``orch_resume_skipped_bytes_total``: what they did not send again because an interrupted attempt
  had verified it (resume).
- ``orch_job_queue_wait_seconds{kind}`` histogram: from a job's creation to the start of its first step.
- ``orch_job_duration_seconds{kind,status}`` histogram: from a job's creation to its end.
- ``orch_metrics_jobs_read`` gauge, ``orch_metrics_redis_up`` gauge (0 when Redis could not be read: then
  no job metric is exposed at all, rather than zeros that would look like an idle system).
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence

import redis
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from orchestrator.chain import KINDS, TRANSFER
from orchestrator.jobs import CANCELLED, FAILED, FINISHED, QUEUED, RUNNING, SUCCEEDED, Job, JobStore

log = logging.getLogger(__name__)

STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLED)
TRANSFER_STEP = TRANSFER
DEFAULT_MAX_JOBS = 10_000

# upper bounds (seconds); +Inf is added
QUEUE_WAIT_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
DURATION_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


class _Histogram:
    """Cumulative buckets, count and sum of observations, in Prometheus' text-format shape."""

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.total = 0.0

    def observe(self, value: float) -> None:
        value = max(value, 0.0)  # clocks of different hosts may disagree a little
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.total += value

    def buckets(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, count in zip([*map(_le, self.bounds), "+Inf"], self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


def _le(bound: float) -> str:
    return str(float(bound))


class JobMetricsCollector(Collector):
    """A custom collector: every ``collect()`` (one per scrape) reads the job records anew."""

    def __init__(self, client: redis.Redis | Callable[[], redis.Redis], max_jobs: int = DEFAULT_MAX_JOBS):
        self._client = client
        self.max_jobs = max_jobs

    def _store(self) -> JobStore:
        client = self._client() if callable(self._client) else self._client
        return JobStore(client)

    def describe(self) -> Iterable[Metric]:
        return []  # no fixed description: names are only known at scrape time (avoids a Redis read here)

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("orch_metrics_redis_up", "1 if the job records could be read from Redis")
        try:
            jobs = self._store().list(self.max_jobs)
        except (redis.RedisError, OSError) as exc:
            log.warning("metrics: cannot read the job records: %s", exc)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from job_metrics(jobs)


def job_metrics(jobs: Sequence[Job]) -> Iterator[Metric]:
    """The metric families for ``jobs`` (pure: no I/O)."""
    read = GaugeMetricFamily("orch_metrics_jobs_read", "Job records read from Redis for this scrape")
    read.add_metric([], len(jobs))
    yield read

    by_state: Counter[tuple[str, str]] = Counter({(k, s): 0 for k in KINDS for s in STATUSES})
    for job in jobs:
        by_state[(job.kind, job.status)] += 1
    gauge = GaugeMetricFamily("orch_jobs", "Jobs by kind and status", labels=["kind", "status"])
    for (kind, status), count in sorted(by_state.items()):
        gauge.add_metric([kind, status], count)
    yield gauge

    transfers = [j for j in jobs if j.status == RUNNING and j.step == TRANSFER_STEP]
    running = GaugeMetricFamily("orch_running_transfers", "Running jobs whose data transfer is under way")
    running.add_metric([], len(transfers))
    yield running

    rate = GaugeMetricFamily(
        "orch_transfer_rate_bytes_per_second", "Summed transfer rate of the running transfers"
    )
    rate.add_metric([], sum(max(j.rate, 0.0) for j in transfers))
    yield rate

    moved = CounterMetricFamily("orch_transferred_bytes", "Bytes transferred by the jobs (bytes_done summed)")
    moved.add_metric([], sum(j.bytes_done for j in jobs))
    yield moved

    # what finished transfers sent over the wire, what that carried before compression (where the
    # target measured it), and how long bandwidth limits held them back
    wire = CounterMetricFamily("orch_wire_bytes", "Bytes finished transfers received over the wire")
    wire.add_metric([], sum(int(j.state.bytes_received or 0) for j in jobs))
    yield wire
    payload = CounterMetricFamily(
        "orch_payload_bytes", "Bytes finished transfers carried before compression (where measured)"
    )
    payload.add_metric([], sum(int(j.state.payload_bytes or 0) for j in jobs))
    yield payload
    throttled = CounterMetricFamily(
        "orch_throttled_seconds", "Seconds bandwidth limits held finished transfers back"
    )
    throttled.add_metric([], sum(float(j.state.throttled_seconds or 0.0) for j in jobs))
    yield throttled
    skipped = CounterMetricFamily(
        "orch_resume_skipped_bytes", "Bytes finished transfers did not send again thanks to resume"
    )
    skipped.add_metric([], sum(int(j.state.skipped_bytes or 0) for j in jobs))
    yield skipped

    waits: dict[tuple[str, ...], _Histogram] = defaultdict(lambda: _Histogram(QUEUE_WAIT_BUCKETS))
    for kind in KINDS:
        waits[(kind,)]  # noqa: B018 - present with zero counts, so the series don't appear from nowhere
    durations: dict[tuple[str, ...], _Histogram] = defaultdict(lambda: _Histogram(DURATION_BUCKETS))
    for job in jobs:
        if job.started_ts and job.created_ts:
            waits[(job.kind,)].observe(job.started_ts - job.created_ts)
        if job.status in FINISHED and job.finished_ts and job.created_ts:
            durations[(job.kind, job.status)].observe(job.finished_ts - job.created_ts)
    yield _histogram(
        "orch_job_queue_wait_seconds",
        "Time from a job's creation to the start of its first step",
        ["kind"],
        waits,
    )
    yield _histogram(
        "orch_job_duration_seconds", "Time from a job's creation to its end", ["kind", "status"], durations
    )


def _histogram(
    name: str, doc: str, labels: list[str], series: dict[tuple[str, ...], _Histogram]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, hist in sorted(series.items()):
        family.add_metric(list(values), hist.buckets(), hist.total)
    return family
