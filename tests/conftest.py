"""Shared fixtures: a world-traversable work dir, the busybox image, agents and CLI users."""

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

from bench.lxd import BTRFS_POOL, LxdLab
from tests.lxdlab import lxd_agent
from tests.procs import ORCH, AgentProcess, Orch, free_port, kill_runc_containers

REPO = Path(__file__).resolve().parent.parent
PASSWORD = "s3cret"


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    """A temp dir that unprivileged containers' mapped root can traverse (pytest's are 0700)."""
    path = Path(tempfile.mkdtemp(prefix="orch-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    # a safety net under the fixtures' own cleanup: no container a test started outlives the suite
    # (stopping an agent leaves its containers running by design; a test that failed half-way, or an
    # agent started by hand in a test, could leave some)
    for runc_root in [*path.glob("*/*/runc"), *path.glob("*/*/*/runc")]:
        kill_runc_containers(runc_root)
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmpdir755(workdir: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh 0755 dir per test."""
    path = Path(tempfile.mkdtemp(prefix=request.node.name[:40] + "-", dir=workdir))
    path.chmod(0o755)
    return path


@pytest.fixture(scope="session")
def busybox_image(workdir: Path) -> Path:
    """The test image, built by the repository's own script."""
    out = workdir / "busybox.tar.gz"
    subprocess.run([str(REPO / "scripts" / "build-busybox-image"), str(out)], check=True, capture_output=True)
    return out


@pytest.fixture
def make_agent(tmpdir755: Path) -> Iterator:
    """Factory: ``make_agent("foo")`` starts a real agent; all are stopped (and their containers killed)."""
    agents: list[AgentProcess] = []

    def factory(
        name: str, password: str | None = PASSWORD, listen: bool = True, args: tuple[str, ...] = ()
    ) -> AgentProcess:
        agent = AgentProcess(tmpdir755 / name, name, listen=listen, args=args).start()
        agents.append(agent)
        if password:
            agent.set_trust_password(password, tmpdir755 / f"admin-{name}")
        return agent

    yield factory
    for agent in agents:
        agent.stop(kill_containers=True)


@pytest.fixture
def orch(tmpdir755: Path) -> Iterator[Orch]:
    """The CLI with a fresh config dir (a new user on a new machine)."""
    home = tmpdir755 / "client"
    home.mkdir()
    cli = Orch(home)
    yield cli
    cli.stop_embedded()  # tests stop every server they start, the CLI's embedded Redis included


@pytest.fixture
def two_agents(make_agent, orch: Orch, busybox_image: Path):  # type: ignore[no-untyped-def]
    """Agents foo and bar added as remotes, with the busybox image imported on foo as alias bb."""
    foo, bar = make_agent("foo"), make_agent("bar")
    orch.add_remote("foo", foo)
    orch.add_remote("bar", bar)
    orch.run("image", "import", str(busybox_image), "foo:", "--alias", "bb")
    return foo, bar


@pytest.fixture
def agents(tmpdir755: Path):
    """Factory: ``agents("a", fs="dir"|"btrfs"|"tmpfs", env={...})``; stops agents, then unmounts."""
    started: list[AgentProcess] = []
    mounts: list[Path] = []

    def start(
        name: str, fs: str = "dir", env: dict[str, str] | None = None, size: str = "16m"
    ) -> AgentProcess:
        data = tmpdir755 / name
        data.mkdir(mode=0o755)
        if fs == "btrfs":
            image = tmpdir755 / f"{name}.btrfs"
            subprocess.run(["truncate", "-s", "1G", str(image)], check=True)
            made = subprocess.run(["mkfs.btrfs", "-q", str(image)], capture_output=True, text=True)
            if made.returncode != 0:
                pytest.skip(f"mkfs.btrfs failed: {made.stderr.strip()}")
            mounted = subprocess.run(
                ["mount", "-o", "loop", str(image), str(data)], capture_output=True, text=True
            )
            if mounted.returncode != 0:
                pytest.skip(f"cannot mount a loop-mounted btrfs here: {mounted.stderr.strip()}")
            mounts.append(data)
        elif fs == "tmpfs":
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", str(data)], check=True
            )
            mounts.append(data)
        saved = {k: os.environ.get(k) for k in env or {}}
        os.environ.update(env or {})
        try:
            agent = AgentProcess(data, name).start()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.stop(kill_containers=True)
    for path in reversed(mounts):
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture(scope="session")
def lab(workdir: Path, busybox_image: Path) -> Iterator[LxdLab]:
    """Two LXD daemons, a and b; the busybox image is in a only (b gets it through orch)."""
    with LxdLab(workdir / "lxd", names=("a", "b"), btrfs=True, btrfs_size=1 << 30) as lab:
        lab.lxc("image", "import", str(busybox_image), "a:", "--alias", "bb", "-q")
        yield lab


@pytest.fixture
def clean_lab(lab: LxdLab) -> Iterator[LxdLab]:
    """Every test starts and ends with no containers on either daemon."""
    yield lab
    for remote in lab.daemons:
        for inst in json.loads(lab.lxc("list", f"{remote}:", "--format", "json")):
            lab.lxc("delete", "--force", f"{remote}:{inst['name']}")


@pytest.fixture
def lxd_cluster(clean_lab: LxdLab, make_agent, orch_env, start_worker):  # type: ignore[no-untyped-def]
    """Agents la (LXD a) and lb (LXD b) as remotes, a Redis and a worker."""
    la = lxd_agent(make_agent, clean_lab, "a", "la")
    lb = lxd_agent(make_agent, clean_lab, "b", "lb")
    orch_env.add_remote("la", la)
    orch_env.add_remote("lb", lb)
    start_worker("w1")
    return clean_lab


@pytest.fixture
def btrfs_cluster(clean_lab: LxdLab, make_agent, orch_env, start_worker):  # type: ignore[no-untyped-def]
    """Agents on the daemons' btrfs pools."""
    orch_env.add_remote("la", lxd_agent(make_agent, clean_lab, "a", "la", BTRFS_POOL))
    orch_env.add_remote("lb", lxd_agent(make_agent, clean_lab, "b", "lb", BTRFS_POOL))
    start_worker("w1")
    return clean_lab


os.environ.setdefault("ORCH_TEST", "1")


@pytest.fixture
def redis_server(tmpdir755: Path) -> Iterator:
    from tests.procs import RedisServer

    server = RedisServer(tmpdir755).start()
    yield server
    server.stop()


@pytest.fixture
def orch_env(orch: Orch, redis_server, tmpdir755: Path) -> Orch:  # type: ignore[no-untyped-def]
    """The CLI pointed at the test Redis, with a short visibility timeout so lost tasks come back fast."""
    orch.env.update(
        {
            "ORCH_REDIS_URL": redis_server.url,
            "ORCH_STATE_DIR": str(tmpdir755 / "state"),
            "ORCH_VISIBILITY_TIMEOUT": "8",
            "ORCH_RETRY_BASE": "0.2",
        }
    )
    return orch


@pytest.fixture
def start_worker(orch_env: Orch, tmpdir755: Path) -> Iterator:
    """Factory for real ``orch worker`` processes; all stopped at the end."""
    from tests.procs import WorkerProcess

    workers: list[WorkerProcess] = []

    def factory(name: str = "w1", concurrency: int = 4) -> WorkerProcess:
        worker = WorkerProcess(
            dict(orch_env.env), tmpdir755 / f"worker-{name}.log", name, concurrency
        ).start()
        workers.append(worker)
        return worker

    yield factory
    for worker in workers:
        worker.stop()


@pytest.fixture
def workers(orch: Orch, tmpdir755: Path) -> Iterator:
    """Factory for real ``orch worker`` processes with the CLI's environment as the test set it (tests
    that bring their own Redis); all stopped at the end."""
    from tests.procs import WorkerProcess

    started: list[WorkerProcess] = []

    def factory(name: str, concurrency: int = 4) -> WorkerProcess:
        worker = WorkerProcess(dict(orch.env), tmpdir755 / f"worker-{name}.log", name, concurrency).start()
        started.append(worker)
        return worker

    yield factory
    for worker in started:
        worker.stop()


@pytest.fixture
def metrics_url(orch_env) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A real `orch metrics` process on a free port, stopped by its pid."""
    import requests

    port = free_port()
    proc = subprocess.Popen(
        [ORCH, "metrics", "--port", str(port), "--address", "127.0.0.1"],
        env=orch_env.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        deadline = time.monotonic() + 20
        while True:
            assert proc.poll() is None, f"orch metrics exited: {proc.stdout.read().decode()}"  # type: ignore[union-attr]
            try:
                requests.get(url, timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "orch metrics did not start listening in 20 s"
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
