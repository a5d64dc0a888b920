"""`orch metrics`: a real `orch metrics` process over a real redis-server, scraped over HTTP and parsed with
prometheus_client's own parser; every value is checked against job records written with JobStore."""

from __future__ import annotations

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from orchestrator.jobs import JobStore
from orchestrator.redisserver import connect

T0 = 1_700_000_000.0  # creation time of every job below


def make_job(store: JobStore, kind: str, status: str, **fields: float | int | str) -> str:
    state = {"source_remote": "foo", "source_name": "c", "target_remote": "bar", "target_name": "c"}
    job = store.create(kind, "foo:c", "bar:c", {}, state)
    store.update(job.id, status=status, created_ts=T0, **fields)
    return job.id


@pytest.fixture
def jobs(redis_server) -> JobStore:  # type: ignore[no-untyped-def]
    """Eight jobs in every state, with known times, bytes and rates."""
    store = JobStore(connect(redis_server.url))
    make_job(store, "copy", "queued")
    make_job(
        store, "copy", "running", step="transfer_delta", started_ts=T0 + 0.3, bytes_done=5000, rate=1000.5
    )
    make_job(store, "move", "running", step="transfer_delta", started_ts=T0 + 2, bytes_done=7000, rate=250.25)
    # past its transfer (deleting the source): its last rate is stale and must not count
    make_job(
        store, "move", "running", step="delete_source", started_ts=T0 + 0.05, bytes_done=100_000, rate=999
    )
    make_job(store, "copy", "succeeded", started_ts=T0 + 1, finished_ts=T0 + 45, bytes_done=1_000_000)
    make_job(store, "rename", "succeeded", started_ts=T0 + 0.2, finished_ts=T0 + 0.5)
    make_job(store, "move", "failed", started_ts=T0 + 7, finished_ts=T0 + 400, bytes_done=123)
    make_job(store, "copy", "cancelled", finished_ts=T0 + 3)  # cancelled while queued: never started
    return store


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/plain")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, frozenset], float], name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def test_metrics_of_jobs_in_every_state(jobs, metrics_url):
    samples = scrape(metrics_url)
    assert value(samples, "orch_metrics_redis_up") == 1
    assert value(samples, "orch_metrics_jobs_read") == 8

    expected = {
        ("copy", "queued"): 1, ("copy", "running"): 1, ("copy", "succeeded"): 1, ("copy", "cancelled"): 1,
        ("move", "running"): 2, ("move", "failed"): 1, ("rename", "succeeded"): 1,
    }  # fmt: skip
    for kind in ("copy", "move", "rename"):
        for status in ("queued", "running", "succeeded", "failed", "cancelled"):
            got = value(samples, "orch_jobs", kind=kind, status=status)
            assert got == expected.get((kind, status), 0), (kind, status, got)

    assert value(samples, "orch_running_transfers") == 2
    assert value(samples, "orch_transfer_rate_bytes_per_second") == pytest.approx(1250.75)
    assert value(samples, "orch_transferred_bytes_total") == 5000 + 7000 + 100_000 + 1_000_000 + 123

    # queue wait (started_ts - created_ts) of the jobs that started: copy 0.3, 1; move 2, 0.05, 7; rename 0.2
    wait = "orch_job_queue_wait_seconds"
    assert value(samples, f"{wait}_count", kind="copy") == 2
    assert value(samples, f"{wait}_sum", kind="copy") == pytest.approx(1.3)
    assert value(samples, f"{wait}_count", kind="move") == 3
    assert value(samples, f"{wait}_sum", kind="move") == pytest.approx(9.05)
    assert value(samples, f"{wait}_sum", kind="rename") == pytest.approx(0.2)
    move_buckets = {"0.1": 1, "0.25": 1, "0.5": 1, "1.0": 1, "2.5": 2, "5.0": 2, "10.0": 3, "+Inf": 3}
    for le, count in move_buckets.items():
        assert value(samples, f"{wait}_bucket", kind="move", le=le) == count, le
    assert value(samples, f"{wait}_bucket", kind="copy", le="0.25") == 0
    assert value(samples, f"{wait}_bucket", kind="copy", le="0.5") == 1
    assert value(samples, f"{wait}_bucket", kind="copy", le="1.0") == 2

    # duration (finished_ts - created_ts) of the finished jobs, by kind and status
    dur = "orch_job_duration_seconds"
    for (kind, status), seconds, below, at in [
        (("copy", "succeeded"), 45, "30.0", "60.0"),
        (("rename", "succeeded"), 0.5, None, "1.0"),
        (("move", "failed"), 393 + 7, "300.0", "600.0"),
        (("copy", "cancelled"), 3, "1.0", "5.0"),
    ]:
        assert value(samples, f"{dur}_count", kind=kind, status=status) == 1
        assert value(samples, f"{dur}_sum", kind=kind, status=status) == pytest.approx(seconds)
        assert value(samples, f"{dur}_bucket", kind=kind, status=status, le=at) == 1
        if below:
            assert value(samples, f"{dur}_bucket", kind=kind, status=status, le=below) == 0
    assert (
        "orch_job_duration_seconds_count",
        frozenset({"kind": "move", "status": "running"}.items()),
    ) not in (samples)  # running jobs have no duration yet


def test_each_scrape_reads_the_records_anew(jobs, metrics_url):
    before = scrape(metrics_url)
    assert value(before, "orch_running_transfers") == 2
    running = [j for j in jobs.list() if j.status == "running" and j.step == "transfer_delta"]
    jobs.update(running[0].id, status="succeeded", finished_ts=T0 + 12, rate=0)
    after = scrape(metrics_url)
    assert value(after, "orch_running_transfers") == 1
    kind = running[0].kind
    assert value(after, "orch_jobs", kind=kind, status="succeeded") == (
        value(before, "orch_jobs", kind=kind, status="succeeded") + 1
    )
    remaining = {"copy": 250.25, "move": 1000.5}[kind]  # the rate of the other transfer
    assert value(after, "orch_transfer_rate_bytes_per_second") == pytest.approx(remaining)


def test_redis_down_is_reported_not_zeros(jobs, metrics_url, redis_server):
    assert value(scrape(metrics_url), "orch_metrics_redis_up") == 1
    redis_server.stop()
    samples = scrape(metrics_url)
    assert value(samples, "orch_metrics_redis_up") == 0
    assert not [name for name, _ in samples if name.startswith("orch_jobs")]


def test_a_busy_port_is_a_one_line_error(orch_env):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        err = orch_env.fails("metrics", "--port", str(busy.getsockname()[1]))
    assert "cannot listen on 127.0.0.1:" in err
