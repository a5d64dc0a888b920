"""`orch flower` watching a real copy: real agents, Redis, an `orch worker` and Flower as processes.

Flower's HTTP API must list every step of the chain as SUCCESS with the job's readable label in its
arguments, and must have received the transfer's ``task-progress`` events; headless Chromium takes a
screenshot of Flower's tasks page (``ORCH_SAVE_SCREENSHOTS=1`` also copies it to docs/flower-tasks.png).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import REPO
from tests.procs import ORCH, free_port

CHAIN = ["orch.verify_target", "orch.issue_token", "orch.pull_image", "orch.transfer_delta"]
LABEL = "foo:c1 → bar:c1"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cluster(make_agent, orch_env, busybox_image, start_worker):  # type: ignore[no-untyped-def]
    """foo and bar as remotes, the busybox image on foo, a Redis and one real worker."""
    foo, bar = make_agent("foo"), make_agent("bar")
    orch_env.add_remote("foo", foo)
    orch_env.add_remote("bar", bar)
    orch_env.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    start_worker("w1")
    return foo, bar


@pytest.fixture
def flower(orch_env, tmpdir755: Path) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A real `orch flower` on a free port (its HTTP API open, as Flower 2 requires); stopped by pid."""
    port = free_port()
    log_path = tmpdir755 / "flower.log"
    env = {**orch_env.env, "FLOWER_UNAUTHENTICATED_API": "true"}
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [ORCH, "flower", "--port", str(port), "--address", "127.0.0.1"],
            env=env,
            cwd=tmpdir755,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        # up, and receiving events: it has seen the worker's heartbeat (sent every 2 s)
        deadline = time.monotonic() + 60
        while flower_metric(base, "flower_worker_online") < 1:
            assert proc.poll() is None, f"orch flower exited: {log_path.read_text()[-3000:]}"
            assert time.monotonic() < deadline, (
                f"Flower saw no worker in 60 s: {log_path.read_text()[-3000:]}"
            )
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def flower_metric(base: str, name: str, **labels: str) -> float:
    """The sum of Flower's own Prometheus samples ``name`` matching ``labels`` (0 if none, or not up)."""
    try:
        text = requests.get(f"{base}/metrics", timeout=5).text
    except requests.ConnectionError:
        return 0
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def chain_tasks(base: str) -> dict[str, dict]:
    """Flower's view of the tasks, by name (the API lists every task it has seen events of)."""
    response = requests.get(f"{base}/api/tasks", timeout=10)
    assert response.status_code == 200, response.text
    return {task["name"]: task for task in response.json().values() if task.get("name")}


def chromium(url: str, *action: str) -> str:
    """Run headless Chromium on ``url`` (its scripts given time to fetch the task table); its stdout."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        args = [
            "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={profile}",
            "--window-size=1400,900", "--hide-scrollbars", "--virtual-time-budget=8000", *action, url,
        ]  # fmt: skip
        proc = subprocess.run(args, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_flower_shows_the_chain_of_a_copy(cluster, orch_env, flower, tmpdir755):
    foo, _ = cluster
    orch_env.run("init", "foo:bb", "foo:c1")
    blob = foo.data_dir / "containers" / "c1" / "rootfs" / "root" / "blob"
    blob.write_bytes(os.urandom(2 * 1024 * 1024))  # something for the transfer to report progress on
    owner = blob.parent.stat()
    os.chown(blob, owner.st_uid, owner.st_gid)  # the container's root, as if written inside it
    orch_env.run("copy", "foo:c1", "bar:")
    job = json.loads(orch_env.run("jobs", "--format", "json").stdout)[0]
    assert job["status"] == "succeeded" and job["bytes_done"] >= 2 * 1024 * 1024, job

    # Flower learns of the tasks from events: poll until all four are SUCCESS (bounded)
    deadline = time.monotonic() + 60
    while True:
        tasks = chain_tasks(flower)
        states = {name: tasks.get(name, {}).get("state") for name in CHAIN}
        if all(state == "SUCCESS" for state in states.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert states == dict.fromkeys(CHAIN, "SUCCESS"), states
    for name in CHAIN:
        args = tasks[name]["args"]
        assert LABEL in args and job["id"] in args, (name, args)
    # the worker sent task-progress events while following the transfer, and Flower received them
    progress = flower_metric(flower, "flower_events_total", type="task-progress", task="orch.transfer_delta")
    assert progress >= 1

    if shutil.which("chromium") is None:
        pytest.skip(
            "chromium is not installed (scripts/test installs it with apt): "
            "the API checks passed, no screenshot taken"
        )
    # the page as the browser rendered it (after its scripts filled the table) lists the four steps
    dom = chromium(f"{flower}/tasks", "--dump-dom")
    assert all(f">{name}<" in dom for name in CHAIN), dom[-3000:]
    png = tmpdir755 / "flower-tasks.png"
    chromium(f"{flower}/tasks", f"--screenshot={png}")
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC), data[:16]
    assert len(data) > 20_000, len(data)  # a blank 1400x900 page compresses to a few kB
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1400, 900)
    if os.environ.get("ORCH_SAVE_SCREENSHOTS") == "1":
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(png, REPO / "docs" / "flower-tasks.png")
