"""The processes of ``bench/scale``: a real ``redis-server``, real ``orch worker`` processes, the
simulated agents (bench/simagent.py), and how to read what each of them cost.

Every process is started by this module, in its own session (so a Ctrl-C reaches only the harness,
which then stops them), is stopped by its pid (SIGTERM, then SIGKILL after a grace period), and its
temp files live under one directory the harness removes. Everything listens on 127.0.0.1 only.

CPU is read per process tree from ``/proc/<pid>/stat`` (utime + stime of the process and of every live
descendant): ``orch worker`` is a supervisor with the Celery process under it, and both count.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import redis

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = REPO / ".venv" / "bin"
_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU-seconds) of one live process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2 :].split()  # after "pid (comm) ": state ppid ... utime stime
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu(root: int) -> float:
    """CPU-seconds of ``root`` and all its live descendants (dead children's time is in cutime once
    reaped; the trees measured here keep their children for the whole run)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := _stat(int(entry))) is not None:
            stats[int(entry)] = s
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            total += stats[pid][1]
            todo.extend(p for p, (ppid, _) in stats.items() if ppid == pid)
    return total


class Proc:
    """A child process started in its own session, with its output in a log file."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "ab") as out:
            self.popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                cwd=REPO,
            )
        self.pid = self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL of the pid after ``grace`` seconds; its descendants are killed by pid
        too if any outlived it (the worker's Celery process dies with its supervisor: PDEATHSIG)."""
        if not self.alive():
            return
        children = _descendants(self.pid)
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
        for pid in children:
            if _stat(pid) is not None:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def cpu(self) -> float:
        return tree_cpu(self.pid)


def _descendants(root: int) -> list[int]:
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (s := _stat(int(entry))) is not None:
            parents[int(entry)] = s[0]
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        kids = [p for p, pp in parents.items() if pp == pid]
        out.extend(kids)
        todo.extend(kids)
    return out


def _wait_for(what: str, ok: Any, timeout: float, proc: Proc) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        if not proc.alive():
            raise RuntimeError(f"{what} exited: see {proc.log}\n{proc.log.read_text()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start within {timeout:.0f} s: see {proc.log}")
        time.sleep(0.05)


class Redis(Proc):
    """Debian's redis-server on 127.0.0.1 and a free port, no persistence (a benchmark's throw-away)."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        workdir.mkdir(parents=True, exist_ok=True)
        super().__init__(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(workdir),
                "--protected-mode",
                "yes",
            ],
            workdir / "redis.log",
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis(host="127.0.0.1", port=self.port, decode_responses=True)
        _wait_for("redis-server", self._pong, 10, self)

    def _pong(self) -> bool:
        try:
            return bool(self.client.ping())
        except redis.RedisError:
            return False

    def calls(self) -> dict[str, int]:
        """Calls per command since the server started (``INFO commandstats``), e.g. ``{"hset": 12}``."""
        info = self.client.info("commandstats")
        return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()}

    def memory(self) -> tuple[int, int]:
        """``used_memory`` and ``used_memory_dataset`` (the former less Redis's own overhead: client
        buffers, the keyspace's hash tables, which grow in powers of two)."""
        info = self.client.info("memory")
        return int(info["used_memory"]), int(info["used_memory_dataset"])


class Worker(Proc):
    """``orch worker --concurrency N --name NAME`` from the venv, with the benchmark's environment."""

    def __init__(self, env: dict[str, str], log: Path, name: str, concurrency: int) -> None:
        self.name = name
        super().__init__(
            [str(VENV_BIN / "orch"), "worker", "--concurrency", str(concurrency), "--name", name], log, env
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        _wait_for(f"orch worker {self.name}", lambda: b" ready." in self.log.read_bytes(), timeout, self)


class SimAgents(Proc):
    """The simulated hosts (bench/simagent.py): one process, one HTTPS port and certificate per host."""

    def __init__(self, workdir: Path, hosts: int, client_cert: Path, env: dict[str, str]) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.ready_file = workdir / "ready.json"
        super().__init__(
            [
                sys.executable,
                "-m",
                "bench.simagent",
                "--dir",
                str(workdir),
                "--hosts",
                str(hosts),
                "--client-cert",
                str(client_cert),
            ],
            workdir / "simagent.log",
            env,
        )
        _wait_for("the simulated agents", self.ready_file.exists, 60, self)
        self.ready = json.loads(self.ready_file.read_text())
        self.control = f"http://127.0.0.1:{self.ready['control_port']}"

    def _call(self, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.control + path, data=data, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read())

    def seed(self, containers: dict[str, list[str]]) -> None:
        self._call("/seed", containers)

    def stats(self) -> dict[str, Any]:
        return self._call("/stats")
