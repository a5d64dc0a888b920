"""`orch flower` watching a real copy: real agents, Redis, an `orch worker` and Flower as processes.

Flower's HTTP API must list every step of the chain as SUCCESS with the job's readable label in its
arguments, and must have received the transfer's ``task-progress`` events; headless Chromium takes a
screenshot of Flower's tasks page (``ORCH_SAVE_SCREENSHOTS=1`` also copies it to docs/flower-tasks.png).
"""

from __future__ import annotations

import contextlib
import html
import json
import os
import re
import shutil
import signal
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


MOVE_LABEL = "foo:c1 → bar:c1"
#: a size as orchestrator/units.human_size writes it: whole bytes, or two decimals of a binary unit (the
#: sender is frozen once any byte moved: a few hundred bytes on a slow machine)
SIZE = r"(\d+B|\d+\.\d\d(KiB|MiB|GiB|TiB))"
PROGRESS_TEXT = re.compile(rf"sending rootfs: {SIZE} at {SIZE}/s")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _job(orch_env, job_id: str) -> dict:  # type: ignore[no-untyped-def]
    return json.loads(orch_env.run("jobs", "show", job_id, "--format", "json").stdout)


def _big_container(foo, orch_env, mib: int) -> None:  # type: ignore[no-untyped-def]
    orch_env.run("init", "foo:bb", "foo:c1")
    blob = foo.data_dir / "containers" / "c1" / "rootfs" / "root" / "big"
    subprocess.run(
        ["dd", "if=/dev/urandom", f"of={blob}", "bs=1M", f"count={mib}", "status=none"], check=True
    )
    owner = blob.parent.stat()
    os.chown(blob, owner.st_uid, owner.st_gid)


def _stall_sender(foo, orch_env, job_id: str) -> list[int]:  # type: ignore[no-untyped-def]
    """Freeze the source agent's transfer processes (rsync) once bytes flow, as an overloaded host would:
    the job stays in its transfer with some bytes moved. Returns the frozen pids (to SIGCONT)."""
    deadline = time.monotonic() + 60
    while True:
        frozen = _descendants(foo.proc.pid)
        _signal(frozen, signal.SIGSTOP)
        if frozen and _job(orch_env, job_id)["bytes_done"] > 0:
            return frozen
        _signal(frozen, signal.SIGCONT)
        assert time.monotonic() < deadline, _job(orch_env, job_id)
        time.sleep(0.05)


