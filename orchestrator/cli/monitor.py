"""``orch metrics``: Prometheus metrics of the jobs, served over HTTP."""

from __future__ import annotations

import click


@click.command()
@click.option("--port", default=9808, show_default=True, help="Port to serve /metrics on (0: any free).")
@click.option("--address", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--max-jobs",
    default=10_000,
    show_default=True,
    type=click.IntRange(min=1),
    help="How many of the most recent job records each scrape reads.",
)
def metrics(port: int, address: str, max_jobs: int) -> None:
    """Serve Prometheus metrics of orch's jobs on http://ADDRESS:PORT/metrics (until interrupted)."""
    from prometheus_client import CollectorRegistry, start_http_server

    from orchestrator.metrics import JobMetricsCollector
    from orchestrator.redisserver import connect, redis_url
    from orchestrator.settings import Settings

    # a scrape says at once that Redis is down (orch_metrics_redis_up 0), rather than waiting it out
    client = connect(redis_url(Settings.from_env()), patience=1.0)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(JobMetricsCollector(client, max_jobs))
    try:
        server, thread = start_http_server(port, address, registry=registry)
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {address}:{port}: {exc.strerror or exc}") from None
    host = f"[{address}]" if ":" in address else address
    click.echo(f"Serving orch metrics on http://{host}:{server.server_port}/metrics", err=True)
    thread.join()  # serves until the process is interrupted or terminated


COMMANDS = [metrics]
