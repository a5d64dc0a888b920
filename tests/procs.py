"""Real processes for the tests: ``orch-agent`` servers and the ``orch`` CLI.

Agents listen on 127.0.0.1 with a port the kernel picks (``--listen 127.0.0.1:0``; the agent writes the
bound address to ``listen.addr``), keep their state in a temp dir, and are stopped by process id. On stop,
every container they run is killed through runc so that nothing outlives the test.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

VENV_BIN = Path(sys.executable).parent
ORCH = str(VENV_BIN / "orch")
ORCH_AGENT = str(VENV_BIN / "orch-agent")


class AgentProcess:
    """One running ``orch-agent``."""

    def __init__(
        self,
        data_dir: Path,
        name: str,
        listen: bool = True,
        args: tuple[str, ...] = (),
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.data_dir = data_dir
        self.name = name
        self.listen = listen
        #: further command-line arguments, e.g. ``("--runtime", "lxd", "--lxd-socket", ...)``
        self.args = tuple(args)
        #: what the agent is started through, e.g. ``("nsenter", "--net=/run/netns/NS")``
        self.prefix = tuple(prefix)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}.log"

    @property
    def socket(self) -> Path:
        return self.data_dir / "unix.socket"

    @property
    def addr(self) -> str:
        return (self.data_dir / "listen.addr").read_text().strip()

    @property
    def url(self) -> str:
        return f"https://{self.addr}"

    def start(self, timeout: float = 20.0, listen_addr: str = "127.0.0.1:0") -> AgentProcess:
        """Start (or restart) the agent; pass ``listen_addr=agent.addr`` to keep the same port."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.data_dir / "listen.addr").unlink(missing_ok=True)
        args = [*self.prefix, ORCH_AGENT, "--data-dir", str(self.data_dir), "--name", self.name, *self.args]
        if self.listen:
            args += ["--listen", listen_addr]
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout
        ready = self.data_dir / ("listen.addr" if self.listen else "unix.socket")
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"orch-agent exited with {self.proc.returncode}: {self.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"orch-agent did not start in {timeout}s: {self.log_tail()}")
            time.sleep(0.05)
        return self

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""

    def stop(self, kill_containers: bool = False) -> None:
        """SIGTERM the agent (containers keep running unless ``kill_containers``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if kill_containers:
            kill_runc_containers(self.data_dir / "runc")

    def set_trust_password(self, password: str, admin_home: Path) -> None:
        """Set the trust password as the host's admin would: through the agent's unix socket."""
        admin = Orch(admin_home)
        try:
            admin.run("remote", "add", "admin", f"unix://{self.socket}")
            admin.run("config", "set", "admin:", "core.trust_password", password)
        finally:
            admin.stop_embedded()

    def kill(self) -> None:
        """SIGKILL the agent, as a crash would."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


def kill_runc_containers(runc_root: Path) -> None:
    """Kill and delete every runc container under ``runc_root`` (test cleanup)."""
    if not runc_root.exists():
        return
    out = subprocess.run(
        ["runc", "--root", str(runc_root), "list", "--format", "json"], capture_output=True, text=True
    )
    for entry in json.loads(out.stdout or "null") or []:
        subprocess.run(["runc", "--root", str(runc_root), "kill", entry["id"], "KILL"], capture_output=True)
        time.sleep(0.1)
        subprocess.run(
            ["runc", "--root", str(runc_root), "delete", "--force", entry["id"]], capture_output=True
        )


class Orch:
    """Runs the ``orch`` CLI as a user would, with its own config dir."""

    def __init__(self, config_home: Path) -> None:
        self.config_home = config_home
        # an embedded Redis a command may start lives in the test's dir, not the user's (stop_embedded)
        state = str(config_home / "state")
        self.env = {**os.environ, "XDG_CONFIG_HOME": str(config_home), "ORCH_STATE_DIR": state}
        self.env.pop("ORCH_DEBUG", None)
        self.env.pop("ORCH_REDIS_URL", None)

    def stop_embedded(self) -> None:
        """Stop the embedded redis-server a command of this CLI started, if any (by its pid file)."""
        pidfile = Path(self.env["ORCH_STATE_DIR"]) / "redis.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)

    def run(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            [ORCH, *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"orch {' '.join(args)} failed ({proc.returncode}): {proc.stderr}{proc.stdout}"
            )
        return proc

    def fails(self, *args: str, input: str | None = None) -> str:
        """Run a command that must fail cleanly; returns its one-line error."""
        proc = self.run(*args, check=False, input=input)
        assert proc.returncode != 0, f"orch {' '.join(args)} unexpectedly succeeded: {proc.stdout}"
        assert "Traceback" not in proc.stderr, proc.stderr
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, f"expected one error line, got: {proc.stderr!r}"
        assert lines[0].startswith("Error: "), lines[0]
        return lines[0]

    def add_remote(self, name: str, agent: AgentProcess, password: str = "s3cret") -> None:
        self.run("remote", "add", name, agent.addr, "--accept-certificate", "--password", password)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real ``redis-server`` on 127.0.0.1 and a free port; ``persistent``: with an append-only file
    (fsync'd on every write), so that :meth:`kill` then :meth:`start` is a crash and restart that keeps
    what was written, on the same port."""

    def __init__(self, workdir: Path, persistent: bool = False, port: int = 0) -> None:
        self.workdir, self.persistent = workdir, persistent
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def args(self) -> list[str]:
        """The server's command line (replicas and sentinel tests add to it)."""
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.persistent else []
        return ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", *persistence, "--dir", str(self.workdir)]  # fmt: skip

    def start(self, extra: list[str] = ()) -> RedisServer:
        import redis

        fixed = bool(self.port)
        for _ in range(1 if fixed else 5):
            self.port = self.port if fixed else free_port()
            quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
            self.proc = subprocess.Popen([*self.args(), *extra], **quiet)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    if redis.Redis(port=self.port, socket_timeout=1).ping():
                        return self
                except redis.BusyLoadingError:
                    time.sleep(0.02)
                except redis.RedisError:
                    time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        """SIGKILL the server (a crash: no chance to write anything more)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class WorkerProcess:
    """A real ``orch worker`` (a Celery worker) sharing the CLI's environment."""

    def __init__(self, env: dict[str, str], log_path: Path, name: str = "w1", concurrency: int = 4) -> None:
        self.env, self.log_path, self.name, self.concurrency = env, log_path, name, concurrency
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30.0) -> WorkerProcess:
        log = open(self.log_path, "ab")
        args = [ORCH, "worker", "--concurrency", str(self.concurrency), "--name", self.name]
        self.proc = subprocess.Popen(
            args,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while b" ready." not in self.log_path.read_bytes():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL the worker's whole process group, as a crash (or the OOM killer) would."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()


def as_nobody(command: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run ``command`` in a shell as an unprivileged local user (uid/gid 65534, no groups).

    The shell is what setpriv starts, so the command itself never runs with root's capabilities (setpriv
    opens the program it is given while still privileged)."""
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