def _signal(pids: list[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
            os.kill(pid, sig)


def _flower_task(base: str, name: str, predicate) -> dict:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + 60
    while True:
        task = chain_tasks(base).get(name, {})
        if predicate(task):
            return task
        assert time.monotonic() < deadline, task
        time.sleep(0.3)


def _page(base: str, png: Path) -> str:
    """The tasks page's text as the browser rendered it, and its screenshot (saved in docs/ when
    ORCH_SAVE_SCREENSHOTS=1)."""
    dom = chromium(f"{base}/tasks", "--dump-dom")
    chromium(f"{base}/tasks", f"--screenshot={png}")
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000, len(data)
    if os.environ.get("ORCH_SAVE_SCREENSHOTS"):
        shutil.copy(png, REPO / "docs" / png.name)
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def test_flower_lists_the_job_label_and_live_progress_then_final_states(cluster, orch_env, flower, tmpdir755):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed (scripts/test installs it with apt)")
    foo, _ = cluster
    _big_container(foo, orch_env, 200)
    job_id = orch_env.run("move", "foo:c1", "bar:", "--no-wait").stdout.strip()
    frozen = _stall_sender(foo, orch_env, job_id)
    try:
        _flower_task(flower, "orch.transfer_delta", lambda t: t.get("state") == "PROGRESS")
        time.sleep(1.5)  # a progress event with bytes moved reached Flower (one every 0.5 s)
        text = _page(flower, tmpdir755 / "flower-transfer-running.png")
        assert f"{MOVE_LABEL} · job {job_id}" in text, text[-3000:]  # the label, in the list
        assert PROGRESS_TEXT.search(text), text[-3000:]  # and the live progress, without a click
        assert "PROGRESS" in text
    finally:
        _signal(frozen, signal.SIGCONT)
    deadline = time.monotonic() + 120
    while _job(orch_env, job_id)["status"] != "succeeded":
        assert time.monotonic() < deadline, _job(orch_env, job_id)
        time.sleep(0.3)
    _flower_task(flower, "orch.delete_source", lambda t: t.get("state") == "SUCCESS")
    text = _page(flower, tmpdir755 / "flower-transfer-done.png")
    assert "PROGRESS" not in text and text.count("SUCCESS") >= 5, text[-3000:]


def test_a_cancelled_transfer_ends_in_a_final_state_in_flower(cluster, orch_env, flower, tmpdir755):
    foo, _ = cluster
    _big_container(foo, orch_env, 200)
    job_id = orch_env.run("move", "foo:c1", "bar:", "--no-wait").stdout.strip()
    frozen = _stall_sender(foo, orch_env, job_id)
    try:
        out = orch_env.run("jobs", "cancel", job_id, "--no-wait").stdout
        assert "cancel requested" in out
    finally:
        _signal(frozen, signal.SIGCONT)
    deadline = time.monotonic() + 120
    while _job(orch_env, job_id)["status"] != "cancelled":
        assert time.monotonic() < deadline, _job(orch_env, job_id)
        time.sleep(0.3)
    task = _flower_task(flower, "orch.transfer_delta", lambda t: t.get("state") != "PROGRESS")
    assert task["state"] == "FAILURE" and "cancelled by the user" in str(task.get("exception")), task
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed: Flower's API checked, no screenshot")
    text = _page(flower, tmpdir755 / "flower-transfer-cancelled.png")
    assert "FAILURE" in text and "PROGRESS" not in text, text[-3000:]
    assert "cancelled by the user; rolled back, the source is kept" in text
    assert f"{MOVE_LABEL} · job {job_id}" in text


def test_orch_flower_on_a_busy_port_is_one_line(orch_env):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = orch_env.fails("flower", "--port", str(port))
    assert f"Flower cannot listen on 127.0.0.1:{port}" in err and "--port" in err, err


def test_without_a_terminal_a_followed_move_prints_a_progress_line_every_few_seconds(cluster, orch_env):
    """(Beside the Flower tests for their stalled transfer.) `orch move` with stderr a pipe, as in CI."""
    foo, _ = cluster
    _big_container(foo, orch_env, 200)
    move = subprocess.Popen([ORCH, "move", "foo:c1", "bar:"], env=orch_env.env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    job_id = ""
    deadline = time.monotonic() + 60
    while not job_id:
        jobs = json.loads(orch_env.run("jobs", "--format", "json").stdout)
        job_id = jobs[0]["id"] if jobs else ""
        assert time.monotonic() < deadline
    frozen = _stall_sender(foo, orch_env, job_id)
    time.sleep(11)  # two LINE_EVERY periods with bytes moved
    _signal(frozen, signal.SIGCONT)
    out, err = move.communicate(timeout=120)
    assert move.returncode == 0, err
    lines = [line for line in err.splitlines() if line.startswith(f"Job {job_id}: sending rootfs: ")]
    assert 1 <= len(lines) <= 3, err  # every 5 s while it changes, not a line per poll
    assert re.search(r"\d+\.\d\dMiB at \d+\.\d\d(B|KiB|MiB)/s$", lines[0]), lines
    assert f"Job {job_id} succeeded" in out


def test_jobs_watch_shows_a_running_transfer_live(cluster, orch_env):
    """(Beside the Flower tests for their stalled transfer.) `orch jobs --watch` in a real terminal."""
    import pexpect

    foo, _ = cluster
    _big_container(foo, orch_env, 200)
    job_id = orch_env.run("move", "foo:c1", "bar:", "--no-wait").stdout.strip()
    frozen = _stall_sender(foo, orch_env, job_id)
    try:
        watch = pexpect.spawn(ORCH, ["jobs", "--watch"], env=orch_env.env, timeout=30, encoding="utf-8",
                              dimensions=(30, 250))  # fmt: skip
        watch.expect(r"RATE\s*\|\s*ETA\s*\|\s*METHOD\s*\|\s*DURATION")
        watch.expect(rf"{job_id}.*RUNNING.*sending rootfs.*\d+\.\d\d(B|KiB|MiB)/s.*rsync.*\d+s")
        time.sleep(1.5)
        watch.expect(r"\d\d:\d\d:\d\d  orch jobs")  # redrawn
        watch.sendintr()
        watch.expect(pexpect.EOF)
        watch.close()
        assert watch.exitstatus == 0
    finally:
        _signal(frozen, signal.SIGCONT)
